"""No op silently upcasts float32 to float64: outputs and gradients keep the input's float dtype."""

from __future__ import annotations

import numpy as np
import pytest

from tinygrad_gpt import Tensor, cat, matmul, set_default_dtype, stack, where

F32 = np.float32
rng = np.random.default_rng(0)
SCALARS = [2, 2.5, np.float64(2.5), np.int64(3), True]  # Python and NumPy scalars, float64 ones included

BINARY = {
    "add": lambda x, c: x + c,
    "radd": lambda x, c: c + x,
    "sub": lambda x, c: x - c,
    "rsub": lambda x, c: c - x,
    "mul": lambda x, c: x * c,
    "rmul": lambda x, c: c * x,
    "div": lambda x, c: x / c,
    "rdiv": lambda x, c: c / x,
    "pow": lambda x, c: x**c,
    "rpow": lambda x, c: c**x,
    "maximum": lambda x, c: x.maximum(c),
    "minimum": lambda x, c: x.minimum(c),
    "where a": lambda x, c: where(x.data > 1.0, x, c),
    "where b": lambda x, c: where(x.data > 1.0, c, x),
    "masked_fill": lambda x, c: x.masked_fill(x.data > 1.0, c),
    "clip": lambda x, c: x.clip(float(c) - 1.0, float(c)),
}

UNARY = {
    "neg": lambda x: -x,
    "exp": lambda x: x.exp(),
    "log": lambda x: x.log(),
    "sqrt": lambda x: x.sqrt(),
    "tanh": lambda x: x.tanh(),
    "sigmoid": lambda x: x.sigmoid(),
    "relu": lambda x: x.relu(),
    "gelu": lambda x: x.gelu(),
    "abs": lambda x: x.abs(),
    "sum": lambda x: x.sum(),
    "sum axis": lambda x: x.sum(axis=(0, -1), keepdims=True),
    "mean": lambda x: x.mean(),
    "mean axis": lambda x: x.mean(axis=1),
    "max": lambda x: x.max(axis=-1),
    "var": lambda x: x.var(),
    "var axis ddof": lambda x: x.var(axis=0, ddof=1),
    "softmax": lambda x: x.softmax(axis=-1),
    "log_softmax": lambda x: x.log_softmax(axis=0),
    "reshape": lambda x: x.reshape(-1),
    "transpose": lambda x: x.transpose(0, 1),
    "permute": lambda x: x.permute(2, 0, 1),
    "expand": lambda x: x.expand(2, 2, 3, 4),
    "index int array": lambda x: x[np.array([0, 0, 1])],
    "index mask": lambda x: x[x.data > 1.0],
    "index slice": lambda x: x[:, 1:, ::2],
    "cat": lambda x: cat([x, x * 2.0], axis=1),
    "stack": lambda x: stack([x, x], axis=-1),
    "split": lambda x: x.split(2, axis=-1)[1],
    "matmul": lambda x: x @ x.transpose(-2, -1),
    "matmul 1-d": lambda x: matmul(x, Tensor(np.ones(4, F32))),
    "astype round trip": lambda x: x.astype(np.float64).astype(F32),
}


def f32_param() -> Tensor:
    return Tensor(rng.uniform(0.5, 2.0, (2, 3, 4)).astype(F32), requires_grad=True)


def _check(fn) -> None:
    x = f32_param()
    y = fn(x)
    assert y.dtype == F32, f"output is {y.dtype}"
    (y * 1.5).sum().backward()
    assert x.grad.dtype == F32, f"gradient is {x.grad.dtype}"


@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
@pytest.mark.parametrize("name", list(BINARY))
def test_scalar_operands_keep_float32(name, scalar):
    _check(lambda x: BINARY[name](x, scalar))


@pytest.mark.parametrize("name", list(UNARY))
def test_ops_keep_float32(name):
    _check(UNARY[name])


@pytest.mark.parametrize("name", ["add", "mul", "div", "maximum", "where a"])
def test_float32_tensor_operands(name):
    other = Tensor(rng.uniform(0.5, 2.0, (3, 1)).astype(F32), requires_grad=True)
    x = f32_param()
    y = BINARY[name](x, other)
    assert y.dtype == F32
    y.sum().backward()
    assert x.grad.dtype == F32 and other.grad.dtype == F32


def test_float64_arrays_become_float32_tensors():
    assert Tensor(np.ones(3)).dtype == F32  # a float64 array
    assert Tensor([1.5, 2.0]).dtype == F32 and Tensor(2.5).dtype == F32
    assert Tensor(np.ones(3), dtype=np.float64).dtype == np.float64  # unless asked for
    for make in (Tensor.zeros, Tensor.ones, Tensor.randn, Tensor.rand):
        assert make(2, 3).dtype == F32, make
    assert (Tensor(np.ones(3)) + np.ones(3)).dtype == F32
    assert (np.ones(3) * Tensor(np.ones(3))).dtype == F32  # numpy float64 array on the left


@pytest.mark.parametrize("default", [np.float32, np.float64])
def test_integer_tensors_with_float_scalars_take_the_default_float(default):
    set_default_dtype(default)
    i = Tensor(np.arange(1, 4))
    assert i.dtype == np.int64
    for y in (i * 2.5, 2.5 * i, i + 0.5, 0.5 - i, i / 2, 1 / i, i / i, i.mean(), i * Tensor(np.ones(3, default))):
        assert y.dtype == default, y
    assert (i + 1).dtype == np.int64 and (i * i).dtype == np.int64  # integer arithmetic stays integer


def test_backward_grad_argument_does_not_upcast():
    x = f32_param()
    y = x * 2.0
    y.backward(np.ones((2, 3, 4)))  # float64 array
    assert x.grad.dtype == F32


def test_float64_graph_stays_float64():
    x = Tensor(rng.standard_normal((2, 3)), requires_grad=True, dtype=np.float64)
    y = (x * 2.5).gelu().softmax(axis=-1).mean()
    y.backward()
    assert y.dtype == np.float64 and x.grad.dtype == np.float64


def test_where_with_two_python_numbers_keeps_the_default_float():
    cond = np.array([True, False, True])
    assert where(cond, 1.0, 0).dtype == np.float32
    assert where(cond, 1, 0).dtype.kind == "i"
