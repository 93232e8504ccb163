"""Free functions over Tensors that no Tensor method needs: einsum, zeros_like, ones_like (as torch.einsum, ...).

They live apart from tensor.py only to keep that file short; they are exported as
`tinygrad_gpt.einsum`, `tinygrad_gpt.zeros_like` and `tinygrad_gpt.ones_like`.
"""

from __future__ import annotations

from tinygrad_gpt import backend, ops, shapes
from tinygrad_gpt.tensor import Tensor

__all__ = ["einsum", "ones_like", "zeros_like"]


def einsum(subscripts: str, *operands) -> Tensor:
    """Einstein summation as numpy.einsum, differentiable: einsum("ij,jk->ik", a, b) is a @ b.

    Args:
        subscripts: one letter per axis of each operand, comma-separated, then "->" and the
            output's letters (without "->": the letters used once, sorted); no "...".
        operands: Tensors or arrays (torch's einsum("...", [a, b]) form works too).
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    tensors = [x if isinstance(x, Tensor) else Tensor(x) for x in operands]
    floats = {t.dtype for t in tensors if backend.is_float(t.dtype)}
    if len(floats) > 1:
        raise TypeError(f"einsum: dtypes {sorted(map(str, floats))} differ; cast with .astype() first")
    if floats:  # integer operands join the float ones
        tensors = [t if t.dtype in floats else Tensor._make(t.data.astype(*floats), False, None) for t in tensors]
    explicit = shapes.einsum_subscripts(subscripts, [t.shape for t in tensors])
    return ops.Einsum.apply(*tensors, subscripts=explicit)


def zeros_like(x, dtype=None, requires_grad: bool = False) -> Tensor:
    """Zeros of x's shape, dtype (unless `dtype`) and device; x is a Tensor or an array."""
    return _full_like(x, 0, dtype, requires_grad)


def ones_like(x, dtype=None, requires_grad: bool = False) -> Tensor:
    """Ones of x's shape, dtype (unless `dtype`) and device; x is a Tensor or an array."""
    return _full_like(x, 1, dtype, requires_grad)


def _full_like(x, value, dtype, requires_grad: bool) -> Tensor:
    like = x.data if isinstance(x, Tensor) else backend.asarray(x)
    dtype = backend.as_dtype(dtype) if dtype is not None else like.dtype
    xp = backend.get_array_module(like)
    return Tensor(xp.full(like.shape, value, dtype=dtype), dtype=dtype, requires_grad=requires_grad)
