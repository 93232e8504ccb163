"""The reverse-mode autograd engine: grad mode, `Function` and `backward`.

A `Function` (the primitives are in ops.py and nn/functional.py) computes its output from raw
arrays in `forward` and saves what its `backward` needs. When any input requires a gradient, the
output Tensor keeps the Function as its `_ctx`; those links form the graph. `backward(root, grad)`
walks the graph once in reverse topological order, calls each Function's `backward`, sums
broadcast gradients back to each input's shape (here, in one place) and accumulates them at the
leaves. Then it drops the links so the saved arrays are freed.

This module stands below tensor.py and does not import it: tensor.py imports this module and
registers the Tensor class with `register_tensor_class`, which `Function.apply` uses to wrap its
outputs. So the engine can be read (and imported) on its own, and no import cycle exists.
"""

from __future__ import annotations

import contextlib

from tinygrad_gpt import backend

# ---------------------------------------------------------------- grad mode

_grad_enabled = True  # read by Function.apply; flipped by no_grad()


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

    def forward(self, *xs, **kwargs):
        """The output array from the input arrays; saves on `self` what backward needs."""
        raise NotImplementedError

    def backward(self, gy):
        """Gradients w.r.t. each input (None where not needed); may be broadcast-shaped."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **kwargs):
        """Run `forward` on the inputs' arrays; the output Tensor records this Function if any input needs grad."""
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
            return _Tensor._make(y, False, None)
        ctx.parents = inputs
        return _Tensor._make(y, True, ctx)


class _Released(Function):
    """Stands in for a Function whose saved arrays were freed by backward()."""

    def backward(self, gy):
        raise RuntimeError(
            "backward() through a part of the graph that an earlier backward() already used and freed; "
            "recompute the forward pass (or detach() the tensor you reuse)"
        )


RELEASED = _Released()


# ---------------------------------------------------------------- the backward pass


def backward(root, grad) -> None:
    """Accumulate d(root)/d(leaf) * grad into the `.grad` of every leaf below `root` that requires grad.

    Args:
        root: a Tensor that requires grad; grad: an array of root's shape, dtype and device.
    """
    grads, given = {id(root): grad}, set()
    for t in reversed(toposort(root)):
        g = grads.pop(id(t), None)
        ctx = t._ctx
        if ctx is None:  # a leaf: accumulate (never in place: the array may be shared)
            if g is not None:
                t.grad = _Tensor._make(_owned(g, given) if t.grad is None else t.grad.data + g, False, None)
            continue
        t._ctx = RELEASED  # free the saved arrays: the graph is used once
        if g is None:  # no gradient reached this node (a Function returned None for it)
            continue
        gxs = ctx.backward(g)
        if not isinstance(gxs, tuple):
            gxs = (gxs,)
        for parent, gx in zip(ctx.parents, gxs):
            if gx is None or not parent.requires_grad:
                continue
            if gx.shape != parent.data.shape:
                gx = unbroadcast(gx, parent.data.shape)
            assert gx.dtype == parent.data.dtype, (
                f"{type(ctx).__name__}.backward gave a {gx.dtype} gradient for a {parent.data.dtype} input"
            )
            key = id(parent)
            grads[key] = grads[key] + gx if key in grads else gx


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
    extra = g.ndim - len(shape)
    assert extra >= 0, f"gradient of shape {g.shape} for input of shape {shape}"
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    g = g.sum(axis=axes, keepdims=True) if axes else g
    g = g.reshape(shape)
    assert g.shape == tuple(shape), f"gradient of shape {g.shape} for input of shape {shape}"
    return g


def _owned(g, given: set):
    """`g` as an array the leaf may own: a copy when it is a read-only or shared view, or given to another leaf.

    Leaf gradients are what users and optimizers touch (`p.grad.data *= scale`), so they must be
    writable and must not alias another leaf's gradient; fresh arrays (the common case) pass as they are.
    """
    if g.base is not None or not getattr(g.flags, "writeable", True) or id(g) in given:
        g = g.copy()
    given.add(id(g))
    return g
