"""The modern recipe: RMSNorm, RoPE, QK-norm, ReLU^2, soft-capping, the zero-initialised head and the WSD schedule.

Each fused Function gets a hypothesis finite-difference check and a PyTorch reference; the whole
GPT with every option on is compared with a PyTorch implementation written here (logits and every
gradient, float64), and the KV cache is checked with RoPE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_gpt
from helpers import compare_with_torch, requires_torch
from tinygrad_gpt import Tensor, gradcheck, nn
from tinygrad_gpt.model import GPT, GPTConfig, KVCache
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.optim import AdamW, cosine_lr, wsd_lr

dims = st.integers(1, 3)


def _rand(seed, *shape, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _param(a):
    return Tensor(a, requires_grad=True, dtype=np.float64)


def _tables(T, hs, start=0):
    return F.rotary_tables(T, hs, start=start)


# ---------------------------------------------------------------- gradients (hypothesis)


@given(lead=st.lists(dims, max_size=3), c=st.integers(1, 5), eps=st.sampled_from([1e-5, 0.1]), seed=st.integers(0, 999))
def test_rms_norm_gradient(float64, lead, c, eps, seed):
    x, w = _rand(seed, *lead, c), _rand(seed + 1, c)
    assert gradcheck(lambda x, w: F.rms_norm(x, w, eps=eps), _param(x), _param(w))


@given(lead=st.lists(dims, max_size=2), t=dims, half=dims, start=st.integers(0, 5), seed=st.integers(0, 999))
def test_rotary_gradient(float64, lead, t, half, start, seed):
    cos, sin = _tables(t, 2 * half, start)
    assert gradcheck(lambda x: F.rotary(x, cos, sin), _param(_rand(seed, *lead, t, 2 * half)))


@given(b=dims, t=dims, n_head=dims, half=dims, norm=st.booleans(), rope=st.booleans(), seed=st.integers(0, 999))
def test_qk_norm_rotary_gradient(float64, b, t, n_head, half, norm, rope, seed):
    hs = 2 * half
    qkv = _param(_rand(seed, b, t, 3 * n_head * hs))
    weights = [_param(_rand(seed + 1, hs)), _param(_rand(seed + 2, hs))] if norm else []
    cos, sin = _tables(t, hs) if rope else (None, None)

    def fn(qkv, *w):
        return F.qk_norm_rotary(qkv, n_head, *(w or (None, None)), cos=cos, sin=sin, eps=1e-5)

    assert gradcheck(fn, qkv, *weights)


@given(shape=st.lists(dims, max_size=3), cap=st.floats(0.5, 5.0), seed=st.integers(0, 999))
def test_relu2_and_softcap_gradients(float64, shape, cap, seed):
    x = _rand(seed, *shape, scale=2.0)
    x = np.where(np.abs(x) < 1e-3, 0.5, x)  # relu2's second derivative jumps at 0: keep the differences off it
    assert gradcheck(F.relu2, _param(x))
    assert gradcheck(lambda x: F.softcap(x, cap), _param(x))


# ---------------------------------------------------------------- references (PyTorch)


def torch_rotary(x, base=10000.0, start=0):
    """RoPE in the rotate-half layout (GPT-NeoX, Hugging Face Llama) on x (..., T, hs), written from the paper."""
    import torch

    T, hs = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * inv_freq  # (T, hs/2)
    cos, sin = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)  # (T, hs)
    rotated_half = torch.cat([-x[..., hs // 2 :], x[..., : hs // 2]], dim=-1)
    return x * cos + rotated_half * sin


@requires_torch
def test_rms_norm_matches_torch():
    import torch

    x, w = _rand(0, 2, 3, 6, scale=3), _rand(1, 6)
    compare_with_torch(lambda x, w: F.rms_norm(x, w, eps=1e-5),
                       lambda x, w: torch.nn.functional.rms_norm(x, (6,), w, eps=1e-5), x, w)


@requires_torch
@pytest.mark.parametrize("start", [0, 5])
def test_rotary_matches_torch(start):
    cos, sin = _tables(4, 6, start)
    compare_with_torch(lambda x: F.rotary(x, cos, sin), lambda x: torch_rotary(x, start=start), _rand(0, 2, 3, 4, 6))


@requires_torch
@pytest.mark.parametrize("norm, rope", [(True, True), (True, False), (False, True)])
def test_qk_norm_rotary_matches_split_heads_in_torch(norm, rope):
    import torch

    B, T, nh, hs = 2, 5, 3, 4
    cos, sin = _tables(T, hs) if rope else (None, None)

    def ours(qkv, qw, kw):
        return F.qk_norm_rotary(qkv, nh, *((qw, kw) if norm else (None, None)), cos=cos, sin=sin, eps=1e-5)

    def theirs(qkv, qw, kw):
        q, k, v = (t.reshape(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))  # (B, nh, T, hs)
        if norm:
            q = torch.nn.functional.rms_norm(q, (hs,), qw, eps=1e-5)
            k = torch.nn.functional.rms_norm(k, (hs,), kw, eps=1e-5)
        if rope:
            q, k = torch_rotary(q), torch_rotary(k)
        return torch.cat([t.transpose(1, 2).reshape(B, T, nh * hs) for t in (q, k, v)], dim=2)

    compare_with_torch(ours, theirs, _rand(0, B, T, 3 * nh * hs), _rand(1, hs), _rand(2, hs))


@requires_torch
def test_relu2_and_softcap_match_torch():
    import torch

    x = _rand(0, 3, 7, scale=20.0)  # large logits: the cap matters
    compare_with_torch(F.relu2, lambda x: torch.relu(x).square(), x)
    compare_with_torch(lambda x: F.softcap(x, 15.0), lambda x: 15.0 * torch.tanh(x / 15.0), x)


def test_fused_functions_keep_float32():
    x = Tensor(_rand(0, 2, 3, 8).astype(np.float32), requires_grad=True)
    w = Tensor(np.ones(4, np.float32), requires_grad=True)
    cos, sin = _tables(3, 4)  # float64 tables are cast to x's dtype
    outs = [F.rms_norm(x, Tensor(np.ones(8, np.float32), requires_grad=True)), F.rotary(x[:, :, :4], cos, sin),
            F.qk_norm_rotary(Tensor(_rand(1, 2, 3, 12).astype(np.float32), requires_grad=True), 1, w, w * 2,
                             cos=cos, sin=sin), F.relu2(x), F.softcap(x, 3.0)]
    for out in outs:
        assert out.dtype == np.float32
        out.sum().backward()  # the engine asserts every gradient's dtype
    assert x.grad.dtype == np.float32


def test_float16_rms_norm_sums_in_float32():
    x = np.random.default_rng(0).standard_normal((3, 64)) * 100  # sum of squares ~ 640,000 > float16's max 65,504
    w = np.linspace(0.5, 1.5, 64)
    x16 = Tensor(x, requires_grad=True, dtype=np.float16)
    w16 = Tensor(w, requires_grad=True, dtype=np.float16)
    y = F.rms_norm(x16, w16)
    y.sum().backward()
    x64, w64 = _param(x16.numpy().astype(np.float64)), _param(w16.numpy().astype(np.float64))
    F.rms_norm(x64, w64).sum().backward()
    assert y.dtype == x16.grad.dtype == w16.grad.dtype == np.float16
    for ours, ref in [(y, F.rms_norm(x64, w64)), (x16.grad, x64.grad), (w16.grad, w64.grad)]:
        np.testing.assert_allclose(ours.numpy().astype(np.float64), ref.numpy(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.rms_norm(Tensor(np.ones((2, 3))), Tensor(np.ones(4))), r"rms_norm: input of shape \(2, 3\)"),
        (lambda: F.rotary(Tensor(np.ones((2, 4))), *_tables(3, 4)), r"cos and sin of shape \(2, 2\), got \(3, 2\)"),
        (lambda: F.rotary(Tensor(np.ones((2, 5))), np.ones((2, 2)), np.ones((2, 2))), "odd head size 5"),
        (lambda: F.qk_norm_rotary(Tensor(np.ones((1, 2, 12))), 2, Tensor(np.ones(2))), "both q_weight and k_weight"),
        (lambda: F.qk_norm_rotary(Tensor(np.ones((1, 2, 10))), 3), r"qkv of shape \(1, 2, 10\)"),
        (lambda: F.softcap(Tensor(np.ones(2)), 0.0), "cap must be a positive"),
    ],
)
def test_shape_errors_name_the_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- the whole model against PyTorch

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
MODERN = dict(pos_encoding="rope", norm_type="rmsnorm", qk_norm=True, activation="relu2", logit_softcap=3.0,
              tie_weights=False, zero_init_head=True, bias=False)
VARIANTS = {
    "all": MODERN,
    "all_with_bias_post_norm": {**MODERN, "bias": True, "norm": "post", "layer_norm_epsilon": 1e-3, "rope_base": 100.0},
    "rope_layernorm_tied": dict(pos_encoding="rope"),
    "qk_norm_learned_positions": dict(qk_norm=True, logit_softcap=5.0),
}


def modern_gpt(seed: int = 0, **overrides) -> GPT:
    """A tiny GPT whose every parameter (gains, zero head included) gets random values."""
    tinygrad_gpt.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in model.state_dict().items():
        noise = 0.3 * rng.standard_normal(value.shape)
        is_gain = name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
        state[name] = 1.0 + noise if is_gain else noise
    model.load_state_dict(state)
    return model


def torch_modern_gpt(params: dict, config: GPTConfig, idx, targets=None):
    """The GPT with the modern options, written directly in PyTorch from `params` named as ours (weights (in, out))."""
    import torch
    import torch.nn.functional as TF

    C, nh = config.n_embd, config.n_head
    hs = C // nh

    def lin(x, name):
        return x @ params[f"{name}.weight"] + params.get(f"{name}.bias", 0.0)

    def norm(x, name):
        if config.norm_type == "rmsnorm":
            return TF.rms_norm(x, (x.shape[-1],), params[f"{name}.weight"], eps=config.layer_norm_epsilon)
        return TF.layer_norm(x, (x.shape[-1],), params[f"{name}.weight"], params.get(f"{name}.bias"),
                             eps=config.layer_norm_epsilon)

    def attention(x, name):
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in lin(x, f"{name}.c_attn").split(C, dim=2))
        if config.qk_norm:  # always RMSNorm, whatever norm_type says
            q = TF.rms_norm(q, (hs,), params[f"{name}.q_norm.weight"], eps=config.layer_norm_epsilon)
            k = TF.rms_norm(k, (hs,), params[f"{name}.k_norm.weight"], eps=config.layer_norm_epsilon)
        if config.pos_encoding == "rope":
            q, k = torch_rotary(q, config.rope_base), torch_rotary(k, config.rope_base)
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return lin(y.transpose(1, 2).reshape(B, T, C), f"{name}.c_proj")

    def mlp(x, name):
        h = lin(x, f"{name}.c_fc")
        h = {"gelu": lambda: TF.gelu(h, approximate="tanh"), "relu": lambda: TF.relu(h),
             "relu2": lambda: TF.relu(h).square()}[config.activation]()
        return lin(h, f"{name}.c_proj")

    idx = torch.as_tensor(idx)
    x = params["wte.weight"][idx]
    if config.pos_encoding == "learned":
        x = x + params["wpe.weight"][: idx.shape[1]]
    for i in range(config.n_layer):
        b = f"h.{i}"
        if config.norm == "pre":
            x = x + attention(norm(x, f"{b}.ln_1"), f"{b}.attn")
            x = x + mlp(norm(x, f"{b}.ln_2"), f"{b}.mlp")
        else:
            x = norm(x + attention(x, f"{b}.attn"), f"{b}.ln_1")
            x = norm(x + mlp(x, f"{b}.mlp"), f"{b}.ln_2")
    if config.norm == "pre":
        x = norm(x, "ln_f")
    logits = x @ (params["wte.weight"].T if config.tie_weights else params["lm_head.weight"])
    if config.logit_softcap is not None:
        logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
    if targets is None:
        return logits, None
    loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(targets).reshape(-1), ignore_index=-1)
    return logits, loss


def _tokens(shape, vocab=TINY["vocab_size"], seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


def _rel_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(ref)).max() / max(np.abs(np.asarray(ref)).max(), 1e-300))


@requires_torch
@pytest.mark.parametrize("variant", VARIANTS)
def test_modern_gpt_logits_loss_and_every_gradient_equal_torch(float64, variant):
    import torch

    model = modern_gpt(**VARIANTS[variant])
    idx, targets = _tokens((3, 7)), _tokens((3, 7), seed=1)
    targets[0, :2] = -1
    logits, loss = model(idx, targets)
    loss.backward()
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.state_dict().items()}
    ref_logits, ref_loss = torch_modern_gpt(params, model.config, idx, targets)
    ref_loss.backward()
    assert logits.dtype == np.float64
    assert _rel_err(logits.numpy(), ref_logits.detach().numpy()) < 1e-10
    assert _rel_err(loss.item(), ref_loss.item()) < 1e-10
    named = dict(model.named_parameters())
    assert named.keys() == params.keys()
    for name, p in named.items():
        assert _rel_err(p.grad.numpy(), params[name].grad.numpy()) < 1e-9, f"gradient of {name}"


def test_modern_gpt_passes_gradcheck(float64):
    model = modern_gpt(**VARIANTS["all_with_bias_post_norm"])
    idx, targets = _tokens((2, 5)), _tokens((2, 5), seed=1)
    assert gradcheck(lambda *params: model(idx, targets)[1], *model.parameters(), max_elements=0)


def test_modern_parameters_names_and_init():
    tinygrad_gpt.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **MODERN}))
    names = dict(model.named_parameters())
    assert "wpe.weight" not in names and "lm_head.weight" in names
    assert names["h.0.attn.q_norm.weight"].shape == (4,) and names["h.1.attn.k_norm.weight"].shape == (4,)
    assert "h.0.ln_1.bias" not in names and np.all(names["ln_f.weight"].numpy() == 1.0)
    assert isinstance(model.h[0].ln_1, nn.RMSNorm) and isinstance(model.h[0].mlp.act, nn.ReLU2)
    assert not names["lm_head.weight"].numpy().any()  # the zero-initialised head: uniform predictions at first
    logits, loss = model(_tokens((2, 8)), _tokens((2, 8), seed=1))
    assert not logits.numpy().any() and loss.item() == pytest.approx(math.log(11))
    capped = modern_gpt(**{**MODERN, "logit_softcap": 0.5})(_tokens((2, 8)))[0].numpy()
    assert np.abs(capped).max() < 0.5  # soft-capped


def test_model_to_float64_casts_the_rotary_tables():
    model = modern_gpt(**MODERN)
    assert model.h[0].attn.rope_cos.dtype == np.float32
    model.to(dtype="float64")
    assert model.h[0].attn.rope_cos.dtype == np.float64
    assert model(_tokens((1, 4)))[0].dtype == np.float64


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(qk_norm="yes"), "qk_norm must be True or False"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon must be a positive number"),
        (dict(rope_base=-1.0), "rope_base must be a positive number"),
        (dict(logit_softcap=0), "logit_softcap must be a positive number or None"),
        (dict(zero_init_head=True), "zero_init_head=True needs tie_weights=False"),
        (dict(pos_encoding="rope", n_embd=6, n_head=2), "even head size"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **overrides})


def test_gpt2_defaults_are_unchanged():
    config = GPTConfig()
    modern = (config.norm_type, config.layer_norm_epsilon, config.qk_norm, config.logit_softcap, config.zero_init_head)
    assert modern == ("layernorm", 1e-5, False, None, False)
    assert (config.pos_encoding, config.activation, config.tie_weights) == ("learned", "gelu", True)


# ---------------------------------------------------------------- the KV cache with RoPE


@pytest.mark.parametrize("variant", ["all", "rope_layernorm_tied"])
def test_kv_cache_with_rope_equals_full_forward(float64, variant):
    model = modern_gpt(**VARIANTS[variant])
    idx = _tokens((2, 8))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, np.float64, model.device)
    with tinygrad_gpt.no_grad():
        parts = [model(idx[:, :3], kv_cache=cache)[0]]
        parts += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate([p.numpy() for p in parts], axis=1), full.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.8, seed=1)], ids=["greedy", "sampled"])
def test_generation_with_rope_cache_equals_without(sampling):
    model = modern_gpt(**{**MODERN, "logit_softcap": 30.0})
    prompt = _tokens((3, 2))
    cached = model.generate(prompt, max_new_tokens=12, **sampling)  # crosses block_size = 8
    np.testing.assert_array_equal(cached, model.generate(prompt, max_new_tokens=12, use_cache=False, **sampling))


@requires_torch
def test_greedy_generation_with_rope_equals_torch_reference(float64):
    import torch

    model = modern_gpt(**MODERN)
    prompt = _tokens((2, 3))
    ours = model.generate(prompt, max_new_tokens=7, temperature=0)
    params = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    ref = torch.as_tensor(prompt)
    with torch.no_grad():
        for _ in range(7):
            logits, _ = torch_modern_gpt(params, model.config, ref[:, -model.config.block_size :])
            ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    np.testing.assert_array_equal(ours, ref.numpy())


def test_modern_gpt_overfits_one_batch():
    tinygrad_gpt.manual_seed(0)
    sizes = dict(vocab_size=16, block_size=16, n_embd=32, logit_softcap=10.0)
    model = GPT(GPTConfig(**{**TINY, **MODERN, **sizes}))
    idx = _tokens((4, 17), vocab=16, seed=3)
    idx[:, 0] = np.arange(4)
    optimizer = AdamW(model.param_groups(0.0), lr=1e-2)
    losses = []
    for _ in range(100):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(16)) and losses[-1] < 0.05, losses[::10]


# ---------------------------------------------------------------- the warmup-stable-decay schedule


def test_wsd_lr_warms_up_holds_then_decays_linearly_to_min_lr():
    lrs = [wsd_lr(it, 1.0, warmup_iters=10, max_iters=100, decay_frac=0.4, min_lr=0.1) for it in range(120)]
    assert lrs[:10] == [cosine_lr(it, 1.0, 10, 100, 0.1) for it in range(10)]  # the same warmup as nanoGPT's
    assert lrs[10:60] == [1.0] * 50  # stable until the last 40% of max_iters
    assert lrs[80] == pytest.approx(0.55) and lrs[99] == pytest.approx(0.1 + 0.9 / 40)
    assert lrs[100:] == [0.1] * 20
    assert all(a >= b for a, b in zip(lrs[60:], lrs[61:]))
    assert wsd_lr(5, 1.0, 0, 10, 0.0, 0.1) == 1.0  # decay_frac=0: constant, then min_lr at max_iters
    assert wsd_lr(0, 1.0, 0, 10, 1.0, 0.0) == 1.0 and wsd_lr(5, 1.0, 0, 10, 1.0, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decay_frac=1.5), "decay_frac must be in"),
        (dict(warmup_iters=70), "warmup_iters <= max_iters"),
        (dict(warmup_iters=-1), "warmup_iters"),
    ],
)
def test_wsd_lr_rejects_bad_arguments(kwargs, message):
    args = dict(learning_rate=1.0, warmup_iters=10, max_iters=100, decay_frac=0.4, min_lr=0.1)
    with pytest.raises(ValueError, match=message):
        wsd_lr(0, **{**args, **kwargs})


def test_the_fused_functions_accept_lists_and_numpy_arrays_like_the_others():
    x = [[1.0, 2.0, 3.0, 4.0]]
    np.testing.assert_allclose(F.rms_norm(x, [1.0] * 4).numpy(), F.rms_norm(Tensor(x), Tensor.ones(4)).numpy())
    qkv = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 1, 12)
    got = F.qk_norm_rotary(qkv, 2, [1.0, 1.0], np.ones(2, np.float32)).numpy()
    np.testing.assert_allclose(got, F.qk_norm_rotary(Tensor(qkv), 2, Tensor.ones(2), Tensor.ones(2)).numpy())
    cos, sin = F.rotary_tables(1, 4)
    assert F.rotary(np.ones((1, 4), np.float32), cos, sin).shape == (1, 4)
