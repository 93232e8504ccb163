"""Optional fused kernels, behind one dispatch: `find(name, *arrays)`.

A Function that has a fused kernel asks once for its arrays and otherwise runs its NumPy body,
the readable reference that works on every backend:

    k = kernels.find("gelu_backward", gy, x)
    if k:
        return k(gy, x)
    ...  # the same math in xp calls

`find` returns the numba kernel (cpu.py) when every array is a NumPy array, the first has at least
`cpu.min_size` elements (the row kernels: any size, see `cpu.runs_on`), all are C-contiguous (or any
strided views, for `cpu.VIEW_KERNELS`) and of one float32/float64 dtype, and numba kernels are on;
the CUDA kernel (cuda.py) when every array is a C-contiguous CuPy array of one float dtype and GPU
kernels are on; None otherwise. Pass the float arrays the kernel reads (not integer targets or
scalars). Both modules give a kernel of one name one signature; cpu.py may have kernels cuda.py has not.

Switches: TINYGRAD_GPT_NUMBA=0 and TINYGRAD_GPT_GPU_KERNELS=0 in the environment, or
`kernels.cpu.enabled` / `kernels.cuda.enabled` (and `kernels.cpu.min_size`) at run time.
"""

from __future__ import annotations

from tinygrad_gpt import backend
from tinygrad_gpt.kernels import cpu, cuda

__all__ = ["cpu", "cuda", "find"]


def find(name: str, *arrays):
    """The fused kernel `name` for `arrays` (see the module docstring), or None to run the NumPy body."""
    first = arrays[0]
    on_host = backend.is_host_array(first)
    if on_host:
        if not cpu.enabled or not cpu.runs_on(name, first.size):
            return None
        module = cpu
    elif cuda.enabled and backend.device_of(first) == "cuda":
        module = cuda
    else:
        return None
    kernel = module.KERNELS.get(name)
    if kernel is None or first.dtype not in module.DTYPES:
        return None
    views = on_host and name in cpu.VIEW_KERNELS  # numba indexes any strides; the others want flat arrays
    for a in arrays:
        if a.dtype != first.dtype or not (views or a.flags.c_contiguous) or backend.is_host_array(a) != on_host:
            return None
    return kernel
