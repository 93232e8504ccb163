"""Tensor: an n-dimensional array that records the operations applied to it, for reverse-mode autograd.

Creation, conversion, operators and composite ops (mean, var, min, std, ...) live here; to keep
this file short, the movement methods (reshape, permute, indexing, split) are a mixin in
movement.py, and the free functions no Tensor method needs (einsum, zeros_like) are in
functions.py. Each primitive op is a `Function` in ops.py, and the backward pass is autograd.py's.
Tensor methods check their arguments and raise ValueError/TypeError naming the shapes, so
Functions can assume valid input.
"""

from __future__ import annotations

import math
import operator

from tinygrad_gpt import autograd, backend, ops, shapes
from tinygrad_gpt.autograd import Function, is_grad_enabled, no_grad
from tinygrad_gpt.backend import get_default_dtype, set_default_dtype
from tinygrad_gpt.movement import MovementMethods

__all__ = ["Function", "Tensor", "cat", "get_default_dtype", "is_grad_enabled", "matmul", "no_grad",
           "set_default_dtype", "stack", "where"]

# ---------------------------------------------------------------- method factories (operators, elementwise)


def _binary(function, name: str, to_float: bool = False) -> tuple:
    """The operator methods (self op other, other op self) that apply primitive `function` to two operands.

    A Python number or array operand becomes a constant of the tensor's dtype; with `to_float`,
    integer operands become the default float dtype first.
    """

    def method(self, other):
        return function.apply(*(_float_operands if to_float else _operands)(self, other, name))

    def reflected(self, other):
        return function.apply(*(_float_operands if to_float else _operands)(other, self, name))

    stem = "truediv" if name == "div" else name  # the name in error messages is the short one
    method.__name__, reflected.__name__ = f"__{stem}__", f"__r{stem}__"
    method.__doc__ = f"Elementwise {name} of self and other (broadcasting); other may be a number or an array."
    reflected.__doc__ = f"Elementwise {name} of other and self (broadcasting), for `number op tensor`."
    return method, reflected


def _unary(function):
    """An elementwise method applying the one-input primitive `function`; help() shows the Function's docstring."""

    def method(self):
        return function.apply(self)

    method.__name__, method.__doc__ = function.__name__.lower(), f"Elementwise {function.__doc__}"
    return method


def _comparison(compare, symbol: str):
    """A comparison method: a boolean tensor without gradient."""

    def method(self, other):
        if not isinstance(other, (Tensor, int, float, bool, list, tuple)) and not hasattr(other, "dtype"):
            return NotImplemented  # t == None, t == "a": Python's fallback (identity for ==)
        return Tensor._make(compare(self.data, _comparand(other, self)), False, None)

    method.__doc__ = f"Elementwise {symbol}, a boolean tensor without gradient."
    return method


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


