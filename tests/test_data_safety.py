"""A run's data is never lost, and every bad input is one clear line (issue 12's cases, one test each).

- a run writes only where its command line says (--out_dir), and a resume reads the text of --data
  or out_dir's token files, never a path recorded in a checkpoint;
- one run per out_dir (a lock naming the pid that holds it; a dead run's lock is taken over);
- a full disk, a closed stdout, absurd sizes, non-finite floats, oversized files and damaged
  checkpoints end with one line on stderr (exit 2 for bad input, 1 for a failure while running),
  and the last good checkpoint stays byte-identical.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import CORPUS, SAMPLE_ERROR, TINY, TRAIN_ERROR, one_error_line, run, snapshot, start

from tinygrad_gpt import Tensor, checkpoint, safetensors, sample, train
from tinygrad_gpt.checkpoint import load_checkpoint

OTHER_CORPUS = "quite another text: different words, other letters! " * 45


def train_into(root: Path, out: str, *extra: str, corpus: str = CORPUS, max_iters: int = 10) -> Path:
    """Train a tiny model on `corpus` (written to root/<out>.txt) into root/out, in-process."""
    text = root / f"{out}.txt"
    text.write_text(corpus)
    argv = ["--data", str(text), "--out_dir", str(root / out), *TINY.split(), "--max_iters", str(max_iters), *extra]
    assert train.main(argv) == 0
    return root / out


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A trained tiny run (10 iterations); tests copy it before they damage anything."""
    return train_into(tmp_path_factory.mktemp("good"), "out")


@pytest.fixture
def copy_of(good_run, tmp_path):
    def copy(name: str = "out") -> Path:
        shutil.copytree(good_run, tmp_path / name)
        shutil.copy(good_run.parent / "out.txt", tmp_path / "corpus.txt")
        return tmp_path / name

    return copy


def error_lines(stderr: str) -> list:
    """The error lines of a run's stderr, which also holds its progress bar; never a traceback."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith(TRAIN_ERROR)]


def iter_of(out: Path) -> int:
    return load_checkpoint(out / "ckpt_latest").meta["iter_num"]


# ---------------------------------------------------------------- a run writes only where its command line says


def test_resume_writes_to_its_own_out_dir_not_to_the_one_its_checkpoint_recorded(tmp_path, monkeypatch, capsys):
    """The issue's reproduction: runA moved to out/, a new runA trained; resuming out/ must not touch runA/."""
    monkeypatch.chdir(tmp_path)
    train_into(tmp_path, "runA")
    os.rename(tmp_path / "runA", tmp_path / "out")
    train_into(tmp_path, "runA", "--seed", "99", corpus=OTHER_CORPUS, max_iters=5)
    second_run = snapshot(tmp_path / "runA")
    assert train.main(["--init_from", "resume", "--max_iters", "15"]) == 0  # out/ by default
    assert snapshot(tmp_path / "runA") == second_run
    assert iter_of(tmp_path / "out") == 15
    assert load_checkpoint(tmp_path / "out" / "ckpt_latest").meta["train_config"]["out_dir"] == "out"
    assert "the token files in out" in capsys.readouterr().out


def test_resume_reads_the_token_files_not_a_path_recorded_in_the_checkpoint(copy_of, tmp_path):
    out = copy_of()
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET " * 400)
    meta_path = out / "ckpt_latest" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["train_config"]["data"] = str(secret)  # a checkpoint's paths are data, not instructions
    meta_path.write_text(json.dumps(meta))
    tokens = (out / "train.bin").read_bytes()
    assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "12"]) == 0
    assert (out / "train.bin").read_bytes() == tokens and iter_of(out) == 12


def test_resume_says_when_data_differs_and_needs_data_without_token_files(copy_of, tmp_path, capsys):
    out = copy_of()
    (tmp_path / "same_letters.txt").write_text(CORPUS[::-1])
    argv = ["--init_from", "resume", "--out_dir", str(out), "--max_iters", "12"]
    assert train.main([*argv, "--data", str(tmp_path / "same_letters.txt")]) == 0
    assert "the checkpoint was trained on" in capsys.readouterr().out
    (out / "val.bin").unlink()
    before = snapshot(out)
    assert train.main([*argv, "--max_iters", "14"]) == 2
    line = one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert "val.bin is missing" in line and "--data" in line
    assert snapshot(out) == before


def test_resume_refuses_token_files_of_another_vocabulary(copy_of, capsys):
    out = copy_of()
    np.full(100, 60000, dtype=np.uint16).tofile(out / "train.bin")  # ids far past the 20-character vocabulary
    assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "12"]) == 2
    assert "outside the checkpoint's vocabulary" in one_error_line(capsys.readouterr().err, TRAIN_ERROR)


