"""The autograd engine: graph shapes, no_grad/detach, deep graphs, memory release and error messages."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

from tinygrad_gpt import Tensor, backend, cat, gradcheck, no_grad, stack, where
from tinygrad_gpt.autograd import Function, is_grad_enabled

F64 = np.float64
rng = np.random.default_rng(0)
pytestmark = pytest.mark.usefixtures("float64")  # Tensor(array) makes float64 tensors here


def param(*shape, dtype=F64) -> Tensor:
    return Tensor(rng.standard_normal(shape), requires_grad=True, dtype=dtype)


# ---------------------------------------------------------------- graph shapes


def test_reuse_accumulates_gradients():
    x = param(3)
    (x * x + x * 3.0 + x).sum().backward()  # x is used four times
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 4.0)


def test_diamond_graph():
    x = param(2, 3)
    a = x.exp()
    b, c = a * 2.0, a.tanh()  # two paths from a to d
    d = (b * c).sum()
    d.backward()
    e = np.exp(x.numpy())
    expected = 2 * e * np.tanh(e) + 2 * e * e * (1 - np.tanh(e) ** 2)
    np.testing.assert_allclose(x.grad.numpy(), expected)
    gradcheck(lambda t: t.exp() * 2.0 * t.exp().tanh(), param(2, 3))


def test_same_tensor_as_both_operands():
    x = param(4)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    y = param(4)
    (y / y).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), 0.0, atol=1e-12)


def test_gradients_accumulate_across_backward_calls():
    """Two half-batch backward passes give the full batch's gradient (gradient accumulation)."""
    w = param(3, 2)
    x = rng.standard_normal((4, 3))
    (Tensor(x) @ w).tanh().sum().backward()
    full = w.grad.numpy().copy()
    w.grad = None
    for half in (x[:2], x[2:]):
        (Tensor(half) @ w).tanh().sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), full)


def test_backward_with_explicit_grad():
    x = param(2, 3)
    y = x * 3.0
    g = rng.standard_normal((2, 3))
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), 3 * g)
    z = param(2, dtype=np.float32)
    (z * 2.0).backward(np.ones(2))  # a float64 grad array is cast to the output's dtype
    assert z.grad.dtype == np.float32


def test_only_inputs_that_need_grad_get_one():
    x, c = param(3), Tensor(rng.standard_normal(3), dtype=F64)
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None
    assert not c.requires_grad


def test_leaf_gradients_are_writable_and_independent():
    """Optimizers scale .grad in place (clipping): it must be writable and not alias another leaf's grad."""
    x = param(2, 3)
    x.sum().backward()  # the gradient of sum is a broadcast view internally
    x.grad.data *= 2.0
    np.testing.assert_allclose(x.grad.numpy(), 2.0)
    a, b = param(3), param(3)
    (a + b).sum().backward()  # add hands the same array to both inputs
    a.grad.data[0] = 100.0
    assert b.grad.numpy()[0] == 1.0


def test_function_may_return_none_for_an_input():
    class FirstOnly(Function):
        """a + b with a gradient only for a."""

        def forward(self, a, b):
            return a + b

        def backward(self, gy):
            return gy, None

    a, b = param(3), param(3)
    FirstOnly.apply(a, b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), 1.0)
    assert b.grad is None


# ---------------------------------------------------------------- no_grad and detach


def test_no_grad_records_no_graph():
    x = param(3)
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).exp()
    assert is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_as_decorator_and_restored_after_exception():
    @no_grad()
    def f(t):
        return t * 2.0

    assert not f(param(2)).requires_grad
    with pytest.raises(ZeroDivisionError), no_grad():
        raise ZeroDivisionError
    assert is_grad_enabled()
    with no_grad():
        with no_grad():
            pass
        assert not is_grad_enabled()  # the inner block restores the outer state, not True


def test_detach_cuts_the_graph():
    x = param(3)
    d = x.detach()
    assert not d.requires_grad and d.data is x.data
    (x * x.detach()).sum().backward()  # only the non-detached factor carries gradient
    np.testing.assert_allclose(x.grad.numpy(), x.numpy())


def test_deep_chain_of_100k_ops():
    """Backward is iterative: a graph far deeper than Python's recursion limit works."""
    x = Tensor(np.array(1.0), requires_grad=True, dtype=F64)
    c = Tensor(np.array(1.00001), dtype=F64)
    y = x
    for _ in range(100_000):
        y = y * c
    y.backward()
    np.testing.assert_allclose(x.grad.item(), 1.00001**100_000, rtol=1e-9)


# ---------------------------------------------------------------- memory released after backward


def test_saved_arrays_are_freed_after_backward():
    x = param(4, 4)
    y = x.gelu()  # Gelu saves a tanh temporary that nothing else references
    ctx_ref, saved_ref = weakref.ref(y._ctx), weakref.ref(y._ctx.t)
    out = y.sum()
    out.backward()
    gc.collect()
    assert ctx_ref() is None, "the Function (and its saved arrays) outlive backward()"
    assert saved_ref() is None, "an array saved for backward outlives backward()"
    assert y.numpy().shape == (4, 4)  # the outputs themselves are kept


