"""Tests of the GPT: equal to a PyTorch GPT-2 on the same weights, trains, generates with a KV cache."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinygrad_gpt
from helpers import requires_torch
from tinygrad_gpt import Tensor, backend, gradcheck, nn
from tinygrad_gpt.model import GPT, GPTConfig, KVCache, _Sampler
from tinygrad_gpt.optim import AdamW

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)

VARIANTS = {
    "gpt2": {},
    "post_norm": dict(norm="post"),
    "relu": dict(activation="relu"),
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "untied_no_bias": dict(tie_weights=False, bias=False),
}


def tiny_gpt(seed: int = 0, randomize: bool = True, **overrides) -> GPT:
    """A tiny GPT; with randomize, every parameter (LayerNorms and biases too) gets random values."""
    tinygrad_gpt.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    if randomize:
        rng = np.random.default_rng(seed)
        state = {}
        for name, value in model.state_dict().items():
            noise = 0.3 * rng.standard_normal(value.shape)
            state[name] = 1.0 + noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else noise
        model.load_state_dict(state)
    return model


def tokens(shape, vocab=TINY["vocab_size"], seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


# ---------------------------------------------------------------- the PyTorch reference GPT (benchmarks/torch_gpt.py)


def torch_reference(model: GPT):
    """The shared PyTorch reference GPT, same config, in float64 on a copy of `model`'s weights."""
    from torch_gpt import TorchGPT, TorchGPTConfig

    reference = TorchGPT(TorchGPTConfig.from_config(model.config)).double()
    reference.load_gpt2_state_dict({name: backend.to_numpy(v) for name, v in model.state_dict().items()})
    return reference


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-300))


@requires_torch
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_loss_and_every_gradient_equal_torch_reference(float64, variant):
    import torch

    model = tiny_gpt(**VARIANTS[variant])
    idx, targets = tokens((3, 7)), tokens((3, 7), seed=1)
    targets[0, :2] = -1  # ignored positions
    logits, loss = model(idx, targets)
    loss.backward()

    reference = torch_reference(model)
    ref_logits, ref_loss = reference(torch.as_tensor(idx), torch.as_tensor(targets))
    ref_loss.backward()
    assert logits.dtype == np.float64
    assert rel_err(logits.numpy(), ref_logits.detach().numpy()) < 1e-8
    assert rel_err(loss.item(), ref_loss.item()) < 1e-8
    named, ref_grads = dict(model.named_parameters()), reference.gpt2_arrays(grad=True)
    assert named.keys() == ref_grads.keys()
    for name, p in named.items():
        assert rel_err(p.grad.numpy(), ref_grads[name]) < 1e-8, f"gradient of {name}"


@requires_torch
@pytest.mark.parametrize("variant", ["gpt2", "post_norm", "sinusoidal"])
def test_greedy_generation_equals_torch_reference(float64, variant):
    import torch

    model = tiny_gpt(**VARIANTS[variant])
    prompt = tokens((2, 3))
    ours = model.generate(prompt, max_new_tokens=9, temperature=0)  # 12 tokens: the context is cropped at 8
    ref = torch_reference(model).generate_greedy(torch.as_tensor(prompt), max_new_tokens=9)  # no KV cache
    assert isinstance(ours, np.ndarray) and ours.dtype.kind == "i" and ours.shape == (2, 12)
    np.testing.assert_array_equal(ours, ref.numpy())


def test_transformers_gpt2_gives_the_same_logits(float64):
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    transformers = pytest.importorskip("transformers", reason="transformers not installed: optional GPT2LMHeadModel")
    model = tiny_gpt()
    c = model.config
    hf_config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
    )
    hf = transformers.GPT2LMHeadModel(hf_config).double().eval()
    state = {f"transformer.{k}": torch.tensor(v) for k, v in model.state_dict().items()}  # Conv1D is (in, out) too
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("attn.bias", "attn.masked_bias")) for k in missing)
    idx = tokens((2, 8))
    with torch.no_grad():
        ref = hf(torch.as_tensor(idx)).logits.numpy()
    assert rel_err(model(idx)[0].numpy(), ref) < 1e-8


# ---------------------------------------------------------------- training


def overfit(model: GPT, steps: int, lr: float = 1e-2) -> list[float]:
    idx = tokens((4, model.config.block_size + 1), vocab=model.config.vocab_size, seed=3)
    idx[:, 0] = np.arange(4)  # distinct first tokens: every target is determined by its prefix
    idx, targets = idx[:, :-1], idx[:, 1:]
    optimizer = AdamW(model.param_groups(weight_decay=0.0), lr=lr)
    losses = []
    for _ in range(steps):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("variant", ["gpt2", "post_norm", "relu", "sinusoidal"])
