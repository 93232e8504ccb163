"""A stand-in for CuPy on the CPU, to test the library's device plumbing where there is no GPU.

It is not CUDA: every "device" array is a NumPy array in a wrapper class of its own, so the library
sees a second array module and a second device. It is as strict as CuPy where our code could go
wrong, so the tests catch, without a GPU:
- an implicit host conversion (`np.asarray(device_array)` raises TypeError, as in CuPy);
- a host array mixed with a device array in one op (TypeError, as in CuPy);
- a result that silently leaves the device (every result of an op on device arrays is a device array,
  0-d ones included, as in CuPy);
- NumPy-only API on the device: the random generator is `RandomState` with CuPy's signatures, and
  `cupyx.scatter_add` is the scatter-add;
- CuPy's silent wrap-around of out-of-range integer-array indices (NumPy raises IndexError).
The fused CUDA kernels cannot run here; tests under this stand-in run with TINYGRAD_GPT_GPU_KERNELS=0
(tests/test_gpu_kernels_compile.py compiles them with NVRTC instead).

Installed by tests/conftest.py when TINYGRAD_GPT_TEST_FAKE_CUPY=1, before tinygrad_gpt is imported:

    TINYGRAD_GPT_TEST_FAKE_CUPY=1 TINYGRAD_GPT_BACKEND=cupy python -m pytest -q tests/test_cupy_parity.py
"""

from __future__ import annotations

import sys
import types
import weakref

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__version__ = "0.0-fake"


class ndarray(NDArrayOperatorsMixin):  # noqa: N801  (the name CuPy uses)
    """A "device" array: a NumPy array that refuses to be mixed with, or silently turned into, host arrays."""

    __slots__ = ("_a", "__weakref__")
    __module__ = "cupy"  # as cupy.ndarray's

    def __init__(self, host_array: np.ndarray):
        self._a = host_array

    # --- what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly. (fake_cupy)")

    def get(self):
        """A host copy (CuPy's device-to-host transfer)."""
        return self._a.copy()

    # --- NumPy protocols: run on the wrapped arrays, wrap the results
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)  # a host `out` is refused like any host input
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out  # the device arrays that now hold the result
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # --- array behaviour
    def __getattr__(self, name):
        if name == "base":  # CuPy hands back the same base array object every time
            base = self._a.base
            return None if base is None else _bases.setdefault(id(base), ndarray(base))
        value = getattr(self._a, name)
        if callable(value):
            return lambda *args, **kwargs: _wrap(value(*_unwrap(args), **_unwrap(kwargs)))
        return _wrap(value) if isinstance(value, np.ndarray) else value

    def __getitem__(self, key):
        return _wrap(self._a[_wrap_around(self._a.shape, _unwrap(key, allow_host=True))])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, allow_host=True)] = _unwrap(value, allow_host=True)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __repr__(self):
        return f"fake_cupy.{self._a!r}"

    @property
    def T(self):  # noqa: N802
        return _wrap(self._a.T)

    def __reduce__(self):  # pickling a device array keeps it on the device
        return (ndarray, (self._a,))


_bases = weakref.WeakValueDictionary()  # id of a NumPy base array -> its one device wrapper


def _wrap_around(shape: tuple, key):
    """CuPy's out-of-range integer-array indices wrap around (NumPy raises): index % size on each axis.

    Done for keys of ints, slices and integer arrays (one axis each), which is what the library makes.
    """
    parts = key if isinstance(key, tuple) else (key,)
    if any(p is None or p is Ellipsis or (isinstance(p, np.ndarray) and p.dtype == bool) for p in parts):
        return key
    wrapped = tuple(np.asarray(p) % shape[axis] if isinstance(p, (np.ndarray, list)) and np.asarray(p).dtype.kind
                    in "iu" and axis < len(shape) and shape[axis] else p for axis, p in enumerate(parts))
    return wrapped if isinstance(key, tuple) else wrapped[0]


