"""Hypothesis property tests: every op's analytic gradient matches central finite differences.

Each test draws shapes (0-d, size-1 and broadcast pairs included) and float64 values, and checks the
gradient of sum(op(x) * w) for a random w with `tinygrad_gpt.gradcheck`. Kinks (relu/abs at 0, ties
in max/maximum/minimum, clip bounds) and domains (log, sqrt, pow, division) are avoided by construction.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_gpt import Function, Tensor, cat, einsum, gradcheck, matmul, nn, stack, where
from tinygrad_gpt.gradcheck import GradcheckError
from tinygrad_gpt.nn import functional as F

F64 = np.float64
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
pair_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3)


def values(shape, lo=-2.0, hi=2.0, **kwargs):
    """float64 arrays of `shape` with elements in [lo, hi]."""
    return hnp.arrays(F64, shape, elements=st.floats(lo, hi, allow_nan=False), **kwargs)


@st.composite
def away_from_zero(draw, shape, lo=0.1, hi=2.0):
    """Values with lo <= |x| <= hi: relu, abs and division stay off their kink/pole."""
    mags = draw(values(shape, lo, hi))
    signs = draw(hnp.arrays(bool, shape))
    return np.where(signs, mags, -mags)


@st.composite
def distinct(draw, shape):
    """Values at least 0.4 apart (a shuffled grid plus jitter): no ties in max."""
    n = int(np.prod(shape))
    perm = np.array(draw(st.permutations(range(n))), dtype=F64)
    jitter = draw(values((n,), 0.0, 0.1))
    return ((perm - n / 2) * 0.5 + jitter).reshape(shape)


@st.composite
def axes(draw, ndim):
    """An `axis` argument: None, an int (maybe negative) or a tuple of axes."""
    if ndim == 0:
        return draw(st.sampled_from([None, ()]))
    one = st.integers(-ndim, ndim - 1)
    many = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(
        lambda ax: tuple(a - ndim if i % 2 else a for i, a in enumerate(ax))  # mix negative and positive
    )
    return draw(st.none() | one | many)


def param(x) -> Tensor:
    return Tensor(x, requires_grad=True, dtype=F64)


# ---------------------------------------------------------------- binary arithmetic


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data(), shape_pair=pair_shapes)
def test_binary_broadcast(name, data, shape_pair):
    sa, sb = shape_pair.input_shapes
    a = data.draw(values(sa))
    b = data.draw(away_from_zero(sb, 0.5, 2.0)) if name == "div" else data.draw(values(sb))
    gradcheck(BINARY[name], param(a), param(b))


@given(data=st.data(), shape_pair=pair_shapes)
def test_pow_tensor_exponent(data, shape_pair):
    sa, sb = shape_pair.input_shapes
    base = data.draw(values(sa, 0.5, 2.0))
    exponent = data.draw(values(sb, -2.0, 2.0))
    gradcheck(lambda a, b: a**b, param(base), param(exponent))


SCALAR_OPS = {
    "x + c": lambda x, c: x + c,
    "c + x": lambda x, c: c + x,
    "x - c": lambda x, c: x - c,
    "c - x": lambda x, c: c - x,
    "x * c": lambda x, c: x * c,
    "c * x": lambda x, c: c * x,
    "x / c": lambda x, c: x / c,
    "c / x": lambda x, c: c / x,
    "x ** c": lambda x, c: x**c,
    "c ** x": lambda x, c: abs(c) ** x,
    "-x": lambda x, c: -x,
}


@pytest.mark.parametrize("name", sorted(SCALAR_OPS))
@given(data=st.data(), shape=shapes, c=st.floats(0.5, 3.0) | st.floats(-3.0, -0.5) | st.integers(1, 3))
def test_python_scalar_operands(name, data, shape, c):
    x = data.draw(values(shape, 0.5, 2.0))  # positive: x ** c and c / x stay defined
    gradcheck(lambda t: SCALAR_OPS[name](t, c), param(x))


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@given(data=st.data(), shape_pair=pair_shapes)
def test_maximum_minimum(name, data, shape_pair):
    sa, sb = shape_pair.input_shapes
    a = data.draw(values(sa))
    b = data.draw(values(sb)) + 1 / 3  # an offset hypothesis's simple values rarely hit: few ties
    aa, bb = np.broadcast_arrays(a, b)
    assume(np.all(np.abs(aa - bb) > 1e-3))  # ties are kinks
    gradcheck(lambda x, y: getattr(x, name)(y), param(a), param(b))


@given(data=st.data(), shapes3=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3))
def test_where(data, shapes3):
    sc, sa, sb = shapes3.input_shapes
    cond = data.draw(hnp.arrays(bool, sc))
    a, b = data.draw(values(sa)), data.draw(values(sb))
    gradcheck(lambda x, y: where(cond, x, y), param(a), param(b))
    gradcheck(lambda x: where(Tensor(cond), x, 0.5), param(a))  # a tensor mask and a Python scalar


# ---------------------------------------------------------------- unary elementwise


UNARY = {
    "neg": (lambda x: -x, values),
    "exp": (lambda x: x.exp(), values),
    "log": (lambda x: x.log(), lambda s: values(s, 0.1, 3.0)),
    "sqrt": (lambda x: x.sqrt(), lambda s: values(s, 0.1, 3.0)),
    "tanh": (lambda x: x.tanh(), lambda s: values(s, -3.0, 3.0)),
    "sigmoid": (lambda x: x.sigmoid(), lambda s: values(s, -5.0, 5.0)),
    "relu": (lambda x: x.relu(), away_from_zero),
    "gelu": (lambda x: x.gelu(), lambda s: values(s, -4.0, 4.0)),
    "abs": (lambda x: x.abs(), away_from_zero),
    "sin": (lambda x: x.sin(), lambda s: values(s, -4.0, 4.0)),
    "cos": (lambda x: x.cos(), lambda s: values(s, -4.0, 4.0)),
    "log1p": (lambda x: x.log1p(), lambda s: values(s, -0.9, 3.0)),
    "nn.Tanh": (lambda x: nn.Tanh()(x), lambda s: values(s, -3.0, 3.0)),
    "nn.Sigmoid": (lambda x: nn.Sigmoid()(x), lambda s: values(s, -5.0, 5.0)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data(), shape=shapes)
def test_unary(name, data, shape):
    fn, strategy = UNARY[name]
    gradcheck(fn, param(data.draw(strategy(shape))))


@given(data=st.data(), shape=shapes, lo=st.floats(-1.5, 0.0), width=st.floats(0.2, 2.0), which=st.integers(0, 2))
def test_clip(data, shape, lo, width, which):
    x = data.draw(values(shape, -2.5, 2.5))
    lo, hi = lo + 1 / 7, lo + 1 / 7 + width  # offsets keep the bounds off hypothesis's simple values
    assume(np.all(np.abs(x - lo) > 1e-3) and np.all(np.abs(x - hi) > 1e-3))  # the bounds are kinks
    bounds = [dict(min=lo, max=hi), dict(min=lo), dict(max=hi)][which]
    gradcheck(lambda t: t.clip(**bounds), param(x))


# ---------------------------------------------------------------- reductions


@pytest.mark.parametrize("name", ["sum", "mean", "var"])
@given(data=st.data(), shape=shapes, keepdims=st.booleans())
def test_smooth_reductions(name, data, shape, keepdims):
    axis = data.draw(axes(len(shape)))
    x = data.draw(values(shape))
    gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), param(x))


@pytest.mark.parametrize("name", ["max", "min"])
@given(data=st.data(), shape=shapes, keepdims=st.booleans())
def test_max_min(name, data, shape, keepdims):
    axis = data.draw(axes(len(shape)))
    x = data.draw(distinct(shape))
    gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), param(x))


@given(data=st.data(), shape=shapes, keepdims=st.booleans(), ddof=st.integers(0, 1))
def test_std(data, shape, keepdims, ddof):
    axis = data.draw(axes(len(shape)))
    n = int(np.prod(shape)) // np.ones(shape).sum(axis=axis).size  # elements per reduced group
    assume(n - ddof > 0 and n > 1)  # one element (or no degree of freedom) has std 0: a kink of sqrt
    x = data.draw(distinct(shape))  # distinct values: the std stays away from 0
    gradcheck(lambda t: t.std(axis=axis, keepdims=keepdims, ddof=ddof), param(x))


@given(data=st.data(), shape=nonscalar_shapes)
def test_cumsum(data, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    gradcheck(lambda t: t.cumsum(axis), param(data.draw(values(shape))))


EINSUMS = {  # subscripts -> operand shapes (letters i, j, k, l are sizes 2, 3, 2, 1)
    "ij,jk->ik": [(2, 3), (3, 2)],
    "ij,jk": [(2, 3), (3, 2)],  # implicit output: ik
    "bij,bjk->bik": [(2, 2, 3), (2, 3, 2)],
    "ij->ji": [(2, 3)],
    "ij->": [(2, 3)],
    "ij->j": [(2, 3)],
    "ii->i": [(2, 2)],
    "ii": [(2, 2)],  # the trace
    "i,j->ij": [(2,), (3,)],
    "ij,ij->i": [(2, 3), (2, 3)],
    "ii,ik->k": [(2, 2), (2, 3)],
    "ijl,jk->kl": [(2, 3, 1), (3, 2)],
}


@pytest.mark.parametrize("subscripts", list(EINSUMS))
@given(data=st.data())
def test_einsum(subscripts, data):
    xs = [param(data.draw(values(s))) for s in EINSUMS[subscripts]]
    gradcheck(lambda *ts: einsum(subscripts, *ts), *xs)


@given(data=st.data(), shape=shapes)
def test_binary_cross_entropy(data, shape):
    probs = data.draw(values(shape, 0.05, 0.95))
    targets = data.draw(values(shape, 0.0, 1.0))
    gradcheck(lambda p, t: F.binary_cross_entropy(p, t), param(probs), param(targets))


# ---------------------------------------------------------------- shape ops


@given(data=st.data(), shape=shapes)
def test_reshape(data, shape):
    x = data.draw(values(shape))
    n = int(np.prod(shape))
    new = data.draw(st.sampled_from([(n,), (-1,), (1, n), (n, -1, 1), (-1, 1, 1)]))
    gradcheck(lambda t: t.reshape(*new), param(x))


@given(data=st.data(), shape=nonscalar_shapes)
def test_transpose_and_permute(data, shape):
    x = data.draw(values(shape))
    ndim = len(shape)
    ax1, ax2 = data.draw(st.integers(-ndim, ndim - 1)), data.draw(st.integers(-ndim, ndim - 1))
    order = data.draw(st.permutations(range(ndim)))
    gradcheck(lambda t: t.transpose(ax1, ax2), param(x))
    gradcheck(lambda t: t.permute(*order), param(x))


@given(data=st.data(), shape_pair=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
def test_expand_and_broadcast_to(data, shape_pair):
    shape = shape_pair.input_shapes[0]
    x = data.draw(values(shape))
    target = shape_pair.result_shape
    gradcheck(lambda t: t.expand(*target), param(x))
    gradcheck(lambda t: t.broadcast_to(target), param(x))


@given(data=st.data(), shape=nonscalar_shapes)
def test_index_int_and_slices(data, shape):
    x = data.draw(values(shape))
    i = data.draw(st.integers(-shape[0], shape[0] - 1))
    slices = tuple(data.draw(st.slices(n)) for n in shape)
    gradcheck(lambda t: t[i], param(x))
    gradcheck(lambda t: t[slices], param(x))
    gradcheck(lambda t: t[..., None, ::-1], param(x))


@given(data=st.data(), shape=nonscalar_shapes)
def test_index_integer_arrays_accumulate_repeats(data, shape):
    x = data.draw(values(shape))
    n = shape[0]
    idx = np.array(data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=5)))
    gradcheck(lambda t: t[idx], param(x))
    gradcheck(lambda t: t[Tensor(idx)], param(x))  # an index tensor works like an index array
    if len(shape) >= 2:
        cols = np.array(data.draw(st.lists(st.integers(0, shape[1] - 1), min_size=len(idx), max_size=len(idx))))
        gradcheck(lambda t: t[idx, cols], param(x))
        gradcheck(lambda t: t[:, cols[:2]], param(x))


@given(data=st.data(), shape=nonscalar_shapes)
def test_index_boolean_masks(data, shape):
    x = data.draw(values(shape))
    mask = data.draw(hnp.arrays(bool, shape))
    rows = data.draw(hnp.arrays(bool, shape[:1]))
    gradcheck(lambda t: t[mask], param(x))
    gradcheck(lambda t: t[Tensor(rows)], param(x))


@given(data=st.data(), shape=nonscalar_shapes, n=st.integers(1, 3))
def test_cat_and_stack(data, shape, n):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    cat_shapes = [tuple(data.draw(st.integers(1, 3)) if d == axis % len(shape) else s for d, s in enumerate(shape))
                  for _ in range(n)]
    xs = [param(data.draw(values(s))) for s in cat_shapes]
    gradcheck(lambda *ts: cat(ts, axis=axis), *xs)
    ys = [param(data.draw(values(shape))) for _ in range(n)]
    stack_axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    gradcheck(lambda *ts: stack(ts, axis=stack_axis), *ys)


@given(data=st.data(), shape=nonscalar_shapes)
def test_split(data, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    x = data.draw(values(shape))
    size = data.draw(st.integers(1, n))
    cut = data.draw(st.integers(0, n))
    w = [np.random.default_rng(k).standard_normal() for k in range(n)]  # weigh pieces differently
    gradcheck(lambda t: sum(p.sum() * wk for p, wk in zip(t.split(size, axis=axis), w)), param(x))
    gradcheck(lambda t: stack([p.sum() for p in t.split([cut, n - cut], axis=axis)]), param(x))


# ---------------------------------------------------------------- selection, softmax, matmul


@given(data=st.data(), shape_pair=pair_shapes, value=st.floats(-3, 3))
def test_masked_fill(data, shape_pair, value):
    out_shape = shape_pair.result_shape
    mask_shape = shape_pair.input_shapes[0]
    x = data.draw(values(out_shape))
    mask = data.draw(hnp.arrays(bool, mask_shape))
    gradcheck(lambda t: t.masked_fill(mask, value), param(x))
    gradcheck(lambda t: t.masked_fill(Tensor(mask), value), param(x))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data(), shape=nonscalar_shapes)
def test_softmax(name, data, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(values(shape, -4.0, 4.0))
    gradcheck(lambda t: getattr(t, name)(axis=axis), param(x))


@st.composite
def matmul_shapes(draw):
    """Operand shapes for matmul: 1-D operands, plain matrices and batches with broadcast leading dims."""
    m, k, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lead = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=2)).input_shapes
    a = (k,) if draw(st.booleans()) else lead[0] + (m, k)
    b = (k,) if draw(st.booleans()) else lead[1] + (k, n)
    return a, b


@given(data=st.data(), ab=matmul_shapes())
def test_matmul(data, ab):
    sa, sb = ab
    a, b = param(data.draw(values(sa))), param(data.draw(values(sb)))
    gradcheck(lambda x, y: x @ y, a, b)
    gradcheck(lambda x, y: matmul(x, y), a, b)


def test_rmatmul_with_array():
    a = np.random.default_rng(0).standard_normal((2, 3))
    gradcheck(lambda x: a @ x, param(np.random.default_rng(1).standard_normal((3, 2))))


# ---------------------------------------------------------------- gradcheck itself


class _WrongAtOneElement(Function):
    """x * x with a backward that is wrong at element (1, 2) only."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        gx = 2 * self.x * gy
        gx[1, 2] += 0.5
        return gx


