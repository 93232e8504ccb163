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
