"""Muon against a PyTorch re-implementation of the published algorithm, and GPT's Muon/AdamW split."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinygrad_gpt
from helpers import HAS_TORCH, requires_torch
from tinygrad_gpt import Tensor
from tinygrad_gpt.checkpoint import flatten_state, unflatten_state
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, MultiOptimizer, Muon, zeropower_via_newtonschulz5

if HAS_TORCH:
    import torch

# our layout (in, out): tall in torch's (out, in) view, wide, square, and GPT's fused qkv (C, 3C) as 3 blocks
SHAPES = {"tall": ((3, 7), 1), "wide": ((7, 3), 1), "square": ((5, 5), 1), "qkv": ((4, 12), 3)}


# ---------------------------------------------------------------- the reference, in torch, on (out, in) weights


def torch_newton_schulz5(G, steps: int = 5):
    """Keller Jordan's zeropower_via_newtonschulz5 (float32, or float64 for float64 input)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.double() if G.dtype == torch.float64 else G.float()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


class TorchMuon:
    """Muon on torch weights in torch's (out, in) layout; `blocks` splits out into square-ish blocks."""

    def __init__(self, weights, lr, momentum, nesterov, weight_decay, ns_steps=5, blocks=1):
        self.weights, self.blocks = weights, blocks
        self.lr, self.momentum, self.nesterov, self.wd, self.ns_steps = lr, momentum, nesterov, weight_decay, ns_steps
        self.buffers = [torch.zeros_like(w) for w in weights]

    @torch.no_grad()
    def step(self):
        for W, buf in zip(self.weights, self.buffers):
            g = W.grad
            buf.mul_(self.momentum).add_(g)
            update = g.add(buf, alpha=self.momentum) if self.nesterov else buf
            update = update.reshape(self.blocks, -1, W.shape[1])  # (n, out / n, in)
            update = torch_newton_schulz5(update, self.ns_steps) * max(1, update.size(-2) / update.size(-1)) ** 0.5
            W.mul_(1 - self.lr * self.wd)
            W.add_(update.reshape(W.shape).to(W.dtype), alpha=-self.lr)


# ---------------------------------------------------------------- helpers


def _weights(shape, n=2, seed=0, dtype=np.float64) -> list:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


def _grads(step: int, shape, n=2, dtype=np.float64) -> list:
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


def _run(optimizer, params, steps, first_step=0, torch_weights=None, torch_opt=None) -> None:
    for step in range(first_step, first_step + steps):
        for k, g in enumerate(_grads(step, params[0].shape, len(params), params[0].dtype)):
            params[k].grad = Tensor(g, dtype=g.dtype)
            if torch_weights is not None:
                torch_weights[k].grad = torch.tensor(g.T.copy())  # torch's (out, in) gradient
        optimizer.step()
        if torch_opt is not None:
            torch_opt.step()


# ---------------------------------------------------------------- the update equals the reference


@requires_torch
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_matches_torch_reference(shape, nesterov, weight_decay):
    (size, blocks) = SHAPES[shape]
    arrays = _weights(size)
    ours = [Tensor(a.copy(), requires_grad=True, dtype=np.float64) for a in arrays]
    theirs = [torch.tensor(a.T.copy()) for a in arrays]  # (out, in)
    opt = Muon([{"params": ours, "muon_blocks": blocks}], lr=0.05, momentum=0.9, nesterov=nesterov,
               weight_decay=weight_decay)
    ref = TorchMuon(theirs, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay, blocks=blocks)
    _run(opt, ours, 4, torch_weights=theirs, torch_opt=ref)
    for p, w in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), w.numpy().T, rtol=0, atol=1e-6)
        assert not np.allclose(p.numpy(), arrays[0]) and not np.allclose(p.numpy(), arrays[1])


@requires_torch
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_muon_stays_float32_and_matches_torch(shape):
    (size, blocks) = SHAPES[shape]
    arrays = _weights(size, dtype=np.float32)
    ours = [Tensor(a.copy(), requires_grad=True, dtype=np.float32) for a in arrays]
    theirs = [torch.tensor(a.T.copy()) for a in arrays]
    opt = Muon([{"params": ours, "muon_blocks": blocks}], weight_decay=0.01)
    ref = TorchMuon(theirs, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.01, blocks=blocks)
    _run(opt, ours, 3, torch_weights=theirs, torch_opt=ref)
    for p, w in zip(ours, theirs):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p.numpy(), w.numpy().T, rtol=0, atol=1e-6)


