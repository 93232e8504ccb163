"""Shape and axis arguments: the checks and conversions that Tensor methods share (no arrays involved)."""

from __future__ import annotations

import functools


def broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether an array of `shape` broadcasts to exactly `target`."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def shape_arg(shape: tuple) -> tuple:
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


def axes(axis, ndim: int, op_name: str) -> tuple:
    """`axis` (None, int, negative int or tuple) as a sorted tuple of non-negative axes."""
    return _axes_cached(tuple(axis) if isinstance(axis, list) else axis, ndim, op_name)


def einsum_subscripts(subscripts: str, operand_shapes: list) -> str:
    """`subscripts` ('ij,jk', 'ij,jk->ik', spaces allowed) checked against the operands, in the explicit form."""
    text = subscripts.replace(" ", "")
    if "." in text:
        raise ValueError(f"einsum: {subscripts!r}: '...' is not supported; name every axis with a letter")
    inputs, arrow, out = text.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operand_shapes):
        raise ValueError(f"einsum: {subscripts!r} names {len(terms)} operand(s), got {len(operand_shapes)}")
    sizes = {}
    for term, shape in zip(terms, operand_shapes):
        if not (term + out).isascii() or not all(c.isalpha() for c in term + out):
            raise ValueError(f"einsum: {subscripts!r}: subscripts are letters a-z and A-Z")
        if len(term) != len(shape):
            raise ValueError(f"einsum: {term!r} has {len(term)} letter(s) for an operand of shape {tuple(shape)}")
        for c, n in zip(term, shape):
            if sizes.setdefault(c, n) != n:
                raise ValueError(f"einsum: {c!r} is {sizes[c]} and {n} long in {subscripts!r} "
                                 f"(shapes {', '.join(str(tuple(s)) for s in operand_shapes)})")
    if not arrow:  # implicit output: the letters used once, sorted, as NumPy does
        letters = "".join(terms)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(set(out)) != len(out) or not set(out) <= set(sizes):
        raise ValueError(f"einsum: {subscripts!r}: each output letter must appear once, and in an input")
    return ",".join(terms) + "->" + out
