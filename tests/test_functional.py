"""nn.functional: gradient checks (hypothesis) and PyTorch references for every fused function."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import compare_with_torch, requires_torch
from tinygrad_gpt import Tensor, gradcheck
from tinygrad_gpt.nn import functional as F

dims = st.integers(1, 4)


def _rand(seed, *shape, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _param(a):
    return Tensor(a, requires_grad=True, dtype=np.float64)


# ---------------------------------------------------------------- gradients (hypothesis)


@given(lead=st.lists(dims, max_size=2), n_in=dims, n_out=dims, bias=st.booleans(), seed=st.integers(0, 999))
def test_linear_gradient(float64, lead, n_in, n_out, bias, seed):
    x, W, b = _rand(seed, *lead, n_in), _rand(seed + 1, n_in, n_out), _rand(seed + 2, n_out)
    inputs = [_param(x), _param(W)] + ([_param(b)] if bias else [])
    assert gradcheck(lambda *t: F.linear(*t), *inputs)


@given(lead=st.lists(dims, max_size=2), c=st.integers(2, 5), seed=st.integers(0, 999))
def test_layer_norm_gradient(float64, lead, c, seed):
    x, w, b = _rand(seed, *lead, c), _rand(seed + 1, c), _rand(seed + 2, c)
    assert gradcheck(lambda x, w, b: F.layer_norm(x, w, b), _param(x), _param(w), _param(b))


@given(shape=st.lists(dims, min_size=1, max_size=2), vocab=st.integers(1, 6), dim=dims, seed=st.integers(0, 999))
def test_embedding_gradient_accumulates_repeated_tokens(float64, shape, vocab, dim, seed):
    idx = np.random.default_rng(seed).integers(0, vocab, size=shape)
    assert gradcheck(lambda W: F.embedding(idx, W), _param(_rand(seed, vocab, dim)))


def test_embedding_gradient_large_vocabulary_uses_scatter_path(float64):
    idx = np.array([[3, 1999, 3], [0, 3, 1999]])
    W = _param(_rand(0, 2000, 3))
    F.embedding(idx, W).sum().backward()
    counts = np.bincount(idx.ravel(), minlength=2000)
    np.testing.assert_allclose(W.grad.numpy(), np.repeat(counts[:, None], 3, axis=1))


@given(n=dims, c=st.integers(1, 5), three_d=st.booleans(), seed=st.integers(0, 999))
def test_cross_entropy_gradient(float64, n, c, three_d, seed):
    rng = np.random.default_rng(seed)
    shape = (2, n) if three_d else (n,)
    targets = rng.integers(0, c, size=shape)
    targets.ravel()[0] = -1 if targets.size > 1 else targets.ravel()[0]  # one ignored position
    logits = _param(_rand(seed, *shape, c))
    assert gradcheck(lambda x: F.cross_entropy(x, targets), logits)


@given(b=st.integers(1, 2), nh=st.integers(1, 2), t_q=st.integers(1, 4), extra=st.integers(0, 2),
       hs=st.integers(1, 4), causal=st.booleans(), seed=st.integers(0, 999))
def test_attention_gradient(float64, b, nh, t_q, extra, hs, causal, seed):
    t_k = t_q + extra
    q, k, v = _rand(seed, b, nh, t_q, hs), _rand(seed + 1, b, nh, t_k, hs), _rand(seed + 2, b, nh, t_k, hs)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    assert gradcheck(fn, _param(q), _param(k), _param(v))


@given(shape=st.lists(dims, max_size=3), seed=st.integers(0, 999))
def test_activation_and_loss_gradients(float64, shape, seed):
    x = _rand(seed, *shape)
    x = np.where(np.abs(x) < 1e-3, 0.5, x)  # away from relu's kink
    target = _rand(seed + 1, *shape)
    assert gradcheck(F.gelu, _param(x))
    assert gradcheck(F.relu, _param(x))
    assert gradcheck(lambda x: F.mse_loss(x, target), _param(x))
    if shape:
        assert gradcheck(lambda x: F.softmax(x, axis=-1), _param(x))
        assert gradcheck(lambda x: F.log_softmax(x, axis=0), _param(x))


def test_dropout_gradient_uses_the_same_mask(float64):
    from tinygrad_gpt import manual_seed

    x = _param(_rand(0, 4, 5))
    manual_seed(3)
    y = F.dropout(x, p=0.4)
    y.sum().backward()
    kept = y.numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.6)
    np.testing.assert_allclose(y.numpy()[kept], x.numpy()[kept] / 0.6)


# ---------------------------------------------------------------- references (PyTorch)


@requires_torch
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias):
    import torch

    x, W, b = _rand(0, 2, 3, 4), _rand(1, 4, 5), _rand(2, 5)
    if bias:
        compare_with_torch(F.linear, lambda x, W, b: torch.nn.functional.linear(x, W.T, b), x, W, b)
    else:
        compare_with_torch(F.linear, lambda x, W: x @ W, x, W)


@requires_torch
def test_layer_norm_matches_torch():
    import torch

    x, w, b = _rand(0, 2, 3, 6, scale=3), _rand(1, 6), _rand(2, 6)
    compare_with_torch(lambda x, w, b: F.layer_norm(x, w, b, eps=1e-5),
                       lambda x, w, b: torch.nn.functional.layer_norm(x, (6,), w, b, eps=1e-5), x, w, b)


@requires_torch
def test_embedding_matches_torch():
    import torch

    idx = np.array([[1, 4, 1], [0, 1, 2]])
    compare_with_torch(lambda W, i: F.embedding(i, W), lambda W, i: torch.nn.functional.embedding(i, W),
                       _rand(0, 5, 3), idx)


@requires_torch
@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_cross_entropy_matches_torch_with_ignore_index(shape):
    import torch

    targets = np.random.default_rng(0).integers(0, 7, size=shape)
    targets.ravel()[1] = -1
    logits = _rand(0, *shape, 7, scale=5)
    compare_with_torch(
        lambda x, t: F.cross_entropy(x, t),
        lambda x, t: torch.nn.functional.cross_entropy(x.reshape(-1, 7), t.reshape(-1), ignore_index=-1),
        logits, targets,
    )


def test_cross_entropy_is_stable_for_huge_logits(float64):
    logits = Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0, 2]))
    loss.backward()
    assert np.isclose(loss.item(), np.log(2) / 2)
    assert np.isfinite(logits.grad.numpy()).all()


@requires_torch
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_torch(causal):
    import torch

    q, k, v = _rand(0, 2, 3, 5, 4), _rand(1, 2, 3, 5, 4), _rand(2, 2, 3, 5, 4)
    compare_with_torch(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                       lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal),
                       q, k, v)


@requires_torch
def test_attention_with_cache_aligns_the_mask_bottom_right():
    import torch

    q, k, v = _rand(0, 1, 2, 2, 4), _rand(1, 1, 2, 5, 4), _rand(2, 1, 2, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool).tril(diagonal=3)  # query i sees keys 0..3+i
    compare_with_torch(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                       lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                       q, k, v)


@requires_torch
def test_activations_softmax_and_mse_match_torch():
    import torch

    x, y = _rand(0, 3, 4), _rand(1, 3, 4)
    tf = torch.nn.functional
    compare_with_torch(F.gelu, lambda x: tf.gelu(x, approximate="tanh"), x)
    compare_with_torch(F.relu, tf.relu, x)
    compare_with_torch(lambda x: F.softmax(x, axis=0), lambda x: tf.softmax(x, dim=0), x)
    compare_with_torch(lambda x: F.log_softmax(x, axis=-1), lambda x: tf.log_softmax(x, dim=-1), x * 1e4)
    compare_with_torch(F.mse_loss, tf.mse_loss, x, y)


# ---------------------------------------------------------------- errors and modes


def test_dropout_is_identity_in_eval_and_rejects_bad_p():
    x = Tensor(np.ones((3, 3)))
    assert F.dropout(x, p=0.5, training=False) is x
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(x, p=1.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5)))), r"\(2, 3\).*\(4, 5\)"),
        (lambda: F.layer_norm(Tensor(np.ones((2, 3))), Tensor(np.ones(4)), Tensor(np.ones(4))), r"\(2, 3\)"),
        (lambda: F.cross_entropy(Tensor(np.ones((2, 3))), np.array([0, 1, 2])), r"\(2, 3\).*\(2,\)"),
        (lambda: F.cross_entropy(Tensor(np.ones((2, 3))), np.array([0, 3])), r"\[0, 3\)"),
        (lambda: F.embedding(np.array([5]), Tensor(np.ones((4, 2)))), r"\[0, 4\)"),
        (lambda: F.scaled_dot_product_attention(Tensor(np.ones((1, 1, 3, 2))), Tensor(np.ones((1, 1, 2, 2))),
                                                Tensor(np.ones((1, 1, 2, 2))), is_causal=True), "Tk >= Tq"),
    ],
)
def test_shape_errors_name_the_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_fused_functions_keep_float32():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 8)), requires_grad=True)
    W, b = Tensor(rng.standard_normal((8, 8)), requires_grad=True), Tensor(np.zeros(8), requires_grad=True)
    h = F.layer_norm(F.gelu(F.linear(x, W, b)), Tensor(np.ones(8)), b)
    q = h.reshape(2, 3, 2, 4).transpose(1, 2)
    att = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    loss = F.cross_entropy(att.reshape(2, 3 * 2, 4), np.zeros((2, 6), dtype=np.int64))
    loss.backward()
    assert loss.dtype == np.float32
    assert {x.grad.dtype, W.grad.dtype, b.grad.dtype} == {np.dtype(np.float32)}


@requires_torch
@pytest.mark.parametrize("n_head", [1, 3])
def test_causal_self_attention_matches_split_heads_in_torch(n_head):
    import torch

    B, T, C = 2, 5, 6

    def torch_fn(qkv):
        q, k, v = (t.reshape(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, T, C)

    compare_with_torch(lambda qkv: F.causal_self_attention(qkv, n_head), torch_fn, _rand(0, B, T, 3 * C))


@given(b=st.integers(1, 2), t=st.integers(1, 4), n_head=st.integers(1, 2), hs=st.integers(1, 3),
       seed=st.integers(0, 999))
def test_causal_self_attention_gradient(float64, b, t, n_head, hs, seed):
    qkv = _param(_rand(seed, b, t, 3 * n_head * hs))
    assert gradcheck(lambda x: F.causal_self_attention(x, n_head), qkv)


def test_causal_self_attention_rejects_bad_widths():
    with pytest.raises(ValueError, match=r"\(1, 2, 7\)"):
        F.causal_self_attention(Tensor(np.ones((1, 2, 7))), n_head=1)


@pytest.mark.parametrize("t_new", [1, 3])
def test_cached_self_attention_equals_attention_over_the_whole_sequence(float64, t_new):
    # the prompt's 4 positions fill the cache, then t_new more attend over all of them: the same output
    # as causal attention over all positions at once, and the cache holds every position's k and v
    B, n_head, hs, start = 2, 3, 4, 4
    C = n_head * hs
    qkv = _rand(1, B, start + t_new, 3 * C)
    k_cache, v_cache = (Tensor.zeros(2, B, n_head, 8, hs).data for _ in range(2))  # on the default device
    first = F.cached_self_attention(Tensor(qkv[:, :start]), n_head, k_cache[0], v_cache[0], 0)
    rest = F.cached_self_attention(Tensor(qkv[:, start:]), n_head, k_cache[0], v_cache[0], start)
    whole = F.causal_self_attention(Tensor(qkv), n_head)
    np.testing.assert_allclose(np.concatenate([first.numpy(), rest.numpy()], axis=1), whole.numpy(), rtol=1e-12)
    k = qkv[:, :, C:2 * C].reshape(B, start + t_new, n_head, hs).transpose(0, 2, 1, 3)
    k_cached = Tensor(k_cache).numpy()
    np.testing.assert_array_equal(k_cached[0, :, :, :start + t_new], k)
    assert not k_cached[1].any()  # the other layer's buffer is untouched


def test_cached_self_attention_refuses_a_cache_that_does_not_fit():
    qkv = Tensor(np.ones((1, 2, 12)))
    with pytest.raises(ValueError, match=r"k_cache of shape \(1, 2, 8, 3\)"):
        F.cached_self_attention(qkv, 2, np.zeros((1, 2, 8, 3)), np.zeros((1, 2, 8, 2)), 0)
    with pytest.raises(ValueError, match=r"positions \[7, 9\) do not fit a cache of 8"):
        F.cached_self_attention(qkv, 2, np.zeros((1, 2, 8, 2)), np.zeros((1, 2, 8, 2)), 7)