def _train_steps(w, steps: int, backward: bool) -> int:
    """Run `steps` steps, keeping every loss tensor (as users do for logging); return the memory growth."""
    losses = []
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(steps):
            x = Tensor(rng.standard_normal((32, 64)), dtype=F64)
            loss = ((x @ w).gelu() * (x @ w).sigmoid()).mean()
            if backward:
                loss.backward()
                w.grad = None
            losses.append(loss)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_over_steps():
    w = param(64, 64)
    _train_steps(w, 2, backward=True)  # warm caches
    retained_graph = _train_steps(w, 10, backward=False)  # control: the graphs stay alive
    after_backward = _train_steps(w, 10, backward=True)
    per_step_graph = 32 * 64 * 8 * 4  # at least four (32, 64) float64 arrays are saved per step
    assert retained_graph > 10 * per_step_graph, "the control should hold every step's graph"
    assert after_backward < per_step_graph, f"memory grew by {after_backward} bytes over 10 steps"


def test_backward_twice_through_a_freed_graph_is_an_error():
    x = param(3)
    h = x * 2.0
    h.sum().backward()
    with pytest.raises(RuntimeError, match="already used and freed"):
        (h * 3.0).sum().backward()
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="already used and freed"):
        loss.backward()


# ---------------------------------------------------------------- error messages


def test_backward_on_non_scalar_needs_grad():
    y = param(2, 3) * 2.0
    with pytest.raises(ValueError, match=r"scalar output, got shape \(2, 3\).*grad="):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), output has shape \(2, 3\)"):
        y.backward(np.ones(3))


def test_backward_without_graph_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(())).backward()


SHAPE_ERRORS = {
    "add": (lambda a, b: a + b, (2, 3), (4,)),
    "sub": (lambda a, b: a - b, (2, 3), (2, 2)),
    "mul": (lambda a, b: a * b, (3,), (4,)),
    "div": (lambda a, b: a / b, (2, 1, 3), (2, 2)),
    "pow": (lambda a, b: a**b, (3,), (2,)),
    "maximum": (lambda a, b: a.maximum(b), (3,), (2,)),
    "minimum": (lambda a, b: a.minimum(b), (3,), (2,)),
    "matmul": (lambda a, b: a @ b, (2, 3), (4, 5)),
    "cat": (lambda a, b: cat([a, b], axis=0), (2, 3), (2, 4)),
    "where": (lambda a, b: where(np.ones(3, bool), a, b), (3,), (4,)),
}


@pytest.mark.parametrize("op", list(SHAPE_ERRORS))
def test_shape_errors_at_call_time_name_op_and_shapes(op):
    fn, sa, sb = SHAPE_ERRORS[op]
    a, b = param(*sa), param(*sb)
    with pytest.raises(ValueError) as info:
        fn(a, b)  # raised here, at the call, not later inside backward
    msg = str(info.value)
    assert op in msg and str(sa) in msg and str(sb) in msg, msg


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda x: x.reshape(4, 2), r"reshape.*\(2, 3\)"),
        (lambda x: x.expand(4, 3), r"expand.*\(2, 3\).*\(4, 3\)"),
        (lambda x: x.permute(0, 2), r"permute.*\(2, 3\)"),
        (lambda x: x.permute(0, 0), r"permute.*\(2, 3\)"),
        (lambda x: x.transpose(0, 2), r"transpose.*\(2, 3\)"),
        (lambda x: x.unsqueeze(3), r"unsqueeze.*\(2, 3\)"),
        (lambda x: x.squeeze(0), r"squeeze.*\(2, 3\)"),
        (lambda x: x.sum(axis=2), "sum: axis 2 is out of range"),
        (lambda x: x.max(axis=-3), "max: axis -3 is out of range"),
        (lambda x: x.var(axis=0, ddof=2), "var: 2 elements"),
        (lambda x: x.split([1, 1], axis=1), r"split: sizes \[1, 1\] sum to 2.*\(2, 3\)"),
        (lambda x: x.masked_fill(np.ones((3, 3), bool), 0.0), r"masked_fill.*\(3, 3\).*\(2, 3\)"),
        (lambda x: stack([x, x.reshape(3, 2)]), r"stack.*\(2, 3\).*\(3, 2\)"),
        (lambda x: x.item(), r"item.*\(2, 3\)"),
        (lambda x: x.clip(), "clip: give min, max or both"),
    ],
)
def test_other_call_time_errors(fn, match):
    with pytest.raises(ValueError, match=match):
        fn(param(2, 3))


def test_float32_float64_mixing_is_an_error_not_an_upcast():
    a, b = param(3, dtype=np.float32), param(3, dtype=F64)
    mask = np.ones(3, bool)
    for fn in (lambda: a + b, lambda: b * a, lambda: a @ b, lambda: a.maximum(b), lambda: where(mask, a, b)):
        with pytest.raises(TypeError, match="float32 and float64|float64 and float32"):
            fn()
    with pytest.raises(TypeError, match="cat: dtypes"):
        cat([a, b])


def test_only_float_tensors_require_grad():
    with pytest.raises(TypeError, match="only float tensors.*int64"):
        Tensor(np.arange(3), requires_grad=True)


@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and an NVIDIA GPU to put tensors on two devices")
def test_device_mismatch_is_an_error():
    a, b = param(3).to("cpu"), param(3).to("cuda")
    with pytest.raises(ValueError, match="different devices.*cpu.*cuda"):
        a + b
