"""Optimizers, gradient clipping and the learning-rate schedule against torch.optim and nanoGPT."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import HAS_TORCH, requires_torch
from tinygrad_gpt import Tensor, backend, nn
from tinygrad_gpt.optim import SGD, Adam, AdamW, clip_grad_norm_, cosine_lr

if HAS_TORCH:
    import torch

SHAPES = [(3, 4), (4,), (2, 1, 3), ()]
TOL = {"rtol": 1e-9, "atol": 1e-12}  # float64 on both sides: far tighter than the 1e-6 asked for


# ---------------------------------------------------------------- helpers


def _initial(shapes=SHAPES, seed=0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _ours(arrays) -> list:
    return [Tensor(a.copy(), requires_grad=True, dtype=a.dtype) for a in arrays]


def _theirs(arrays) -> list:
    return [torch.nn.Parameter(torch.tensor(a.copy())) for a in arrays]


def _grads(step: int, shapes, dtype=np.float64) -> list:
    """The same pseudo-random gradients for both frameworks at each step."""
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _set_grads(ours, theirs, step: int, skip=()) -> None:
    """Give both frameworks gradients for this step; the parameters in `skip` get none."""
    for k, g in enumerate(_grads(step, [p.shape for p in ours], ours[0].dtype)):
        ours[k].grad = None if k in skip else Tensor(g, dtype=g.dtype)
        if theirs is not None:
            theirs[k].grad = None if k in skip else torch.tensor(g)


def _assert_same(ours, theirs, step: int, **tol) -> None:
    for k, (p, q) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(
            p.numpy(), q.detach().numpy(), err_msg=f"param {k} after step {step}", **(tol or TOL)
        )


def _run_both(our_opt, torch_opt, ours, theirs, n_steps=4, skips=None, lrs=None) -> None:
    """Step both optimizers on identical gradients and compare the parameters after every step."""
    for step in range(n_steps):
        if lrs is not None:  # the training loop sets each group's lr before a step
            for our_group, torch_group, lr in zip(our_opt.param_groups, torch_opt.param_groups, lrs(step)):
                our_group["lr"] = torch_group["lr"] = lr
        _set_grads(ours, theirs, step, skip=(skips or {}).get(step, ()))
        our_opt.step()
        torch_opt.step()
        _assert_same(ours, theirs, step)


def _make(name: str, params, torch_params, **kw):
    ours = {"sgd": SGD, "adam": Adam, "adamw": AdamW}[name](params, **kw)
    theirs = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](torch_params, **kw)
    return ours, theirs


# ---------------------------------------------------------------- against torch.optim


@requires_torch
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_matches_torch(momentum, weight_decay):
    arrays = _initial()
    ours, theirs = _ours(arrays), _theirs(arrays)
    our_opt, torch_opt = _make("sgd", ours, theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    _run_both(our_opt, torch_opt, ours, theirs)


@requires_torch
@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_params_and_moments(name, weight_decay):
    arrays = _initial()
    ours, theirs = _ours(arrays), _theirs(arrays)
    our_opt, torch_opt = _make(name, ours, theirs, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    _run_both(our_opt, torch_opt, ours, theirs)
    state = our_opt.state_dict()["state"]
    for k, q in enumerate(theirs):
        expected = torch_opt.state[q]
        assert state[k]["step"] == int(expected["step"]) == 4
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(state[k][key], expected[key].numpy(), err_msg=f"{key} of param {k}", **TOL)


@requires_torch
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_param_groups_with_own_lr_and_weight_decay_match_torch(name):
    arrays = _initial()
    ours, theirs = _ours(arrays), _theirs(arrays)
    extra = {"momentum": 0.9} if name == "sgd" else {"betas": (0.9, 0.95)}
    our_opt, torch_opt = _make(
        name,
        [{"params": ours[:2], "weight_decay": 0.2}, {"params": ours[2:], "lr": 0.02, "weight_decay": 0.0}],
        [{"params": theirs[:2], "weight_decay": 0.2}, {"params": theirs[2:], "lr": 0.02, "weight_decay": 0.0}],
        lr=0.1,
        **extra,
    )
    assert [g["lr"] for g in our_opt.param_groups] == [0.1, 0.02]

    def lrs(step):  # a schedule per group, set the way the training loop sets it
        return [cosine_lr(step, 0.1, 2, 5, 0.01), cosine_lr(step, 0.02, 2, 5, 0.002)]

    _run_both(our_opt, torch_opt, ours, theirs, n_steps=6, lrs=lrs)


@requires_torch
def test_adamw_on_a_loss_computed_in_both_frameworks():
    """Gradients from backward, and the next loss reads the updated parameters through the same Tensors."""
    rng = np.random.default_rng(3)
    w0, b0, x, y = (
        rng.standard_normal((3, 2)),
        rng.standard_normal(2),
        rng.standard_normal((5, 3)),
        rng.standard_normal((5, 2)),
    )
    w, b = _ours([w0, b0])
    tw, tb = _theirs([w0, b0])
    opt, topt = AdamW([w, b], lr=0.1, weight_decay=0.1), torch.optim.AdamW([tw, tb], lr=0.1, weight_decay=0.1)
    losses, torch_losses = [], []
    for _ in range(5):
        opt.zero_grad()
        topt.zero_grad()
        diff = Tensor(x, dtype=np.float64) @ w + b - Tensor(y, dtype=np.float64)
        loss = (diff * diff).mean() + (w * w * w).sum() * 0.01
        tdiff = torch.tensor(x) @ tw + tb - torch.tensor(y)
        torch_loss = (tdiff * tdiff).mean() + (tw * tw * tw).sum() * 0.01
        loss.backward()
        torch_loss.backward()
        opt.step()
        topt.step()
        losses.append(loss.item())
        torch_losses.append(torch_loss.item())
    np.testing.assert_allclose(losses, torch_losses, **TOL)
    assert losses[-1] < losses[0]
    _assert_same([w, b], [tw, tb], 5)


@requires_torch
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_params_without_grad_are_skipped_as_torch(name):
    """Param 3 never gets a gradient (so not even weight decay moves it); param 1 misses steps 1 and 2."""
    arrays = _initial()
    ours, theirs = _ours(arrays), _theirs(arrays)
    extra = {"momentum": 0.9} if name == "sgd" else {}
    our_opt, torch_opt = _make(name, ours, theirs, lr=0.1, weight_decay=0.1, **extra)
    skips = {0: {3}, 1: {1, 3}, 2: {1, 3}, 3: {3}, 4: {3}}
    _run_both(our_opt, torch_opt, ours, theirs, n_steps=5, skips=skips)
    np.testing.assert_array_equal(ours[3].numpy(), arrays[3])
    if name != "sgd":
        steps = {k: s["step"] for k, s in our_opt.state_dict()["state"].items()}
        assert steps == {0: 5, 1: 3, 2: 5}


@requires_torch
def test_float32_parameters_stay_float32_and_match_torch():
    arrays = [a.astype(np.float32) for a in _initial()]
    ours, theirs = _ours(arrays), _theirs(arrays)
    our_opt, torch_opt = _make("adamw", ours, theirs, lr=0.01, weight_decay=0.1)
    for step in range(3):
        _set_grads(ours, theirs, step)
        our_opt.step()
        torch_opt.step()
        _assert_same(ours, theirs, step, rtol=1e-5, atol=1e-6)
    assert all(p.dtype == np.float32 for p in ours)
    for entry in our_opt.state_dict()["state"].values():
        assert entry["exp_avg"].dtype == entry["exp_avg_sq"].dtype == np.float32


@requires_torch
@given(
    shapes=st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4),
    lr=st.floats(1e-4, 0.5),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.floats(1e-10, 1e-3),
    weight_decay=st.floats(0.0, 0.5),
)
def test_adamw_matches_torch_for_any_shapes_and_hyperparameters(shapes, lr, beta1, beta2, eps, weight_decay):
    arrays = _initial(shapes)
    ours, theirs = _ours(arrays), _theirs(arrays)
    kw = {"lr": lr, "betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay}
    _run_both(AdamW(ours, **kw), torch.optim.AdamW(theirs, **kw), ours, theirs, n_steps=3)


# ---------------------------------------------------------------- flat buffers


def test_adam_params_are_views_of_one_flat_buffer_per_group_and_dtype():
    ours = _ours(_initial()) + _ours([a.astype(np.float32) for a in _initial(seed=1)])
    values = [p.numpy() for p in ours]
    opt = AdamW([{"params": ours[:2]}, {"params": ours[2:]}])
    bases = [p.data.base for p in ours]
    assert all(b is not None for b in bases)
    assert bases[0] is bases[1] and bases[2] is bases[3]  # group 0; float64 of group 1
    assert bases[4] is bases[5] is bases[6] is bases[7]  # float32 of group 1
    assert len({id(b) for b in bases}) == 3
    for p, v in zip(ours, values):  # the values were copied in unchanged
        np.testing.assert_array_equal(p.numpy(), v)
    _set_grads(ours[:4], None, 0)
    _set_grads(ours[4:], None, 0)
    opt.step()
    assert [p.data.base for p in ours] == bases  # still the same views after a step


@requires_torch
def test_in_place_writes_to_param_data_are_seen_by_the_optimizer():
    """What Module.load_state_dict does after the optimizer exists (it writes in place)."""
    arrays, new = _initial(), _initial(seed=7)
    ours, theirs = _ours(arrays), _theirs(new)
    our_opt, torch_opt = _make("adamw", ours, theirs, lr=0.1)
    for p, v in zip(ours, new):
        p.data[...] = v
    _run_both(our_opt, torch_opt, ours, theirs, n_steps=2)


@requires_torch
def test_rebound_param_data_is_taken_back_into_the_flat_buffer():
    arrays, new = _initial(), _initial(seed=7)
    ours, theirs = _ours(arrays), _theirs(new)
    our_opt, torch_opt = _make("adam", ours, theirs, lr=0.1)
    for p, v in zip(ours, new):
        p.data = backend.asarray(v.copy(), device=p.device)
    _run_both(our_opt, torch_opt, ours, theirs, n_steps=2)
    assert ours[0].data.base is ours[1].data.base


def test_rebinding_param_data_to_another_shape_or_dtype_is_an_error():
    ours = _ours(_initial())
    opt = Adam(ours)
    ours[0].data = ours[0].data.astype(np.float32)
    _set_grads(ours, None, 0)
    with pytest.raises(ValueError, match=r"create the optimizer after moving or casting the model"):
        opt.step()


@requires_torch
def test_module_load_state_dict_after_creating_the_optimizer_keeps_training_the_loaded_weights():
    layer = nn.Linear(3, 2)
    layer.to(dtype=np.float64)
    opt = AdamW(layer.parameters(), lr=0.1)
    new = {name: np.random.default_rng(5).standard_normal(p.shape) for name, p in layer.named_parameters()}
    layer.load_state_dict(new)
    theirs = _theirs([new[name] for name, _ in layer.named_parameters()])
    _run_both(opt, torch.optim.AdamW(theirs, lr=0.1), layer.parameters(), theirs, n_steps=2)


# ---------------------------------------------------------------- state_dict


def _to_file_and_back(state_dict: dict) -> dict:
    """What a checkpoint round trip gives: numpy copies, string keys, lists for tuples."""
    return {
        "param_groups": [
            {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]
        ],
        "state": {str(i): {k: np.array(v) for k, v in s.items()} for i, s in state_dict["state"].items()},
    }


OPTIMIZERS = [
    pytest.param(lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), id="sgd"),
    pytest.param(lambda ps: Adam(ps, lr=0.01, weight_decay=0.01), id="adam"),
    pytest.param(lambda ps: AdamW([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}], lr=0.01), id="adamw"),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_resume_from_state_dict_is_bit_for_bit(make):
    """3 steps, save, fresh optimizer, load, 2 steps == 5 uninterrupted steps (with a skipped grad)."""
    arrays = _initial()
    skips = {1: {2}}

    def steps(opt, params, first, last):
        for step in range(first, last):
            _set_grads(params, None, step, skip=skips.get(step, ()))
            opt.step()

    straight = _ours(arrays)
    steps(make(straight), straight, 0, 5)

    first = _ours(arrays)
    opt = make(first)
    steps(opt, first, 0, 3)
    saved = _to_file_and_back(opt.state_dict())
    resumed = _ours([p.numpy() for p in first])
    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    steps(opt2, resumed, 3, 5)
    for k, (a, b) in enumerate(zip(straight, resumed)):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"param {k}")


def test_state_dict_layout_and_copies():
    ours = _ours(_initial())
    opt = AdamW([{"params": ours[:3], "lr": 0.5}, {"params": ours[3:]}], betas=(0.9, 0.95))
    _set_grads(ours, None, 0, skip={1})
    opt.step()
    sd = opt.state_dict()
    groups = sd["param_groups"]
    assert [g["params"] for g in groups] == [[0, 1, 2], [3]]
    assert groups[0]["lr"] == 0.5 and groups[1]["lr"] == 1e-3 and groups[1]["betas"] == (0.9, 0.95)
    assert sorted(sd["state"]) == [0, 2, 3]  # param 1 has not stepped yet
    for i, entry in sd["state"].items():
        assert entry["step"] == 1
        assert entry["exp_avg"].shape == entry["exp_avg_sq"].shape == ours[i].shape
    before = sd["state"][0]["exp_avg"].copy()
    _set_grads(ours, None, 1)
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], before)  # later steps do not touch a saved dict


def test_load_state_dict_restores_hyperparameters():
    ours = _ours(_initial())
    opt = AdamW([{"params": ours[:3], "lr": 0.5}, {"params": ours[3:], "weight_decay": 0.0}], betas=(0.9, 0.95))
    other = AdamW([{"params": ours[:3]}, {"params": ours[3:]}], lr=0.7, betas=(0.5, 0.6), eps=1e-3)
    other.load_state_dict(_to_file_and_back(opt.state_dict()))
    for ours_group, saved_group in zip(other.param_groups, opt.param_groups):
        assert {k: v for k, v in ours_group.items() if k != "params"} == {
            k: v for k, v in saved_group.items() if k != "params"
        }


def _saved_after_one_step(opt_cls=AdamW):
    ours = _ours(_initial())
    opt = opt_cls(ours, lr=0.1, **({"momentum": 0.9} if opt_cls is SGD else {}))
    _set_grads(ours, None, 0)
    opt.step()
    return ours, opt, opt.state_dict()


def _break(sd, how):
    sd = {"param_groups": [dict(g) for g in sd["param_groups"]], "state": {i: dict(s) for i, s in sd["state"].items()}}
    if how == "groups":
        sd["param_groups"].append(dict(sd["param_groups"][0]))
    elif how == "params":
        sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    elif how == "shape":
        sd["state"][3]["exp_avg"] = np.zeros((2, 2))
    elif how == "key":
        del sd["state"][3]["exp_avg_sq"]
    elif how == "index":
        sd["state"][17] = sd["state"].pop(3)
    elif how == "hyper":
        del sd["param_groups"][0]["eps"]
    return sd


@pytest.mark.parametrize(
    "how, message",
    [
        ("groups", r"2 parameter groups saved, the optimizer has 1"),
        ("params", r"param_groups\[0\] has 3 parameters saved, the optimizer's group has 4"),
        ("shape", r"state\[3\]\['exp_avg'\] has shape \(2, 2\), parameter 3 has \(\)"),
        ("key", r"state\[3\] lacks \['exp_avg_sq'\]"),
        ("index", r"state\[17\] names no parameter"),
        ("hyper", r"param_groups\[0\] lacks hyperparameter 'eps'"),
    ],
)
def test_load_state_dict_errors_name_the_entry_and_change_nothing(how, message):
    ours, opt, sd = _saved_after_one_step()
    fresh_params, fresh, _ = _saved_after_one_step()
    bad = _break(sd, how)
    bad["param_groups"][0]["lr"] = 123.0  # would be applied if the load went ahead
    _set_grads(fresh_params, None, 1)
    fresh.step()  # fresh now differs from sd: a partial load would show
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(bad)
    after = fresh.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, entry in before["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(after["state"][i][key], value, err_msg=f"state[{i}][{key}]")


def test_sgd_load_state_dict_checks_the_momentum_buffer_shape():
    _, _, sd = _saved_after_one_step(SGD)
    sd["state"][0]["momentum_buffer"] = np.zeros((4, 3))
    _, fresh, _ = _saved_after_one_step(SGD)
    with pytest.raises(
        ValueError, match=r"state\[0\]\['momentum_buffer'\] has shape \(4, 3\), parameter 0 has \(3, 4\)"
    ):
        fresh.load_state_dict(sd)


def test_zero_grad_sets_grads_to_none():
    ours = _ours(_initial())
    opt = SGD(ours, lr=0.1)
    _set_grads(ours, None, 0)
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda ps: AdamW([]), ValueError, "empty parameter list"),
        (lambda ps: AdamW(ps[0]), TypeError, "iterable of Tensors"),
        (lambda ps: AdamW([ps[0], np.zeros(3)]), TypeError, "item 1 is a ndarray"),
        (lambda ps: AdamW([ps[0], ps[1], ps[0]]), ValueError, "parameter 2 is the same Tensor as parameter 0"),
        (lambda ps: SGD(ps, lr=-0.1), ValueError, "lr must be >= 0"),
        (lambda ps: Adam(ps, betas=(0.9, 1.0)), ValueError, r"betas must be two numbers in \[0, 1\)"),
        (lambda ps: AdamW([{"params": ps, "weight_decay": -1}]), ValueError, "weight_decay must be >= 0"),
        (lambda ps: SGD([Tensor(np.arange(3))], lr=0.1), TypeError, "only float tensors"),
    ],
)
def test_bad_constructor_arguments_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make(_ours(_initial()))


# ---------------------------------------------------------------- clip_grad_norm_


@requires_torch
@pytest.mark.parametrize("max_norm", [0.5, "just above the norm", 1e3])
def test_clip_grad_norm_matches_torch_and_never_writes_into_a_gradient(max_norm):
    arrays = _initial()
    ours, theirs = _ours(arrays), _theirs(arrays)
    _set_grads(ours, theirs, 0, skip={1})
    if max_norm == "just above the norm":  # torch still scales, by max_norm / (norm + 1e-6) < 1
        grads = torch.cat([q.grad.reshape(-1) for q in theirs if q.grad is not None])
        max_norm = float(torch.linalg.vector_norm(grads)) + 5e-7
    originals = [None if p.grad is None else p.grad.data for p in ours]
    copies = [None if g is None else g.copy() for g in originals]
    norm = clip_grad_norm_(ours, max_norm)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert isinstance(norm, float)
    assert norm == pytest.approx(float(torch_norm), rel=1e-12)
    assert ours[1].grad is None
    for k, (p, q) in enumerate(zip(ours, theirs)):
        if q.grad is not None:
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=f"grad {k}", **TOL)
    for g, c in zip(originals, copies):  # the old arrays are untouched (they may be shared)
        if g is not None:
            np.testing.assert_array_equal(g, c)
    clipped = math.sqrt(sum(float((p.grad.numpy() ** 2).sum()) for p in ours if p.grad is not None))
    assert clipped == pytest.approx(min(norm, max_norm), rel=1e-5)


def test_clip_grad_norm_keeps_float32_and_ignores_missing_grads():
    p, q = Tensor(np.ones((2, 2), np.float32), requires_grad=True), Tensor(np.ones(3, np.float32), requires_grad=True)
    p.grad = Tensor(np.full((2, 2), 3.0, np.float32))
    norm = clip_grad_norm_([p, q], 1.0)
    assert norm == pytest.approx(6.0)
    assert p.grad.dtype == np.float32 and q.grad is None
    assert clip_grad_norm_([q], 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_grad_norm_([p], -1.0)


# ---------------------------------------------------------------- cosine_lr


def _nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py get_lr, verbatim apart from the arguments."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 1050, 1999, 2000, 2001, 5000])
def test_cosine_lr_is_nanogpts_schedule(it):
    args = (1e-3, 100, 2000, 1e-4)
    assert cosine_lr(it, *args) == pytest.approx(_nanogpt_get_lr(it, *args), rel=1e-12, abs=0.0)


def test_cosine_lr_shape():
    lrs = [cosine_lr(it, 1.0, 10, 110, 0.1) for it in range(130)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rising
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55) and lrs[110:] == [0.1] * 20
    assert cosine_lr(0, 1.0, 0, 0, 0.1) == 0.1  # no warmup, no decay: min_lr at once
    with pytest.raises(ValueError, match="warmup_iters <= lr_decay_iters"):
        cosine_lr(0, 1.0, 10, 5, 0.1)


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_load_state_dict_resets_params_without_a_saved_entry(make):
    """Loading into an optimizer that already stepped: a parameter the saved run never stepped starts afresh."""
    saved_params, used_params = _ours(_initial()), _ours(_initial())
    saved_opt, used_opt = make(saved_params), make(used_params)
    for step in range(2):
        _set_grads(saved_params, None, step, skip={0})
        saved_opt.step()
        _set_grads(used_params, None, step + 10)
        used_opt.step()
    assert 0 not in saved_opt.state_dict()["state"]
    used_opt.load_state_dict(saved_opt.state_dict())
    for p, q in zip(used_params, saved_params):
        p.data[...] = q.data
    for step in range(2, 4):
        _set_grads(saved_params, None, step)
        _set_grads(used_params, None, step)
        saved_opt.step()
        used_opt.step()
    for k, (a, b) in enumerate(zip(saved_params, used_params)):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"param {k}")