@requires_torch
def test_newton_schulz_matches_torch_and_is_nearly_orthogonal():
    G = np.random.default_rng(0).standard_normal((2, 6, 10))  # a batch of two wide matrices
    ours = zeropower_via_newtonschulz5(G)
    np.testing.assert_allclose(ours, torch_newton_schulz5(torch.tensor(G)).numpy(), rtol=0, atol=1e-12)
    singular_values = np.linalg.svd(ours, compute_uv=False)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25  # Muon's loose orthogonality
    tall = zeropower_via_newtonschulz5(G.transpose(0, 2, 1).astype(np.float32))
    assert tall.dtype == np.float32 and tall.shape == (2, 10, 6)
    np.testing.assert_allclose(tall, ours.transpose(0, 2, 1), atol=1e-5)  # transpose-equivariant


def test_state_dict_round_trip_continues_identically():
    arrays = _weights((4, 12))
    a = [Tensor(x.copy(), requires_grad=True, dtype=np.float64) for x in arrays]
    opt_a = Muon([{"params": a, "muon_blocks": 3}], lr=0.03, weight_decay=0.1)
    _run(opt_a, a, 2)
    saved = opt_a.state_dict()
    assert set(saved["state"]) == {0, 1} and saved["state"][0]["momentum_buffer"].shape == (4, 12)
    assert saved["param_groups"][0]["muon_blocks"] == 3 and saved["param_groups"][0]["nesterov"] is True

    b = [Tensor(p.numpy().copy(), requires_grad=True, dtype=np.float64) for p in a]
    opt_b = Muon([{"params": b, "muon_blocks": 3}], lr=0.5)  # hyperparameters come from the state dict
    opt_b.load_state_dict({"param_groups": saved["param_groups"],
                           "state": {str(k): {"momentum_buffer": v["momentum_buffer"].copy()}
                                     for k, v in saved["state"].items()}})  # keys as a file would give them
    _run(opt_a, a, 3, first_step=2)
    _run(opt_b, b, 3, first_step=2)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_params_without_grad_are_skipped():
    p, q = (Tensor(x, requires_grad=True, dtype=np.float64) for x in _weights((3, 3)))
    before = q.numpy().copy()
    opt = Muon([p, q])
    p.grad = Tensor(np.ones((3, 3)), dtype=np.float64)
    opt.step()
    np.testing.assert_array_equal(q.numpy(), before)
    assert 1 not in opt.state_dict()["state"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Muon([Tensor(np.ones(4), requires_grad=True)]), r"shape \(4,\); Muon updates 2-D matrices only"),
        (lambda: Muon([Tensor(np.ones((2, 2, 2)), requires_grad=True)]), r"shape \(2, 2, 2\)"),
        (lambda: Muon([{"params": [Tensor(np.ones((4, 8)), requires_grad=True)], "muon_blocks": 3}]),
         r"shape \(4, 8\) \(in, out\) does not split into muon_blocks=3"),
        (lambda: Muon([Tensor(np.ones((2, 2)), requires_grad=True)], nesterov=1), "nesterov must be True or False"),
        (lambda: Muon([Tensor(np.ones((2, 2)), requires_grad=True)], ns_steps=0), "ns_steps must be a positive"),
        (lambda: Muon([Tensor(np.ones((2, 2)), requires_grad=True)], lr=-1.0), "lr must be >= 0"),
    ],
)
def test_bad_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_load_state_dict_checks_muon_hyperparameters_and_changes_nothing():
    p = Tensor(np.ones((4, 6)), requires_grad=True)
    opt = Muon([p])
    saved = opt.state_dict()
    saved["param_groups"][0]["muon_blocks"] = 4
    with pytest.raises(ValueError, match="muon_blocks=4"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["muon_blocks"] == 1


# ---------------------------------------------------------------- GPT's optimizer groups


def _tiny_gpt(**overrides) -> GPT:
    tinygrad_gpt.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=16), **overrides}))


