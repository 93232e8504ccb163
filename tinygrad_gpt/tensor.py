"""Tensor and the reverse-mode autograd engine.

A `Function` (see ops.py) computes its output from raw arrays in `forward` and saves what its
`backward` needs. When any input requires a gradient, the output Tensor keeps the Function as its
`_ctx`; those links form the graph. `Tensor.backward()` walks the graph once in reverse topological
order, calls each Function's `backward`, sums broadcast gradients back to each input's shape (here,
in one place) and accumulates them. Then it drops the links so the saved arrays are freed.
"""

from __future__ import annotations

import contextlib
import functools
import math

from tinygrad_gpt import backend

# ---------------------------------------------------------------- global switches

_grad_enabled = True  # read by Function.apply; flipped by no_grad()
_default_float = backend.as_dtype("float32")


def set_default_dtype(dtype) -> None:
    """Set the float dtype of new tensors (float32 by default; float64 for gradient checks)."""
    global _default_float
    dtype = backend.as_dtype(dtype)
    if not backend.is_float(dtype):
        raise TypeError(f"the default dtype must be a float dtype, got {dtype}")
    _default_float = dtype


def get_default_dtype():
    return _default_float


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) under which ops record no graph."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False


def is_grad_enabled() -> bool:
    return _grad_enabled


# ---------------------------------------------------------------- Function


