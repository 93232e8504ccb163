"""The traps a learner falls into, each fixed: what used to fail silently or with a puzzling message."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tinygrad_gpt
from helpers import compare_with_torch, requires_torch
from tinygrad_gpt import GPT, Function, GPTConfig, Tensor, nn
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.optim import SGD

REPO = Path(__file__).resolve().parent.parent
# subprocesses run on NumPy (the stand-in for CuPy exists only inside this test process)
PLAIN_NUMPY = {"PYTHONPATH": str(REPO), "TINYGRAD_GPT_BACKEND": "numpy", "TINYGRAD_GPT_TEST_FAKE_CUPY": "0"}

# ---------------------------------------------------------------- NumPy arrays wherever a Tensor is


def test_layers_and_functions_accept_numpy_arrays():
    x = np.ones((4, 2), np.float32)
    assert nn.Linear(2, 3)(x).shape == (4, 3)
    assert nn.LayerNorm(2)(x).shape == (4, 2)
    assert nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1), nn.Sigmoid())(x).shape == (4, 1)
    assert F.linear(x, np.ones((2, 3)), np.zeros(3)).dtype == np.float32
    assert F.mse_loss(np.ones(3), np.zeros(3)).item() == 1.0
    assert F.dropout(x, 0.5, training=False).shape == (4, 2)
    assert F.gelu(x).shape == F.softmax(x).shape == (4, 2)
    q = np.random.default_rng(0).standard_normal((1, 1, 3, 2))
    assert F.scaled_dot_product_attention(q, q, q).shape == (1, 1, 3, 2)
    w = Tensor(np.ones((2, 3)), requires_grad=True)
    F.linear(x, w).sum().backward()  # the array input is a constant; the weight gets its gradient
    np.testing.assert_allclose(w.grad.numpy(), np.full((2, 3), 4.0))


def test_function_apply_takes_numbers_and_arrays():
    class Scale(Function):
        """x * s."""

        def forward(self, x, s):
            self.s = s
            return x * s

        def backward(self, gy):
            return gy * self.s, None

    x = Tensor([1.0, 2.0], requires_grad=True)
    y = Scale.apply(x, 2.0)
    z = Scale.apply(x, np.array([3.0, 4.0]))
    assert y.dtype == z.dtype == np.float32  # the constants took x's dtype
    (y.sum() + z.sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 6.0])
    with pytest.raises(TypeError, match="Scale.apply: input 1 is a str"):
        Scale.apply(x, "2")


# ---------------------------------------------------------------- == and != are elementwise


def test_eq_and_ne_are_elementwise_and_tensors_stay_hashable():
    pred, y = Tensor([1, 2, 3]), np.array([1, 0, 3])
    assert (pred == y).tolist() == [True, False, True] and (pred != y).tolist() == [False, True, False]
    assert (pred == y).numpy().mean() == pytest.approx(2 / 3)  # accuracy, as learners write it
    assert (pred == 2).tolist() == [False, True, False] and pred.eq(pred).numpy().all()
    assert (pred == None) is False and (pred != "a") is True  # noqa: E711  (unrelated types: identity)
    a, b = Tensor([1.0]), Tensor([1.0])
    assert len({a, b}) == 2 and {a: 1, b: 2}[b] == 2  # hashed by identity
    assert bool(a == b) and not bool(a != b)
    with pytest.raises(ValueError, match="ambiguous"):
        bool(pred == y)


def test_parameter_dedup_and_optimizers_work_with_elementwise_eq():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # the same layer twice: its parameters once
    assert len(model.parameters()) == 2
    with pytest.raises(ValueError, match="same Tensor"):
        SGD([shared.weight, shared.weight], lr=0.1)
    opt = SGD(model.parameters(), lr=0.1)
    model(np.ones((1, 2))).sum().backward()
    opt.step()


# ---------------------------------------------------------------- parameters in containers; frozen ones


class Containers(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = [Tensor(np.ones(2), requires_grad=True) for _ in range(3)]
        self.pair = (Tensor(np.ones(1), requires_grad=True), nn.Linear(1, 1))
        self.layers = {"a": nn.Linear(2, 2), "b": [nn.Linear(2, 1, bias=False)]}
        self.config = {"lr": 0.1, "name": "x"}  # not parameters: ignored


def test_parameters_in_lists_tuples_and_dicts_are_found_and_named():
    m = Containers()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["w.0", "w.1", "w.2", "pair.0", "pair.1.weight", "pair.1.bias", "layers.a.weight",
                     "layers.a.bias", "layers.b.0.weight"]
    fresh = Containers()
    fresh.load_state_dict(m.state_dict())
    assert "Linear" in repr(m)


def test_a_set_of_parameters_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = {Tensor(np.ones(2), requires_grad=True)}

    with pytest.raises(TypeError, match="set"):
        Bad().parameters()


def test_frozen_parameters_stay_in_state_dict_and_load_into_a_fresh_model():
    config = GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4)
    tinygrad_gpt.manual_seed(0)
    model = GPT(config)
    model.wte.weight.requires_grad_(False)  # freeze the embeddings, fine-tune the rest
    state = model.state_dict()
    assert "wte.weight" in state and len(state) == len(GPT(config).state_dict())
    fresh = GPT(config)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.wte.weight.numpy(), model.wte.weight.numpy())
    opt = SGD(model.parameters(), lr=0.1)  # the frozen weight gets no gradient, so it is skipped
    before = model.wte.weight.numpy().copy()
    _, loss = model(np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))
    loss.backward()
    opt.step()
    np.testing.assert_array_equal(model.wte.weight.numpy(), before)


# ---------------------------------------------------------------- custom Function mistakes


class TwoInputs(Function):
    """a * b with a backward that makes the mistake named by `mistake`."""

    mistake = "count"

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        if self.mistake == "count":
            return gy * self.b  # forgot the gradient for b
        if self.mistake == "shape":
            return (gy * self.b)[:1], gy * self.a
        if self.mistake == "dtype":
            return (gy * self.b).astype(np.float64), gy * self.a
        return Tensor(gy * self.b), gy * self.a  # a Tensor instead of an array


@pytest.mark.parametrize("mistake, error, match", [
    ("count", ValueError, r"TwoInputs.backward returned 1 gradient\(s\) for 2 input\(s\)"),
    ("shape", ValueError, r"TwoInputs.backward: the gradient for input 0 has shape \(1,\), .* shape \(3,\)"),
    ("dtype", TypeError, "TwoInputs.backward: the gradient for input 0 has dtype float64, .* float32"),
    ("tensor", TypeError, "TwoInputs.backward: the gradient for input 0 is a Tensor"),
])
def test_custom_function_mistakes_name_the_op_the_input_and_the_shapes(mistake, error, match, monkeypatch):
    monkeypatch.setattr(TwoInputs, "mistake", mistake)
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(error, match=match):
        TwoInputs.apply(a, b).sum().backward()


def test_the_engine_checks_hold_under_python_O():
    code = textwrap.dedent("""
        import numpy as np
        from tinygrad_gpt import Function, Tensor

        class Bad(Function):
            def forward(self, a, b):
                return a * b

            def backward(self, gy):
                return gy[:1], gy

        a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
        try:
            Bad.apply(a, b).sum().backward()
        except ValueError as e:
            print("raised:", e)
    """)
    env = {**os.environ, **PLAIN_NUMPY}
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "raised: Bad.backward: the gradient for input 0 has shape (1,)" in out.stdout


# ---------------------------------------------------------------- cross_entropy, attention, generate


def test_cross_entropy_says_which_targets_it_needs_and_takes_one_example():
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3\) need targets of shape \(2,\)"):
        F.cross_entropy(Tensor(np.ones((2, 3))), np.array([[1, 0, 0], [0, 1, 0]]))  # one-hot rows, not indices
    loss = F.cross_entropy(Tensor([1.0, 2.0]), np.array(1))  # (C,) scores and a () class, as torch allows
    assert loss.shape == () and loss.item() == pytest.approx(np.log(1 + np.exp(-1.0)), rel=1e-6)


@requires_torch
def test_attention_defaults_and_masks_match_torch():
    import torch

    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((2, 1, 5, 4)), rng.standard_normal((2, 1, 5, 4))
    tsdpa = torch.nn.functional.scaled_dot_product_attention
    compare_with_torch(F.scaled_dot_product_attention, tsdpa, q, k, v)  # not causal by default
    keep = rng.random((3, 5)) > 0.3
    keep[:, 0] = True  # every query sees at least one key
    compare_with_torch(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                       lambda q, k, v, m: tsdpa(q, k, v, attn_mask=m), q, k, v, keep)  # True: attend
    bias = rng.standard_normal((2, 1, 3, 5))
    compare_with_torch(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                       lambda q, k, v: tsdpa(q, k, v, attn_mask=torch.tensor(bias)), q, k, v)  # float: added
    with pytest.raises(ValueError, match="not both"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=True)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 5\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((4, 5), bool))


def test_generate_takes_one_sequence_and_top_k_0_means_no_limit():
    tinygrad_gpt.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8))
    ids = np.array([1, 2, 3])  # what a tokenizer's encode returns
    out = model.generate(ids, 4, seed=0)
    assert out.shape == (7,) and (out[:3] == ids).all()
    np.testing.assert_array_equal(out, model.generate(ids[None], 4, seed=0)[0])
    np.testing.assert_array_equal(model.generate(ids, 6, top_k=0, seed=1), model.generate(ids, 6, seed=1))
    with pytest.raises(ValueError, match="top_k"):
        model.generate(ids, 1, top_k=-1)


def test_min_of_unsigned_integers():
    ids = Tensor(np.array([[3, 1], [2, 7]], dtype=np.uint16))  # CharTokenizer's id dtype
    assert ids.min().item() == 1 and ids.min(axis=0).tolist() == [2, 1] and ids.max().item() == 7


def test_a_recursive_no_grad_function_restores_recording():
    @tinygrad_gpt.no_grad()
    def depth(n: int) -> int:
        return 0 if n == 0 else 1 + depth(n - 1)  # the decorator's one instance is entered twice

    assert depth(2) == 2 and tinygrad_gpt.is_grad_enabled()
    assert (Tensor([1.0], requires_grad=True) * 2).requires_grad


# ---------------------------------------------------------------- the host process


def test_import_does_not_tune_malloc_but_the_training_cli_does(monkeypatch, capsys):
    code = textwrap.dedent("""
        import ctypes
        calls = []

        class Spy(ctypes.CDLL):
            def __getattr__(self, name):
                calls.append(name)
                return super().__getattr__(name)

        ctypes.CDLL = Spy
        import tinygrad_gpt, tinygrad_gpt.model, tinygrad_gpt.nn, tinygrad_gpt.optim
        print("import:", "mallopt" in calls)
        tinygrad_gpt.backend.tune_malloc()
        print("tune_malloc:", "mallopt" in calls)
    """)
    env = {**os.environ, **PLAIN_NUMPY, "TINYGRAD_GPT_MALLOC": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "import: False" in out.stdout
    if sys.platform.startswith("linux"):
        assert "tune_malloc: True" in out.stdout

    from tinygrad_gpt import backend, train

    calls = []
    monkeypatch.setattr(backend, "tune_malloc", lambda: calls.append(1))
    assert train.main(["--help"]) == 0
    assert calls == [1]
