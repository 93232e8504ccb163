"""The reverse-mode autograd engine: grad mode, `Function` and `backward`.

A `Function` (the primitives are in ops.py and nn/functional.py) computes its output from raw
arrays in `forward` and saves what its `backward` needs. When any input requires a gradient, the
output Tensor keeps the Function as its `_ctx`; those links form the graph. `backward(root, grad)`
walks the graph once in reverse topological order, calls each Function's `backward`, sums
broadcast gradients back to each input's shape (here, in one place) and accumulates them at the
leaves (and at tensors that asked for it with `retain_grad()`). Then it drops the links so the saved
arrays are freed, unless `retain_graph=True` keeps them for another backward or for `draw_graph`.

Mistakes in a Function (a wrong number of gradients, a wrong shape or dtype) raise errors that name
the op, the input and the shapes: they are checks, not asserts, so they hold under `python -O` too.

This module stands below tensor.py and does not import it: tensor.py imports this module and
registers the Tensor class with `register_tensor_class`, which `Function.apply` uses to wrap its
outputs. So the engine can be read (and imported) on its own, and no import cycle exists.
"""

from __future__ import annotations

import contextlib

from tinygrad_gpt import backend, shapes

# ---------------------------------------------------------------- grad mode

_grad_enabled = True  # read by Function.apply; flipped by no_grad()


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) under which ops record no graph."""

    def __init__(self):
        self._prev = []  # a stack: as a decorator one instance is entered again by nested (recursive) calls

    def __enter__(self):
        global _grad_enabled
        self._prev.append(_grad_enabled)
        _grad_enabled = False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev.pop()
        return False


def is_grad_enabled() -> bool:
    """Whether ops record the graph now (False inside `no_grad()`)."""
    return _grad_enabled


# ---------------------------------------------------------------- Function

_Tensor = None  # the Tensor class, registered by tensor.py (which imports this module, not the reverse)


def register_tensor_class(cls) -> None:
    """Tell the engine which class wraps arrays (called once, by tensor.py); it needs `cls._make`."""
    global _Tensor
    _Tensor = cls


class Function:
    """A differentiable primitive: `forward` and `backward` on raw arrays."""

    parents: tuple = ()
    needs_grad: tuple = ()
    retain_graph: bool = False  # set while a backward(retain_graph=True) calls this one: saved arrays must survive

    def forward(self, *xs, **kwargs):
        """The output array from the input arrays; saves on `self` what backward needs."""
        raise NotImplementedError

    def backward(self, gy):
        """Gradients w.r.t. each input (None where not needed); may be broadcast-shaped."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **kwargs):
        """Run `forward` on the inputs' arrays; the output Tensor records this Function if any input needs grad.

        Inputs may be Tensors, arrays or Python numbers; the others become constants (floats take
        the dtype of the first float Tensor input, as operators do).
        """
        ctx = cls()
        inputs = as_tensors(inputs, f"{cls.__name__}.apply")
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
            return _Tensor._make(y, False, None)
        ctx.parents = inputs
        return _Tensor._make(y, True, ctx)

    def __repr__(self) -> str:
        """The op's name and its inputs' shapes and dtypes: `Mul((2, 3) float32, (3,) float32)`."""
        inputs = ", ".join(f"{tuple(p.data.shape)} {p.data.dtype}" for p in self.parents)
        return f"{type(self).__name__}({inputs})"


def as_tensors(inputs: tuple, op_name: str) -> tuple:
    """Inputs as Tensors: numbers and arrays become constants (floats in the first float Tensor's dtype)."""
    if all(isinstance(t, _Tensor) for t in inputs):
        return inputs
    like = next((t for t in inputs if isinstance(t, _Tensor) and backend.is_float(t.dtype)), None)
    if like is None:
        like = next((t for t in inputs if isinstance(t, _Tensor)), None)
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, _Tensor):
            out.append(x)
            continue
        if not (isinstance(x, (int, float, list, tuple)) or backend.is_array(x) or hasattr(x, "dtype")):
            raise TypeError(f"{op_name}: input {i} is a {type(x).__name__}, not a Tensor, array or number")
        if like is None:
            out.append(_Tensor(x))  # no Tensor input at all: the usual conversion
            continue
        data = backend.asarray(x, device=like.device)
        if backend.is_float(like.dtype) and (data.dtype.kind in "fc" or isinstance(x, (int, float))):
            data = data.astype(like.dtype, copy=False)  # a float constant takes the tensor's float dtype
        out.append(_Tensor._make(data, False, None))
    return tuple(out)


