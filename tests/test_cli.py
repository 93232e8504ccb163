"""End to end: `python -m tinygrad_gpt.train` and `python -m tinygrad_gpt.sample` in temporary directories.

Tiny models (one layer, 16 wide, 8 characters of context) keep each run to about a second. Runs go
through subprocesses where the process itself matters (exit status, signals, stdin); the many
bad-input cases call `main(argv)` in-process, which returns the same exit status.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import checkpoint_crash
import numpy as np
import pytest

from tinygrad_gpt import backend, data, sample, train, train_config
from tinygrad_gpt.checkpoint import find_checkpoint, load_checkpoint

TINY = "--n_layer 1 --n_head 2 --n_embd 16 --block_size 8 --batch_size 4 --eval_iters 2 --log_interval 1"
TINY += " --max_new_tokens 20 --plot false --eval_interval 5"
CORPUS = "hello world, this is a tiny corpus for testing the model.\n" * 40
# GPT-2's layout and nanoGPT's AdamW recipe instead of the default run's speedrun recipe (exportable to GPT-2)
GPT2 = f"--config {Path(__file__).resolve().parents[1] / 'configs' / 'gpt2.toml'}"
TRAIN_ERROR = "python -m tinygrad_gpt.train: error:"
SAMPLE_ERROR = "python -m tinygrad_gpt.sample: error:"


def run(module: str, args, cwd: Path, input: str | None = None, env: dict | None = None, timeout: float = 120):
    """Run `python -m tinygrad_gpt.<module> args` in cwd; downloads go to cwd/cache."""
    args = args.split() if isinstance(args, str) else list(args)
    full_env = {**os.environ, "TINYGRAD_GPT_CACHE": str(cwd / "cache"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"tinygrad_gpt.{module}", *args],
        cwd=cwd, input=input, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def start(module: str, args: str, cwd: Path, env: dict | None = None, command: list | None = None) -> subprocess.Popen:
    """Start `python -m tinygrad_gpt.<module> args` (or `command args`) in cwd; stdout and stderr are pipes."""
    full_env = {**os.environ, "TINYGRAD_GPT_CACHE": str(cwd / "cache"), **(env or {})}
    return subprocess.Popen(
        [*(command or [sys.executable, "-m", f"tinygrad_gpt.{module}"]), *args.split()],
        cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def losses(out_dir: Path) -> list:
    """(iter, loss) of each training line and (iter, train_loss, val_loss) of each evaluation, in order."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) if "loss" in r else (r["iter"], r["train_loss"], r["val_loss"]) for r in records]


