"""The array backend: the one module that knows whether tensors live in NumPy (CPU) or CuPy (GPU).

Everything else asks for the array module of its inputs with `get_array_module(...)` (called `xp`
by convention, as in Chainer and DeZero) and calls `xp.` functions, so one code path serves both.
`TINYGRAD_GPT_BACKEND=numpy|cupy` chooses where new tensors are made.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

BACKENDS = ("numpy", "cupy")
DEVICES = ("cpu", "cuda")
GPU_INSTALL_HINT = 'pip install "tinygrad_gpt[gpu]"'


class BackendError(RuntimeError):
    """The requested backend cannot run here (unknown name, CuPy missing, or no GPU)."""


def _requested_backend() -> str:
    name = os.environ.get("TINYGRAD_GPT_BACKEND", "numpy").strip().lower() or "numpy"
    if name not in BACKENDS:
        raise BackendError(
            f"TINYGRAD_GPT_BACKEND={name!r} is not a backend; valid values: {', '.join(BACKENDS)}"
        )
    return name


_cupy = None  # the cupy module, once imported and checked


def _load_cupy():
    """Import CuPy and check for a GPU, with an error that says what is missing and how to get it."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            f"the cupy backend needs CuPy, which is not installed ({e}); install it with {GPU_INSTALL_HINT}"
        ) from None
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise BackendError(f"the cupy backend needs an NVIDIA GPU, but CUDA reports none usable: {e}") from None
    if n_gpus < 1:
        raise BackendError("the cupy backend needs an NVIDIA GPU, but none was found")
    _cupy = cupy
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and sees a GPU (never raises)."""
    try:
        _load_cupy()
        return True
    except BackendError:
        return False


BACKEND = _requested_backend()
DEFAULT_DEVICE = "cuda" if BACKEND == "cupy" else "cpu"
if BACKEND == "cupy":
    _load_cupy()  # fail at import with a clear message, not deep inside the first op


# ---------------------------------------------------------------- array modules and devices


def get_array_module(*arrays):
    """numpy or cupy, whichever holds `arrays` (numpy when cupy was never loaded)."""
    if _cupy is None:
        return np
    return _cupy.get_array_module(*arrays)


def xp_for(device: str):
    """The array module of `device` ('cpu' or 'cuda')."""
    device = check_device(device)
    return np if device == "cpu" else _load_cupy()


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    return device


def _is_cupy_array(x) -> bool:
    if _cupy is None:
        if not type(x).__module__.startswith("cupy"):
            return False
        _load_cupy()  # a CuPy array made before the library needed CuPy (e.g. on the numpy backend)
    return isinstance(x, _cupy.ndarray)


def device_of(array) -> str:
    """'cuda' for a CuPy array, 'cpu' for anything else (NumPy arrays and NumPy scalars)."""
    return "cuda" if _is_cupy_array(array) else "cpu"


def is_array(x) -> bool:
    return isinstance(x, np.ndarray) or _is_cupy_array(x)


def is_host_array(x) -> bool:
    """Whether `x` is a NumPy array (cheaper than device_of(x) == 'cpu', and False for scalars)."""
    return isinstance(x, np.ndarray)


def check_same_device(arrays, op_name: str) -> None:
    """Raise a clear error when an op mixes CPU and GPU arrays."""
    if _cupy is None:
        return  # without cupy everything is on the CPU
    devices = {device_of(a) for a in arrays}
    if len(devices) > 1:
        raise ValueError(
            f"{op_name}: inputs are on different devices ({', '.join(sorted(devices))}); move them with .to(device)"
        )


def to_device(array, device: str):
    """Copy `array` to `device` (no copy when it is already there)."""
    device = check_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return array.get()
    return _load_cupy().asarray(array)


def to_numpy(array) -> np.ndarray:
    """A host numpy array holding `array`'s values."""
    return array.get() if device_of(array) == "cuda" else np.asarray(array)


def asarray(data, dtype=None, device: str | None = None):
    """`data` (array, nested lists or scalar) as an array on `device` (default: the backend's)."""
    if device is None:
        device = device_of(data) if is_array(data) and device_of(data) == "cuda" else DEFAULT_DEVICE
    xp = xp_for(device)
    if is_array(data) and device_of(data) != device:
        data = to_device(data, device)
    return xp.asarray(data, dtype=dtype)


# ---------------------------------------------------------------- dtypes

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{dtype!r} is not a dtype") from None


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


