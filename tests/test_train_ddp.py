"""`python -m tinygrad_gpt.train` on several ranks: `mpiexec -n 2` trains as one process with the same G.

Tiny models and a few iterations (each mpiexec run takes about two seconds here). The library-level
tests (tests/test_distributed.py) compare float64 runs to 1e-6; the CLI trains in float32, compared
here to 1e-4 relative. The tests without mpiexec (gradient accumulation in one process) run everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_distributed import MPIEXEC, needs_mpi

from tinygrad_gpt import distributed, sample, train
from tinygrad_gpt.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
CORPUS = "hello world, this is a tiny corpus for testing the model.\n" * 40
TINY = ("--data corpus.txt --n_layer 1 --n_head 2 --n_embd 16 --block_size 8 --batch_size 4 --eval_iters 2 "
        "--log_interval 1 --max_new_tokens 20 --plot false --eval_interval 5 --dropout 0.1 --warmup_iters 2 "
        "--lr_decay_iters 10")  # fmt: skip
ERROR = "python -m tinygrad_gpt.train: error:"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.MPI_LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return env


def command(ranks: int, args: str) -> list:
    """`python -m tinygrad_gpt.train args` with `ranks` MPI processes (0: plain python, no mpiexec)."""
    base = [sys.executable, "-m", "tinygrad_gpt.train", *args.split()]
    return [MPIEXEC, "-n", str(ranks), *base] if ranks else base


def train_cli(tmp_path: Path, ranks: int, args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    (tmp_path / "corpus.txt").write_text(CORPUS)
    return subprocess.run(command(ranks, args), capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=tmp_path)  # fmt: skip


def trained(tmp_path: Path, ranks: int, args: str) -> subprocess.CompletedProcess:
    result = train_cli(tmp_path, ranks, args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(out_dir: Path) -> list:
    """(iter, loss) of each training line and (iter, train_loss, val_loss) of each evaluation, in order."""
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) if "loss" in r else (r["iter"], r["train_loss"], r["val_loss"]) for r in lines]


def assert_same_losses(a: list, b: list, rtol: float = 1e-4) -> None:
    assert [r[0] for r in a] == [r[0] for r in b] and [len(r) for r in a] == [len(r) for r in b]
    np.testing.assert_allclose([x for r in a for x in r[1:]], [x for r in b for x in r[1:]], rtol=rtol, atol=0)


def weights(out_dir: Path, name: str = "ckpt_latest") -> dict:
    return load_checkpoint(out_dir / name).model_state


# ---------------------------------------------------------------- 2 ranks vs 1 process


@needs_mpi
@pytest.mark.parametrize("zero", ["0", "1"], ids=["allreduce", "zero1"])
def test_two_ranks_train_as_one_process_with_the_same_accumulation(tmp_path, zero):
    """G=4 (with dropout): 2 ranks x 2 micro-batches == 1 process x 4, losses to 1e-4, weights close.

    allreduce: the default optimizer (Muon and AdamW); zero1: ZeroAdamW against AdamW in one process.
    """
    args = f"{TINY} --max_iters 6 --gradient_accumulation_steps 4" + (" --optimizer adamw" if zero == "1" else "")
    trained(tmp_path, 0, f"{args} --out_dir one")
    two = trained(tmp_path, 2, f"{args} --out_dir two --zero {zero}")
    assert_same_losses(records(tmp_path / "two"), records(tmp_path / "one"))
    assert len(records(tmp_path / "one")) == 6 + 3
    for name, value in weights(tmp_path / "one").items():
        np.testing.assert_allclose(weights(tmp_path / "two")[name], value, rtol=1e-3, atol=1e-5, err_msg=name)
    assert "data parallel: 2 rank(s) (mpi) x 2 micro-batch(es) of 4 = 128 tokens per step" in two.stdout
    ckpt = load_checkpoint(tmp_path / "two" / "ckpt_latest")  # ZeroAdamW's checkpoint: AdamW's layout, full moments
    assert ckpt.meta["train_config"]["zero"] == int(zero)
    assert ckpt.meta["train_config"]["optimizer"] == ("adamw" if zero == "1" else "muon")
    if zero == "1":
        assert {tuple(v["exp_avg"].shape) for v in ckpt.optim_state["state"].values()} == {
            tuple(v.shape) for v in ckpt.model_state.values()}


@needs_mpi
def test_only_rank_0_writes_files_and_prints(tmp_path):
    """The same files as one process, and each line of output once (rank 1 prints nothing)."""
    args = f"{TINY} --max_iters 5 --gradient_accumulation_steps 2 --plot true"
    one = trained(tmp_path, 0, f"{args} --out_dir one")
    two = trained(tmp_path, 2, f"{args} --out_dir two")
    names = {d: sorted(p.name for p in (tmp_path / d).rglob("*")) for d in ("one", "two")}
    assert names["two"] == names["one"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "one", "two"]
    for marker in ("parameters, vocabulary", "iter 0: train loss", "iter 5: train loss", "---------- sample", "done:",
                   "loss curve:"):  # fmt: skip
        assert two.stdout.count(marker) == one.stdout.count(marker) == 1, marker
    assert two.stderr.count("train [cpu") <= one.stderr.count("train [cpu") + 1  # one progress bar, not two


# ---------------------------------------------------------------- resuming


@needs_mpi
def test_resume_under_mpi_is_exact_and_a_two_rank_run_resumes_on_one(tmp_path):
    """2 ranks: 5 iterations + resume to 10 == 10 in one go (bit for bit); the same 5 resumed by 1 process ~= it."""
    args = f"{TINY} --gradient_accumulation_steps 2"
    trained(tmp_path, 2, f"{args} --out_dir straight --max_iters 10")
    trained(tmp_path, 2, f"{args} --out_dir half --max_iters 5")
    os.system(f"cp -r {tmp_path / 'half'} {tmp_path / 'half1'}")
    resumed = trained(tmp_path, 2, "--init_from resume --out_dir half --max_iters 10")
    assert "resuming from iteration 5" in resumed.stdout
    assert records(tmp_path / "half") == records(tmp_path / "straight")
    trained(tmp_path, 0, "--init_from resume --out_dir half1 --max_iters 10")
    assert_same_losses(records(tmp_path / "half1"), records(tmp_path / "straight"))


def test_accumulation_in_one_process_resumes_bit_for_bit(tmp_path):
    """G=3 with dropout: 5 iterations + resume to 8 == 8 in one go (the generators are reseeded per micro-batch)."""
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"{TINY} --gradient_accumulation_steps 3 --data {tmp_path / 'corpus.txt'}".split()
    assert train.main([*args, "--out_dir", str(tmp_path / "a"), "--max_iters", "8"]) == 0
    assert train.main([*args, "--out_dir", str(tmp_path / "b"), "--max_iters", "5"]) == 0
    assert train.main(["--init_from", "resume", "--out_dir", str(tmp_path / "b"), "--max_iters", "8"]) == 0
    assert records(tmp_path / "b") == records(tmp_path / "a")


def test_float16_with_accumulation_trains_in_one_process(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"{TINY} --gradient_accumulation_steps 2 --dtype float16 --data {tmp_path / 'corpus.txt'}".split()
    assert train.main([*args, "--out_dir", str(tmp_path / "a"), "--max_iters", "6"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert len(steps) == 6 and all(np.isfinite(r["loss"]) and r["loss_scale"] > 0 for r in steps)
    assert "1 rank(s) (single) x 2 micro-batch(es) of 4 = 64 tokens per step" in capsys.readouterr().out
    assert train.main([*args, "--out_dir", str(tmp_path / "b"), "--max_iters", "6", "--zero", "1"]) == 2
    assert "--zero 1 works with --dtype float32 only" in capsys.readouterr().err


# ---------------------------------------------------------------- faults


@needs_mpi
def test_a_killed_rank_ends_the_job_nonzero_and_the_checkpoint_still_loads(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    started = time.monotonic()
    args = f"{TINY} --out_dir out --max_iters 100000 --lr_decay_iters 100000 --gradient_accumulation_steps 2"
    proc = subprocess.Popen(command(2, args), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "out" / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and '"iter": 10, "train_loss"' in metrics.read_text()):
        time.sleep(0.05)
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    try:
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - started < 90  # generous: the training itself took some of it
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt_latest")  # iteration 10's, or 5's if the kill hit its save
    assert ckpt.meta["iter_num"] >= 5 and ckpt.meta["iter_num"] % 5 == 0
    assert sample.main(["--out_dir", str(tmp_path / "out"), "--checkpoint", "latest", "--max_new_tokens", "5"]) == 0


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of MPI rank `rank` among the descendants of process `launcher` (read from /proc)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), environ))
    todo = [launcher]
    while todo:
        for pid, environ in children.get(todo.pop(), []):
            if f"PMI_RANK={rank}".encode() in environ and b"tinygrad_gpt.train" in (Path(f"/proc/{pid}/cmdline")
                                                                                    .read_bytes()):
                return pid
            todo.append(pid)
    raise AssertionError(f"no rank {rank} below process {launcher}")


@needs_mpi
def test_accumulation_steps_not_divisible_by_the_ranks_is_one_line_and_exit_2(tmp_path):
    result = train_cli(tmp_path, 2, f"{TINY} --gradient_accumulation_steps 3", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{ERROR} gradient_accumulation_steps=3 must be a positive multiple of the number of ranks (2)"]
    assert not (tmp_path / "out").exists()


@needs_mpi
def test_ranks_started_with_different_settings_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    base = command(0, f"{TINY} --gradient_accumulation_steps 2")
    result = subprocess.run([MPIEXEC, "-n", "1", *base, "--seed", "1", ":", "-n", "1", *base, "--seed", "2"],
                            capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{ERROR} ranks [1] were started with different settings than rank 0 (seed=2 vs 1)"]


@needs_mpi
def test_an_error_on_one_rank_only_stops_every_rank_with_one_line(tmp_path):
    """Rank 1 runs in a directory without corpus.txt: exit 2 everywhere (rank 0 would otherwise wait forever)."""
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "elsewhere").mkdir()
    base = command(0, f"{TINY} --gradient_accumulation_steps 2")
    result = subprocess.run([MPIEXEC, "-n", "1", *base, ":", "-n", "1", "-wdir", str(tmp_path / "elsewhere"), *base],
                            capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{ERROR} rank 1 of 2: ") and "corpus.txt" in line
    assert not (tmp_path / "out" / "ckpt_latest").exists()


@needs_mpi
def test_float16_on_two_ranks_trains_as_one_process(tmp_path):
    """Gradients averaged on the float32 masters: the same losses as one process, to float16 rounding."""
    args = f"{TINY} --max_iters 5 --gradient_accumulation_steps 2 --dtype float16"
    trained(tmp_path, 0, f"{args} --out_dir one")
    trained(tmp_path, 2, f"{args} --out_dir two")
    assert_same_losses(records(tmp_path / "two"), records(tmp_path / "one"), rtol=1e-3)


@needs_mpi
def test_ctrl_c_on_mpiexec_saves_once_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """mpiexec passes Ctrl-C to every rank; they agree on the step to stop after, rank 0 saves and says so once."""
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"{TINY} --lr_decay_iters 1000 --gradient_accumulation_steps 2"
    proc = subprocess.Popen(command(2, f"{args} --out_dir b --max_iters 100000"), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "b" / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    stopped_at = load_checkpoint(tmp_path / "b" / "ckpt_latest").meta["iter_num"]
    assert stdout.count(f"interrupted: saved iteration {stopped_at}") == 1 and stdout.count("interrupted") == 1
    end = stopped_at + 4
    trained(tmp_path, 2, f"--init_from resume --out_dir b --max_iters {end}")
    trained(tmp_path, 2, f"{args} --out_dir a --max_iters {end}")
    assert records(tmp_path / "b") == records(tmp_path / "a")