def snapshot(directory: Path) -> dict:
    """sha256 of every file below `directory`, by relative path (to prove nothing changed)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def one_error_line(err: str, prefix: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(prefix) and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A directory with corpus.txt and out/, a tiny model trained for 20 iterations (by a subprocess)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text(CORPUS)
    result = run("train", f"--data corpus.txt --out_dir out --max_iters 20 --learning_rate 0.01 {TINY}", root)
    assert result.returncode == 0, result.stderr
    (root / "stdout.txt").write_text(result.stdout)
    return root


# ---------------------------------------------------------------- train and sample


def test_training_writes_checkpoints_metrics_token_files_and_a_summary(trained):
    out = trained / "out"
    for name in ("ckpt_best", "ckpt_latest"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["meta.json", "model.safetensors", "optim.safetensors"]
    meta = json.loads((out / "ckpt_latest" / "meta.json").read_text())
    assert meta["iter_num"] == 20 and "".join(meta["vocab"]) == "".join(sorted(set(CORPUS)))
    assert meta["model_config"]["n_embd"] == 16 and meta["train_config"]["max_iters"] == 20
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in steps] == list(range(1, 21))
    assert all(set(r) == {"iter", "loss", "lr", "tokens_per_sec", "time"} for r in steps)
    assert [r["iter"] for r in evals] == [0, 5, 10, 15, 20]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3  # it learned something
    tokens = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert len(tokens) + len(np.fromfile(out / "val.bin", dtype=np.uint16)) == len(CORPUS)
    assert "".join(meta["vocab"][i] for i in tokens[:20]) == CORPUS[:20]
    stdout = (trained / "stdout.txt").read_text()
    best = min(r["val_loss"] for r in evals)
    summary = stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"done: 20 iterations, 640 tokens, [\d.]+ s wall on {backend.DEFAULT_DEVICE}.*; "
                        rf"best val loss {best:.4f}; "
                        rf"checkpoint {re.escape(str(Path('out') / 'ckpt_best'))}", summary)  # fmt: skip
    assert "---------- sample ----------" in stdout


def test_sample_prints_the_prompt_and_its_continuation(trained, capsys):
    args = "--out_dir out --prompt hello --num_samples 2 --max_new_tokens 30 --seed 1"
    result = run("sample", args, trained)
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split(sample.SEPARATOR + "\n")
    assert len(samples) == 3 and samples[-1] == ""
    for text in samples[:2]:
        assert text.startswith("hello") and len(text) == len("hello") + 30 + 1  # + print's newline
        assert set(text) <= set(CORPUS)
    in_process = args.replace("out_dir out", f"out_dir {trained / 'out'}").split()
    assert sample.main(in_process) == 0 and capsys.readouterr().out == result.stdout  # seeded
    assert sample.main([*in_process, "--seed", "2"]) == 0 and capsys.readouterr().out != result.stdout


def test_sample_top_k_0_means_no_limit_as_in_generate(trained, capsys):
    args = ["--out_dir", str(trained / "out"), "--prompt", "he", "--max_new_tokens", "20", "--seed", "3"]
    texts = []
    for top_k in ("0", "none"):
        assert sample.main([*args, "--top_k", top_k]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]


def test_sample_reads_the_prompt_from_a_file_and_picks_checkpoints(trained, capsys):
    (trained / "prompt.txt").write_text("this is\n")
    for which in ("best", "latest"):
        code = sample.main(["--out_dir", str(trained / "out"), "--prompt", f"FILE:{trained / 'prompt.txt'}",
                            "--max_new_tokens", "5", "--checkpoint", which, "--temperature", "0"])  # fmt: skip
        assert code == 0
        out, err = capsys.readouterr()
        assert out.startswith("this is\n") and f"ckpt_{which}" in err
    assert sample.main(["--out_dir", str(trained / "out" / "ckpt_latest"), "--max_new_tokens", "3"]) == 0


def test_interactive_sampling_reads_prompts_until_an_empty_line(trained):
    result = run(
        "sample", "--out_dir out --interactive --max_new_tokens 10", trained, input="hello\nwor§ld\nthis\n\nignored\n"
    )
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split(sample.SEPARATOR + "\n")[:-1]
    assert len(samples) == 2 and samples[0].startswith("hello") and samples[1].startswith("this")
    assert "'§'" in result.stderr  # an unknown character is reported and the loop goes on
    eof = run("sample", "--out_dir out --interactive --max_new_tokens 10", trained, input="hello")
    assert eof.returncode == 0 and eof.stdout.startswith("hello")


def test_eval_only_reports_losses_and_changes_nothing(trained, capsys):
    before = snapshot(trained / "out")
    code = train.main(["--init_from", "resume", "--out_dir", str(trained / "out"), "--eval_only", "--data",
                       str(trained / "corpus.txt")])  # fmt: skip
    assert code == 0
    assert re.search(r"iter 20: train loss [\d.]+, val loss [\d.]+", capsys.readouterr().out)
    assert snapshot(trained / "out") == before


def test_help_documents_every_flag():
    result = run("train", "--help", Path.cwd())
    assert result.returncode == 0
    for flag in ("--out_dir", "--batch_size", "--block_size", "--n_layer", "--n_head", "--n_embd", "--dropout",
                 "--bias", "--learning_rate", "--max_iters", "--weight_decay", "--beta1", "--beta2", "--grad_clip",
                 "--decay_lr", "--warmup_iters", "--lr_decay_iters", "--min_lr", "--eval_interval", "--eval_iters",
                 "--log_interval", "--seed", "--init_from", "--activation", "--norm", "--pos_encoding", "--config",
                 "--data"):  # fmt: skip
        assert flag in result.stdout


def test_config_file_with_flags_overriding_it(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "run.toml").write_text(
        'n_embd = 8\nn_head = 2\nmax_iters = 3\nlearning_rate = 1\nactivation = "relu"\n'
    )
    args = ["--config", str(tmp_path / "run.toml"), f"--out_dir={tmp_path / 'out'}", "--max_iters=2",
            "--data", str(tmp_path / "corpus.txt"), "--block_size", "8", "--eval_iters", "1", "--max_new_tokens", "0",
            "--plot", "false"]  # fmt: skip
    assert train.main(args) == 0
    config = json.loads((tmp_path / "out" / "ckpt_latest" / "meta.json").read_text())["train_config"]
    assert (config["n_embd"], config["activation"], config["learning_rate"]) == (8, "relu", 1.0)  # from the file
    assert config["max_iters"] == 2  # the flag wins
    (tmp_path / "run.json").write_text('{"n_embd": 8, "n_head": 2, "max_iters": 1}')
    args[1] = str(tmp_path / "run.json")
    assert train.main(args + ["--overwrite"]) == 0


def test_a_new_run_refuses_to_replace_earlier_checkpoints_unless_told(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 2 {TINY} --plot false".split()
    assert train.main(args) == 0
    weights = tmp_path / "out" / "ckpt_latest" / "model.safetensors"
    before = weights.read_bytes()
    capsys.readouterr()
    assert train.main(args + ["--seed", "7"]) == 2  # scratch again: would lose the first run
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--init_from resume" in err and len(err.strip().splitlines()) == 1
    finetune = args + ["--init_from", str(tmp_path / "out" / "ckpt_best")]  # into the directory it loads from
    assert train.main(finetune) == 2
    assert weights.read_bytes() == before
    assert train.main(args + ["--seed", "7", "--overwrite"]) == 0
    assert weights.read_bytes() != before


def test_loss_curve_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the loss plot needs matplotlib (extra 'plot')")
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 3 {TINY} --plot true"
    assert train.main(args.split()) == 0
    assert (tmp_path / "out" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_toml_without_tomllib_asks_for_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10 has no tomllib
    (tmp_path / "run.toml").write_text("n_layer = 2\n")
    assert train.main(["--config", str(tmp_path / "run.toml")]) == 2
    assert "needs Python 3.11+" in one_error_line(capsys.readouterr().err, TRAIN_ERROR)


def test_without_tqdm_progress_is_a_plain_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails as if it were not installed
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} {TINY} --max_iters 4 --log_interval 2"
    assert train.main(args.split()) == 0
    out, err = capsys.readouterr()
    assert re.search(r"iter 2/4: loss [\d.]+, [\d,]+ tokens/s\niter 4/4: loss", out) and "it/s" not in err


# ---------------------------------------------------------------- exact resume and fine-tuning


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path):
    """10 iterations in one go == 5 iterations, stop, resume to 10 (with dropout, so the RNG state matters too)."""
    (tmp_path / "corpus.txt").write_text(CORPUS)
    common = f"--data {tmp_path / 'corpus.txt'} {TINY} --dropout 0.1 --lr_decay_iters 10 --warmup_iters 2"
    assert train.main(f"{common} --out_dir {tmp_path / 'a'} --max_iters 10".split()) == 0
    assert train.main(f"{common} --out_dir {tmp_path / 'b'} --max_iters 5".split()) == 0
    resumed = run("train", "--init_from resume --out_dir b --max_iters 10", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from iteration 5" in resumed.stdout
    assert len(losses(tmp_path / "a")) == 13
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def test_ctrl_c_saves_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    common = f"--data {tmp_path / 'corpus.txt'} {TINY} --dropout 0.1 --lr_decay_iters 1000 --warmup_iters 2"
    proc = start("train", f"{common} --out_dir b --max_iters 1000", tmp_path)
    metrics = tmp_path / "b" / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    stopped_at = load_checkpoint(tmp_path / "b" / "ckpt_latest").meta["iter_num"]
    assert f"interrupted: saved iteration {stopped_at}" in stdout and 3 <= stopped_at < 1000
    end = stopped_at + 6
    assert train.main(f"--init_from resume --out_dir {tmp_path / 'b'} --max_iters {end}".split()) == 0
    assert train.main(f"{common} --out_dir {tmp_path / 'a'} --max_iters {end}".split()) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def _wait_for_line(stream, marker: str, timeout: float) -> bool:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    while True:
        try:
            if marker in lines.get(timeout=timeout):
                return True
        except queue.Empty:
            return False


@pytest.mark.parametrize("stage", checkpoint_crash.STAGES)
def test_kill_9_during_a_checkpoint_write_keeps_the_last_good_checkpoint(tmp_path, stage):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    assert (
        train.main(f"--data {tmp_path / 'corpus.txt'} {TINY} --out_dir {tmp_path / 'out'} --max_iters 5".split()) == 0
    )
    pausing_train = [sys.executable, checkpoint_crash.__file__, stage]  # train, pausing in the save at `stage`
    proc = start("train", "--init_from resume --out_dir out --max_iters 10", tmp_path, command=pausing_train)
    assert _wait_for_line(proc.stderr, f"checkpoint: pausing at {stage}", timeout=60)
    proc.kill()  # SIGKILL in the middle of writing iteration 10's checkpoint
    proc.wait()
    ckpt = load_checkpoint(find_checkpoint(tmp_path / "out", prefer=("ckpt_latest",)))
    assert ckpt.meta["iter_num"] == 5
    assert sample.main(["--out_dir", str(tmp_path / "out"), "--checkpoint", "latest", "--max_new_tokens", "5"]) == 0
    with open(tmp_path / "out" / "metrics.jsonl", "a") as f:
        f.write('{"iter": 7, "lo')  # a line cut short by the kill
    resumed = run("train", "--init_from resume --out_dir out --max_iters 10", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r[0] for r in losses(tmp_path / "out") if len(r) == 2] == list(range(1, 11))  # no duplicated lines
    assert load_checkpoint(tmp_path / "out" / "ckpt_latest").meta["iter_num"] == 10
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_fine_tuning_on_new_text_keeps_the_weights_and_grows_the_vocabulary(trained, tmp_path, capsys):
    source = trained / "out" / "ckpt_best"
    before = snapshot(trained / "out")
    (tmp_path / "new.txt").write_text("Fine-tuning on new text: QUIZ! " * 30)
    args = ["--init_from", str(source), "--data", str(tmp_path / "new.txt"), "--out_dir", str(tmp_path / "ft"),
            "--eval_iters", "1", "--max_new_tokens", "5", "--plot", "false"]  # fmt: skip
    assert train.main([*args, "--max_iters", "0"]) == 0  # only the initial evaluation and checkpoint
    assert "new characters added to the vocabulary" in capsys.readouterr().out
    old, new = load_checkpoint(source), load_checkpoint(tmp_path / "ft" / "ckpt_latest")
    n_old = len(old.meta["vocab"])
    assert new.meta["vocab"][:n_old] == old.meta["vocab"] and set("QUIZ!F-") <= set(new.meta["vocab"])
    np.testing.assert_array_equal(new.model_state["wte.weight"][:n_old], old.model_state["wte.weight"])
    np.testing.assert_array_equal(new.model_state["lm_head.weight"][:, :n_old], old.model_state["lm_head.weight"])
    assert new.model_state["lm_head.weight"].shape == (16, len(new.meta["vocab"]))  # the untied head grows too
    for name, value in old.model_state.items():
        if name not in ("wte.weight", "lm_head.weight"):
            np.testing.assert_array_equal(new.model_state[name], value)
    assert new.meta["model_config"]["n_embd"] == 16  # the shape comes from the checkpoint, not the defaults
    assert train.main([*args, "--max_iters", "5", "--dropout", "0.1", "--overwrite"]) == 0  # and it trains
    assert load_checkpoint(tmp_path / "ft" / "ckpt_latest").meta["iter_num"] == 5
    assert snapshot(trained / "out") == before  # the source checkpoint is untouched


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    result = run("train", f"--data corpus.txt {GPT2} {TINY} --out_dir out --max_iters 50 --learning_rate 1e9 "
                 "--grad_clip 0 --warmup_iters 0", tmp_path)  # fmt: skip (AdamW on every weight, no soft-cap)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]  # (stderr also has the progress bar)
    assert len(errors) == 1 and "Traceback" not in result.stderr
    line = errors[0]
    assert "loss is nan" in line or "loss is inf" in line or "not finite" in line
    assert "the last good checkpoint is" in line
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt_latest")
    assert all(np.isfinite(v).all() for v in ckpt.model_state.values())
    assert sample.main(["--out_dir", str(tmp_path / "out"), "--max_new_tokens", "5"]) == 0


# ---------------------------------------------------------------- data download through the CLI


def test_shakespeare_download_through_the_cli(tmp_path, monkeypatch, capsys):
    from test_data import _Server

    text = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    (tmp_path / "www").mkdir()
    server = _Server(tmp_path / "www")
    try:
        (tmp_path / "www" / "input.txt").write_bytes(text[:-1] + b"?")  # corrupted: refused, not cached
        env = {"TINYGRAD_GPT_SHAKESPEARE_URL": f"{server.url}/input.txt"}
        result = run("train", f"--data shakespeare --out_dir out {TINY}", tmp_path, env=env)
        assert result.returncode == 2
        assert "corrupted" in one_error_line(result.stderr, TRAIN_ERROR)
        assert not (tmp_path / "cache" / data.SHAKESPEARE_FILE).exists() and not (tmp_path / "out").exists()

        (tmp_path / "www" / "input.txt").write_bytes(text)  # in-process, with the checksum of this stand-in text
        monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(text).hexdigest())
        monkeypatch.setenv("TINYGRAD_GPT_SHAKESPEARE_URL", env["TINYGRAD_GPT_SHAKESPEARE_URL"])
        args = f"--data shakespeare --cache_dir {tmp_path / 'c'} --out_dir {tmp_path / 'out'} {TINY} --max_iters 1"
        assert train.main(args.split()) == 0
        assert (tmp_path / "c" / data.SHAKESPEARE_FILE).read_bytes() == text
        assert "Tiny Shakespeare" in capsys.readouterr().out
    finally:
        server.close()


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing damaged


def _bad_train_cases(root: Path) -> dict:
    out = str(root / "out")
    return {
        "missing data file": (f"--data {root / 'missing.txt'}", "does not exist"),
        "empty data file": (f"--data {root / 'empty.txt'}", "is empty"),
        "non-UTF-8 data file": (f"--data {root / 'latin1.txt'}", "not UTF-8"),
        "corpus shorter than block_size + 1": (f"--data {root / 'short.txt'}", "too short for block_size 8"),
        "unknown flag": ("--foo 1", "unrecognized arguments: --foo"),
        "ill-typed int": ("--batch_size abc", "invalid int value: 'abc'"),
        "ill-typed bool": ("--bias maybe", "invalid bool value: 'maybe'"),
        "unknown choice": ("--activation tanh", "invalid choice: 'tanh'"),
        "negative learning rate": ("--learning_rate -1", "--learning_rate must be positive"),
        "n_embd not divisible by n_head": ("--n_embd 30 --n_head 4", "n_embd=30 is not divisible by n_head=4"),
        "batch_size < 1": ("--batch_size 0", "--batch_size must be >= 1"),
        "resume without checkpoint": (f"--init_from resume --out_dir {root / 'empty_dir'}", "no checkpoint in"),
        "resume from missing out_dir": (f"--init_from resume --out_dir {root / 'nope'}", "does not exist"),
        "fine-tune from missing checkpoint": (f"--init_from {root / 'nope'}", "does not exist"),
        "resume with another shape": ("--init_from resume --n_layer 3", "conflicts with the checkpoint's n_layer=1"),
        "config file unknown key": (f"--config {root / 'unknown.toml'}", "unknown key 'foo'"),
        "config file bad type": (f"--config {root / 'badtype.json'}", "batch_size must be int"),
        "config file not TOML": (f"--config {root / 'broken.toml'}", "is not valid TOML"),
        "missing config file": (f"--config {root / 'nope.toml'}", "cannot read config file"),
        "corrupted checkpoint": (f"--init_from resume --out_dir {root / 'corrupt'}", "model.safetensors"),
        "truncated checkpoint": (f"--init_from resume --out_dir {root / 'truncated'}", "truncated"),
        "_out": (out, ""),
    }


@pytest.fixture(scope="module")
def bad_inputs(trained):
    """Files for the bad-input cases next to the trained run, plus damaged copies of its checkpoint."""
    import shutil

    (trained / "empty.txt").write_text("")
    (trained / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (trained / "short.txt").write_text("abc")
    (trained / "empty_dir").mkdir()
    (trained / "unknown.toml").write_text("foo = 1\n")
    (trained / "badtype.json").write_text('{"batch_size": "12"}')
    (trained / "broken.toml").write_text("n_layer = = 2\n")
    for name in ("corrupt", "truncated"):
        shutil.copytree(trained / "out", trained / name)
        model_file = trained / name / "ckpt_latest" / "model.safetensors"
        content = model_file.read_bytes()
        model_file.write_bytes(b"\xff" * 16 + content[16:] if name == "corrupt" else content[: len(content) // 2])
    return _bad_train_cases(trained)


BAD_TRAIN = [k for k in _bad_train_cases(Path(".")) if not k.startswith("_")]


@pytest.mark.parametrize("case", BAD_TRAIN)
def test_bad_training_input_is_one_line_and_exit_2(trained, bad_inputs, case, capsys):
    args, expected = bad_inputs[case]
    out_dir = trained / "out"
    if "--out_dir" in args:  # the case brings its own (e.g. a damaged checkpoint): that one must stay as it is
        out_dir = Path(args.split("--out_dir", 1)[1].split()[0])
    else:
        args += f" --out_dir {out_dir}"
    before = snapshot(out_dir)
    # --overwrite: the input's own error must come first, and even then nothing may be damaged
    code = train.main(["--data", str(trained / "corpus.txt"), *TINY.split(), "--overwrite", *args.split()])
    stdout, stderr = capsys.readouterr()
    assert code == 2
    assert expected in one_error_line(stderr, TRAIN_ERROR)
    assert snapshot(out_dir) == before


def test_bad_input_through_the_real_command_has_no_traceback(trained):
    for args in ("--data missing.txt --out_dir out", "--nope", "--n_embd 30 --n_head 4"):
        result = run("train", args, trained)
        assert result.returncode == 2
        one_error_line(result.stderr, TRAIN_ERROR)
    result = run("sample", "--out_dir out --prompt ΩΩ§", trained)
    assert result.returncode == 2 and "'§', 'Ω'" in one_error_line(result.stderr, SAMPLE_ERROR)


@pytest.mark.parametrize(
    "args, expected",
    [
        ("--prompt hello§Ω", "characters not in the model's vocabulary: '§', 'Ω'"),
        ("--out_dir {root}/nope", "does not exist"),
        ("--out_dir {root}/empty_dir", "no checkpoint in"),
        ("--out_dir {root}/corrupt --checkpoint latest", "model.safetensors"),
        ("--out_dir {root}/truncated --checkpoint latest", "truncated"),
        ("--temperature abc", "invalid float value: 'abc'"),
        ("--top_p 1.5", "--top_p must be in (0, 1]"),
        ("--num_samples 0", "--num_samples must be >= 1"),
        ("--prompt FILE:{root}/nope.txt", "prompt file"),
        ("--unknown", "unrecognized arguments"),
    ],
)
def test_bad_sampling_input_is_one_line_and_exit_2(trained, bad_inputs, args, expected, capsys):
    before = snapshot(trained / "out")
    argv = ["--out_dir", str(trained / "out"), *args.format(root=trained).split()]
    assert sample.main(argv) == 2
    assert expected in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)
    assert snapshot(trained / "out") == before


# ---------------------------------------------------------------- the default command


@pytest.mark.slow
def test_the_default_command_runs_with_iterations_cut_short(tmp_path):
    """`python -m tinygrad_gpt.train` as a new user runs it: built-in corpus, default model; only shorter."""
    result = run("train", "--max_iters 2 --eval_iters 2 --max_new_tokens 50", tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pydoc_data.topics" in result.stdout and f"device {backend.DEFAULT_DEVICE}" in result.stdout
    assert re.search(
        r"done: 2 iterations, 1,536 tokens, .* best val loss [\d.]+; checkpoint out/ckpt_best", result.stdout
    )
    meta = load_checkpoint(tmp_path / "out" / "ckpt_best").meta
    assert (meta["model_config"]["n_layer"], meta["model_config"]["n_embd"]) == (4, 128)
    assert meta["train_config"]["max_iters"] == 2 and train_config.DEFAULT_MAX_ITERS > 2


# ---------------------------------------------------------------- flags generated from the config dataclasses


def test_model_flags_are_gptconfigs_fields_and_round_trip():
    from tinygrad_gpt.cli import build_config, flags_of, flatten_config
    from tinygrad_gpt.model import GPTConfig
    from tinygrad_gpt.train_config import TrainConfig

    flags = {flag.name: flag for flag in flags_of(TrainConfig)}
    model_fields = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]
    assert [name for name, flag in flags.items() if flag.section == "model"] == model_fields
    assert flags["activation"].choices == ("gelu", "relu", "relu2") and flags["n_layer"].default == 4
    config = build_config(TrainConfig, {"n_layer": 2, "activation": "relu", "batch_size": 3})
    model = config.model
    assert (model.n_layer, model.activation, model.n_embd, config.batch_size) == (2, "relu", 128, 3)
    assert build_config(TrainConfig, flatten_config(config)) == config
    with pytest.raises(ValueError, match="not divisible"):  # GPTConfig's own checks apply to the flags
        build_config(TrainConfig, {"n_embd": 30, "n_head": 4})