_default_float = FLOAT_DTYPES[1]  # float32; read by Tensor creation, set by set_default_dtype


def set_default_dtype(dtype) -> None:
    """Set the float dtype of new tensors (float32 by default; float64 for gradient checks)."""
    global _default_float
    dtype = as_dtype(dtype)
    if not is_float(dtype):
        raise TypeError(f"the default dtype must be a float dtype, got {dtype}")
    _default_float = dtype


def get_default_dtype() -> np.dtype:
    """The float dtype of new tensors."""
    return _default_float


# ---------------------------------------------------------------- indexing


def check_index_in_range(array, index) -> None:
    """Raise IndexError for an out-of-range integer-array index into a CuPy `array`, as NumPy does.

    CuPy wraps such indices around silently (NumPy raises), so tensors on the GPU check here. Costs
    one host sync per integer array in `index` (none for slices and ints, which CuPy checks); a
    no-op for NumPy arrays.
    """
    if not _is_cupy_array(array):
        return
    shape = array.shape
    parts = index if isinstance(index, tuple) else (index,)
    is_mask = [is_array(p) and p.dtype == bool for p in parts]
    consumed = sum(p.ndim if m else p is not None and p is not Ellipsis for p, m in zip(parts, is_mask))
    axis = 0
    for p, mask in zip(parts, is_mask):
        if p is Ellipsis:
            axis += len(shape) - consumed
        elif p is not None:
            if isinstance(p, list):
                p = np.asarray(p)  # a host list: checked on the host, no sync
            if is_array(p) and p.dtype.kind in "iu" and p.size:
                size = shape[axis] if axis < len(shape) else 0
                out_of_range = (p < -size) | (p >= size)
                if bool(out_of_range.any()):
                    bad = int(p[out_of_range].ravel()[0])
                    raise IndexError(f"index {bad} is out of range for axis {axis} of size {size} "
                                     f"(on the GPU CuPy would wrap it around silently)")
            axis += p.ndim if mask else 1


# ---------------------------------------------------------------- device-specific kernels


def scatter_add(out, indices, values) -> None:
    """out[indices] += values, accumulating repeated indices (np.add.at / cupyx.scatter_add)."""
    if device_of(out) == "cuda":
        import cupyx

        cupyx.scatter_add(out, indices, values)
    else:
        np.add.at(out, indices, values)


def synchronize() -> None:
    """Wait for queued GPU work (a no-op on the CPU); call before reading a clock."""
    if _cupy is not None:
        _cupy.cuda.Device().synchronize()


def memory_stats() -> dict:
    """Bytes held by CuPy's memory pool on the GPU (empty on the CPU)."""
    if _cupy is None:
        return {}
    pool = _cupy.get_default_memory_pool()
    return {"used_bytes": pool.used_bytes(), "total_bytes": pool.total_bytes()}


def enable_tf32() -> None:
    """Let CuPy's float32 matmuls run on TF32 tensor cores (about 10 mantissa bits, much faster).

    Sets CUPY_TF32=1, which CuPy reads once, at its first float32 matmul; it has no effect after
    that, so call it before any tensor math, best before `tinygrad_gpt` is imported.
    Unverified (no GPU so far): CuPy's source suggests its 2-D matmul honours CUPY_TF32 but its
    batched (3-D and up) matmul may not, which would leave attention's matmuls in full float32.
    """
    os.environ["CUPY_TF32"] = "1"


def device_name(device: str | None = None) -> str:
    device = device or DEFAULT_DEVICE
    if device == "cpu":
        return f"cpu ({os.cpu_count()} cores, numpy {np.__version__})"
    cupy = _load_cupy()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return f"cuda ({props['name'].decode()}, cupy {cupy.__version__})"



# ---------------------------------------------------------------- multi-GPU (for tinygrad_gpt.distributed)


def use_gpu(index: int) -> int:
    """Make GPU `index` (modulo the visible count) current for this process; returns the one chosen."""
    cupy = _load_cupy()
    index %= cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(index).use()
    return index


def nccl():
    """CuPy's NCCL bindings (`cupy.cuda.nccl`), or None where CuPy was built without NCCL (or is a stand-in)."""
    _load_cupy()
    try:
        from cupy.cuda import nccl as nccl_module
    except ImportError:  # CuPy without NCCL, or the CPU stand-in (no cupy.cuda package)
        return None
    return nccl_module if getattr(nccl_module, "available", False) else None


