"""Fuzzing the CLIs: damaged checkpoints, random flags and config files never crash or lose data.

Properties, for every generated input:
- the exit status is 0, 1 or 2, and a failure is one error line on stderr, never a traceback (in-process,
  an exception escaping `main` fails the test with its traceback);
- a refused input (exit 2) leaves the run's out_dir byte-identical, and the good run the inputs are
  copied from is byte-identical at the end;
- memory stays bounded: in-process by tracemalloc's peak (NumPy reports its buffers to it), in a child
  process by its peak RSS (os.wait4), with $TINYGRAD_GPT_MAX_MEMORY set low so that the memory estimate
  is what refuses large sizes.

Budget: about a minute on 2 cores (fixed example counts; derandomized in CI by conftest's profile).
Flags that only cost time (iterations, evaluation batches, sample length) are kept small so the budget holds.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_cli import CORPUS, TINY, snapshot

from tinygrad_gpt import sample, train
from tinygrad_gpt.cli import flags_of
from tinygrad_gpt.train_config import TrainConfig

pytestmark = pytest.mark.slow


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))


MEMORY_LIMIT = 64 << 20  # $TINYGRAD_GPT_MAX_MEMORY in the fuzzed runs
PEAK_BOUND = 512 << 20  # tracemalloc's peak in-process: the estimate is a lower bound, so some slack
RSS_BOUND = 1536 << 20  # a child's peak RSS: Python, NumPy and numba's compiler included
QUICK = ["--eval_iters", "1", "--max_new_tokens", "0", "--plot", "false"]
TIME_FLAGS = {"max_iters": 3, "eval_iters": 2, "max_new_tokens": 8}  # flags that cost only time: their bound

json_values = st.recursive(
    st.none() | st.booleans() | st.text(max_size=6)
    | st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 1, 2, 4096, 2**31, 2**63, 10**30, 10**400])
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)  # fmt: skip


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "corpus.txt").write_text(CORPUS)
    argv = ["--data", str(root / "corpus.txt"), "--out_dir", str(root / "out"), *TINY.split(), "--max_iters", "4"]
    assert train.main(argv) == 0
    return root


@pytest.fixture
def low_memory_limit(monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_MAX_MEMORY", str(MEMORY_LIMIT))


def run_bounded(main, argv: list, capsys) -> tuple[int, str]:
    """main(argv) under tracemalloc: (exit status, stderr), asserting the properties common to every run."""
    tracemalloc.start()
    try:
        code = main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    event(f"{main.__module__} exit {code}")  # pytest --hypothesis-show-statistics shows the mix
    assert code in (0, 1, 2), (code, argv)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == (0 if code == 0 else 1), err
    assert peak < PEAK_BOUND, (peak, argv)
    return code, err


def _paths(value, prefix=()):
    """Every key path into a JSON value (dict keys and list indices), the value's own path first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from _paths(v, (*prefix, i))


def damage_meta(path: Path, data) -> None:
    meta = json.loads(path.read_text())
    key_path = data.draw(st.sampled_from(list(_paths(meta))[1:]), label="meta path")
    *parents, last = key_path
    target = meta
    for k in parents:
        target = target[k]
    if data.draw(st.booleans(), label="delete"):
        del target[last]
    else:
        target[last] = data.draw(json_values, label="value")
    path.write_text(json.dumps(meta))


def damage_safetensors(path: Path, data) -> None:
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    kind = data.draw(st.sampled_from(["entry", "header", "bytes", "truncate", "length"]), label="damage")
    if kind in ("entry", "header"):
        header = json.loads(raw[8 : 8 + n])
        if kind == "entry":
            name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")), label="tensor")
            field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]), label="field")
            shapes = st.lists(st.integers(-2, 2**40) | st.booleans(), max_size=3)
            header[name][field] = data.draw(shapes if field != "dtype" else json_values, label="value")
        else:
            header = data.draw(json_values, label="header")
        text = json.dumps(header).encode()
        raw = bytearray(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    elif kind == "bytes":  # e.g. a weight becomes NaN or huge
        at = data.draw(st.integers(8 + n, len(raw) - 4), label="offset")
        raw[at : at + 4] = data.draw(st.binary(min_size=4, max_size=4), label="bytes")
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1), label="header length"))
    path.write_bytes(bytes(raw))