def test_tiny_gpt_overfits_one_batch(variant):
    model = tiny_gpt(randomize=False, vocab_size=16, block_size=16, n_embd=32, **VARIANTS[variant])
    losses = overfit(model, steps=150)
    assert losses[0] > 2.0  # about ln(16) at initialisation
    assert losses[-1] < 0.01, f"{variant}: loss {losses[-1]:.4f} after {len(losses)} steps"


@pytest.mark.parametrize("variant", ["post_norm", "relu", "sinusoidal", "untied_no_bias"])
def test_variants_pass_gradcheck(float64, variant):
    model = tiny_gpt(**VARIANTS[variant])
    idx, targets = tokens((2, 5)), tokens((2, 5), seed=1)
    # max_elements=0: every parameter is checked along one random direction (two forwards each)
    gradcheck(lambda *params: model(idx, targets)[1], *model.parameters(), max_elements=0)


# ---------------------------------------------------------------- generation and the KV cache


@pytest.mark.parametrize("variant", ["gpt2", "post_norm", "sinusoidal"])
def test_kv_cache_logits_equal_full_forward(float64, variant):
    model = tiny_gpt(**VARIANTS[variant])
    idx = tokens((2, 8))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, np.float64, model.device)
    with tinygrad_gpt.no_grad():
        parts = [model(idx[:, :3], kv_cache=cache)[0]]  # the prompt, then one position at a time
        parts += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(3, 8)]
        with pytest.raises(ValueError, match="after 8 cached positions is longer than block_size 8"):
            model(idx[:, :1], kv_cache=cache)
    np.testing.assert_allclose(np.concatenate([p.numpy() for p in parts], axis=1), full.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="no_grad"):
        model(idx[:, :1], kv_cache=KVCache(model.config, 2, np.float64, model.device))


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0), dict(temperature=0.8, seed=1), dict(top_k=3, seed=2), dict(top_p=0.8, seed=3)],
    ids=["greedy", "temperature", "top_k", "top_p"],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generation_with_cache_equals_without(sampling, dtype):
    tinygrad_gpt.set_default_dtype(dtype)
    model = tiny_gpt()
    prompt = tokens((3, 2))
    cached = model.generate(prompt, max_new_tokens=12, **sampling)  # crosses block_size = 8
    uncached = model.generate(prompt, max_new_tokens=12, use_cache=False, **sampling)
    assert cached.shape == (3, 14)
    np.testing.assert_array_equal(cached[:, :2], prompt)
    np.testing.assert_array_equal(cached, uncached)


def test_cache_makes_each_new_token_one_position_of_work(monkeypatch):
    model = tiny_gpt()
    lengths = []
    original = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda idx, *a: lengths.append(np.shape(idx)[1]) or original(idx, *a))
    model.generate(tokens((1, 3)), max_new_tokens=8)
    # the prompt once, then one position per token until the cache is full, then the cropped context
    assert lengths == [3, 1, 1, 1, 1, 1, 8, 8]


def test_sampling_seeds_and_limits():
    model = tiny_gpt()
    prompt = tokens((2, 3))
    a = model.generate(prompt, 10, seed=7)
    np.testing.assert_array_equal(a, model.generate(prompt, 10, seed=7))
    assert not np.array_equal(a, model.generate(prompt, 10, seed=8))
    greedy = model.generate(prompt, 10, temperature=0)
    np.testing.assert_array_equal(model.generate(prompt, 10, top_k=1, seed=1), greedy)
    np.testing.assert_array_equal(model.generate(prompt, 10, top_p=1e-6, seed=1), greedy)
    tinygrad_gpt.manual_seed(4)
    b = model.generate(prompt, 10)
    tinygrad_gpt.manual_seed(4)
    np.testing.assert_array_equal(b, model.generate(prompt, 10))
    np.testing.assert_array_equal(model.generate(Tensor(prompt), 0), prompt)


def test_sampler_draws_from_the_softmax_restricted_by_top_k_and_top_p():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))[None].repeat(20000, axis=0)
    draws = _Sampler(1.0, None, None, seed=0, device="cpu")(logits)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, [0.5, 0.25, 0.15, 0.1], atol=0.015)
    top2 = _Sampler(1.0, 2, None, seed=0, device="cpu")(logits)
    np.testing.assert_allclose(np.bincount(top2, minlength=4) / 20000, [2 / 3, 1 / 3, 0, 0], atol=0.015)
    nucleus = _Sampler(1.0, None, 0.8, seed=0, device="cpu")(logits)  # 0.5 + 0.25 < 0.8: three tokens kept
    np.testing.assert_allclose(np.bincount(nucleus, minlength=4) / 20000, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0],
                               atol=0.015)
    cold = _Sampler(0.1, None, None, seed=0, device="cpu")(logits)
    assert (cold == 0).mean() > 0.99


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(temperature=-1), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=1.5), "top_p")],
)
def test_generate_rejects_bad_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_gpt().generate(tokens((1, 2)), 3, **kwargs)