@pytest.mark.parametrize("overrides", [{}, dict(tie_weights=False, bias=False)], ids=["gpt2", "untied_no_bias"])
def test_optimizer_groups_split_hidden_matrices_from_the_rest(overrides):
    model = _tiny_gpt(**overrides)
    muon, adamw = model.optimizer_groups()
    ids = {id(p): name for name, p in model.named_parameters()}
    names = {g["name"]: [ids[id(p)] for p in g["params"]] for g in muon + adamw}
    assert sorted(n for ns in names.values() for n in ns) == sorted(ids.values())  # each parameter exactly once
    assert names["qkv"] == ["h.0.attn.c_attn.weight", "h.1.attn.c_attn.weight"] and muon[0]["muon_blocks"] == 3
    assert all(n.startswith("h.") and n.endswith(("c_proj.weight", "c_fc.weight")) for n in names["hidden"])
    assert len(names["hidden"]) == 6
    assert names["embeddings"] == ["wte.weight", "wpe.weight"]
    assert names.get("head") == (["lm_head.weight"] if overrides else None)
    params = dict(model.named_parameters())
    assert names["scalars"] and all(params[n].ndim == 1 for n in names["scalars"])
    assert all(g["weight_decay"] == 0.0 for g in adamw)


def test_muon_with_adamw_trains_a_tiny_gpt():
    model = _tiny_gpt(tie_weights=False)
    muon_groups, adamw_groups = model.optimizer_groups()
    optimizers = [Muon(muon_groups, lr=0.02), AdamW(adamw_groups, lr=1e-2)]
    idx = np.random.default_rng(3).integers(0, 16, size=(4, 17))
    idx[:, 0] = np.arange(4)
    losses = []
    for _ in range(60):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and losses[-1] < 0.1, losses[::10]


def _train_steps(model, optimizer, steps: int, seed: int = 3) -> list[float]:
    idx = np.random.default_rng(seed).integers(0, 16, size=(4, 17))
    idx[:, 0] = np.arange(4)
    losses = []
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _muon_adamw(model) -> MultiOptimizer:
    muon_groups, adamw_groups = model.optimizer_groups()
    return MultiOptimizer([Muon(muon_groups, lr=0.02), AdamW(adamw_groups, lr=1e-2)])


def test_multi_optimizer_resumes_exactly_through_a_checkpoint_layout():
    model = _tiny_gpt(tie_weights=False)
    optimizer = _muon_adamw(model)
    assert [g["name"] for g in optimizer.param_groups] == ["qkv", "hidden", "embeddings", "head", "scalars"]
    _train_steps(model, optimizer, 3)
    tensors, skeleton = flatten_state(optimizer.state_dict())  # what checkpoint.save_checkpoint stores
    saved_state = unflatten_state(tensors, json.loads(json.dumps(skeleton)))
    saved_weights = {k: v.copy() for k, v in model.state_dict().items()}
    expected = _train_steps(model, optimizer, 4, seed=4)

    resumed = _tiny_gpt(tie_weights=False)
    resumed.load_state_dict(saved_weights)
    resumed_optimizer = _muon_adamw(resumed)
    resumed_optimizer.load_state_dict(saved_state)
    assert _train_steps(resumed, resumed_optimizer, 4, seed=4) == expected  # bit for bit


def test_multi_optimizer_load_checks_types_and_rolls_back():
    model = _tiny_gpt()
    optimizer = _muon_adamw(model)
    _train_steps(model, optimizer, 1)
    saved = optimizer.state_dict()
    with pytest.raises(ValueError, match=r"saved optimizers \['Muon'\], this MultiOptimizer has \['Muon', 'AdamW'\]"):
        optimizer.load_state_dict({"optimizers": saved["optimizers"][:1], "types": ["Muon"]})
    bad = optimizer.state_dict()
    bad["optimizers"][0]["param_groups"][0]["lr"] = 1.0  # a good Muon part, then a broken AdamW part
    bad["optimizers"][1]["param_groups"] = bad["optimizers"][1]["param_groups"][:1]
    with pytest.raises(ValueError, match="parameter groups saved"):
        optimizer.load_state_dict(bad)
    assert optimizer.param_groups[0]["lr"] == 0.02  # the Muon part was rolled back
    with pytest.raises(TypeError, match="non-empty list of optimizers"):
        MultiOptimizer([])
    assert repr(optimizer).startswith("MultiOptimizer(Muon(")