@fuzz(80)
@given(data=st.data())
def test_damaged_checkpoints_are_refused_or_used_never_a_crash(good_run, low_memory_limit, capsys, data):
    before = snapshot(good_run / "out")
    file = data.draw(st.sampled_from(["meta.json", "model.safetensors", "optim.safetensors"]), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        shutil.copytree(good_run / "out", out)
        target = out / "ckpt_latest" / file
        (damage_meta if file == "meta.json" else damage_safetensors)(target, data)
        damaged = snapshot(out)
        code, _ = run_bounded(sample.main, ["--out_dir", str(out), "--checkpoint", "latest", "--max_new_tokens", "4"],
                              capsys)  # fmt: skip
        assert snapshot(out) == damaged
        argv = ["--init_from", "resume", "--out_dir", str(out), "--max_iters", "5", "--eval_interval", "1", *QUICK]
        code, _ = run_bounded(train.main, argv, capsys)
        if code == 2:
            assert snapshot(out) == damaged  # refused before anything was written
    assert snapshot(good_run / "out") == before


def _flag_values(flag):
    """Command-line texts for one flag: valid, boundary and absurd values of its type, and garbage."""
    garbage = st.sampled_from(["", "x", "none", "1e999", "nan", "-inf", "0x10", "1_000", "٣", "--"])
    if flag.name in TIME_FLAGS:
        return st.integers(-1, TIME_FLAGS[flag.name]).map(str) | garbage
    if flag.choices:
        return st.sampled_from(flag.choices) | garbage
    if flag.base is bool:
        return st.sampled_from(["true", "false", "1", "0", "yes", "maybe"])
    if flag.base is int:
        ints = st.integers(-3, 64) | st.sampled_from([0, 10**6, 10**12, 2**63, 10**30])
        return ints.map(str) | garbage
    if flag.base is float:
        return st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.sampled_from(["0.5", "1e-3"]) | garbage
    return garbage


PATH_FLAGS = {"data", "out_dir", "init_from", "cache_dir"}  # pointed at the test's own files, below
FLAGS = [flag for flag in flags_of(TrainConfig) if flag.name not in PATH_FLAGS]


@st.composite
def train_argv(draw, root: Path, out: Path) -> list:
    """A training command line: tiny defaults, then random flags (and maybe a config file) on top."""
    argv = ["--out_dir", str(out), *TINY.split(), "--max_iters", "2", *QUICK]
    argv += ["--data", draw(st.sampled_from([str(root / "corpus.txt"), str(root / "missing.txt"), str(root)]))]
    init = draw(st.sampled_from(["scratch", "resume", str(root / "out" / "ckpt_best"), str(root / "nope")]))
    argv += ["--init_from", init]
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=3, unique_by=lambda f: f.name)):
        argv.append(f"--{flag.name}={draw(_flag_values(flag), label=flag.name)}")
    if draw(st.booleans()):
        argv += ["--config", str(draw(config_files(root)))]
    return argv


@st.composite
def config_files(draw, root: Path) -> Path:
    """A TOML or JSON config file: random known and unknown keys with values of every type, or garbage."""
    keys = st.sampled_from([f.name for f in FLAGS if f.name not in TIME_FLAGS] + ["foo", "out_dir", "data"])
    values = draw(st.dictionaries(keys, json_values, max_size=3))
    suffix = draw(st.sampled_from([".json", ".toml"]))
    if draw(st.integers(0, 4)) == 0:
        text = draw(st.text(max_size=40))
    elif suffix == ".json":
        text = json.dumps(values)
    else:
        text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())  # TOML where JSON's syntax is TOML's
    path = root / f"run{suffix}"
    path.write_text(text)
    return path


@fuzz(80)
@given(data=st.data())
def test_random_flags_and_config_files_never_crash(good_run, low_memory_limit, capsys, data):
    before = snapshot(good_run / "out")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if data.draw(st.booleans(), label="out_dir holds a run"):
            shutil.copytree(good_run / "out", out)
        existing = snapshot(out) if out.exists() else None
        argv = data.draw(train_argv(good_run, out), label="argv")
        code, _ = run_bounded(train.main, argv, capsys)
        if code == 2:
            assert (snapshot(out) if out.exists() else None) == existing
    assert snapshot(good_run / "out") == before


@fuzz(12)
@given(data=st.data())
def test_random_command_lines_in_a_child_process_stay_in_bounds(good_run, data):
    """The same inputs through the real command: exit status, stderr and the child's peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = data.draw(train_argv(good_run, Path(tmp) / "out"), label="argv")
        env = {**os.environ, "TINYGRAD_GPT_MAX_MEMORY": str(MEMORY_LIMIT)}
        proc = subprocess.Popen([sys.executable, "-m", "tinygrad_gpt.train", *argv], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode in (0, 1, 2) and "Traceback" not in err, err
    assert usage.ru_maxrss * 1024 < RSS_BOUND, usage.ru_maxrss
