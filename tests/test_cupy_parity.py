"""CuPy parity: every op's forward values and gradients on the GPU equal NumPy's on the same inputs.

Runs the same table of ops as the PyTorch reference tests (test_ops_torch.CASES) on both devices.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinygrad_gpt
from tinygrad_gpt import Tensor, backend, manual_seed
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.optim import AdamW, clip_grad_norm_

if not backend.cupy_available():
    pytest.skip("CuPy with an NVIDIA GPU is not available (pip install \"tinygrad_gpt[gpu]\" on a CUDA machine)",
                allow_module_level=True)

from test_ops_torch import CASES, randn  # noqa: E402  (after the skip: that table is what we run)

from helpers import tensor_on  # noqa: E402


def run_on(device: str, fn, arrays, dtype=np.float64, seed=0):
    """Outputs and float-input gradients (as host arrays) of sum(fn(*inputs) * w) with inputs on `device`."""
    inputs = []
    for a in arrays:
        a = np.asarray(a)
        is_float = a.dtype.kind == "f"
        inputs.append(tensor_on(device, a, dtype if is_float else None, requires_grad=is_float))
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    rng = np.random.default_rng(seed)
    loss = None
    for out in outs:
        assert out.device == device, f"an output on {out.device}, inputs on {device}"
        w = tensor_on(device, rng.standard_normal(out.shape), dtype)
        term = (out * w).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    grads = []
    for t in inputs:
        if t.requires_grad and t.grad is not None:
            assert t.grad.device == device and t.grad.dtype == dtype
            grads.append(t.grad.numpy())
        else:
            grads.append(None)
    return [o.numpy() for o in outs], grads


def _assert_same(expected, actual, rtol, atol):
    exp_outs, exp_grads = expected
    outs, grads = actual
    for k, (e, a) in enumerate(zip(exp_outs, outs)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"output {k}")
    for k, (e, a) in enumerate(zip(exp_grads, grads)):
        assert (e is None) == (a is None), f"gradient {k}: present on one device only"
        if e is not None:
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"gradient of input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_cupy_matches_numpy_float64(name):
    our_fn, _, arrays = CASES[name]
    _assert_same(run_on("cpu", our_fn, arrays), run_on("cuda", our_fn, arrays), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["matmul batched", "softmax", "log_softmax", "gelu", "var axis keepdims",
                                  "index int array repeats", "max ties share"])
def test_cupy_matches_numpy_float32(name):
    our_fn, _, arrays = CASES[name]
    cpu = run_on("cpu", our_fn, arrays, dtype=np.float32)
    _assert_same(cpu, run_on("cuda", our_fn, arrays, dtype=np.float32), rtol=1e-4, atol=1e-5)


def test_mixing_devices_is_a_clear_error():
    a = tensor_on("cpu", np.ones(3))
    b = a.to("cuda")
    with pytest.raises(ValueError, match="different devices"):
        a + b


@pytest.mark.parametrize("index, axis, bad", [
    (np.array([0, 3]), 0, 3),  # CuPy would read row 0 again
    ((slice(None), np.array([-1, -5])), 1, -5),
    ((Ellipsis, np.array([[4]])), 1, 4),
    ([1, 7], 0, 7),
])  # fmt: skip
def test_out_of_range_integer_indices_raise_on_the_gpu_too(index, axis, bad):
    x = tensor_on("cuda", np.arange(12.0).reshape(3, 4))
    with pytest.raises(IndexError, match=f"index {bad} is out of range for axis {axis}"):
        x[index]


def test_in_range_integer_indices_on_the_gpu_give_numpy_values_and_gradients():
    index = (np.array([2, -1, 0, 2]), slice(1, 3))
    x = tensor_on("cuda", np.arange(12.0).reshape(3, 4), requires_grad=True)
    y = x[index]
    np.testing.assert_array_equal(y.numpy(), np.arange(12.0).reshape(3, 4)[index])
    y.sum().backward()
    expected = np.zeros((3, 4))
    np.add.at(expected, index, 1.0)
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_comparisons_take_host_arrays_and_refuse_tensors_on_another_device():
    a, b = np.array([1.0, 5.0, 3.0]), np.array([2.0, 5.0, 1.0])
    x = tensor_on("cuda", a)
    for ours, numpy_op in (("__lt__", "__lt__"), ("__le__", "__le__"), ("__gt__", "__gt__"), ("__ge__", "__ge__"),
                           ("eq", "__eq__")):
        got = getattr(x, ours)(b)
        assert got.device == "cuda"
        np.testing.assert_array_equal(got.numpy(), getattr(a, numpy_op)(b))
    with pytest.raises(ValueError, match="different devices"):
        x.eq(tensor_on("cpu", a))


def test_a_cupy_array_made_before_the_library_loaded_cupy_is_on_the_gpu(monkeypatch):
    device_array = backend.to_device(np.ones(3), "cuda")
    monkeypatch.setattr(backend, "_cupy", None)  # as on the numpy backend before anything needed CuPy
    assert backend.device_of(device_array) == "cuda" and Tensor(device_array).device == "cuda"


# ---------------------------------------------------------------- fused functions and a training run

_TARGETS = np.array([[1, 4, 0, 7, -1, 2, 9, 3], [5, -1, 6, 6, 0, 8, 1, 2]])  # -1: ignored
FUSED = {
    "linear": (F.linear, [randn(2, 8, 16), randn(16, 24), randn(24)]),  # weight (in, out)
    "layer_norm": (F.layer_norm, [randn(2, 8, 16) * 3 + 1, randn(16), randn(16)]),
    "gelu": (F.gelu, [randn(2, 8, 16) * 2]),
    "cross_entropy": (lambda x, t: F.cross_entropy(x, t), [randn(2, 8, 10) * 2, _TARGETS]),
    "embedding": (lambda i, w: F.embedding(i, w), [np.abs(_TARGETS), randn(10, 16)]),
    "causal_self_attention": (lambda qkv: F.causal_self_attention(qkv, 4), [randn(2, 8, 48)]),
    "scaled_dot_product_attention causal": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        [randn(2, 4, 8, 4), randn(2, 4, 8, 4), randn(2, 4, 8, 4)]),
    "scaled_dot_product_attention full": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=False),
        [randn(2, 4, 5, 4), randn(2, 4, 7, 4), randn(2, 4, 7, 4)]),
    "mse_loss": (F.mse_loss, [randn(3, 5), randn(3, 5)]),
    "mse_loss host target": (lambda p: F.mse_loss(p, np.linspace(-1, 1, 15).reshape(3, 5)), [randn(3, 5)]),
}


@pytest.mark.parametrize("name", list(FUSED))
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 2e-4)])
def test_fused_functions_match_numpy(name, dtype, tol):
    fn, arrays = FUSED[name]
    _assert_same(run_on("cpu", fn, arrays, dtype=dtype), run_on("cuda", fn, arrays, dtype=dtype), rtol=tol, atol=tol)


def _train_tiny_gpt(device: str, dtype, variant: dict, steps: int = 6):
    """The model, per-step losses and final weights of a tiny GPT trained with AdamW and clipping on `device`."""
    tinygrad_gpt.set_default_dtype(dtype)
    manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **variant))
    model.to(device)
    optimizer = AdamW(model.param_groups(0.1), lr=3e-3)
    x, y = np.random.default_rng(0).integers(0, 13, (2, 4, 8))  # one batch, learned by heart
    losses = []
    for _ in range(steps):
        _, loss = model(backend.asarray(x, device=device), backend.asarray(y, device=device))
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return model, losses, {name: backend.to_numpy(v) for name, v in model.state_dict().items()}


# GPT-2's layout, and one without biases (LayerNorm shifts by zeros) and with a sinusoidal position buffer
VARIANTS = {"gpt2": {}, "no bias, sinusoidal": {"bias": False, "pos_encoding": "sinusoidal"}}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_a_tiny_gpt_trains_the_same_on_both_devices(dtype, tol, variant):
    _, cpu_losses, cpu_weights = _train_tiny_gpt("cpu", dtype, VARIANTS[variant])
    gpu_model, gpu_losses, gpu_weights = _train_tiny_gpt("cuda", dtype, VARIANTS[variant])
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=tol)
    assert cpu_losses[-1] < cpu_losses[0]  # it did train
    for name, value in cpu_weights.items():
        np.testing.assert_allclose(gpu_weights[name], value, rtol=tol, atol=tol, err_msg=name)
    gpu_model.to("cpu")  # parameters, their gradients and buffers all come along
    assert {p.device for p in gpu_model.parameters()} == {p.grad.device for p in gpu_model.parameters()} == {"cpu"}
    assert {t.device for _, _, t in gpu_model._buffers()} <= {"cpu"}


def test_gpu_random_streams_replay_and_survive_a_checkpoint():
    def draw():
        return backend.to_numpy(backend.rand((5,), np.float32, device="cuda"))

    manual_seed(3)
    backend.start_gpu_stream(7)
    first = draw()
    backend.start_gpu_stream(7)
    np.testing.assert_array_equal(draw(), first)  # a stream replays from its start
    backend.start_gpu_stream(8)
    assert not np.array_equal(draw(), first)
    state = backend.get_rng_state()  # moves on to a fresh stream, which a resumed run starts too
    after_save = [draw(), draw()]
    manual_seed(99)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(np.stack([draw(), draw()]), np.stack(after_save))


def test_a_list_index_on_the_gpu_gives_numpy_values():
    x = tensor_on("cuda", np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(x[[2, 0, -1]].numpy(), np.arange(12.0).reshape(3, 4)[[2, 0, -1]])
