"""Reference tests: forward values and gradients of every op match PyTorch on the same float64 inputs."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import compare_with_torch, requires_torch
from tinygrad_gpt import Tensor, cat, einsum, matmul, nn, ones_like, stack, where, zeros_like
from tinygrad_gpt.nn import functional as F

pytestmark = requires_torch

rng = np.random.default_rng(1234)


def randn(*shape):
    return rng.standard_normal(shape)


def positive(*shape):
    return rng.uniform(0.2, 2.0, shape)


def away_from_zero(*shape):
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def _torch():
    import torch

    return torch


# name -> (our_fn, torch_fn, arrays). Broadcast pairs, 0-d and size-1 operands are spread across cases.
CASES = {
    "add broadcast": (lambda a, b: a + b, lambda a, b: a + b, [randn(2, 3), randn(3)]),
    "add 0-d": (lambda a, b: a + b, lambda a, b: a + b, [randn(), randn(2, 1)]),
    "radd scalar": (lambda a: 2.5 + a, lambda a: 2.5 + a, [randn(2, 3)]),
    "sub broadcast": (lambda a, b: a - b, lambda a, b: a - b, [randn(2, 1, 3), randn(4, 1)]),
    "rsub scalar": (lambda a: 1.5 - a, lambda a: 1.5 - a, [randn(3)]),
    "mul broadcast": (lambda a, b: a * b, lambda a, b: a * b, [randn(1, 3), randn(2, 1)]),
    "rmul scalar": (lambda a: 3 * a, lambda a: 3 * a, [randn(2, 2)]),
    "div broadcast": (lambda a, b: a / b, lambda a, b: a / b, [randn(2, 3), away_from_zero(3)]),
    "rdiv scalar": (lambda a: 2.0 / a, lambda a: 2.0 / a, [away_from_zero(4)]),
    "pow tensor": (lambda a, b: a**b, lambda a, b: a**b, [positive(2, 3), randn(3)]),
    "pow scalar": (lambda a: a**3, lambda a: a**3, [randn(2, 3)]),
    "pow fractional": (lambda a: a**0.5, lambda a: a**0.5, [positive(3)]),
    "rpow scalar": (lambda a: 2.0**a, lambda a: 2.0**a, [randn(3)]),
    "neg": (lambda a: -a, lambda a: -a, [randn(2, 3)]),
    "exp": (lambda a: a.exp(), lambda a: a.exp(), [randn(2, 3)]),
    "log": (lambda a: a.log(), lambda a: a.log(), [positive(2, 3)]),
    "sqrt": (lambda a: a.sqrt(), lambda a: a.sqrt(), [positive(2, 3)]),
    "tanh": (lambda a: a.tanh(), lambda a: a.tanh(), [randn(2, 3)]),
    "sigmoid": (lambda a: a.sigmoid(), lambda a: a.sigmoid(), [randn(2, 3) * 4]),
    "relu": (lambda a: a.relu(), lambda a: a.relu(), [away_from_zero(2, 3)]),
    "relu at 0": (lambda a: a.relu(), lambda a: a.relu(), [np.array([-1.0, 0.0, 1.0])]),
    "gelu": (lambda a: a.gelu(), lambda a: _torch().nn.functional.gelu(a, approximate="tanh"), [randn(3, 4) * 3]),
    "abs": (lambda a: a.abs(), lambda a: a.abs(), [away_from_zero(2, 3)]),
    "abs at 0": (lambda a: a.abs(), lambda a: a.abs(), [np.array([-1.0, 0.0, 1.0])]),
    "clip": (lambda a: a.clip(-0.5, 0.7), lambda a: a.clamp(-0.5, 0.7), [randn(3, 4)]),
    "clip min": (lambda a: a.clip(min=0.1), lambda a: a.clamp(min=0.1), [randn(3, 4)]),
    "clip max": (lambda a: a.clip(max=0.1), lambda a: a.clamp(max=0.1), [randn(3, 4)]),
    "maximum": (lambda a, b: a.maximum(b), lambda a, b: _torch().maximum(a, b), [randn(2, 3), randn(3)]),
    "minimum": (lambda a, b: a.minimum(b), lambda a, b: _torch().minimum(a, b), [randn(2, 3), randn(2, 1)]),
    "maximum ties": (lambda a, b: a.maximum(b), lambda a, b: _torch().maximum(a, b),
                     [np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 3.0])]),
    "minimum ties": (lambda a, b: a.minimum(b), lambda a, b: _torch().minimum(a, b),
                     [np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 3.0])]),
    "maximum scalar": (lambda a: a.maximum(0.25), lambda a: a.clamp(min=0.25), [randn(5)]),
    # reductions: axis int / negative / tuple / None, keepdims
    "sum all": (lambda a: a.sum(), lambda a: a.sum(), [randn(2, 3)]),
    "sum axis": (lambda a: a.sum(axis=1), lambda a: a.sum(dim=1), [randn(2, 3, 4)]),
    "sum neg axis keepdims": (lambda a: a.sum(axis=-1, keepdims=True), lambda a: a.sum(dim=-1, keepdim=True),
                              [randn(2, 3)]),
    "sum tuple": (lambda a: a.sum(axis=(0, 2)), lambda a: a.sum(dim=(0, 2)), [randn(2, 3, 4)]),
    "sum 0-d": (lambda a: a.sum(), lambda a: a.sum(), [randn()]),
    "mean all": (lambda a: a.mean(), lambda a: a.mean(), [randn(2, 3)]),
    "mean axis keepdims": (lambda a: a.mean(axis=0, keepdims=True), lambda a: a.mean(dim=0, keepdim=True),
                           [randn(2, 3)]),
    "mean tuple neg": (lambda a: a.mean(axis=(-1, 0)), lambda a: a.mean(dim=(-1, 0)), [randn(2, 3, 4)]),
    "max all": (lambda a: a.max(), lambda a: _torch().amax(a), [randn(2, 3)]),
    "max axis": (lambda a: a.max(axis=1), lambda a: _torch().amax(a, dim=1), [randn(2, 3, 4)]),
    "max tuple keepdims": (lambda a: a.max(axis=(0, -1), keepdims=True),
                           lambda a: _torch().amax(a, dim=(0, -1), keepdim=True), [randn(2, 3, 4)]),
    "max ties share": (lambda a: a.max(axis=1), lambda a: _torch().amax(a, dim=1),
                       [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])]),
    "var all": (lambda a: a.var(), lambda a: a.var(correction=0), [randn(2, 3)]),
    "var axis keepdims": (lambda a: a.var(axis=-1, keepdims=True), lambda a: a.var(dim=-1, correction=0, keepdim=True),
                          [randn(2, 5)]),
    "var tuple": (lambda a: a.var(axis=(0, 2)), lambda a: a.var(dim=(0, 2), correction=0), [randn(2, 3, 4)]),
    "var ddof=1": (lambda a: a.var(axis=0, ddof=1), lambda a: a.var(dim=0), [randn(4, 3)]),
    # shape
    "reshape -1": (lambda a: a.reshape(-1, 2), lambda a: a.reshape(-1, 2), [randn(2, 3, 2)]),
    "reshape tuple": (lambda a: a.reshape((6,)), lambda a: a.reshape((6,)), [randn(2, 3)]),
    "transpose": (lambda a: a.transpose(0, 2), lambda a: a.transpose(0, 2), [randn(2, 3, 4)]),
    "transpose default": (lambda a: a.transpose(), lambda a: a.transpose(-2, -1), [randn(2, 3, 4)]),
    "permute": (lambda a: a.permute(2, 0, 1), lambda a: a.permute(2, 0, 1), [randn(2, 3, 4)]),
    "T": (lambda a: a.T, lambda a: a.permute(1, 0), [randn(2, 3)]),
    "expand": (lambda a: a.expand(2, 3, 4), lambda a: a.expand(2, 3, 4), [randn(3, 1)]),
    "broadcast_to": (lambda a: a.broadcast_to((2, 3)), lambda a: a.broadcast_to((2, 3)), [randn()]),
    "unsqueeze squeeze": (lambda a: a.unsqueeze(1).squeeze(0), lambda a: a.unsqueeze(1).squeeze(0), [randn(1, 3)]),
    "index int": (lambda a: a[1], lambda a: a[1], [randn(3, 4)]),
    "index negative int": (lambda a: a[-1, 2], lambda a: a[-1, 2], [randn(3, 4)]),
    "index slices": (lambda a: a[1:, ::2], lambda a: a[1:, ::2], [randn(3, 5)]),
    "index ellipsis newaxis": (lambda a: a[..., None, 1:3], lambda a: a[..., None, 1:3], [randn(2, 4)]),
    "index int array repeats": (lambda a, i: a[i], lambda a, i: a[i], [randn(4, 3), np.array([0, 2, 0, 0, 3])]),
    "index 2-d int array": (lambda a, i: a[i], lambda a, i: a[i], [randn(4, 3), np.array([[0, 1], [1, 1]])]),
    "index two int arrays": (lambda a, i, j: a[i, j], lambda a, i, j: a[i, j],
                             [randn(3, 4), np.array([0, 2, 0]), np.array([1, 1, 1])]),
    "index slice and int array": (lambda a, i: a[:, i], lambda a, i: a[:, i], [randn(2, 4), np.array([3, 3, 0])]),
    "index bool mask": (lambda a, m: a[m], lambda a, m: a[m], [randn(3, 4), rng.random((3, 4)) > 0.5]),
    "index bool rows": (lambda a, m: a[m], lambda a, m: a[m], [randn(3, 4), np.array([True, False, True])]),
    "cat": (lambda a, b: cat([a, b], axis=1), lambda a, b: _torch().cat([a, b], dim=1), [randn(2, 3), randn(2, 1)]),
    "cat neg axis": (lambda a, b, c: cat([a, b, c], axis=-1), lambda a, b, c: _torch().cat([a, b, c], dim=-1),
                     [randn(2, 2), randn(2, 1), randn(2, 3)]),
    "stack": (lambda a, b: stack([a, b], axis=1), lambda a, b: _torch().stack([a, b], dim=1),
              [randn(2, 3), randn(2, 3)]),
    "stack neg axis": (lambda a, b: stack([a, b], axis=-1), lambda a, b: _torch().stack([a, b], dim=-1),
                       [randn(2, 3), randn(2, 3)]),
    "split size": (lambda a: a.split(2, axis=1), lambda a: a.split(2, dim=1), [randn(2, 5)]),
    "split sizes": (lambda a: a.split([1, 3], axis=0), lambda a: a.split([1, 3], dim=0), [randn(4, 2)]),
    # selection and softmax
    "where": (lambda c, a, b: where(c, a, b), lambda c, a, b: _torch().where(c, a, b),
              [rng.random((2, 3)) > 0.5, randn(2, 3), randn(3)]),
    "where scalar": (lambda c, a: where(c, a, 0.0), lambda c, a: _torch().where(c, a, 0.0),
                     [rng.random((2, 3)) > 0.5, randn(2, 3)]),
    "masked_fill": (lambda a, m: a.masked_fill(m, -1e9), lambda a, m: a.masked_fill(m, -1e9),
                    [randn(2, 3, 3), np.triu(np.ones((3, 3), dtype=bool), k=1)]),
    "softmax": (lambda a: a.softmax(axis=-1), lambda a: a.softmax(dim=-1), [randn(2, 5) * 3]),
    "softmax axis 0": (lambda a: a.softmax(axis=0), lambda a: a.softmax(dim=0), [randn(3, 2, 2)]),
    "log_softmax": (lambda a: a.log_softmax(axis=-1), lambda a: a.log_softmax(dim=-1), [randn(2, 5) * 3]),
    "log_softmax axis 1": (lambda a: a.log_softmax(axis=1), lambda a: a.log_softmax(dim=1), [randn(2, 3, 2)]),
    "softmax 1e4 logits": (lambda a: a.softmax(axis=-1), lambda a: a.softmax(dim=-1), [randn(3, 6) * 1e4]),
    "log_softmax 1e4 logits": (lambda a: a.log_softmax(axis=-1), lambda a: a.log_softmax(dim=-1),
                               [randn(3, 6) * 1e4]),
    # matmul
    "matmul 2-d": (lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 3), randn(3, 4)]),
    "matmul batched": (lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 3, 4), randn(2, 4, 5)]),
    "matmul broadcast batch": (lambda a, b: matmul(a, b), lambda a, b: a @ b, [randn(2, 1, 3, 4), randn(3, 4, 2)]),
    "matmul batch x 2-d": (lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 3, 4), randn(4, 2)]),
    "matmul 1-d x 1-d": (lambda a, b: a @ b, lambda a, b: a @ b, [randn(4), randn(4)]),
    "matmul 1-d x batch": (lambda a, b: a @ b, lambda a, b: a @ b, [randn(3), randn(2, 3, 4)]),
    "matmul batch x 1-d": (lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 3, 4), randn(4)]),
    # the ops learners reach for
    "sin": (lambda a: a.sin(), lambda a: a.sin(), [randn(2, 3) * 3]),
    "cos": (lambda a: a.cos(), lambda a: a.cos(), [randn(2, 3) * 3]),
    "log1p": (lambda a: a.log1p(), lambda a: a.log1p(), [positive(2, 3) - 0.1]),
    "min all": (lambda a: a.min(), lambda a: _torch().amin(a), [randn(2, 3)]),
    "min axis keepdims": (lambda a: a.min(axis=-1, keepdims=True), lambda a: _torch().amin(a, dim=-1, keepdim=True),
                          [randn(2, 3, 4)]),
    "min ties share": (lambda a: a.min(axis=1), lambda a: _torch().amin(a, dim=1),
                       [np.array([[1.0, 0.5, 0.5], [2.0, 2.0, 2.0]])]),
    "std all": (lambda a: a.std(), lambda a: a.std(correction=0), [randn(2, 3)]),
    "std axis ddof=1": (lambda a: a.std(axis=0, ddof=1), lambda a: a.std(dim=0), [randn(4, 3)]),
    "cumsum": (lambda a: a.cumsum(1), lambda a: a.cumsum(dim=1), [randn(2, 4, 3)]),
    "cumsum neg axis": (lambda a: a.cumsum(-1), lambda a: a.cumsum(dim=-1), [randn(3, 5)]),
    "einsum matmul": (lambda a, b: einsum("ij,jk->ik", a, b), lambda a, b: _torch().einsum("ij,jk->ik", a, b),
                      [randn(2, 3), randn(3, 4)]),
    "einsum batched implicit": (lambda a, b: einsum("bij,bjk", a, b), lambda a, b: _torch().einsum("bij,bjk", a, b),
                                [randn(2, 2, 3), randn(2, 3, 4)]),
    "einsum outer": (lambda a, b: einsum("i,j->ij", a, b), lambda a, b: _torch().einsum("i,j->ij", a, b),
                     [randn(3), randn(4)]),
    "einsum trace": (lambda a: einsum("ii", a), lambda a: _torch().einsum("ii", a), [randn(3, 3)]),
    "einsum diagonal": (lambda a: einsum("ii->i", a), lambda a: _torch().einsum("ii->i", a), [randn(3, 3)]),
    "einsum sum and transpose": (lambda a: einsum("ijk->kj", a), lambda a: _torch().einsum("ijk->kj", a),
                                 [randn(2, 3, 4)]),
    "einsum list form": (lambda a, b: einsum("ij,ij->i", [a, b]), lambda a, b: _torch().einsum("ij,ij->i", [a, b]),
                         [randn(2, 3), randn(2, 3)]),
    "nn.Tanh": (lambda a: nn.Tanh()(a), lambda a: _torch().nn.Tanh()(a), [randn(2, 3) * 2]),
    "nn.Sigmoid": (lambda a: nn.Sigmoid()(a), lambda a: _torch().nn.Sigmoid()(a), [randn(2, 3) * 4]),
    "binary_cross_entropy": (lambda p, t: F.binary_cross_entropy(p, t),
                             lambda p, t: _torch().nn.functional.binary_cross_entropy(p, t),
                             [rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0, 1, (3, 4))]),
    # p = 0 or 1 (a saturated float32 sigmoid): finite loss and probability gradient (torch's target
    # gradient is inf there, ours is clamped, so the targets are constants here)
    "binary_cross_entropy saturated": (lambda p, t: F.binary_cross_entropy(p, t.detach()),
                                       lambda p, t: _torch().nn.functional.binary_cross_entropy(p, t.detach()),
                                       [np.array([0.0, 1.0, 0.5, 1.0]), np.array([1.0, 0.0, 1.0, 1.0])]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name):
    our_fn, torch_fn, arrays = CASES[name]
    compare_with_torch(our_fn, torch_fn, *arrays)


# name -> (our_fn, torch_fn, arrays): ops without a gradient (integer or constant results)
VALUE_CASES = {
    "one_hot": (lambda i: F.one_hot(i, 5), lambda i: _torch().nn.functional.one_hot(i, 5),
                [np.array([[0, 4], [2, 2]])]),
    "one_hot inferred": (lambda i: F.one_hot(i), lambda i: _torch().nn.functional.one_hot(i), [np.array([3, 0, 1])]),
    "zeros_like": (lambda a: zeros_like(a), lambda a: _torch().zeros_like(a), [randn(2, 3)]),
    "ones_like": (lambda a: ones_like(a), lambda a: _torch().ones_like(a), [randn(3)]),
    "eq": (lambda a, b: a == b, lambda a, b: a == b, [np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 3.0])]),
    "ne broadcast": (lambda a, b: a != b, lambda a, b: a != b, [np.array([[1.0], [2.0]]), np.array([1.0, 0.0])]),
}


@pytest.mark.parametrize("name", list(VALUE_CASES))
def test_values_match_torch(name):
    our_fn, torch_fn, arrays = VALUE_CASES[name]
    outs, _ = compare_with_torch(our_fn, torch_fn, *arrays, grad=False)
    expected = torch_fn(*[_torch().tensor(a) for a in arrays])
    assert outs[0].dtype == np.dtype(str(expected.dtype).removeprefix("torch."))  # int64 one-hot, bool ==


def test_float_and_int_match_torch():
    torch = _torch()
    for value in (2.7, -2.7, 0.0):
        assert float(Tensor(value)) == pytest.approx(float(torch.tensor(value)))
        assert int(Tensor(value)) == int(torch.tensor(value))  # truncation toward 0, as int(2.7)
    assert int(Tensor(np.array([[5]]))) == 5 and float(Tensor([1.5])) == 1.5
    with pytest.raises(ValueError, match=r"\(2,\)"):
        float(Tensor([1.0, 2.0]))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_is_stable_for_huge_logits(name):
    logits = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4]])
    for dtype in (np.float32, np.float64):
        x = Tensor(logits.astype(dtype), requires_grad=True, dtype=dtype)
        y = getattr(x, name)(axis=-1)
        (y * Tensor(np.arange(8.0).reshape(2, 4), dtype=dtype)).sum().backward()
        assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(x.grad.numpy())), (name, dtype)
    compare_with_torch(lambda a: getattr(a, name)(axis=-1), lambda a: getattr(a, name)(dim=-1), logits)


def test_composite_expression_matches_torch():
    """A small MLP-like expression chaining many ops: gradients flow through all of them together."""

    def ours(x, w, b):
        h = (x @ w + b).gelu()
        return (h - h.mean(axis=-1, keepdims=True)) / (h.var(axis=-1, keepdims=True) + 1e-5).sqrt()

    def theirs(x, w, b):
        import torch

        h = torch.nn.functional.gelu(x @ w + b, approximate="tanh")
        return (h - h.mean(dim=-1, keepdim=True)) / (h.var(dim=-1, keepdim=True, correction=0) + 1e-5).sqrt()

    compare_with_torch(ours, theirs, randn(2, 3, 4), randn(4, 5), randn(5), atol=1e-5, rtol=1e-5)