# ---------------------------------------------------------------- one run per out_dir


def test_a_second_run_into_a_locked_out_dir_is_refused_naming_the_pid(copy_of, capsys):
    from tinygrad_gpt.runlock import RunLock

    out = copy_of()
    before = snapshot(out)
    with RunLock(out):  # as a live run holds it
        assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "12"]) == 2
        line = one_error_line(capsys.readouterr().err, TRAIN_ERROR)
        assert f"pid {os.getpid()} holds" in line and "in use by another training run" in line
        assert train.main(["--out_dir", str(out), "--overwrite", *TINY.split()]) == 2
    assert snapshot(out) == before and not (out / "train.lock").exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(copy_of, capsys):
    out = copy_of()
    (out / "train.lock").write_text("4194300\n")  # what kill -9 leaves: the file, but no flock
    assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "12"]) == 0
    assert "left by process 4194300, which is no longer running" in capsys.readouterr().out
    assert iter_of(out) == 12 and not (out / "train.lock").exists()


def test_two_processes_into_one_out_dir_one_is_refused_and_metrics_stay_one_runs(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"--data corpus.txt --out_dir out {TINY} --eval_interval 1 --overwrite --max_iters"
    first = start("train", f"{args} 100000", tmp_path)
    metrics = tmp_path / "out" / "metrics.jsonl"
    while first.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.02)
    second = run("train", f"{args} 5 --seed 7", tmp_path)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 0, stderr
    assert second.returncode == 2 and f"pid {first.pid} holds" in one_error_line(second.stderr, TRAIN_ERROR)
    iters = [json.loads(line)["iter"] for line in metrics.read_text().splitlines()]
    assert iters == sorted(iters) and iters[-1] == iter_of(tmp_path / "out")  # one run's lines only
    assert not (tmp_path / "out" / "train.lock").exists()


# ---------------------------------------------------------------- failures while running: exit 1, nothing lost


