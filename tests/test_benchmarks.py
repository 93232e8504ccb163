"""The benchmarks keep working: each script runs once on a tiny config and prints a well-formed table.

No timing assertions (CI machines vary); the tables must have their columns and finite numbers, and
the PyTorch reference model must be the same model as ours (same loss, gradients and optimizer step).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import harness  # benchmarks/harness.py (tests/conftest.py puts benchmarks/ on sys.path)
import numpy as np
import pytest

from helpers import requires_torch
from tinygrad_gpt import backend

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

TRAIN_COLUMNS = [
    "framework", "ms/step (median)", "ms/step (min)", "tokens/s", "GFLOP/s", "% of sgemm",
    "RSS after imports (MiB)", "peak RSS (MiB)", "peak GPU mem (MiB)", "last loss",
]  # fmt: skip
OPS_COLUMNS = [
    "config", "op", "inputs", "ours fwd (ms)", "ours fwd+bwd (ms)", "torch fwd (ms)", "torch fwd+bwd (ms)",
    "ratio fwd", "ratio fwd+bwd",
]  # fmt: skip


def run_script(name: str, *args: str) -> str:
    """Run benchmarks/<name> with one thread; fail with its stderr when it fails."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=300, cwd=BENCH.parent
    )
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def number(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value), f"cell {cell!r} is not a finite number"
    return value


def test_sgemm_probe_reports_a_positive_rate():
    result = json.loads(run_script("sgemm.py", "--size", "64", "--repeats", "3", "--threads", "1", "--json"))
    assert result["n"] == 64
    assert 0 < number(str(result["gflops"])) <= number(str(result["best_gflops"]))


def test_flop_count_matches_the_parameter_formula():
    # the exact matmul count must equal 6 * N_matmul * tokens + 12 * L * T * C * tokens
    for name, cfg in harness.CONFIGS.items():
        tokens = cfg["batch_size"] * cfg["block_size"]
        n_matmul = sum(math.prod(s) for n, s, _ in harness.param_shapes(cfg) if len(s) == 2 and n != "wpe.weight")
        attention = 12 * cfg["n_layer"] * cfg["block_size"] * cfg["n_embd"] * tokens
        assert harness.train_flops_per_step(cfg) == 6 * n_matmul * tokens + attention, name


def test_param_shapes_are_those_of_our_gpt():
    from tinygrad_gpt.model import GPT, GPTConfig

    cfg = harness.CONFIGS["tiny"]
    model = GPT(GPTConfig(**{k: cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}))
    ours = {name: p.shape for name, p in model.named_parameters()}
    assert ours == {name: shape for name, shape, _ in harness.param_shapes(cfg)}


def test_bad_arguments_are_refused():
    import bench_train

    for argv in (["--frameworks", "jax"], ["--steps", "0"], ["--config", "huge"]):
        with pytest.raises(SystemExit):
            bench_train.parse_args(argv)


@requires_torch
@pytest.mark.slow
def test_bench_train_prints_both_frameworks_and_their_ratio(tmp_path):
    raw = tmp_path / "raw.json"
    out = run_script(
        "bench_train.py", "--config", "tiny", "--steps", "2", "--blocks", "2", "--warmup", "1",
        "--threads", "1", "--sgemm_size", "64", "--json", str(raw),
    )  # fmt: skip
    columns, rows = harness.parse_markdown_table(out)
    assert columns == TRAIN_COLUMNS
    assert [r[0] for r in rows] == ["tinygrad_gpt", "torch", "ratio tinygrad_gpt / torch"]
    for row in rows[:2]:
        values = dict(zip(columns, row))
        assert values["peak GPU mem (MiB)"] == "-"  # CPU run
        for col in columns[1:]:
            if col != "peak GPU mem (MiB)":
                assert number(values[col]) > 0, col
        assert number(values["peak RSS (MiB)"]) >= number(values["RSS after imports (MiB)"])
    ratio = number(rows[2][1])
    assert ratio == pytest.approx(number(rows[0][1]) / number(rows[1][1]), rel=0.01)
    results = json.loads(raw.read_text())["results"]
    assert len(results["tinygrad"]["times"]) == len(results["torch"]["times"]) == 4  # 2 blocks x 2 steps


@pytest.mark.slow
def test_bench_train_runs_ours_alone():
    out = run_script(
        "bench_train.py", "--config", "tiny", "--steps", "1", "--blocks", "1", "--warmup", "0",
        "--threads", "1", "--sgemm_size", "64", "--frameworks", "tinygrad", "--no_numba",
    )  # fmt: skip
    columns, rows = harness.parse_markdown_table(out)
    assert columns == TRAIN_COLUMNS and [r[0] for r in rows] == ["tinygrad_gpt"]
    assert "pure NumPy" in out
    assert number(rows[0][columns.index("last loss")]) > 0


@pytest.mark.slow
@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and an NVIDIA GPU (or tests/fake_cupy.py)")
def test_bench_train_runs_ours_on_the_gpu():
    out = run_script(
        "bench_train.py", "--config", "tiny", "--steps", "1", "--blocks", "1", "--warmup", "1",
        "--sgemm_size", "64", "--frameworks", "tinygrad", "--backend", "cupy",
    )  # fmt: skip
    columns, rows = harness.parse_markdown_table(out)
    assert columns == TRAIN_COLUMNS and [r[0] for r in rows] == ["tinygrad_gpt"]
    assert "tinygrad_gpt: cuda (" in out
    assert number(rows[0][columns.index("last loss")]) > 0