def _unwrap(x, allow_host: bool = False):
    """Replace device arrays by their NumPy arrays (recursively); refuse host arrays unless `allow_host`."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and not allow_host and x.ndim > 0:
        raise TypeError(f"Unsupported type {type(x)}: a host numpy array mixed with device arrays (fake_cupy)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, allow_host) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, allow_host) for k, v in x.items()}
    return x


def _wrap(x):
    """Turn NumPy arrays and scalars produced on the device back into device arrays (recursively)."""
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_)):
        return ndarray(np.asarray(x))  # CuPy returns 0-d arrays where NumPy returns scalars
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _device_function(fn, allow_host: bool):
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))
    call.__name__ = getattr(fn, "__name__", "function")
    return call


# Functions that take host data and put it on the device (CuPy copies host arrays here).
_FROM_HOST = {"asarray", "array", "ascontiguousarray", "asanyarray"}
# NumPy names that are types, dtypes or constants, not functions to run on the device.
_PASS_THROUGH = (type, np.dtype, float, int, bool)


class _Module(types.ModuleType):
    """A module whose functions run NumPy's on unwrapped arrays and return device arrays."""

    def __init__(self, name: str, numpy_module):
        super().__init__(name)
        self._numpy_module = numpy_module

    def __getattr__(self, name):
        value = getattr(self._numpy_module, name)
        if isinstance(value, types.ModuleType):
            return _Module(f"{self.__name__}.{name}", value)
        if isinstance(value, _PASS_THROUGH) or not callable(value):
            return value
        if isinstance(value, np.ufunc):
            return value  # a ufunc called on device arrays comes back through ndarray.__array_ufunc__
        return _device_function(value, allow_host=name in _FROM_HOST)


class RandomState:
    """cupy.random.RandomState's methods that the library uses, with CuPy's signatures (dtype= included)."""

    def __init__(self, seed=None, method=None):
        self._rs = np.random.RandomState(seed)

    def seed(self, seed=None):
        self._rs.seed(seed)

    def standard_normal(self, size=None, dtype=float):
        return ndarray(np.asarray(self._rs.standard_normal(size)).astype(dtype))

    def random_sample(self, size=None, dtype=float):
        return ndarray(np.asarray(self._rs.random_sample(size)).astype(dtype))

    def randint(self, low, high=None, size=None, dtype=int):
        return ndarray(np.asarray(self._rs.randint(low, high, size)).astype(dtype))


class _Device:
    id = 0

    def __init__(self, device_id: int = 0):
        self.id = device_id

    def synchronize(self) -> None:
        pass

    def use(self) -> None:  # make this the current device (one fake device: nothing to do)
        pass


class _MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0


def get_array_module(*arrays):
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in arrays) else np


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def scatter_add(out, indices, values) -> None:
    """cupyx.scatter_add: out[indices] += values with repeated indices accumulated."""
    np.add.at(_unwrap(out), _unwrap(indices, allow_host=True), _unwrap(values))


def _unavailable(*args, **kwargs):
    raise RuntimeError("fake_cupy cannot compile CUDA kernels: run with TINYGRAD_GPT_GPU_KERNELS=0")


def install() -> None:
    """Make `import cupy` and `import cupyx` give this stand-in."""
    this = sys.modules[__name__]
    numpy_namespace = _Module("cupy", np)
    for name in ("ndarray", "get_array_module", "asnumpy", "__version__"):
        setattr(numpy_namespace, name, getattr(this, name))
    numpy_namespace.random = types.SimpleNamespace(RandomState=RandomState)
    numpy_namespace.cuda = types.SimpleNamespace(
        Device=_Device,
        curand=types.SimpleNamespace(CURAND_RNG_PSEUDO_PHILOX4_32_10=161),  # cuRAND's enum value
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                      getDeviceProperties=lambda i: {"name": b"fake_cupy (NumPy on the CPU)"}),
    )
    numpy_namespace.get_default_memory_pool = _MemoryPool
    numpy_namespace.ElementwiseKernel = numpy_namespace.RawModule = _unavailable
    sys.modules["cupy"] = numpy_namespace
    sys.modules["cupyx"] = types.SimpleNamespace(scatter_add=scatter_add)