def test_a_full_disk_while_saving_keeps_the_checkpoint_and_leaves_no_temporaries(copy_of, monkeypatch, capsys):
    out = copy_of()
    before = snapshot(out / "ckpt_latest")
    write_synced = checkpoint._write_synced

    def disk_full(path, data):
        write_synced(path, data[: len(data) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "_write_synced", disk_full)
    assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "15"]) == 1
    (line,) = error_lines(capsys.readouterr().err)  # (stderr also has the progress bar)
    assert "No space left on device" in line and "the last good checkpoint is iteration 10" in line
    assert snapshot(out / "ckpt_latest") == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_file_size_limit_in_a_real_process_is_one_line_and_exit_1(copy_of, tmp_path):
    out = copy_of()
    before = snapshot(out / "ckpt_latest")
    size = (out / "ckpt_latest" / "model.safetensors").stat().st_size

    def limit_file_size():  # Python ignores SIGXFSZ, so a write past the limit is an OSError (EFBIG)
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = subprocess.run(
        [sys.executable, "-m", "tinygrad_gpt.train", "--init_from", "resume", "--out_dir", "out", "--max_iters", "15"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "File too large" in line
    assert snapshot(out / "ckpt_latest") == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_closed_stdout_stops_training_after_saving_and_quietly(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    command = f"set -o pipefail; {sys.executable} -m tinygrad_gpt.train --data corpus.txt {TINY} --max_iters 100000"
    result = subprocess.run(["bash", "-c", f"{command} | head -n 1"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "Traceback" not in result.stderr
    assert "stdout was closed, so training stopped: saved iteration" in result.stderr
    stopped_at = iter_of(tmp_path / "out")  # where the first print after head's exit failed
    assert stopped_at < 100000
    assert train.main(["--init_from", "resume", "--out_dir", str(tmp_path / "out"), "--max_iters",
                       str(stopped_at + 2)]) == 0  # fmt: skip
    sampled = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m tinygrad_gpt.sample "
                              "--num_samples 200 --max_new_tokens 50 | head -n 2"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert sampled.returncode == 0 and "Traceback" not in sampled.stderr and sampled.stdout.count("\n") == 2


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing touched


def _set_meta(meta: dict, key: str, value) -> None:
    """Set meta[key] (a dotted path; the value None for a missing key deletes it)."""
    *parents, last = key.split(".")
    for k in parents:
        meta = meta[k]
    if value is _MISSING:
        del meta[last]
    else:
        meta[last] = value


_MISSING = object()
BAD_META = {
    "vocab missing": ("vocab", _MISSING, "vocab must be a list"),
    "vocab a number": ("vocab", 7, "vocab must be a list"),
    "vocab of strings": ("vocab", ["ab", "c"], "vocab must hold distinct single characters"),
    "model_config a list": ("model_config", [1, 2], "model_config must be an object"),
    "model_config unknown key": ("model_config.n_experts", 4, "model_config has an unknown key"),
    "n_embd a float": ("model_config.n_embd", 16.0, "n_embd must be int"),
    "batch_size a string": ("train_config.batch_size", "12", "batch_size must be int"),
    "batch_size zero": ("train_config.batch_size", 0, "train_config is invalid"),
    "best_val_loss a string": ("best_val_loss", "1.5", "best_val_loss must be a finite number or null"),
    "iter_num a bool": ("iter_num", True, "iter_num must be an integer >= 0"),
    "min_lr infinite": ("train_config.min_lr", float("inf"), "min_lr must be a finite number"),
    "rng_state a list": ("rng_state", [], "rng_state must be an object"),
    "sampler state damaged": ("sampler_states.train", {"state": 1}, "is incomplete or corrupted"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_a_damaged_meta_json_is_one_line_before_anything_is_built(copy_of, case, capsys):
    key, value, expected = BAD_META[case]
    out = copy_of()
    meta_path = out / "ckpt_latest" / "meta.json"
    meta = json.loads(meta_path.read_text())
    _set_meta(meta, key, value)
    meta_path.write_text(json.dumps(meta))
    before = snapshot(out)
    assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "15"]) == 2
    assert expected in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert snapshot(out) == before
    if not key.startswith(("model_config", "vocab")):
        return
    assert sample.main(["--out_dir", str(out), "--checkpoint", "latest", "--max_new_tokens", "3"]) == 2
    assert expected in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)


def _rewrite_header(path: Path, change) -> None:
    """Apply change(header dict) to a safetensors file's JSON header, keeping its data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.mark.parametrize("shape", [[True, 16], [-1, 16], [1.5, 16], ["16", 16]])
def test_a_safetensors_shape_of_bools_or_negatives_is_refused(copy_of, shape, capsys):
    out = copy_of()
    _rewrite_header(out / "ckpt_best" / "model.safetensors", lambda h: h["wte.weight"].update(shape=shape))
    assert sample.main(["--out_dir", str(out), "--max_new_tokens", "3"]) == 2
    assert "invalid shape" in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)


def test_sizes_in_meta_json_are_checked_against_the_weights_before_the_model_is_built(copy_of, capsys):
    out = copy_of()
    for name in ("ckpt_best", "ckpt_latest"):
        meta_path = out / name / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["model_config"]["n_embd"] = meta["train_config"]["n_embd"] = 4096  # 1.6 GB of float32 weights
        meta_path.write_text(json.dumps(meta))
    tracemalloc.start()
    try:
        assert sample.main(["--out_dir", str(out), "--max_new_tokens", "3"]) == 2
        assert train.main(["--init_from", "resume", "--out_dir", str(out), "--max_iters", "15"]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("needs" in line and "holds" in line and "n_embd=4096" in line for line in err)
    assert peak < 50 << 20


def test_a_huge_damaged_checkpoint_file_is_refused_from_its_header(copy_of, capsys):
    out = copy_of()
    weights = out / "ckpt_best" / "model.safetensors"
    _rewrite_header(weights, lambda h: h["wte.weight"].update(data_offsets=[0, 1 << 40]))
    with open(weights, "r+b") as f:
        f.truncate(1 << 30)  # a sparse gigabyte: reading it whole would need 1 GiB of memory
    tracemalloc.start()
    try:
        assert sample.main(["--out_dir", str(out), "--max_new_tokens", "3"]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "out of range" in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)
    assert peak < 50 << 20


def test_nan_weights_are_refused_naming_the_tensor(copy_of, capsys):
    out = copy_of()
    path = out / "ckpt_best" / "model.safetensors"
    tensors, metadata = safetensors.load_file(path, with_metadata=True)
    tensors["h.0.mlp.c_fc.weight"][0, 3] = np.nan
    safetensors.save_file(tensors, path, metadata)
    assert sample.main(["--out_dir", str(out), "--max_new_tokens", "3"]) == 2
    assert "'h.0.mlp.c_fc.weight' holds NaN" in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)


@pytest.mark.parametrize(
    "args, expected",
    [
        ("--n_embd 100000 --n_head 4", "--n_embd 100000: the run needs at least"),
        ("--batch_size 1000000000000", "--batch_size 1000000000000: the run needs at least"),
        ("--block_size 10000000", "--block_size 10000000: the run needs at least"),
        ("--min_lr inf", "argument --min_lr: must be a finite number, got 'inf'"),
        ("--weight_decay inf", "argument --weight_decay: must be a finite number"),
        ("--learning_rate nan", "argument --learning_rate: must be a finite number"),
        ("--grad_clip=-inf", "argument --grad_clip: must be a finite number"),
        ("--max_new_tokens=--", "max_new_tokens must be int, got []"),  # argparse's quirk, found by the fuzzer
    ],
)
def test_absurd_sizes_and_non_finite_floats_are_refused_before_the_old_run_is_touched(copy_of, args, expected,
                                                                                       capsys):  # fmt: skip
    out = copy_of()
    before = snapshot(out)
    assert train.main(["--out_dir", str(out), "--data", str(out.parent / "corpus.txt"), *TINY.split(), "--overwrite",
                       *args.split()]) == 2  # fmt: skip
    assert expected in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert snapshot(out) == before  # metrics.jsonl included


def test_memory_limit_from_the_environment_names_the_flag(copy_of, monkeypatch, capsys):
    monkeypatch.setenv("TINYGRAD_GPT_MAX_MEMORY", str(50 << 20))
    out = copy_of()
    assert train.main(["--out_dir", str(out), "--overwrite", *TINY.split(), "--n_layer", "40", "--n_embd", "256"]) == 2
    assert "50.0 MiB set by $TINYGRAD_GPT_MAX_MEMORY" in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert sample.main(["--out_dir", str(out), "--num_samples", "100000000"]) == 2
    assert "--num_samples 100000000: the run needs" in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)


def test_non_finite_floats_in_a_config_file_are_refused(tmp_path, capsys):
    (tmp_path / "run.toml").write_text("min_lr = inf\n")
    (tmp_path / "run.json").write_text('{"weight_decay": NaN}')
    for name in ("run.toml", "run.json"):
        assert train.main(["--config", str(tmp_path / name), "--out_dir", str(tmp_path / "out")]) == 2
        assert "must be a finite number" in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module, flag", [(train, "--config"), (sample, "--prompt")])
def test_files_from_the_user_are_read_up_to_a_size_limit(good_run, tmp_path, module, flag, capsys):
    value = "/dev/zero" if flag == "--config" else "FILE:/dev/zero"
    tracemalloc.start()
    try:
        assert module.main([flag, value, "--out_dir", str(good_run)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    prefix = TRAIN_ERROR if module is train else SAMPLE_ERROR
    assert "/dev/zero is larger than the limit of 1.0 MiB" in one_error_line(capsys.readouterr().err, prefix)
    assert peak < 16 << 20


def test_interactive_lines_are_read_up_to_a_limit(good_run):
    command = [sys.executable, "-m", "tinygrad_gpt.sample", "--out_dir", str(good_run), "--interactive"]
    with open("/dev/zero") as zeros:  # one endless line
        result = subprocess.run(command, stdin=zeros, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # "loaded ...", then the error
    assert len(lines) == 2 and "longer than the limit of 1,048,576 characters" in lines[1]


def test_training_text_over_the_limit_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    from tinygrad_gpt import data

    monkeypatch.setattr(data, "DATA_LIMIT", 1000)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    assert train.main(["--data", str(tmp_path / "corpus.txt"), "--out_dir", str(tmp_path / "out"), *TINY.split()]) == 2
    assert "more than the limit of 1,000 bytes" in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the library


@pytest.mark.parametrize("data, named", [(["a", "b"], "<U1"), ([object()], "object"), (None, "NoneType"),
                                         ({"a": 1}, "dict"), (np.array(["x"]), "<U1")])  # fmt: skip
def test_tensor_refuses_data_that_is_not_numbers(data, named):
    with pytest.raises(TypeError, match=named):
        Tensor(data)


def test_empty_reductions_follow_numpy():
    assert np.isnan(Tensor([]).mean().item())  # NumPy: nan (with a warning), PyTorch: nan
    np.testing.assert_array_equal(Tensor(np.zeros((3, 0))).mean(axis=1).numpy(), [np.nan] * 3)
    with pytest.raises(ValueError, match="empty"):
        Tensor([]).max()


@given(
    n_layer=st.integers(1, 2), n_head=st.integers(1, 2), head_size=st.integers(1, 3), vocab_size=st.integers(1, 5),
    block_size=st.integers(1, 4), bias=st.booleans(), norm=st.sampled_from(["pre", "post"]),
    pos_encoding=st.sampled_from(["learned", "sinusoidal", "rope"]), tie_weights=st.booleans(),
    norm_type=st.sampled_from(["layernorm", "rmsnorm"]), qk_norm=st.booleans(),
)  # fmt: skip
def test_param_count_is_the_models_without_building_it(n_layer, n_head, head_size, **kwargs):
    """What lets meta.json's sizes be checked against the weights before the model is allocated."""
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.validate import param_count

    if kwargs["pos_encoding"] == "rope":
        head_size *= 2  # rotary positions need an even head size
    config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_head * head_size, **kwargs)
    assert param_count(config) == sum(p.size for p in GPT(config).parameters())