class Function:
    """A differentiable primitive: `forward` and `backward` on raw arrays."""

    parents: tuple = ()
    needs_grad: tuple = ()

    def forward(self, *xs, **kwargs):
        raise NotImplementedError

    def backward(self, gy):
        """Gradients w.r.t. each input (None where not needed); may be broadcast-shaped."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Tensor, **kwargs) -> Tensor:
        ctx = cls()
        xs = [t.data for t in inputs]
        if len(xs) > 1:
            backend.check_same_device(xs, cls.__name__.lower())
        record = _grad_enabled and any(t.requires_grad for t in inputs)
        if record:
            ctx.needs_grad = tuple(t.requires_grad for t in inputs)
        try:
            y = ctx.forward(*xs, **kwargs)
        except ValueError as e:  # shape errors surface here, at the call, naming the op and shapes
            shapes = ", ".join(str(tuple(x.shape)) for x in xs)
            raise ValueError(f"{cls.__name__.lower()}: {e} (input shapes {shapes})") from None
        if not record:
            return Tensor._make(y, False, None)
        ctx.parents = inputs
        return Tensor._make(y, True, ctx)


# ---------------------------------------------------------------- Tensor


def _numeric_array(data, device):
    """`data` (nested lists, numbers) as an array, or TypeError unless it holds numbers or booleans."""
    if data is None or isinstance(data, (str, bytes, dict, set)):
        raise TypeError(f"Tensor: cannot make a tensor of {type(data).__name__}; give numbers, booleans or an array")
    array = backend.asarray(data, device=device)
    _check_numeric(array.dtype, data)
    return array


def _check_numeric(dtype, data) -> None:
    # NOTE: NumPy happily makes arrays of strings or objects, on which ops give nonsense ('a' + 1 -> 'a1')
    if dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor: data of {type(data).__name__} gives NumPy dtype {dtype}, which is not a number "
            "or boolean type (torch.tensor refuses it too)"
        )


class Tensor:
    """An n-dimensional array that records the operations applied to it for reverse-mode autograd."""

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "__weakref__")
    __array_priority__ = 1000  # so `ndarray + Tensor` calls Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        """`data` (array, nested lists or number) as a tensor on `device`.

        Without `device`, a CuPy array stays on the GPU and anything else goes to the backend's
        device (TINYGRAD_GPT_BACKEND), as torch.tensor goes to the default device.
        """
        if isinstance(data, Tensor):
            data = data.data
        if not backend.is_array(data):
            data = _numeric_array(data, device)
        if dtype is None and backend.is_float(data.dtype):
            dtype = _default_float  # floats become the default float dtype, so nothing upcasts later
        self.data = backend.asarray(data, dtype=dtype, device=device)
        _check_numeric(self.data.dtype, data)
        if requires_grad and not backend.is_float(self.data.dtype):
            raise TypeError(f"only float tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._ctx: Function | None = None

    @staticmethod
    def _make(data, requires_grad: bool, ctx: Function | None) -> Tensor:
        """Wrap an op's output array as is (no conversion)."""
        t = Tensor.__new__(Tensor)
        t.data, t.requires_grad, t._ctx, t.grad = data, requires_grad, ctx, None
        return t

    # ------------------------------------------------------------ creation

    @staticmethod
    def zeros(*shape, dtype=None, requires_grad=False) -> Tensor:
        shape = _shape_arg(shape)
        xp = backend.xp_for(backend.DEFAULT_DEVICE)
        return Tensor(xp.zeros(shape, dtype=dtype or _default_float), requires_grad=requires_grad)

    @staticmethod
    def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
        shape = _shape_arg(shape)
        xp = backend.xp_for(backend.DEFAULT_DEVICE)
        return Tensor(xp.ones(shape, dtype=dtype or _default_float), requires_grad=requires_grad)

    @staticmethod
    def randn(*shape, dtype=None, requires_grad=False) -> Tensor:
        """Standard normal samples from the library's seeded generator (`manual_seed`)."""
        data = backend.randn(_shape_arg(shape), dtype or _default_float)
        return Tensor(data, requires_grad=requires_grad, dtype=dtype)

    @staticmethod
    def rand(*shape, dtype=None, requires_grad=False) -> Tensor:
        data = backend.rand(_shape_arg(shape), dtype or _default_float)
        return Tensor(data, requires_grad=requires_grad, dtype=dtype)

    @staticmethod
    def arange(*args, dtype=None) -> Tensor:
        return Tensor(backend.xp_for(backend.DEFAULT_DEVICE).arange(*args, dtype=dtype))

    # ------------------------------------------------------------ properties

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        values = str(backend.to_numpy(self.data)).replace("\n", "\n       ")
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({values}, shape={self.shape}, dtype={self.dtype}, device={self.device}{grad})"

    # ------------------------------------------------------------ conversion

    def numpy(self):
        """The values as a host numpy array (a copy when on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor._make(self.data, False, None)

    def to(self, device: str) -> Tensor:
        """This tensor on `device` ('cpu' or 'cuda'); differentiable."""
        if backend.check_device(device) == self.device:
            return self
        return ops.ToDevice.apply(self, device=device)

    def astype(self, dtype) -> Tensor:
        dtype = backend.as_dtype(dtype)
        return self if dtype == self.dtype else ops.Cast.apply(self, dtype=dtype)

    def float(self) -> Tensor:
        return self.astype("float32")

    def double(self) -> Tensor:
        return self.astype("float64")

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and not backend.is_float(self.dtype):
            raise TypeError(f"only float tensors can require gradients, got dtype {self.dtype}")
        self.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------ autograd

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into the `.grad` of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"backward() without grad needs a scalar output, got shape {self.shape}; "
                    "pass grad= of the same shape"
                )
            grad = backend.get_array_module(self.data).ones_like(self.data)
        else:
            grad = backend.asarray(_raw(grad), dtype=self.dtype, device=self.device)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, output has shape {self.shape}")

        grads, given = {id(self): grad}, set()
        for t in reversed(_toposort(self)):
            g = grads.pop(id(t), None)
            ctx = t._ctx
            if ctx is None:  # a leaf: accumulate (never in place: the array may be shared)
                if g is not None:
                    t.grad = Tensor._make(_owned(g, given) if t.grad is None else t.grad.data + g, False, None)
                continue
            t._ctx = _RELEASED  # free the saved arrays: the graph is used once
            if g is None:  # no gradient reached this node (a Function returned None for it)
                continue
            gxs = ctx.backward(g)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for parent, gx in zip(ctx.parents, gxs):
                if gx is None or not parent.requires_grad:
                    continue
                if gx.shape != parent.data.shape:
                    gx = _unbroadcast(gx, parent.data.shape)
                assert gx.dtype == parent.data.dtype, (
                    f"{type(ctx).__name__}.backward gave a {gx.dtype} gradient for a {parent.data.dtype} input"
                )
                key = id(parent)
                grads[key] = grads[key] + gx if key in grads else gx

    # ------------------------------------------------------------ arithmetic

    def __add__(self, other):
        return ops.Add.apply(*_operands(self, other, "add"))

    def __radd__(self, other):
        return ops.Add.apply(*_operands(other, self, "add"))

    def __sub__(self, other):
        return ops.Sub.apply(*_operands(self, other, "sub"))

    def __rsub__(self, other):
        return ops.Sub.apply(*_operands(other, self, "sub"))

    def __mul__(self, other):
        return ops.Mul.apply(*_operands(self, other, "mul"))

    def __rmul__(self, other):
        return ops.Mul.apply(*_operands(other, self, "mul"))

    def __truediv__(self, other):
        return ops.Div.apply(*_float_operands(self, other, "div"))

    def __rtruediv__(self, other):
        return ops.Div.apply(*_float_operands(other, self, "div"))

    def __pow__(self, other):
        return ops.Pow.apply(*_operands(self, other, "pow"))

    def __rpow__(self, other):
        return ops.Pow.apply(*_operands(other, self, "pow"))

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(_as_tensor(other, self), self)

    def __neg__(self):
        return ops.Neg.apply(self)

    # comparisons give boolean tensors without gradients (== and != keep Python identity)
    def __lt__(self, other):
        return Tensor._make(self.data < _comparand(other, self), False, None)

    def __le__(self, other):
        return Tensor._make(self.data <= _comparand(other, self), False, None)

    def __gt__(self, other):
        return Tensor._make(self.data > _comparand(other, self), False, None)

    def __ge__(self, other):
        return Tensor._make(self.data >= _comparand(other, self), False, None)

    def eq(self, other) -> Tensor:
        return Tensor._make(self.data == _comparand(other, self), False, None)

    __hash__ = object.__hash__

    # ------------------------------------------------------------ elementwise

    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def sigmoid(self):
        return ops.Sigmoid.apply(self)

    def relu(self):
        return ops.Relu.apply(self)

    def gelu(self):
        """GPT-2's GELU (tanh approximation)."""
        return ops.Gelu.apply(self)

    def abs(self):
        return ops.Abs.apply(self)

    def clip(self, min=None, max=None):
        if min is None and max is None:
            raise ValueError("clip: give min, max or both")
        return ops.Clip.apply(self, lo=min, hi=max)

    def maximum(self, other):
        return ops.Maximum.apply(*_operands(self, other, "maximum"))

    def minimum(self, other):
        return ops.Minimum.apply(*_operands(self, other, "minimum"))

    # ------------------------------------------------------------ reductions

    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=_axes(axis, self.ndim, "sum"), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        axes = _axes(axis, self.ndim, "mean")
        n = math.prod(self.shape[a] for a in axes)
        return ops.Sum.apply(self, axis=axes, keepdims=keepdims) * (1.0 / n if n else math.nan)  # empty: NaN, as NumPy

    def max(self, axis=None, keepdims=False):
        if self.size == 0:
            raise ValueError(f"max: empty tensor of shape {self.shape} has no maximum")
        return ops.Max.apply(self, axis=_axes(axis, self.ndim, "max"), keepdims=keepdims)

    def var(self, axis=None, keepdims=False, ddof=0):
        """Variance as NumPy computes it (ddof=0 by default; torch's default is ddof=1)."""
        axes = _axes(axis, self.ndim, "var")
        n = math.prod(self.shape[a] for a in axes)
        if n - ddof <= 0:
            raise ValueError(f"var: {n} elements along axis {axis} with ddof={ddof} leaves no degrees of freedom")
        centered = self - self.mean(axis=axes, keepdims=True)
        return (centered * centered).sum(axis=axes, keepdims=keepdims) * (1.0 / (n - ddof))

    def argmax(self, axis=None) -> Tensor:
        return Tensor._make(self.data.argmax(axis=axis), False, None)

    # ------------------------------------------------------------ shape

    def reshape(self, *shape):
        shape = _shape_arg(shape)
        if shape == self.shape:
            return self
        return ops.Reshape.apply(self, shape=shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self):
        return self.reshape(-1)

    def permute(self, *axes):
        axes = _shape_arg(axes)
        in_range = all(-self.ndim <= a < self.ndim for a in axes)
        if not in_range or sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: axes {axes} are not a permutation of the axes of shape {self.shape}")
        return ops.Permute.apply(self, axes=tuple(a % self.ndim for a in axes))

    def transpose(self, ax1: int = -2, ax2: int = -1):
        """Swap two axes (the last two by default)."""
        axes = list(range(self.ndim))
        try:
            axes[ax1], axes[ax2] = axes[ax2], axes[ax1]
        except IndexError:
            raise ValueError(f"transpose: axes ({ax1}, {ax2}) out of range for shape {self.shape}") from None
        return ops.Permute.apply(self, axes=tuple(axes))

    def expand(self, *shape):
        shape = _shape_arg(shape)
        if shape == self.shape:
            return self
        if not _broadcasts_to(self.shape, shape):
            raise ValueError(f"expand: shape {self.shape} cannot be broadcast to {shape}")
        return ops.Expand.apply(self, shape=shape)

    broadcast_to = expand

    def unsqueeze(self, axis: int):
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise ValueError(f"unsqueeze: axis {axis} is out of range for shape {self.shape}")
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, axis: int):
        if self.shape[axis] != 1:
            raise ValueError(f"squeeze: axis {axis} of shape {self.shape} has size {self.shape[axis]}, not 1")
        axis = axis % self.ndim
        return self.reshape(self.shape[:axis] + self.shape[axis + 1 :])

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=_raw_index(index))

    def split(self, size_or_sizes, axis: int = 0) -> list:
        """Split into pieces of `size` (the last may be smaller) or of the given list of sizes."""
        n = self.shape[axis]
        if isinstance(size_or_sizes, int):
            if size_or_sizes < 1:
                raise ValueError(f"split: size must be >= 1, got {size_or_sizes}")
            sizes = [min(size_or_sizes, n - i) for i in range(0, n, size_or_sizes)]
        else:
            sizes = list(size_or_sizes)
            if sum(sizes) != n:
                raise ValueError(f"split: sizes {sizes} sum to {sum(sizes)}, but axis {axis} of {self.shape} has {n}")
        pieces, start = [], 0
        for size in sizes:
            index = [slice(None)] * self.ndim
            index[axis] = slice(start, start + size)
            pieces.append(self[tuple(index)])
            start += size
        return pieces

    # ------------------------------------------------------------ selection and softmax

    def masked_fill(self, mask, value: float):
        """`value` where `mask` is true, self elsewhere (mask broadcasts to self's shape)."""
        mask_shape = tuple(_raw(mask).shape)
        if not _broadcasts_to(mask_shape, self.shape):
            raise ValueError(f"masked_fill: mask of shape {mask_shape} does not broadcast to tensor shape {self.shape}")
        return where(mask, value, self)

    def softmax(self, axis: int = -1):
        return ops.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis: int = -1):
        return ops.LogSoftmax.apply(self, axis=axis)