# ---------------------------------------------------------------- structure, init, config


def test_parameter_names_and_shapes_are_gpt2s():
    model = tiny_gpt(randomize=False)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    C, V = TINY["n_embd"], TINY["vocab_size"]
    expected = {"wte.weight": (V, C), "wpe.weight": (TINY["block_size"], C)}
    for i in range(TINY["n_layer"]):
        expected |= {f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
                     f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
                     f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
                     f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
                     f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
                     f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,)}
    expected |= {"ln_f.weight": (C,), "ln_f.bias": (C,)}
    assert list(shapes.items()) == list(expected.items())  # same names, shapes and order


def test_variant_structures():
    assert "wpe.weight" not in tiny_gpt(randomize=False, pos_encoding="sinusoidal").state_dict()
    assert "ln_f.weight" not in tiny_gpt(randomize=False, norm="post").state_dict()
    untied = tiny_gpt(randomize=False, tie_weights=False, bias=False).state_dict()
    assert untied["lm_head.weight"].shape == (TINY["n_embd"], TINY["vocab_size"])
    assert not any(k.endswith("bias") for k in untied)
    relu = tiny_gpt(randomize=False, activation="relu")
    assert isinstance(relu.h[0].mlp.act, nn.ReLU)


def test_tied_head_shares_the_token_embedding():
    model = tiny_gpt()
    idx = tokens((1, 4))
    before = model(idx)[0].numpy()
    model.wte.weight.data[...] *= 2.0  # the head reads the same matrix
    assert not np.allclose(model(idx)[0].numpy(), before)
    assert model.num_parameters() == sum(v.size for v in model.state_dict().values())


def test_gpt2_initialisation():
    tinygrad_gpt.manual_seed(0)
    config = GPTConfig(vocab_size=300, block_size=64, n_layer=4, n_head=4, n_embd=64)
    model = GPT(config)
    params = dict(model.named_parameters())
    for name in ["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.3.mlp.c_fc.weight"]:
        assert abs(params[name].numpy().std() - 0.02) < 0.002, name
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name in ["h.0.attn.c_proj.weight", "h.2.mlp.c_proj.weight"]:
        assert abs(params[name].numpy().std() - proj_std) < 0.1 * proj_std, name
    for name, p in params.items():
        if name.endswith("bias"):
            np.testing.assert_array_equal(p.numpy(), 0.0, err_msg=name)
        if ".ln_" in name and name.endswith("weight"):
            np.testing.assert_array_equal(p.numpy(), 1.0, err_msg=name)
    assert all(p.dtype == np.float32 for p in params.values())


def test_param_groups_decay_matrices_only():
    model = tiny_gpt(randomize=False)
    decay, no_decay = model.param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.parameters())
    assert model.wte.weight in decay["params"]


def test_dropout_only_in_training_mode():
    model = tiny_gpt(dropout=0.2)
    idx = tokens((2, 6))
    assert not np.array_equal(model(idx)[0].numpy(), model(idx)[0].numpy())
    model.eval()
    np.testing.assert_array_equal(model(idx)[0].numpy(), model(idx)[0].numpy())


def test_forward_errors():
    model = tiny_gpt(randomize=False)
    with pytest.raises(ValueError, match="sequence length 9 is longer than block_size 8"):
        model(tokens((1, 9)))
    with pytest.raises(TypeError, match="integers"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        model(np.array([[0, 11]]))
    logits, loss = model(Tensor(tokens((2, 4))))
    assert logits.shape == (2, 4, 11) and loss is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_embd=10, n_head=3), "not divisible"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(activation="swish"), "activation"),
        (dict(norm="sandwich"), "norm"),
        (dict(pos_encoding="alibi"), "pos_encoding"),
        (dict(bias="yes"), "bias"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **overrides})


def test_presets():
    sizes = {name: (c.n_layer, c.n_head, c.n_embd) for name in ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
             for c in [GPTConfig.from_preset(name)]}
    assert sizes == {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
                     "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    assert GPTConfig.from_preset("gpt2", dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="unknown preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")


@pytest.mark.slow  # ~3-5 s: 500 MB of float32 drawn from the generator
def test_gpt2_124m_builds_with_the_published_parameter_count():
    model = GPT(GPTConfig.from_preset("gpt2"))
    assert model.num_parameters() == 124_439_808
    state = model.state_dict()
    assert len(state) == 2 + 12 * 12 + 2
    assert state["wte.weight"].shape == (50257, 768) and state["h.11.mlp.c_proj.weight"].shape == (3072, 768)
