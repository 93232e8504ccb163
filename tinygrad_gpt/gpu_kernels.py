"""Compatibility only: the CUDA kernels moved to `tinygrad_gpt.kernels.cuda`, `enable_tf32` to `tinygrad_gpt.backend`.

Delete once nothing imports this. Reads are forwarded; set switches on `kernels.cuda` itself.
"""

from tinygrad_gpt.backend import enable_tf32  # noqa: F401  (train.py calls gpu_kernels.enable_tf32)
from tinygrad_gpt.kernels import cuda as _cuda


def __getattr__(name: str):
    return getattr(_cuda, name)