# ---------------------------------------------------------------- free functions


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with NumPy's rules: batched, broadcasting leading dims, 1-D operands."""
    a, b = _operands(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if a.shape[-1] != k_b:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align ({a.shape[-1]} != {k_b})")
    return ops.MatMul.apply(a, b)


def cat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: needs at least one tensor")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"cat: dtypes {sorted(map(str, dtypes))} differ; cast with .astype() first")
    return ops.Cat.apply(*tensors, axis=axis)


def stack(tensors, axis: int = 0) -> Tensor:
    """Join tensors along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"stack: all tensors need the same shape, got {sorted(shapes)}")
    return cat([t.unsqueeze(axis) for t in tensors], axis=axis)


def where(cond, a, b) -> Tensor:
    """Elementwise `a` where `cond` is true, else `b` (all three broadcast together)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)  # two Python numbers: floats take the default float dtype, as for one
    a, b = _operands(a, b, "where")
    cond = backend.asarray(_raw(cond), device=a.device).astype(bool)  # a numpy mask may meet cupy tensors
    return ops.Where.apply(a, b, cond=cond)


# ---------------------------------------------------------------- helpers


class _Released(Function):
    """Stands in for a Function whose saved arrays were freed by backward()."""

    def backward(self, gy):
        raise RuntimeError(
            "backward() through a part of the graph that an earlier backward() already used and freed; "
            "recompute the forward pass (or detach() the tensor you reuse)"
        )


