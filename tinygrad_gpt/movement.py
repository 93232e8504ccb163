"""Movement methods of Tensor: reshape, permute, expand, indexing and split (tinygrad's "movement ops").

They are a mixin that `Tensor` inherits, kept in their own file so tensor.py stays short: each
checks its arguments against `self.shape` and applies one primitive of ops.py, and none needs the
Tensor class itself (the outputs come from `Function.apply`).
"""

from __future__ import annotations

from tinygrad_gpt import ops, shapes


class MovementMethods:
    """The shape-changing methods of Tensor (a mixin: Tensor is the only class that inherits it)."""

    __slots__ = ()

    @property
    def T(self):
        """The axes reversed (the transpose of a matrix)."""
        return self.permute(*reversed(range(self.ndim)))

    def reshape(self, *shape):
        """The same elements in a new shape (one entry may be -1); f(2, 3) and f((2, 3)) both work."""
        shape = shapes.shape_arg(shape)
        if shape == self.shape:
            return self
        return ops.Reshape.apply(self, shape=shape)

    def view(self, *shape):
        """Same as reshape."""
        return self.reshape(*shape)

    def flatten(self):
        """The elements as a 1-D tensor."""
        return self.reshape(-1)

    def permute(self, *axes):
        """The axes reordered: axis i of the result is axis axes[i] of this tensor."""
        axes = shapes.shape_arg(axes)
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
        """This tensor broadcast to `shape` (size-1 axes repeated, leading axes added)."""
        shape = shapes.shape_arg(shape)
        if shape == self.shape:
            return self
        if not shapes.broadcasts_to(self.shape, shape):
            raise ValueError(f"expand: shape {self.shape} cannot be broadcast to {shape}")
        return ops.Expand.apply(self, shape=shape)

    broadcast_to = expand

    def unsqueeze(self, axis: int):
        """A new axis of size 1 inserted at `axis`."""
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise ValueError(f"unsqueeze: axis {axis} is out of range for shape {self.shape}")
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, axis: int):
        """Axis `axis`, which must have size 1, removed."""
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


def _raw_index(index):
    """An index with its Tensors replaced by their arrays (NumPy's indexing rules apply to the rest)."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, MovementMethods) else i for i in index)
    return index.data if isinstance(index, MovementMethods) else index
