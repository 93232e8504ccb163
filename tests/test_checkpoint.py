"""Checkpoint directories: round trips of model and optimizer state, atomic replacement, clear errors."""

from __future__ import annotations

import os

import checkpoint_crash
import numpy as np
import pytest

from tinygrad_gpt import checkpoint, manual_seed
from tinygrad_gpt.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW


def _tiny_model_and_optimizer(seed=0):
    manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.1))
    return model, AdamW(model.param_groups(0.1), lr=1e-2)


def _train_step(model, optimizer, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_model_and_optimizer_resume_bit_for_bit(tmp_path):
    """Save after two steps, load into fresh objects: the next steps give identical losses and weights."""
    from tinygrad_gpt import backend

    model, optimizer = _tiny_model_and_optimizer()
    for s in range(2):
        _train_step(model, optimizer, s)
    meta = {"rng_state": backend.get_rng_state(), "note": "ok"}
    save_checkpoint(tmp_path / "ckpt_latest", model.state_dict(), optimizer.state_dict(), meta)
    expected = [_train_step(model, optimizer, s) for s in (2, 3)]

    model2, optimizer2 = _tiny_model_and_optimizer(seed=5)  # different init, overwritten by the load
    ckpt = load_checkpoint(tmp_path / "ckpt_latest")
    model2.load_state_dict(ckpt.model_state)
    optimizer2.load_state_dict(ckpt.optim_state)
    backend.set_rng_state(ckpt.meta["rng_state"])  # dropout masks continue too
    assert ckpt.meta["note"] == "ok"
    assert [_train_step(model2, optimizer2, s) for s in (2, 3)] == expected
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[name], value)


def test_nested_state_with_integer_keys_round_trips():
    state = {"state": {0: {"step": 3, "m": np.ones(2, np.float32)}, 5: {"step": 1, "m": np.zeros(1)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 5]}]}  # fmt: skip
    tensors, skeleton = checkpoint.flatten_state(state)
    assert set(tensors) == {"state.0.m", "state.5.m"}
    back = checkpoint.unflatten_state(tensors, skeleton)
    assert set(back["state"]) == {0, 5} and back["state"][0]["step"] == 3
    np.testing.assert_array_equal(back["state"][0]["m"], np.ones(2))
    assert back["param_groups"][0]["betas"] == [0.9, 0.99]


def _save(path, value: float, meta=None):
    return save_checkpoint(path, {"w": np.full(3, value, np.float32)}, None, meta or {"value": value})


def test_saving_replaces_the_old_checkpoint_and_leaves_no_temporaries(tmp_path):
    _save(tmp_path / "ckpt_latest", 1.0)
    _save(tmp_path / "ckpt_latest", 2.0)
    ckpt = load_checkpoint(tmp_path / "ckpt_latest")
    assert ckpt.meta["value"] == 2.0 and ckpt.model_state["w"][0] == 2.0 and ckpt.optim_state is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_latest"]
    assert sorted(p.name for p in (tmp_path / "ckpt_latest").iterdir()) == ["meta.json", "model.safetensors"]