class _Released(Function):
    """Stands in for a Function whose saved arrays were freed by backward()."""

    def backward(self, gy):
        raise RuntimeError(
            "backward() through a part of the graph that an earlier backward() already used and freed; "
            "recompute the forward pass, detach() the tensor you reuse, or pass retain_graph=True to the "
            "first backward()"
        )

    def __repr__(self) -> str:
        return "<released by backward(); use backward(retain_graph=True) to keep the graph>"


RELEASED = _Released()


# ---------------------------------------------------------------- the backward pass


def backward(root, grad, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) * grad into the `.grad` of every leaf below `root` that requires grad.

    Tensors that called `retain_grad()` get their `.grad` too. Afterwards the graph is freed unless
    `retain_graph`, so a second backward through it is an error.

    Args:
        root: a Tensor that requires grad; grad: an array of root's shape, dtype and device.
        retain_graph: keep the graph (and the arrays its Functions saved) for another backward.
    """
    grads, given = {id(root): grad}, set()
    for t in reversed(toposort(root)):
        g = grads.pop(id(t), None)
        ctx = t._ctx
        if ctx is None or getattr(t, "_retains_grad", False):  # accumulate (never in place: may be shared)
            if g is not None:
                t.grad = _Tensor._make(_owned(g, given) if t.grad is None else t.grad.data + g, False, None)
            if ctx is None:
                continue
        if not retain_graph:
            t._ctx = RELEASED  # free the saved arrays: the graph is used once
        if g is None:  # no gradient reached this node (a Function returned None for it)
            continue
        if retain_graph:
            ctx.retain_graph = True
        gxs = ctx.backward(g)
        gxs = gxs if isinstance(gxs, (tuple, list)) else (gxs,)
        if len(gxs) != len(ctx.parents):
            raise ValueError(f"{type(ctx).__name__}.backward returned {len(gxs)} gradient(s) for "
                             f"{len(ctx.parents)} input(s); return one per input (None where not needed)")
        for i, (parent, gx) in enumerate(zip(ctx.parents, gxs)):
            if gx is None or not parent.requires_grad:
                continue
            gx = _checked_gradient(gx, parent, ctx, i)
            key = id(parent)
            grads[key] = grads[key] + gx if key in grads else gx


def _checked_gradient(gx, parent, ctx, i: int):
    """`gx` summed to the input's shape, or an error naming the op, the input and the shapes."""
    where = f"{type(ctx).__name__}.backward: the gradient for input {i}"
    if isinstance(gx, _Tensor) or not (hasattr(gx, "shape") and hasattr(gx, "dtype")):  # an array or NumPy scalar
        raise TypeError(f"{where} is a {type(gx).__name__}; backward works on raw arrays (return an array or None)")
    shape = tuple(parent.data.shape)
    if gx.shape != shape:
        if not shapes.broadcasts_to(shape, tuple(gx.shape)):
            raise ValueError(f"{where} has shape {tuple(gx.shape)}, but that input has shape {shape}")
        gx = unbroadcast(gx, shape)
    if gx.dtype != parent.data.dtype:
        raise TypeError(f"{where} has dtype {gx.dtype}, but that input has dtype {parent.data.dtype}")
    return gx


def toposort(root) -> list:
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


def unbroadcast(g, shape: tuple):
    """Sum a broadcast gradient back to `shape`: the single place broadcasting is undone."""
    if not shapes.broadcasts_to(tuple(shape), tuple(g.shape)):
        raise ValueError(f"unbroadcast: a gradient of shape {tuple(g.shape)} does not come from shape {tuple(shape)}")
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    g = g.sum(axis=axes, keepdims=True) if axes else g
    return g.reshape(shape)


def _owned(g, given: set):
    """`g` as an array the leaf may own: a copy when it is a read-only or shared view, or given to another leaf.

    Leaf gradients are what users and optimizers touch (`p.grad.data *= scale`), so they must be
    writable and must not alias another leaf's gradient; fresh arrays (the common case) pass as they are.
    """
    if g.base is not None or not getattr(g.flags, "writeable", True) or id(g) in given:
        g = g.copy()
    given.add(id(g))
    return g
