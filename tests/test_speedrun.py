"""The training command's speedrun options: --optimizer muon, --lr_schedule wsd, fixed evaluations, train_time_s.

Tiny models on a tiny corpus, as in test_cli.py; the recipe itself (configs/speedrun_char.toml) is
checked to parse and to train a few iterations on the tiny corpus.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import data, train
from tinygrad_gpt.checkpoint import load_checkpoint
from tinygrad_gpt.model import GPTConfig
from tinygrad_gpt.optim import AdamW, MultiOptimizer, Muon

REPO = Path(__file__).resolve().parents[1]
TINY = "--n_layer 1 --n_head 2 --n_embd 16 --block_size 8 --batch_size 4 --eval_iters 2 --log_interval 1"
TINY += " --max_new_tokens 0 --plot false --eval_interval 5"
MUON = "--optimizer muon --muon_lr 0.05 --learning_rate 0.01 --head_lr 0.02 --embedding_lr 0.03 --scalar_lr 0.004"
CORPUS = "hello world, this is a tiny corpus for testing the model.\n" * 40


def records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir: Path) -> list:
    """(iter, loss, lr) of each training line and (iter, train_loss, val_loss) of each evaluation, in order."""
    return [(r["iter"], r["loss"], r["lr"]) if "loss" in r else (r["iter"], r["train_loss"], r["val_loss"])
            for r in records(out_dir)]  # fmt: skip


@pytest.fixture
def corpus(tmp_path) -> Path:
    (tmp_path / "corpus.txt").write_text(CORPUS)
    return tmp_path / "corpus.txt"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_muon_run_resumes_bit_for_bit_with_its_state_in_the_checkpoint(tmp_path, corpus, dtype):
    """Muon + AdamW and the WSD schedule: 10 iterations in one go == 5, stop, resume to 10 (dropout on)."""
    common = (f"--data {corpus} {TINY} {MUON} --dropout 0.1 --lr_schedule wsd --decay_frac 0.5 --dtype {dtype} "
              "--lr_decay_iters 10 --warmup_iters 2 --pos_encoding rope --activation relu2 --qk_norm true")
    assert train.main(f"{common} --out_dir {tmp_path / 'a'} --max_iters 10".split()) == 0
    assert train.main(f"{common} --out_dir {tmp_path / 'b'} --max_iters 5".split()) == 0
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt_latest")
    assert ckpt.optim_state["types"] == ["Muon", "AdamW"]
    muon_state = ckpt.optim_state["optimizers"][0]
    assert [g["name"] for g in muon_state["param_groups"]] == ["qkv", "hidden"]
    assert all("momentum_buffer" in entry for entry in muon_state["state"].values()) and muon_state["state"]
    assert train.main(f"--init_from resume --out_dir {tmp_path / 'b'} --max_iters 10".split()) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # float16: the loss scale is restored too
    assert len(losses(tmp_path / "a")) == 13


def test_each_group_gets_its_own_peak_rate_under_the_schedule(tmp_path, corpus):
    config = train.make_config(*_values(f"--data {corpus} --out_dir {tmp_path} {TINY} {MUON} --max_iters 20 "
                                        "--lr_schedule wsd --decay_frac 0.5 --warmup_iters 0 --min_lr 0.001"), None)
    run = train.setup(config, None)
    assert isinstance(run.optimizer, MultiOptimizer)
    assert [type(o) for o in run.optimizer.optimizers] == [Muon, AdamW]
    peaks = {"qkv": 0.05, "hidden": 0.05, "embeddings": 0.03, "head": 0.02, "scalars": 0.004}
    for it, factor in [(0, 1.0), (9, 1.0), (15, 0.55), (20, 0.1)]:  # constant, then linear to min_lr / lr = 0.1
        run.iter_num = it
        assert train.set_learning_rates(run) == pytest.approx(0.01 * factor)
        for group in run.optimizer.param_groups:
            assert group["lr"] == pytest.approx(peaks[group["name"]] * factor), (it, group["name"])
    assert train.get_lr(config, 15, 1.0) == pytest.approx(0.55)


def test_the_default_run_is_the_recipe_and_gpt2_toml_is_nanogpts(tmp_path, corpus):
    config = train.make_config(*_values(f"--data {corpus} --out_dir {tmp_path} {TINY} --max_iters 20"), None)
    run = train.setup(config, None)
    assert isinstance(run.optimizer, MultiOptimizer) and config.optimizer == "muon" and config.lr_schedule == "wsd"
    assert (config.model.pos_encoding, config.model.norm_type, config.model.activation) == ("rope", "rmsnorm", "relu2")
    zero = train.make_config(*_values(f"--data {corpus} --out_dir {tmp_path} {TINY} --zero 1"), None)
    assert zero.optimizer == "adamw"  # ZeRO-1 shards AdamW's moments
    gpt2 = train.make_config(*_values(f"--config {REPO / 'configs' / 'gpt2.toml'} --data {corpus} "
                                      f"--out_dir {tmp_path} {TINY} --max_iters 20"), None)
    sizes, gpt2_layout = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout"), GPTConfig()
    for f in dataclasses.fields(GPTConfig):  # everything but the sizes: GPTConfig's own defaults, GPT-2's
        assert f.name in sizes or getattr(gpt2.model, f.name) == getattr(gpt2_layout, f.name), f.name
    run = train.setup(gpt2, None)
    assert isinstance(run.optimizer, AdamW) and gpt2.lr_schedule == "cosine"
    run.iter_num = 7
    lr = train.set_learning_rates(run)
    assert lr == train.cosine_lr(7, 1e-3, 2, 20, 1e-4)
    assert all(group["lr"] == lr for group in run.optimizer.param_groups)


def test_fine_tuning_defaults_to_adamw(tmp_path, corpus):
    assert train.main(f"--data {corpus} --out_dir {tmp_path / 'a'} {TINY} --max_iters 5".split()) == 0
    argv = f"--init_from {tmp_path / 'a'} --data {corpus} --out_dir {tmp_path / 'b'} {TINY} --max_iters 2"
    assert train.main(argv.split()) == 0
    assert load_checkpoint(tmp_path / "a" / "ckpt_latest").meta["train_config"]["optimizer"] == "muon"
    assert load_checkpoint(tmp_path / "b" / "ckpt_latest").meta["train_config"]["optimizer"] == "adamw"


def _values(args: str) -> tuple[dict, set]:
    from tinygrad_gpt.cli import parse_args
    from tinygrad_gpt.train_config import TrainConfig

    return parse_args(TrainConfig, args.split(), "train", "", "")


def test_every_evaluation_uses_the_same_windows_and_reports_training_time(tmp_path, corpus):
    assert train.main(f"--data {corpus} --out_dir {tmp_path / 'a'} {TINY} --max_iters 10".split()) == 0
    evals = [r for r in records(tmp_path / "a") if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 5, 10]
    times = [r["train_time_s"] for r in evals]
    assert times[0] == 0.0 and 0 < times[1] <= times[2]
    last = [r for r in records(tmp_path / "a") if "loss" in r][-1]
    assert times[2] <= last["time"]  # evaluations and checkpoint writes are left out
    # resumed: the count goes on from the checkpoint's
    assert train.main(f"--init_from resume --out_dir {tmp_path / 'a'} --max_iters 15".split()) == 0
    resumed = [r for r in records(tmp_path / "a") if "val_loss" in r]
    assert resumed[-1]["iter"] == 15 and resumed[-1]["train_time_s"] > times[2]
    # the same model evaluated twice sees the same batches: the same losses
    ckpt = train.load_init_checkpoint("resume", str(tmp_path / "a"))
    run = train.setup(train.make_config(*_values(f"--init_from resume --out_dir {tmp_path / 'a'}"), ckpt), ckpt)
    first = train.estimate_loss(run.model, run.eval_batches)
    assert train.estimate_loss(run.model, run.eval_batches) == first
    assert first["val"] == pytest.approx(resumed[-1]["val_loss"], rel=1e-12)


def test_fixed_windows_are_evenly_spaced_and_need_no_seed():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = data.fixed_windows(tokens, n_batches=3, batch_size=4, block_size=10)
    assert len(batches) == 3 and all(x.shape == y.shape == (4, 10) for x, y in batches)
    starts = np.concatenate([x[:, 0] for x, _ in batches])
    assert starts[0] == 0 and starts[-1] == 1000 - 11 and np.all(np.diff(starts) > 0)
    for x, y in batches:
        np.testing.assert_array_equal(y, x + 1)  # y is x shifted by one token
    again = data.fixed_windows(tokens, 3, 4, 10)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="too few"):
        data.fixed_windows(tokens[:5], 1, 1, 10)


@pytest.mark.parametrize(
    "args, expected",
    [
        ("--optimizer sgd", "--optimizer"),
        ("--lr_schedule linear", "--lr_schedule"),
        ("--decay_frac 1.5", "--decay_frac must be in [0, 1]"),
        ("--muon_lr 0", "--muon_lr must be positive"),
        ("--ns_steps 0", "--ns_steps must be >= 1"),
        ("--head_lr -1", "--head_lr must be positive"),
        ("--lr_schedule wsd --warmup_iters 18 --decay_frac 0.5", "overlaps the decay"),
    ],
)
def test_bad_speedrun_flags_are_one_line_and_exit_2(tmp_path, corpus, capsys, args, expected):
    argv = f"--data {corpus} --out_dir {tmp_path / 'out'} {TINY} --max_iters 20 {args}".split()
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out" / "ckpt_latest").exists()


def test_resuming_an_adamw_run_with_muon_is_refused_in_one_line(tmp_path, corpus, capsys):
    assert train.main(f"--data {corpus} --out_dir {tmp_path / 'a'} {TINY} --max_iters 5 --optimizer adamw".split()) == 0
    capsys.readouterr()
    assert train.main(f"--init_from resume --out_dir {tmp_path / 'a'} --max_iters 8 --optimizer muon".split()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MultiOptimizer" in err[0], err


def test_the_recipe_config_parses_and_trains(tmp_path, corpus):
    recipe = REPO / "configs" / "speedrun_char.toml"
    argv = ["--config", str(recipe), "--data", str(corpus), "--out_dir", str(tmp_path / "out"), *TINY.split(),
            "--max_iters", "6", "--warmup_iters", "1"]  # fmt: skip
    assert train.main(argv) == 0
    saved = load_checkpoint(tmp_path / "out" / "ckpt_latest").meta
    assert saved["train_config"]["optimizer"] == "muon" and saved["train_config"]["lr_schedule"] == "wsd"
    assert saved["model_config"]["pos_encoding"] == "rope" and saved["model_config"]["activation"] == "relu2"
