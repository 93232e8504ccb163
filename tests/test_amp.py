"""float16 mixed precision: GradScaler's rules, MasterWeights, Precision, float16 cross-entropy, `--dtype float16` runs.

NumPy computes float16 slowly on the CPU, so every model here is tiny. The CuPy path (where float16
is the point) is exercised by the same code but is not tested here without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_gpt import Tensor, backend, sample, train
from tinygrad_gpt.amp import GradScaler, MasterWeights, MixedPrecision, Precision, make_precision
from tinygrad_gpt.checkpoint import find_checkpoint, load_checkpoint
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.optim import AdamW, clip_grad_norm_

TINY = "--n_layer 1 --n_head 2 --n_embd 16 --block_size 8 --batch_size 4 --eval_iters 2 --log_interval 1"
TINY += " --max_new_tokens 20 --plot false --eval_interval 5"
CORPUS = "hello world, this is a tiny corpus for testing the model.\n" * 40


def tiny_gpt() -> GPT:
    backend.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0))


def batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, size=(2, 8))
    return x, np.roll(x, -1, axis=1)


def metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- GradScaler


def test_scaler_backs_off_on_inf_and_grows_after_growth_interval_clean_steps():
    scaler = GradScaler(init_scale=8.0, growth_interval=3)
    scales = []
    for found_inf in [False, False, True, False, False, False, False, True, True]:
        scaler.found_inf = found_inf
        scaler.update()
        scales.append(scaler.scale_value)
    # inf halves and restarts the count; the 3rd clean step in a row doubles
    assert scales == [8.0, 8.0, 4.0, 4.0, 4.0, 8.0, 8.0, 4.0, 2.0]
    assert scaler.growth_tracker == 0


def test_scaler_defaults_are_torchs_and_scale_multiplies_the_loss():
    scaler = GradScaler()
    assert scaler.state_dict() == {"scale": 2.0**16, "growth_factor": 2.0, "backoff_factor": 0.5,
                                   "growth_interval": 2000, "growth_tracker": 0}  # fmt: skip
    scaled = scaler.scale(Tensor(np.float32(1.5)))
    assert scaled.dtype == np.float32 and scaled.item() == 1.5 * 2**16


def test_scaler_state_dict_round_trips_through_json_and_bad_state_is_a_value_error():
    scaler = GradScaler(init_scale=4.0, growth_interval=10)
    for _ in range(7):
        scaler.update()
    restored = GradScaler()
    restored.load_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert restored.state_dict() == scaler.state_dict() and restored.growth_tracker == 7
    with pytest.raises(ValueError, match="growth_tracker"):
        restored.load_state_dict({**scaler.state_dict(), "growth_tracker": 10})
    with pytest.raises(ValueError, match="scale"):
        restored.load_state_dict({"growth_tracker": 0})
    with pytest.raises(ValueError, match="backoff_factor"):
        GradScaler(backoff_factor=1.5)


# ---------------------------------------------------------------- MasterWeights and one step


def test_master_weights_are_float32_copies_and_the_model_is_cast_to_float16():
    model = tiny_gpt()
    before = {name: p.copy() for name, p in model.state_dict().items()}
    masters = MasterWeights(model)
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float16)}
    assert {p.dtype for p in masters.params} == {np.dtype(np.float32)}
    for name, master in masters.state_dict().items():
        np.testing.assert_array_equal(master, before[name])
        np.testing.assert_array_equal(model.state_dict()[name], before[name].astype(np.float16))
    groups = masters.param_groups(model.param_groups(0.1))
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in model.param_groups(0.1)]
    assert all(p.dtype == np.float32 for g in groups for p in g["params"])


def step(model, masters, optimizer, scaler, corrupt=None) -> bool:
    """One mixed-precision step; `corrupt(model)` may spoil the float16 gradients before unscaling."""
    _, loss = model(*batch())
    optimizer.zero_grad()
    model.zero_grad()
    scaler.scale(loss).backward()
    if corrupt is not None:
        corrupt(model)
    scaler.unscale_and_check(masters)
    stepped = scaler.step(optimizer, masters)
    scaler.update()
    return stepped


def test_a_clean_step_unscales_into_the_masters_and_updates_both_copies():
    model = tiny_gpt()
    masters = MasterWeights(model)
    optimizer = AdamW(masters.param_groups(model.param_groups(0.1)), lr=1e-2)
    scaler = GradScaler(init_scale=1024.0)
    before = {name: p.copy() for name, p in masters.state_dict().items()}
    _, loss = model(*batch())
    assert loss.dtype == np.float32  # float16 logits, float32 loss: the scaled loss cannot overflow
    scaler.scale(loss).backward()
    assert scaler.unscale_and_check(masters)
    for p, master in zip(model.parameters(), masters.params):
        assert p.grad.dtype == np.float16 and master.grad.dtype == np.float32
        np.testing.assert_allclose(master.grad.data, p.grad.data.astype(np.float32) / 1024.0, rtol=1e-6)
    assert scaler.step(optimizer, masters)
    for name, master in masters.state_dict().items():
        assert not np.array_equal(master, before[name]), name
        np.testing.assert_array_equal(model.state_dict()[name], master.astype(np.float16))


def test_a_step_with_an_inf_gradient_is_skipped_and_the_scale_halves():
    model = tiny_gpt()
    masters = MasterWeights(model)
    optimizer = AdamW(masters.param_groups(model.param_groups(0.1)), lr=1e-2)
    scaler = GradScaler()
    assert step(model, masters, optimizer, scaler)  # a clean step first, so the optimizer has state
    weights = {name: p.copy() for name, p in masters.state_dict().items()}
    model_weights = {name: p.copy() for name, p in model.state_dict().items()}
    optim_state = optimizer.state_dict()

    def add_inf(model):
        p = model.parameters()[3]
        grad = p.grad.data.copy()
        grad.reshape(-1)[0] = np.inf
        p.grad = Tensor(grad, dtype=grad.dtype)

    assert not step(model, masters, optimizer, scaler, corrupt=add_inf)
    assert scaler.scale_value == 2.0**15 and scaler.growth_tracker == 0
    for name in weights:
        np.testing.assert_array_equal(masters.state_dict()[name], weights[name])
        np.testing.assert_array_equal(model.state_dict()[name], model_weights[name])
    assert optimizer.state_dict()["state"][3]["step"] == optim_state["state"][3]["step"] == 1
    assert step(model, masters, optimizer, scaler)  # and training goes on
    assert scaler.growth_tracker == 1


# ---------------------------------------------------------------- Precision: one loop for both


def precision_steps(dtype: str, n: int = 3, max_norm: float = 0.05):
    """n steps of the loop train.py runs, written once against Precision; returns (model, precision, losses)."""
    model = tiny_gpt()
    groups = model.param_groups(0.1)
    precision = make_precision(dtype, model)
    optimizer = AdamW(precision.param_groups(groups), lr=1e-2)
    losses = []
    for _ in range(n):
        _, loss = model(*batch())
        precision.zero_grad(optimizer)
        precision.scale_loss(loss).backward()
        assert precision.step(optimizer, max_norm)
        losses.append(loss.item())
    return model, precision, losses


def test_precision_float32_is_the_plain_loop():
    model = tiny_gpt()
    optimizer = AdamW(model.param_groups(0.1), lr=1e-2)
    losses = []
    for _ in range(3):
        _, loss = model(*batch())
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 0.05)
        optimizer.step()
        losses.append(loss.item())
    same_model, precision, same_losses = precision_steps("float32")
    assert type(precision) is Precision and same_losses == losses
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(precision.weights()[name], value)
    assert precision.state_dict() == {} and precision.metrics() == {}


def test_precision_float16_is_the_mixed_precision_step():
    model = tiny_gpt()
    masters = MasterWeights(model)
    optimizer, scaler = AdamW(masters.param_groups(model.param_groups(0.1)), lr=1e-2), GradScaler()
    losses = []
    for _ in range(3):
        _, loss = model(*batch())
        optimizer.zero_grad()
        model.zero_grad()
        scaler.scale(loss).backward()
        assert scaler.unscale_and_check(masters)
        clip_grad_norm_(masters.params, 0.05)
        assert scaler.step(optimizer, masters)
        scaler.update()
        losses.append(loss.item())
    same_model, precision, same_losses = precision_steps("float16")
    assert isinstance(precision, MixedPrecision) and same_losses == losses
    assert {p.dtype for p in same_model.parameters()} == {np.dtype(np.float16)}
    for name, value in masters.state_dict().items():
        assert precision.weights()[name].dtype == np.float32  # what a checkpoint keeps
        np.testing.assert_array_equal(precision.weights()[name], value)
    assert precision.metrics() == {"loss_scale": 2.0**16}


def test_precision_state_round_trips_through_a_checkpoints_meta():
    _, precision, _ = precision_steps("float16")
    meta = {"iter_num": 3, **precision.state_dict()}  # how train.py saves it
    assert meta["grad_scaler"]["growth_tracker"] == 3
    fresh = make_precision("float16", tiny_gpt())
    fresh.load_state_dict(meta)
    assert fresh.state_dict() == precision.state_dict()
    fresh.load_state_dict({"iter_num": 3})  # a float32 checkpoint: the scale stays as it is
    assert fresh.scaler.growth_tracker == 3
    make_precision("float32", tiny_gpt()).load_state_dict(meta)  # float32 ignores the scale
    with pytest.raises(ValueError, match="bfloat16"):
        make_precision("bfloat16", tiny_gpt())


def test_float16_cross_entropy_matches_float32_and_gives_a_float16_gradient():
    rng = np.random.default_rng(1)
    logits32 = rng.standard_normal((3, 4, 7)).astype(np.float32) * 4
    targets = rng.integers(0, 7, size=(3, 4))
    targets[0, 0] = -1
    x16 = Tensor(logits32.astype(np.float16), requires_grad=True, dtype=np.float16)
    x32 = Tensor(x16.data.astype(np.float32), requires_grad=True)
    loss16, loss32 = F.cross_entropy(x16, targets), F.cross_entropy(x32, targets)
    assert loss16.dtype == np.float32
    np.testing.assert_allclose(loss16.item(), loss32.item(), rtol=1e-6)
    (loss16 * 2.0**16).backward()  # 2**16 itself is beyond float16's range; the gradient is not
    loss32.backward()
    assert x16.grad.dtype == np.float16 and np.isfinite(x16.grad.data).all()
    np.testing.assert_allclose(x16.grad.data.astype(np.float32) / 2.0**16, x32.grad.data, atol=1e-4)


# ---------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def trained16(tmp_path_factory):
    """A tiny model trained for 40 iterations with --dtype float16 by the real command."""
    root = tmp_path_factory.mktemp("amp")
    (root / "corpus.txt").write_text(CORPUS)
    args = f"--data corpus.txt --out_dir out --max_iters 40 --learning_rate 0.01 --dtype float16 {TINY}"
    result = subprocess.run([sys.executable, "-m", "tinygrad_gpt.train", *args.split()], cwd=root,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def test_float16_training_through_the_cli_has_finite_falling_loss(trained16):
    records = metrics(trained16 / "out")
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert len(steps) == 40 and all(np.isfinite(r["loss"]) for r in steps)
    assert all(r["loss_scale"] >= 1.0 for r in steps)
    first, last = np.mean([r["loss"] for r in steps[:5]]), np.mean([r["loss"] for r in steps[-5:]])
    assert last < first - 0.3, (first, last)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3


def test_a_float16_checkpoint_holds_float32_weights_and_the_scaler_and_samples(trained16, capsys):
    ckpt = load_checkpoint(find_checkpoint(trained16 / "out"))
    assert {np.asarray(a).dtype for a in ckpt.model_state.values()} == {np.dtype(np.float32)}
    assert ckpt.meta["train_config"]["dtype"] == "float16"
    last_step = [r for r in metrics(trained16 / "out") if "loss" in r][-1]
    assert ckpt.meta["iter_num"] == last_step["iter"] == 40
    assert ckpt.meta["grad_scaler"]["scale"] == last_step["loss_scale"]  # saved for an exact resume
    args = f"--out_dir {trained16 / 'out'} --prompt hello --max_new_tokens 15 --seed 1"
    assert sample.main(args.split()) == 0
    text = capsys.readouterr().out
    assert text.startswith("hello") and set(text) <= set(CORPUS) | {"-", "\n"}


def test_float16_resume_is_exact_and_a_float16_checkpoint_resumes_in_float32(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    common = f"--data {tmp_path / 'corpus.txt'} {TINY} --dtype float16 --lr_decay_iters 10 --warmup_iters 2"
    assert train.main(f"{common} --out_dir {tmp_path / 'a'} --max_iters 10".split()) == 0
    assert train.main(f"{common} --out_dir {tmp_path / 'b'} --max_iters 5".split()) == 0
    assert train.main(f"--init_from resume --out_dir {tmp_path / 'b'} --max_iters 10".split()) == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "tokens_per_sec", "train_time_s")} for r in rs]  # noqa: E731
    assert strip(metrics(tmp_path / "b")) == strip(metrics(tmp_path / "a"))
    # the same checkpoint continues in float32: the weights and AdamW moments are float32 either way
    assert train.main(f"--init_from resume --out_dir {tmp_path / 'b'} --max_iters 12 --dtype float32".split()) == 0
    records = metrics(tmp_path / "b")
    assert records[-1]["iter"] == 12 and np.isfinite(records[-1]["val_loss"])
    scales = {r["iter"]: "loss_scale" in r for r in records if "loss" in r}
    assert scales[10] and not scales[11] and not scales[12]  # float16 steps log their loss scale


def test_tf32_flag_sets_cupy_tf32_before_training_and_is_off_by_default(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    monkeypatch.setenv("CUPY_TF32", "0")  # restored after the test
    common = f"--data {tmp_path / 'corpus.txt'} {TINY} --max_iters 1 --max_new_tokens 0"
    assert train.main(f"{common} --out_dir {tmp_path / 'a'}".split()) == 0
    assert os.environ["CUPY_TF32"] == "0"
    assert train.main(f"{common} --out_dir {tmp_path / 'b'} --tf32 true".split()) == 0
    assert os.environ["CUPY_TF32"] == "1"