_RELEASED = _Released()


def _owned(g, given: set):
    """`g` as an array the leaf may own: a copy when it is a read-only or shared view, or given to another leaf.

    Leaf gradients are what users and optimizers touch (`p.grad.data *= scale`), so they must be
    writable and must not alias another leaf's gradient; fresh arrays (the common case) pass as they are.
    """
    if g.base is not None or not getattr(g.flags, "writeable", True) or id(g) in given:
        g = g.copy()
    given.add(id(g))
    return g


def _toposort(root: Tensor) -> list:
    """Tensors of the graph below `root`, inputs before outputs; iterative, so any depth works."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            stack.extend((p, False) for p in t._ctx.parents if p.requires_grad and id(p) not in visited)
    return order


def _unbroadcast(g, shape: tuple):
    """Sum a broadcast gradient back to `shape`: the single place broadcasting is undone."""
    extra = g.ndim - len(shape)
    assert extra >= 0, f"gradient of shape {g.shape} for input of shape {shape}"
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    g = g.sum(axis=axes, keepdims=True) if axes else g
    g = g.reshape(shape)
    assert g.shape == tuple(shape), f"gradient of shape {g.shape} for input of shape {shape}"
    return g


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether an array of `shape` broadcasts to exactly `target`."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def _as_tensor(x, like: Tensor) -> Tensor:
    """A Python number or array as a constant tensor of `like`'s dtype and device."""
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype
    if isinstance(x, float) and not backend.is_float(dtype):
        dtype = _default_float
    return Tensor._make(backend.asarray(x, dtype=dtype, device=like.device), False, None)


