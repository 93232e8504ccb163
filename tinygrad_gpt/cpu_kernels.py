"""Compatibility only: the numba kernels moved to `tinygrad_gpt.kernels.cpu`; delete once nothing imports this.

Reads are forwarded (`cpu_kernels.enabled` is `kernels.cpu.enabled`); set switches on `kernels.cpu` itself.
"""

from tinygrad_gpt.kernels import cpu as _cpu


def __getattr__(name: str):
    return getattr(_cpu, name)