@requires_torch
@pytest.mark.slow
def test_bench_ops_times_every_op():
    out = run_script("bench_ops.py", "--configs", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1")
    import bench_ops

    columns, rows = harness.parse_markdown_table(out)
    assert columns == OPS_COLUMNS
    assert [r[1] for r in rows] == list(bench_ops.OPS)
    for row in rows:
        values = dict(zip(columns, row))
        step = values["op"] in bench_ops.STEP_OPS
        for col in columns[3:]:
            if step and "fwd+bwd" not in col:
                assert values[col] == "-", (values["op"], col)
            else:
                assert number(values[col]) > 0, (values["op"], col)


def test_bench_ops_profile_lists_our_functions():
    out = run_script("bench_ops.py", "--profile", "--config", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1")
    columns, rows = harness.parse_markdown_table(out)
    assert columns == ["function", "calls/step", "tottime ms/step", "% of tottime", "cumtime ms/step"]
    assert any(r[0].startswith("tinygrad_gpt/") for r in rows)
    shares = [number(r[3]) for r in rows]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.5


@requires_torch
@pytest.mark.slow
def test_bench_quality_trains_both_frameworks(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 60)
    out = run_script(
        "bench_quality.py", "--data", str(text), "--config", "tiny", "--max_iters", "30", "--eval_interval", "15",
        "--eval_iters", "2", "--warmup_iters", "3", "--lr_decay_iters", "30", "--learning_rate", "3e-3",
        "--frameworks", "tinygrad,torch", "--threads", "1", "--final_eval_iters", "4",
    )  # fmt: skip
    columns, rows = harness.parse_markdown_table(out)
    assert columns[:4] == ["framework", "final val loss", "final val loss (4 batches)", "final train loss"]
    assert [r[0] for r in rows] == ["tinygrad_gpt", "torch"]
    vocab = len(set(text.read_text()))
    for row in rows:
        assert all(number(cell) > 0 for cell in row[1:])
        assert number(row[1]) < math.log(vocab) - 0.3  # it learned: below the uniform guess
        assert number(row[2]) < math.log(vocab) - 0.3


@requires_torch
@pytest.mark.slow
def test_bench_speedrun_times_both_to_the_baselines_loss(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 60)
    out = run_script("bench_speedrun.py", "--data", str(text), "--tiny", "--seeds", "3",
                     "--json", str(tmp_path / "rows.json"))  # fmt: skip
    columns, rows = harness.parse_markdown_table(out)
    assert columns[0] == "seed" and columns[-1] == "ratio ours / baseline"
    assert [r[0] for r in rows] == ["3", "median"]
    assert 0 < number(rows[0][2]) < math.log(len(set(text.read_text())))  # the target: the baseline's final loss
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert saved[0]["target"] == pytest.approx(number(rows[0][2]), abs=1e-4) and saved[0]["baseline_s"] > 0


# ---------------------------------------------------------------- the reference model is our model


@requires_torch
@pytest.mark.slow
def test_torch_gpt_matches_ours_on_the_same_weights(float64):
    import torch
    from torch_gpt import TorchGPT, TorchGPTConfig

    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, clip_grad_norm_

    sizes = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    ours = GPT(GPTConfig(**sizes))
    theirs = TorchGPT(TorchGPTConfig(**sizes)).double()
    theirs.load_gpt2_state_dict({k: np.asarray(v) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, size=(3, 8)), rng.integers(0, 11, size=(3, 8))

    optimizer = AdamW(ours.param_groups(0.1), lr=1e-2, betas=(0.9, 0.99))
    torch_optimizer = theirs.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
    for _ in range(2):  # two steps: the second one starts from the updated weights and moments
        _, loss = ours(x, y)
        _, torch_loss = theirs(torch.from_numpy(x), torch.from_numpy(y))
        assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-10)
        loss.backward()
        torch_loss.backward()
        torch_grads = theirs.gpt2_arrays(grad=True)  # (in, out) layout, our names
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(p.grad.numpy(), torch_grads[name], atol=1e-12)
        norm = clip_grad_norm_(ours.parameters(), 0.5)
        assert norm == pytest.approx(torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5).item(), rel=1e-10)
        optimizer.step()
        torch_optimizer.step()
        optimizer.zero_grad()
        torch_optimizer.zero_grad()
    torch_weights = theirs.gpt2_arrays()
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.numpy(), torch_weights[name], atol=1e-12)


GENERATE_COLUMNS = ["batch", "framework", "ms/call (median)", "ms/token (median)", "tokens/s", "peak RSS (MiB)"]


@requires_torch
@pytest.mark.slow
def test_bench_generate_prints_both_frameworks_per_batch_size():
    out = run_script("bench_generate.py", "--tiny")
    columns, rows = harness.parse_markdown_table(out)
    assert columns == GENERATE_COLUMNS
    labels = ["tinygrad_gpt", "torch", "ratio tinygrad_gpt / torch"]
    assert [(r[0], r[1]) for r in rows] == [(b, label) for b in ("1", "8") for label in labels]
    for row in rows:
        assert all(number(cell) > 0 for cell in row[2:])
    for ours, theirs, ratio in (rows[0:3], rows[3:6]):
        assert number(ratio[4]) == pytest.approx(number(ours[4]) / number(theirs[4]), rel=0.01)


@requires_torch
def test_torch_gpt_kv_cache_gives_the_tokens_of_the_full_recompute(float64):
    # the torch side of bench_generate: its cache must change the speed, not the tokens (past block_size too)
    import torch
    from torch_gpt import TorchGPT, TorchGPTConfig

    torch.manual_seed(0)
    model = TorchGPT(TorchGPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)).double().eval()
    prompt = torch.from_numpy(np.random.default_rng(0).integers(0, 11, size=(2, 3)))
    cached = model.generate_greedy(prompt, 9, use_cache=True)
    assert torch.equal(cached, model.generate_greedy(prompt, 9))
    assert cached.shape == (2, 12)
