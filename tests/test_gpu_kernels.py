"""The fused CuPy kernels (kernels/cuda.py) give the NumPy path's results on the same inputs.

The comparisons need CuPy and an NVIDIA GPU and skip without them. That importing the kernels
needs no CuPy, and that `kernels.find` never hands a CUDA kernel host arrays, is checked everywhere.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygrad_gpt
from helpers import requires_real_gpu, tensor_on
from tinygrad_gpt import backend, kernels
from tinygrad_gpt.kernels import cpu as cpu_kernels
from tinygrad_gpt.kernels import cuda as gpu_kernels
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.optim import adamw_update_

REPO = Path(tinygrad_gpt.__file__).resolve().parent.parent


def _run_python(code: str, **env) -> str:
    """stdout of `code` run in a fresh interpreter on the numpy backend, with extra environment variables."""
    env = {**os.environ, "TINYGRAD_GPT_BACKEND": "numpy", "TINYGRAD_GPT_TEST_FAKE_CUPY": "0", **env}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# ---------------------------------------------------------------- everywhere, GPU or not


def test_importing_the_kernels_imports_no_cupy_and_host_arrays_get_no_cuda_kernel():
    out = _run_python("import sys; import numpy as np; from tinygrad_gpt import kernels; "
                      "print('cupy' in sys.modules, kernels.find('softmax_cross_entropy_forward', "
                      "np.ones((3, 3), np.float32)))")
    assert out == "False None", out


def test_env_var_turns_the_kernels_off():
    assert _run_python("from tinygrad_gpt.kernels import cuda; print(cuda.enabled)",
                       TINYGRAD_GPT_GPU_KERNELS="0") == "False"


def test_no_cuda_kernel_for_host_arrays(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "enabled", False)  # else the numba twin would be found for large arrays
    for x in (np.ones(3, np.float32), np.ones((2, 2)), np.ones((300, 300), np.float32)):
        assert kernels.find("gelu_forward", x) is None, f"find() gave a kernel for {x!r}"


def test_kernels_reject_host_arrays_with_a_clear_error():
    with pytest.raises(TypeError, match="gelu_forward: needs C-contiguous float16/32/64 CuPy arrays"):
        gpu_kernels.gelu_forward(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="attention_softmax_: needs"):
        gpu_kernels.attention_softmax_(np.ones((1, 2, 2), np.float32), 1.0, True)


# ---------------------------------------------------------------- GPU kernels against the NumPy path

# (dtype, tolerance relative to the largest reference value); float16 is checked against float64 math
DTYPES = [("float64", 1e-12), ("float32", 1e-5), ("float16", 5e-3)]


@pytest.fixture
def numpy_path(monkeypatch):
    """References run the pure NumPy twins, not the numba kernels."""
    monkeypatch.setattr(cpu_kernels, "enabled", False)


def _gpu(a: np.ndarray):
    return backend.to_device(np.ascontiguousarray(a), "cuda")


def _ref_dtype(dtype: str):
    return np.float64 if dtype == "float16" else np.dtype(dtype)


def _assert_close(got, want, dtype: str, tol: float, what: str) -> None:
    """`got` is a GPU array of `dtype` within tol * max(1, |want|) of the host array `want`."""
    assert backend.device_of(got) == "cuda", f"{what}: result left the GPU"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {dtype}"
    got, want = backend.to_numpy(got).astype(np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    err = float(np.abs(got - want).max()) if want.size else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def _forward_backward(fn, arrays, gy, dtype):
    """The library's output and input gradients of sum(fn(*inputs) * gy) on the CPU (whatever the backend)."""
    inputs = [tensor_on("cpu", a.astype(dtype), dtype, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    (out * tensor_on("cpu", gy.astype(dtype), dtype)).sum().backward()
    return out.numpy(), [t.grad.numpy() for t in inputs]


@requires_real_gpu
def test_find_takes_contiguous_gpu_floats_only(monkeypatch):
    x = _gpu(np.ones((4, 6), np.float32))
    assert kernels.find("gelu_forward", x) is gpu_kernels.gelu_forward
    assert kernels.find("gelu_forward", x.astype(np.float16)) is gpu_kernels.gelu_forward
    assert kernels.find("gelu_forward", x[:, ::2]) is None, "a strided view"
    assert kernels.find("gelu_forward", x.astype(np.int64)) is None, "an integer array"
    assert kernels.find("gelu_backward", x, x.astype(np.float64)) is None, "mixed dtypes"
    assert kernels.find("gelu_backward", x, np.ones((4, 6), np.float32)) is None, "a host array among them"
    monkeypatch.setattr(gpu_kernels, "enabled", False)
    assert kernels.find("gelu_forward", x) is None, "turned off"


@requires_real_gpu
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_gelu(dtype, tol, numpy_path):
    rng = np.random.default_rng(0)
    x, gy = (rng.standard_normal((3, 5, 7)) * 3).astype(dtype), rng.standard_normal((3, 5, 7)).astype(dtype)
    y = gpu_kernels.gelu_forward(_gpu(x))
    gx = gpu_kernels.gelu_backward(_gpu(gy), _gpu(x))
    rd = _ref_dtype(dtype)
    want_y, (want_gx,) = _forward_backward(F.gelu, [x], gy, rd)
    _assert_close(y, want_y, dtype, tol, "y")
    _assert_close(gx, want_gx, dtype, tol, "gx")


@requires_real_gpu
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("n, c", [(1, 1), (7, 16), (5, 33), (3, 768), (2, 1500), (600, 40)])
def test_layer_norm(n, c, dtype, tol, numpy_path):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, c)) * 2 + 1).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    gy = rng.standard_normal((n, c)).astype(dtype)
    y, xhat, rstd = gpu_kernels.layer_norm_forward(_gpu(x), _gpu(w), _gpu(b), 1e-5)
    gx, gw, gb = gpu_kernels.layer_norm_backward(_gpu(gy), xhat, rstd, _gpu(w))
    want_y, want_grads = _forward_backward(lambda *t: F.layer_norm(*t, eps=1e-5), [x, w, b], gy, _ref_dtype(dtype))
    _assert_close(y, want_y, dtype, tol, "y")
    _assert_close(rstd, 1 / np.sqrt(x.astype(np.float64).var(axis=1) + 1e-5), dtype, tol, "rstd")
    for name, got, want in zip(("gx", "gw", "gb"), (gx, gw, gb), want_grads):
        _assert_close(got, want, dtype, tol, name)