class Tensor(MovementMethods):
    """An n-dimensional array that records the operations applied to it for reverse-mode autograd."""

    __slots__ = {  # name -> what help() shows
        "data": "The values: a numpy array, or a cupy array on the GPU.",
        "grad": "The gradient backward() accumulated (a Tensor of this shape), or None.",
        "requires_grad": "Whether backward() computes a gradient for this tensor.",
        "_ctx": "The Function that made this tensor, while the graph is recorded (None for leaves).",
        "_retains_grad": "Set by retain_grad(): backward() stores .grad here although this is no leaf.",
        "_frozen": "Set by requires_grad_(False) on a parameter: Modules still list it (state_dict keeps it).",
        "__weakref__": None,
    }
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
            dtype = get_default_dtype()  # floats become the default float dtype, so nothing upcasts later
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
        """A tensor of zeros of `shape` (default float dtype unless `dtype`)."""
        shape = shapes.shape_arg(shape)
        xp = backend.xp_for(backend.DEFAULT_DEVICE)
        return Tensor(xp.zeros(shape, dtype=dtype or get_default_dtype()), requires_grad=requires_grad)

    @staticmethod
    def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
        """A tensor of ones of `shape` (default float dtype unless `dtype`)."""
        shape = shapes.shape_arg(shape)
        xp = backend.xp_for(backend.DEFAULT_DEVICE)
        return Tensor(xp.ones(shape, dtype=dtype or get_default_dtype()), requires_grad=requires_grad)

    @staticmethod
    def randn(*shape, dtype=None, requires_grad=False) -> Tensor:
        """Standard normal samples from the library's seeded generator (`manual_seed`)."""
        data = backend.randn(shapes.shape_arg(shape), dtype or get_default_dtype())
        return Tensor(data, requires_grad=requires_grad, dtype=dtype)

    @staticmethod
    def rand(*shape, dtype=None, requires_grad=False) -> Tensor:
        """Uniform samples in [0, 1) from the library's seeded generator (`manual_seed`)."""
        data = backend.rand(shapes.shape_arg(shape), dtype or get_default_dtype())
        return Tensor(data, requires_grad=requires_grad, dtype=dtype)

    @staticmethod
    def arange(*args, dtype=None) -> Tensor:
        """Evenly spaced values, as numpy.arange(start, stop, step)."""
        return Tensor(backend.xp_for(backend.DEFAULT_DEVICE).arange(*args, dtype=dtype))

    # ------------------------------------------------------------ properties

    @property
    def shape(self) -> tuple:
        """The size of each axis, as a tuple."""
        return tuple(self.data.shape)

    @property
    def dtype(self):
        """The element dtype (a numpy dtype)."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(self.data.size)

    @property
    def device(self) -> str:
        """'cpu' or 'cuda': where the data lives."""
        return backend.device_of(self.data)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def grad_fn(self) -> Function | None:
        """The Function that made this tensor (None for leaves and without a graph); its `.parents` are the inputs."""
        return self._ctx

    @property
    def is_leaf(self) -> bool:
        """True for tensors not made by a recorded op (your inputs and parameters): backward fills their .grad."""
        return self._ctx is None

    def __repr__(self) -> str:
        values = str(backend.to_numpy(self.data)).replace("\n", "\n       ")
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({values}, shape={self.shape}, dtype={self.dtype}, device={self.device}{grad})"

    # ------------------------------------------------------------ conversion

    def numpy(self):
        """The values as a host numpy array (a copy when on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.size != 1:  # `if t == u:` on many elements: say what to write instead
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any() or .all()")
        return bool(self.item())

    def tolist(self):
        """The values as nested Python lists."""
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
        """This tensor as `dtype` (itself when it already has it); differentiable."""
        dtype = backend.as_dtype(dtype)
        return self if dtype == self.dtype else ops.Cast.apply(self, dtype=dtype)

    def float(self) -> Tensor:
        """This tensor as float32."""
        return self.astype("float32")

    def double(self) -> Tensor:
        """This tensor as float64."""
        return self.astype("float64")

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set whether backward() computes a gradient for this tensor (float tensors only); returns self."""
        if requires_grad and not backend.is_float(self.dtype):
            raise TypeError(f"only float tensors can require gradients, got dtype {self.dtype}")
        if not requires_grad and self.requires_grad and self._ctx is None:
            self._frozen = True  # a frozen parameter: Module.parameters() and state_dict() keep it
        self.requires_grad = bool(requires_grad)
        return self

    # ------------------------------------------------------------ autograd

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into the `.grad` of every leaf that requires grad.

        Args:
            grad: d(loss)/d(self), of self's shape; may be omitted for a one-element tensor (it is 1).
            retain_graph: keep the graph, so a second backward() or `draw_graph` can use it; by
                default it is freed, and a second backward() through it is an error.
        """
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

        autograd.backward(self, grad, retain_graph=retain_graph)

    def retain_grad(self) -> Tensor:
        """Make backward() store this (intermediate) tensor's gradient in `.grad` too; returns self."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad (it gets no gradient)")
        if self._ctx is not None:  # leaves get their .grad anyway
            self._retains_grad = True
        return self

    # ------------------------------------------------------------ arithmetic (operands broadcast)

    __add__, __radd__ = _binary(ops.Add, "add")
    __sub__, __rsub__ = _binary(ops.Sub, "sub")
    __mul__, __rmul__ = _binary(ops.Mul, "mul")
    __truediv__, __rtruediv__ = _binary(ops.Div, "div", to_float=True)  # int / int is a float
    __pow__, __rpow__ = _binary(ops.Pow, "pow")

    def __matmul__(self, other):
        """self @ other, see `matmul`."""
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(_as_tensor(other, self), self)

    def __neg__(self):
        """-self."""
        return ops.Neg.apply(self)

    # comparisons give boolean tensors without gradients
    __lt__, __le__ = _comparison(operator.lt, "<"), _comparison(operator.le, "<=")
    __gt__, __ge__ = _comparison(operator.gt, ">"), _comparison(operator.ge, ">=")
    __eq__, __ne__ = _comparison(operator.eq, "=="), _comparison(operator.ne, "!=")
    eq, ne = _comparison(operator.eq, "== (the same as the == operator)"), _comparison(operator.ne, "!=")

    # NOTE: hashed by identity although == is elementwise (as torch); `t in list_of_tensors` uses ==: use `is`
    __hash__ = object.__hash__

    # ------------------------------------------------------------ elementwise

    exp, log, sqrt, tanh = _unary(ops.Exp), _unary(ops.Log), _unary(ops.Sqrt), _unary(ops.Tanh)
    sigmoid, relu, gelu, abs = _unary(ops.Sigmoid), _unary(ops.Relu), _unary(ops.Gelu), _unary(ops.Abs)
    sin, cos, log1p = _unary(ops.Sin), _unary(ops.Cos), _unary(ops.Log1p)

    def clip(self, min=None, max=None):
        """Values limited to [min, max]; either bound may be None."""
        if min is None and max is None:
            raise ValueError("clip: give min, max or both")
        return ops.Clip.apply(self, lo=min, hi=max)

    def maximum(self, other):
        """Elementwise maximum with `other` (broadcasting); ties split the gradient."""
        return ops.Maximum.apply(*_operands(self, other, "maximum"))

    def minimum(self, other):
        """Elementwise minimum with `other` (broadcasting); ties split the gradient."""
        return ops.Minimum.apply(*_operands(self, other, "minimum"))

    # ------------------------------------------------------------ reductions

    def sum(self, axis=None, keepdims=False):
        """Sum over `axis` (None: all axes; an int or a tuple), dropping those axes unless `keepdims`."""
        return ops.Sum.apply(self, axis=shapes.axes(axis, self.ndim, "sum"), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        """Mean over `axis` (None: all axes; an int or a tuple), dropping those axes unless `keepdims`."""
        axes = shapes.axes(axis, self.ndim, "mean")
        n = math.prod(self.shape[a] for a in axes)
        return ops.Sum.apply(self, axis=axes, keepdims=keepdims) * (1.0 / n if n else math.nan)  # empty: NaN, as NumPy

    def max(self, axis=None, keepdims=False):
        """Maximum over `axis` (None: all, an int or a tuple), dropping those axes unless `keepdims`; ties share."""
        if self.size == 0:
            raise ValueError(f"max: empty tensor of shape {self.shape} has no maximum")
        return ops.Max.apply(self, axis=shapes.axes(axis, self.ndim, "max"), keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        """Minimum over `axis` (None: all, an int or a tuple), dropping those axes unless `keepdims`; ties share."""
        if self.size == 0:
            raise ValueError(f"min: empty tensor of shape {self.shape} has no minimum")
        if not backend.is_float(self.dtype):  # no gradient, and -x would wrap around for unsigned integers
            return Tensor._make(self.data.min(axis=shapes.axes(axis, self.ndim, "min"), keepdims=keepdims), False, None)
        return -(-self).max(axis=axis, keepdims=keepdims)  # min(x) = -max(-x): ties share the gradient, as in max

    def var(self, axis=None, keepdims=False, ddof=0):
        """Variance as NumPy computes it (ddof=0 by default; torch's default is ddof=1)."""
        axes = shapes.axes(axis, self.ndim, "var")
        n = math.prod(self.shape[a] for a in axes)
        if n - ddof <= 0:
            raise ValueError(f"var: {n} elements along axis {axis} with ddof={ddof} leaves no degrees of freedom")
        centered = self - self.mean(axis=axes, keepdims=True)
        return (centered * centered).sum(axis=axes, keepdims=keepdims) * (1.0 / (n - ddof))

    def std(self, axis=None, keepdims=False, ddof=0):
        """Standard deviation, sqrt(var): NumPy's ddof=0 by default (torch's default is ddof=1)."""
        return self.var(axis=axis, keepdims=keepdims, ddof=ddof).sqrt()

    def cumsum(self, axis: int) -> Tensor:
        """Running sums along `axis` (required, as torch's `dim`); the shape is kept."""
        if not isinstance(axis, int):
            raise TypeError(f"cumsum: axis must be an int, got {axis!r}")
        if self.ndim == 0:
            return self
        (axis,) = shapes.axes(axis, self.ndim, "cumsum")
        return ops.Cumsum.apply(self, axis=axis)

    def argmax(self, axis=None) -> Tensor:
        """Indices of the maxima along `axis` (of the flattened tensor when None); no gradient."""
        return Tensor._make(self.data.argmax(axis=axis), False, None)

    # ------------------------------------------------------------ selection and softmax

    def masked_fill(self, mask, value: float):
        """`value` where `mask` is true, self elsewhere (mask broadcasts to self's shape)."""
        mask_shape = tuple(_raw(mask).shape)
        if not shapes.broadcasts_to(mask_shape, self.shape):
            raise ValueError(f"masked_fill: mask of shape {mask_shape} does not broadcast to tensor shape {self.shape}")
        return where(mask, value, self)

    def softmax(self, axis: int = -1):
        """exp(x) / sum(exp(x)) along `axis`, computed stably."""
        return ops.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis: int = -1):
        """log(softmax(x)) along `axis`, computed stably."""
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


def _as_tensor(x, like: Tensor) -> Tensor:
    """A Python number or array as a constant tensor of `like`'s dtype and device."""
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype
    if isinstance(x, float) and not backend.is_float(dtype):
        dtype = get_default_dtype()
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
        a, b = (Tensor._make(t.data.astype(get_default_dtype()), False, None) for t in (a, b))
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


autograd.register_tensor_class(Tensor)  # Function.apply wraps its outputs in Tensors