@pytest.mark.parametrize("fail_at", checkpoint_crash.STAGES)
def test_a_crash_mid_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, fail_at):
    """Simulate a crash by raising at each risky stage of a save; the old checkpoint must still load."""
    _save(tmp_path / "ckpt_latest", 1.0)

    def crash():
        raise SystemExit("killed")

    checkpoint_crash.interrupt_save(fail_at, crash, monkeypatch.setattr)
    with pytest.raises(SystemExit):
        _save(tmp_path / "ckpt_latest", 2.0)
    assert find_checkpoint(tmp_path) == tmp_path / "ckpt_latest"
    assert load_checkpoint(tmp_path / "ckpt_latest").meta["value"] == 1.0
    monkeypatch.undo()
    _save(tmp_path / "ckpt_latest", 3.0)  # the next save recovers and cleans up
    assert load_checkpoint(tmp_path / "ckpt_latest").meta["value"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_latest"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    monkeypatch.undo()
    checkpoint.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    path = _save(tmp_path / "ckpt", 1.0)
    model_file = path / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-4])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)
    model_file.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is unreadable"):
        load_checkpoint(path)
    (path / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a tinygrad_gpt checkpoint"):
        load_checkpoint(path)


def test_find_checkpoint_prefers_best_and_explains_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        find_checkpoint(tmp_path)
    _save(tmp_path / "ckpt_latest", 1.0)
    assert find_checkpoint(tmp_path) == tmp_path / "ckpt_latest"
    _save(tmp_path / "ckpt_best", 1.0)
    assert find_checkpoint(tmp_path) == tmp_path / "ckpt_best"
    assert find_checkpoint(tmp_path, prefer=("ckpt_latest",)) == tmp_path / "ckpt_latest"
    assert find_checkpoint(tmp_path / "ckpt_latest") == tmp_path / "ckpt_latest"


def test_a_checkpoint_of_gpu_arrays_holds_host_data_and_loads_on_the_cpu(tmp_path, monkeypatch):
    """The CPU side of "written on GPU, loaded on CPU": device arrays are copied to the host on save.

    With CuPy (a GPU, or tests/fake_cupy.py) the model trains on the device; without it a minimal
    stand-in array that only `.get()` can bring to the host plays the device array.
    """
    from tinygrad_gpt import backend

    class FakeGpuArray:
        def __init__(self, values):
            self._values = values

        def get(self):
            return self._values.copy()

    class FakeCupy:
        ndarray = FakeGpuArray

        @staticmethod
        def get_array_module(*arrays):
            return np

    model, optimizer = _tiny_model_and_optimizer()
    if backend.cupy_available():
        model.to("cuda")
        optimizer = AdamW(model.param_groups(0.1), lr=1e-2)
        _train_step(model, optimizer, 0)
        assert {p.device for p in model.parameters()} == {"cuda"}
        save_checkpoint(tmp_path / "ckpt_latest", model.state_dict(), optimizer.state_dict(), {"device": "cuda"})
    else:
        _train_step(model, optimizer, 0)
        on_gpu = {name: FakeGpuArray(np.array(value)) for name, value in model.state_dict().items()}
        monkeypatch.setattr(backend, "_cupy", FakeCupy)
        save_checkpoint(tmp_path / "ckpt_latest", on_gpu, optimizer.state_dict(), {"device": "cuda"})
        monkeypatch.setattr(backend, "_cupy", None)

    ckpt = load_checkpoint(tmp_path / "ckpt_latest")
    assert all(isinstance(v, np.ndarray) for v in ckpt.model_state.values())
    cpu_model, _ = _tiny_model_and_optimizer(seed=5)
    cpu_model.to("cpu").load_state_dict(ckpt.model_state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(cpu_model.state_dict()[name], backend.to_numpy(value))
        assert backend.device_of(cpu_model.state_dict()[name]) == "cpu"


# ---------------------------------------------------------------- checkpoints written by earlier versions

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "checkpoint_v1")
# What the code that wrote tests/fixtures/checkpoint_v1 printed and logged (commit fdb5266) for:
#   train --init_from resume --max_iters 9 (from iteration 6), train --eval_only, and
#   sample --checkpoint latest --prompt "ab " --max_new_tokens 16 --temperature 1 --seed 3.
# The fixtures are ckpt_latest of `train --data corpus.txt --max_iters 6 --eval_interval 6 --eval_iters 1
#   --n_layer 1 --n_head 1 --n_embd 2 --block_size 4 --batch_size 2 --log_interval 1 --dropout 0.1
#   --warmup_iters 1 --bias false --learning_rate 0.1 --dtype float32|float16`.
# Evaluations have used fixed windows since (data.fixed_windows), so their losses (eval_only and the last
# entry of `resumed`) are today's; the training losses are still the old code's, to the digit.
V1_EXPECTED = {
    "float32": dict(
        resumed=[(7, 1.399913), (8, 1.398271), (9, 1.397634), (9, 1.422505, 1.422505)], loss_scale=None,
        eval_only="iter 6: train loss 1.4683, val loss 1.4683", sample="ab \n\nba\n  \na\n   aab\n",
    ),
    "float16": dict(
        resumed=[(7, 1.395057), (8, 1.453616), (9, 1.42344), (9, 1.385812, 1.385812)], loss_scale=16384.0,
        eval_only="iter 6: train loss 1.3828, val loss 1.3828", sample="ab \n ba\n a\na\n a aab\n",
    ),
}  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_checkpoint_of_the_first_format_resumes_samples_and_evaluates_as_before(tmp_path, dtype, capsys):
    import json
    import shutil

    from tinygrad_gpt import backend, sample, train

    expected = V1_EXPECTED[dtype]
    shutil.copytree(os.path.join(FIXTURES, dtype), tmp_path / "out" / "ckpt_latest")
    shutil.copy(os.path.join(FIXTURES, "corpus.txt"), tmp_path / "corpus.txt")
    common = ["--out_dir", str(tmp_path / "out"), "--data", str(tmp_path / "corpus.txt")]
    assert train.main(["--init_from", "resume", *common, "--eval_only"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == expected["eval_only"]
    argv = ["--out_dir", str(tmp_path / "out"), "--checkpoint", "latest", "--prompt", "ab ", "--max_new_tokens", "16",
            "--temperature", "1", "--seed", "3"]  # fmt: skip
    assert sample.main(argv) == 0
    assert capsys.readouterr().out == expected["sample"] + sample.SEPARATOR + "\n"

    assert train.main(["--init_from", "resume", *common, "--max_iters", "9"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    got = [(r["iter"], r["loss"]) if "loss" in r else (r["iter"], r["train_loss"], r["val_loss"]) for r in records]
    assert [r[0] for r in got] == [r[0] for r in expected["resumed"]]
    if backend.DEFAULT_DEVICE == "cpu":  # dropout on a GPU draws from cuRAND, not the CPU generator of the fixture
        np.testing.assert_allclose([r[1:] for r in got[:-1]], [r[1:] for r in expected["resumed"][:-1]], rtol=1e-4)
        np.testing.assert_allclose(got[-1][1:], expected["resumed"][-1][1:], rtol=1e-4)
        assert [r.get("loss_scale") for r in records if "loss" in r] == [expected["loss_scale"]] * 3
    meta = load_checkpoint(tmp_path / "out" / "ckpt_latest").meta
    assert meta["iter_num"] == 9 and meta["train_config"]["dtype"] == dtype
    # written before --optimizer and --lr_schedule existed: it goes on with what it ran with, not today's defaults
    assert meta["train_config"]["optimizer"] == "adamw" and meta["train_config"]["lr_schedule"] == "cosine"
    with open(os.path.join(FIXTURES, dtype, "meta.json")) as f:
        old = json.load(f)
    # the old layout survives key for key and in order; settings added since then may follow
    assert [k for k in meta if k in old] == list(old)
    for key in ("train_config", "model_config", "rng_state"):
        assert [k for k in meta[key] if k in old[key]] == list(old[key]), key
    assert list(meta["sampler_states"]) == ["train"]  # evaluations draw no random windows any more