@requires_real_gpu
def test_float16_is_accumulated_in_float32(numpy_path):
    # the row sums here (~150000) overflow float16 (max 65504): only float32 accumulation gets them right
    x = (100 + np.random.default_rng(2).standard_normal((4, 1500))).astype(np.float16)
    w, b = np.ones(1500, np.float16), np.zeros(1500, np.float16)
    y, _, _ = gpu_kernels.layer_norm_forward(_gpu(x), _gpu(w), _gpu(b), 1e-5)
    want = F.layer_norm(*(tensor_on("cpu", a, np.float64) for a in (x, w, b))).numpy()
    _assert_close(y, want, "float16", 5e-3, "y")


@requires_real_gpu
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("n, c, ignored", [(6, 10, [1, 4]), (4, 3000, []), (1, 1, [])])
def test_softmax_cross_entropy(n, c, ignored, dtype, tol, numpy_path):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    targets = rng.integers(0, c, n)
    targets[ignored] = -1
    loss, probs = gpu_kernels.softmax_cross_entropy_forward(_gpu(logits), _gpu(targets), -1)
    grad = gpu_kernels.softmax_cross_entropy_backward_(probs, _gpu(targets), -1, _gpu(np.asarray(0.7, dtype)))
    rd = _ref_dtype(dtype)
    ref_logits = tensor_on("cpu", logits.astype(rd), rd, requires_grad=True)
    ref_loss = F.cross_entropy(ref_logits, targets, ignore_index=-1)
    (ref_loss * 0.7).backward()
    _assert_close(loss, ref_loss.numpy(), dtype, tol, "loss")
    _assert_close(grad, ref_logits.grad.numpy(), dtype, tol, "gradient")


@requires_real_gpu
def test_cross_entropy_with_every_target_ignored_is_nan_with_zero_gradient():
    logits, targets = _gpu(np.ones((3, 4), np.float32)), _gpu(np.full(3, -1))
    loss, probs = gpu_kernels.softmax_cross_entropy_forward(logits, targets, -1)
    grad = gpu_kernels.softmax_cross_entropy_backward_(probs, targets, -1, 1.0)
    assert np.isnan(backend.to_numpy(loss))
    assert not backend.to_numpy(grad).any()


@requires_real_gpu
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("shape, causal", [((2, 5, 5), True), ((3, 2, 7), True), ((2, 4, 6), False),
                                           ((1, 3, 1100), True), ((2, 1, 1), True)])
def test_attention_softmax(shape, causal, dtype, tol, numpy_path):
    rng = np.random.default_rng(4)
    scores, gatt = (rng.standard_normal(shape) * 2).astype(dtype), rng.standard_normal(shape).astype(dtype)
    att = _gpu(scores)
    gpu_kernels.attention_softmax_(att, 0.37, causal)
    want = scores.astype(_ref_dtype(dtype))
    F._softmax_scores_(want, 0.37, causal)
    _assert_close(att, want, dtype, tol, "probabilities")
    if causal:  # query i sees keys 0 .. Tk - Tq + i: exactly 0 after that
        t_q, t_k = shape[1:]
        future = np.arange(t_k)[None, :] > np.arange(t_k - t_q, t_k)[:, None]
        assert not backend.to_numpy(att)[:, future].any(), "a masked key got probability"
    g = _gpu(gatt)
    gpu_kernels.attention_softmax_backward_(g, att, 0.37)
    want_g = gatt.astype(_ref_dtype(dtype))
    F._softmax_scores_backward_(want_g, backend.to_numpy(att).astype(want_g.dtype), 0.37)
    _assert_close(g, want_g, dtype, tol, "score gradient")


@requires_real_gpu
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_adamw(dtype, tol, numpy_path):
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(1000).astype(dtype) for _ in range(3)]
    start[2] = np.abs(start[2])  # exp_avg_sq is non-negative
    on_gpu, on_cpu = [_gpu(a) for a in start], [a.copy() for a in start]
    for step in (1, 2, 3):
        grad = rng.standard_normal(1000).astype(dtype)
        bias_c1, bias_c2_sqrt = 1 - 0.9**step, math.sqrt(1 - 0.99**step)
        gpu_kernels.adamw_(on_gpu[0], _gpu(grad), on_gpu[1], on_gpu[2], 1e-2, 0.9, 0.99, 1e-8, 0.1,
                           bias_c1, bias_c2_sqrt)
        adamw_update_(on_cpu[0], grad.copy(), on_cpu[1], on_cpu[2], 1e-2, 0.9, 0.99, 1e-8, 0.1, step)
    for name, got, want in zip(("param", "exp_avg", "exp_avg_sq"), on_gpu, on_cpu):
        _assert_close(got, want, dtype, tol, name)
