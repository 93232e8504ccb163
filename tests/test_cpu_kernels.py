"""The optional numba kernels give the same results as the pure-NumPy path they replace."""

from __future__ import annotations

import numpy as np
import pytest

from tinygrad_gpt import Tensor, kernels
from tinygrad_gpt.kernels import cpu
from tinygrad_gpt.nn import functional as F

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="numba not installed: only the NumPy path exists")


@pytest.fixture(autouse=True, params=["threaded", "serial"])
def _kernels_even_for_tiny_arrays(monkeypatch, request):
    """The test arrays are small: make the kernels run on them (normally only large arrays use them),
    with the row kernels' threaded loops and (second run) their serial twins."""
    monkeypatch.setattr(cpu, "min_size", 0)
    monkeypatch.setattr(cpu, "parallel_min_size", 0 if request.param == "threaded" else 1 << 62)


def _run_both(fn, *arrays, dtype):
    """fn's output and input gradients with the numba kernels on and off."""
    results = []
    for enabled in (True, False):
        cpu.enabled = enabled
        try:
            inputs = [Tensor(a, requires_grad=True, dtype=dtype) for a in arrays]
            out = fn(*inputs)
            w = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
            (out * Tensor(w, dtype=dtype)).sum().backward()
            results.append([out.numpy()] + [t.grad.numpy() for t in inputs])
        finally:
            cpu.enabled = cpu.AVAILABLE
    return results


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize(
    "name, fn, shapes",
    [
        ("gelu", F.gelu, [(3, 5, 8)]),
        ("layer_norm", lambda x, w, b: F.layer_norm(x, w, b), [(4, 6, 16), (16,), (16,)]),
        ("attention", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [(2, 3, 7, 4)] * 3),
        ("attention with cache", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         [(2, 3, 2, 4), (2, 3, 7, 4), (2, 3, 7, 4)]),
        ("non-causal attention", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=False),
         [(2, 3, 7, 4)] * 3),
        ("self attention", lambda qkv: F.causal_self_attention(qkv, 3), [(2, 7, 18)]),
        ("rotary", lambda x: F.rotary(x, *F.rotary_tables(7, 6)), [(2, 3, 7, 6)]),
        ("rotary of a transposed view", lambda x: F.rotary(x.transpose(1, 2), *F.rotary_tables(7, 6)), [(2, 7, 3, 6)]),
        ("qk_norm_rotary", lambda qkv, wq, wk: F.qk_norm_rotary(qkv, 3, wq, wk, *F.rotary_tables(7, 4)),
         [(2, 7, 36), (4,), (4,)]),
        ("rms_norm", lambda x, w: F.rms_norm(x, w), [(4, 6, 16), (16,)]),
        ("rms_norm of a transposed view", lambda x, w: F.rms_norm(x.transpose(1, 2), w), [(2, 3, 5, 8), (8,)]),
        ("qk norm without rotary", lambda qkv, wq, wk: F.qk_norm_rotary(qkv, 3, wq, wk), [(2, 7, 36), (4,), (4,)]),
        ("qk rotary without norm", lambda qkv: F.qk_norm_rotary(qkv, 3, cos=F.rotary_tables(7, 4)[0],
                                                                sin=F.rotary_tables(7, 4)[1]), [(2, 7, 36)]),
    ],
)
def test_kernels_match_numpy_path(name, fn, shapes, dtype, tol):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) * 2 for s in shapes]
    with_kernels, without = _run_both(fn, *arrays, dtype=dtype)
    for k, (a, b) in enumerate(zip(with_kernels, without)):
        scale = max(1.0, float(np.abs(b).max()))
        assert np.abs(a - b).max() <= tol * scale, f"{name}: output/gradient {k} differs"


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_adamw_kernel_matches_numpy_update(dtype, tol):
    from tinygrad_gpt.optim import adamw_update_

    rng = np.random.default_rng(0)
    start = [rng.standard_normal(1000).astype(dtype) for _ in range(3)]
    start[2] = np.abs(start[2])  # exp_avg_sq is non-negative
    grad = rng.standard_normal(1000).astype(dtype)
    results = []
    for enabled in (True, False):
        cpu.enabled = enabled
        try:
            param, exp_avg, exp_avg_sq = (a.copy() for a in start)
            for step in (1, 2, 3):
                adamw_update_(param, grad.copy(), exp_avg, exp_avg_sq, 1e-2, 0.9, 0.99, 1e-8, 0.1, step)
            results.append((param, exp_avg, exp_avg_sq))
        finally:
            cpu.enabled = cpu.AVAILABLE
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_float32_gelu_and_softmax_kernels_are_accurate_over_a_wide_range():
    x = np.linspace(-60, 60, 20001).astype(np.float32)
    y = cpu.gelu_forward(x)
    gx = cpu.gelu_backward(np.ones_like(x), x)
    x64 = x.astype(np.float64)
    t_ref = np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3))
    dinner = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x64**2)
    gx_ref = 0.5 * (1 + t_ref) + 0.5 * x64 * (1 - t_ref**2) * dinner
    assert (np.abs(gx - gx_ref) <= 1e-6 * np.maximum(1, np.abs(x64))).all()
    # an error of one float32 ulp in t, scaled by |x|, is the best float32 can do
    assert (np.abs(y - 0.5 * x64 * (1 + t_ref)) <= 1e-6 * np.maximum(1, np.abs(x64))).all()

    scores = np.linspace(-200, 200, 4 * 64).astype(np.float32).reshape(1, 4, 64)
    att = scores.copy()
    cpu.attention_softmax_(att, 0.5, False)
    e = np.exp(0.5 * (scores.astype(np.float64) - scores.max(axis=-1, keepdims=True)))
    np.testing.assert_allclose(att, e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("consumer", ["sum", "transpose"])
def test_gelu_kernel_backward_takes_broadcast_and_transposed_gradients(consumer):
    """sum() hands GELU a broadcast (non-contiguous) gradient; the kernel path must still work."""
    from tinygrad_gpt.nn import functional as F

    x = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    grads = []
    for enabled in (True, False):
        cpu.enabled = enabled
        try:
            t = Tensor(x, requires_grad=True)
            y = F.gelu(t)
            (y.sum() if consumer == "sum" else (y.T * Tensor(np.arange(64.0))).sum()).backward()
            grads.append(t.grad.numpy())
        finally:
            cpu.enabled = cpu.AVAILABLE
    np.testing.assert_allclose(grads[0], grads[1], rtol=2e-5, atol=2e-5 * np.abs(grads[1]).max())


def test_find_gives_the_kernel_only_for_arrays_it_was_written_for(monkeypatch):
    x = np.ones((64, 40), np.float32)
    assert kernels.find("gelu_forward", x) is cpu.gelu_forward
    assert kernels.find("layer_norm_forward", x, np.ones(40, np.float32), np.ones(40, np.float32))
    assert kernels.find("gelu_forward", x[:, ::2]) is None, "a strided view"
    heads = np.ones((2, 8, 3, 4, 6), np.float32)  # (B, T, q/k/v, nh, hs) of a fused qkv: q's heads are a strided view
    assert kernels.find("rotate_", heads[:, :, 0], x[:8, :3], x[:8, :3], heads[:, :, 1]) is cpu.rotate_, "views ok"
    w = np.ones(6, np.float32)
    assert kernels.find("rms_norm_forward", heads[:, :, 0], w) is cpu.rms_norm_forward, "QK-norm reads heads in place"
    assert kernels.find("rms_norm_backward", heads[:, :, 0], heads[:, :, 1], heads[:, :, 2, :, 0], w), "views ok"
    assert kernels.find("gelu_forward", x.astype(np.int64)) is None, "an integer array"
    assert kernels.find("gelu_forward", x.astype(np.float16)) is None, "float16 has no numba kernel"
    assert kernels.find("gelu_backward", x, x.astype(np.float64)) is None, "mixed dtypes"
    assert kernels.find("softmax_cross_entropy_forward", x) is None, "no CPU kernel of that name"
    monkeypatch.setattr(cpu, "min_size", x.size + 1)
    assert kernels.find("gelu_forward", x) is None, "too small to be worth the threads"
    assert kernels.find("layer_norm_forward", x, x[0], x[0]), "row kernels run on any size (serial when small)"
    monkeypatch.setattr(cpu, "min_size", 0)
    monkeypatch.setattr(cpu, "enabled", False)
    assert kernels.find("gelu_forward", x) is None, "turned off"


def test_gelu_backward_after_the_kernels_are_turned_off_recomputes_what_the_forward_kernel_kept_not():
    x = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    y = F.gelu(t)  # the kernel path: keeps no tanh for backward
    cpu.enabled = False
    try:
        y.sum().backward()
    finally:
        cpu.enabled = cpu.AVAILABLE
    reference = Tensor(x, requires_grad=True)
    cpu.enabled = False
    try:
        F.gelu(reference).sum().backward()
    finally:
        cpu.enabled = cpu.AVAILABLE
    np.testing.assert_allclose(t.grad.numpy(), reference.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_row_kernels_give_nan_for_non_finite_rows_instead_of_raising():
    # a diverged run (NaN loss) must reach the trainer's NaN check, also through the serial twins
    x = np.array([[np.inf, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    y, _, _ = cpu.layer_norm_forward(x, w, b, 1e-5)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