def test_gradcheck_names_the_worst_element():
    x = param(np.random.default_rng(0).standard_normal((3, 4)))
    with pytest.raises(GradcheckError, match=r"1 of 12 elements wrong; worst at \(1, 2\)"):
        gradcheck(lambda t: _WrongAtOneElement.apply(t), x)
    assert gradcheck(lambda t: t * t, x)  # the same function with autograd's gradient passes


def test_gradcheck_random_direction_for_large_inputs():
    x = param(np.random.default_rng(0).standard_normal((20, 20)))
    assert gradcheck(lambda t: (t * t).tanh(), x, max_elements=100)
    with pytest.raises(GradcheckError, match="along a random direction"):
        gradcheck(lambda t: _WrongAtOneElement.apply(t), x, max_elements=100)


def test_gradcheck_non_contiguous_input():
    x = Tensor(np.random.default_rng(0).standard_normal((3, 4)).T, requires_grad=True, dtype=F64)
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda t: t.exp() * t, x)


def test_gradcheck_needs_float64_and_a_grad_input():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: t * t, Tensor(np.ones(3, np.float32), requires_grad=True))
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(lambda t: t * t, Tensor(np.ones(3)))
    assert not gradcheck(lambda t: _WrongAtOneElement.apply(t), param(np.ones((2, 3))), raise_exception=False)