def current_stream_ptr() -> int:
    """The raw handle of CuPy's current CUDA stream (NCCL queues its collectives on it)."""
    return _load_cupy().cuda.get_current_stream().ptr


# ---------------------------------------------------------------- random numbers

_seed = 1337
_generators: dict = {}
# CuPy's generator state cannot be read back, so exact resume on the GPU works with numbered streams:
# the GPU generator of stream k is seeded from (seed, k), and taking the RNG state for a checkpoint
# moves on to stream k + 1, which a resumed run can start too. The GPU generator is cuRAND's Philox
# (as PyTorch's CUDA generator): counter-based, so reseeding it costs no state set-up.
_gpu_stream = 0


def _gpu_stream_seed() -> int:
    return _seed if _gpu_stream == 0 else int(np.random.SeedSequence([_seed, _gpu_stream]).generate_state(1)[0])


def manual_seed(seed: int) -> None:
    """Seed the library's generators (dropout, init, sampling) on every device."""
    global _seed, _gpu_stream
    _seed, _gpu_stream = int(seed), 0
    _generators.clear()


def generator(device: str | None = None):
    """The library's random generator for `device` (numpy Generator or cupy RandomState)."""
    device = check_device(device or DEFAULT_DEVICE)
    if device not in _generators:
        if device == "cpu":
            _generators[device] = np.random.default_rng(_seed)
        else:
            cupy = _load_cupy()
            philox = cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
            _generators[device] = cupy.random.RandomState(_gpu_stream_seed(), method=philox)
    return _generators[device]


def randn(shape, dtype, device: str | None = None):
    """Standard normal samples of `shape` and `dtype`."""
    gen = generator(device)
    draw = np.float32 if dtype == np.float16 else dtype  # neither generator draws float16 directly
    return gen.standard_normal(shape, dtype=draw).astype(dtype, copy=False)


def rand(shape, dtype, device: str | None = None):
    """Uniform samples in [0, 1) of `shape` and `dtype`."""
    gen = generator(device)
    draw = np.float32 if dtype == np.float16 else dtype  # neither generator draws float16 directly
    if isinstance(gen, np.random.Generator):
        return gen.random(shape, dtype=draw).astype(dtype, copy=False)
    return gen.random_sample(shape, dtype=draw).astype(dtype, copy=False)


def host_generator(seed: int):
    """A fresh seeded NumPy generator for host-side draws (sampling, gradient checks)."""
    return np.random.default_rng(seed)


def start_gpu_stream(stream: int) -> None:
    """Switch the GPU generator to stream `stream`, seeded from (seed, stream).

    The training loop starts stream iter_num + 1 at every iteration, so a run resumed from any
    iteration draws the dropout masks that the uninterrupted run drew. No effect on the CPU generator.
    """
    global _gpu_stream
    _gpu_stream = int(stream)
    if "cuda" in _generators:
        _generators["cuda"].seed(_gpu_stream_seed())


def get_rng_state() -> dict:
    """The generators' state as JSON-friendly data, for an exact resume with `set_rng_state`.

    The CPU generator's state is saved as is. The GPU generator's cannot be read, so if it has been
    used, it moves on to a fresh stream here (the run that saves and the run that resumes both
    continue on that stream).
    """
    global _gpu_stream
    if "cuda" in _generators:
        _gpu_stream += 1
        _generators["cuda"].seed(_gpu_stream_seed())
    return {"seed": _seed, "cpu": generator("cpu").bit_generator.state, "gpu_stream": _gpu_stream}


def set_rng_state(state: dict) -> None:
    global _gpu_stream
    manual_seed(state["seed"])
    generator("cpu").bit_generator.state = state["cpu"]
    _gpu_stream = int(state.get("gpu_stream", 0))  # checkpoints from before GPU streams have none


# ---------------------------------------------------------------- CPU memory allocator


def tune_malloc() -> None:
    """Keep freed large blocks in the process instead of returning them to the kernel (glibc only).

    NumPy's temporaries are large (over glibc's 128 KiB mmap threshold), so by default every one
    is mmap'ed and page-faulted afresh; keeping them cut a training step by ~20% on 2 cores. It
    changes the whole process (freed memory is no longer returned to the OS), so a library must
    not do it at import: the training CLI and the benchmark workers call it; TINYGRAD_GPT_MALLOC=0
    turns it off there.
    """
    if not sys.platform.startswith("linux") or os.environ.get("TINYGRAD_GPT_MALLOC", "1") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value on 64-bit
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
