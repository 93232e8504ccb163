"""Layers: Modules that hold parameters (Linear, Embedding, LayerNorm) or a mode (Dropout), and activations.

Parameters are created in the default float dtype (`set_default_dtype`) from the library's seeded
generator (`manual_seed`), with PyTorch's default initialisation; GPT overrides it with GPT-2's.
"""

from __future__ import annotations

import math

from tinygrad_gpt import backend
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.nn.module import Module
from tinygrad_gpt.tensor import Tensor, get_default_dtype


def _uniform(shape: tuple, bound: float) -> Tensor:
    """A parameter drawn from U(-bound, bound)."""
    data = backend.rand(shape, get_default_dtype())
    data *= 2 * bound
    data -= bound
    return Tensor(data, requires_grad=True)


def _check_size(layer: str, **sizes) -> None:
    for name, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{layer}: {name} must be a positive integer, got {n!r}")


class Linear(Module):
    """y = x @ W + b with W stored as (in_features, out_features), GPT-2's layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        _check_size("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # torch's default: U(-1/sqrt(in), 1/sqrt(in))
        self.weight = _uniform((in_features, out_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)"""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of `num_embeddings` vectors of size `embedding_dim`, looked up by integer index."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        _check_size("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Tensor.randn(num_embeddings, embedding_dim, requires_grad=True)  # torch's N(0, 1)

    def forward(self, idx) -> Tensor:
        """integer array or Tensor of any shape -> idx.shape + (embedding_dim,)"""
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise over the last axis to zero mean and unit variance, then scale (and shift)."""

    def __init__(self, n: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        _check_size("LayerNorm", n=n)
        self.n, self.eps = n, eps
        self.weight = Tensor.ones(n, requires_grad=True)
        self.bias = Tensor.zeros(n, requires_grad=True) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """(..., n) -> (..., n)"""
        bias = self.bias
        if bias is None:  # F.layer_norm always shifts: shift by a constant zero
            xp = backend.get_array_module(self.weight.data)
            bias = Tensor(xp.zeros_like(self.weight.data), dtype=self.weight.dtype, device=self.weight.device)
        return F.layer_norm(x, self.weight, bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"({self.n},), eps={self.eps}, bias={self.bias is not None}"


class Dropout(Module):
    """Zero each element with probability p while training (scaling the rest by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU(Module):
    """GPT-2's GELU activation (tanh approximation)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class RMSNorm(Module):
    """Scale each vector over the last axis to unit root mean square, then by a learned gain (no bias)."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        _check_size("RMSNorm", n=n)
        self.n, self.eps = n, eps
        self.weight = Tensor.ones(n, requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        """(..., n) -> (..., n)"""
        return F.rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"({self.n},), eps={self.eps}"


class ReLU2(Module):
    """relu(x)^2, the speedrun's MLP activation."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu2(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)