def _operands(a, b, op_name: str) -> tuple:
    """Two operands as tensors of one dtype; a float32/float64 mix is an error, never an upcast."""
    if not isinstance(a, Tensor):
        a = _as_tensor(a, b)
    elif not isinstance(b, Tensor):
        b = _as_tensor(b, a)
    if a.dtype != b.dtype:
        fa, fb = backend.is_float(a.dtype), backend.is_float(b.dtype)
        if fa and fb:
            raise TypeError(f"{op_name}: dtypes {a.dtype} and {b.dtype} differ; cast one with .astype()")
        if fa:  # integer or bool operand with a float tensor: take the float dtype
            b = Tensor._make(b.data.astype(a.dtype), False, None)
        elif fb:
            a = Tensor._make(a.data.astype(b.dtype), False, None)
    return a, b


def _float_operands(a, b, op_name: str) -> tuple:
    """Like _operands, but integer operands become the default float dtype (int / int is a float)."""
    a, b = _operands(a, b, op_name)
    if not backend.is_float(a.dtype):
        a, b = (Tensor._make(t.data.astype(_default_float), False, None) for t in (a, b))
    return a, b


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _comparand(x, like: Tensor):
    """What a comparison with `like` compares against: arrays and lists on like's device, dtype kept."""
    if isinstance(x, Tensor):
        backend.check_same_device([like.data, x.data], "comparison")
        return x.data
    if backend.is_array(x) or isinstance(x, (list, tuple)):
        return backend.asarray(x, device=like.device)
    return x  # a Python or NumPy scalar


def _raw_index(index):
    if isinstance(index, tuple):
        return tuple(_raw(i) for i in index)
    return _raw(index)


def _shape_arg(shape: tuple) -> tuple:
    """Accept f(2, 3) and f((2, 3))."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


@functools.lru_cache(maxsize=1024)
def _axes_cached(axis, ndim: int, op_name: str) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"{op_name}: axis {a} is out of range for a {ndim}-d tensor")
    axes = tuple(sorted({a % ndim for a in axes})) if ndim else ()
    return axes


def _axes(axis, ndim: int, op_name: str) -> tuple:
    """`axis` (None, int, negative int or tuple) as a sorted tuple of non-negative axes."""
    return _axes_cached(tuple(axis) if isinstance(axis, list) else axis, ndim, op_name)


from tinygrad_gpt import ops  # noqa: E402  (ops needs Tensor and Function defined above)
