"""Checkpoints as plain files, written so that a crash or `kill -9` never loses the last good one.

A checkpoint is a directory:

    ckpt_latest/model.safetensors   the model's weights (GPT-2's tensor names)
    ckpt_latest/optim.safetensors   the optimizer's moments; its step counts and groups in the metadata
    ckpt_latest/meta.json           config, tokenizer, iteration, losses and random-number states
    ckpt_latest/vocab.json, merges.txt   the tokenizer of a BPE run (GPT-2's files)

Saving writes a new directory `.ckpt_latest.tmp` next to the old one, fsyncs every file and the
directory, then swaps it in with renames: the old directory becomes `.ckpt_latest.old`, the new one
`ckpt_latest`, and the old one is deleted. At every instant either `ckpt_latest` or, in the moment
between the two renames, `.ckpt_latest.old` holds a complete checkpoint, and loading finds either.
No pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tinygrad_gpt import backend, safetensors
from tinygrad_gpt.cli import read_limited

FORMAT = "tinygrad_gpt-checkpoint"
VERSION = 1
CHECKPOINT_NAMES = ("ckpt_best", "ckpt_latest")  # what `find_checkpoint` looks for, in this order
META_LIMIT = 64 << 20  # bytes of meta.json (a large vocabulary and the generators' states fit many times over)


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit what is asked of it."""


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, loaded into memory."""

    path: Path
    model_state: dict  # name -> numpy array
    optim_state: dict | None  # the optimizer's state_dict(), or None when the file is absent
    meta: dict  # everything else (config, vocab, iteration, RNG states)
    tokenizer: object = None  # its tokenizer, once loaded (train_config.load_init_checkpoint)


# ---------------------------------------------------------------- atomic files


def fsync_dir(path) -> None:
    """Make a rename inside directory `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rename(src: Path, dst: Path) -> None:
    """Rename atomically and make it durable."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace file `path` by `data` atomically: a temp file in the same directory, fsync, rename, fsync dir."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------- nested state <-> flat tensors


def flatten_state(state) -> tuple[dict, object]:
    """Split nested dicts/lists holding arrays into flat name -> array tensors and a JSON skeleton.

    Each array is replaced by {"__tensor__": name}; dicts with non-str keys (the optimizer's
    {param index: state}) become {"__items__": [[key, value], ...]} so their keys survive JSON.
    """
    tensors: dict = {}

    def walk(obj, prefix: str):
        if backend.is_array(obj):
            tensors[prefix] = backend.to_numpy(obj)
            return {"__tensor__": prefix}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj):
                return {k: walk(v, f"{prefix}.{k}" if prefix else k) for k, v in obj.items()}
            return {"__items__": [[k, walk(v, f"{prefix}.{k}" if prefix else str(k))] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{prefix}.{i}") for i, v in enumerate(obj)]
        if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
            return obj.item()
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")

    return tensors, walk(state, "")


def unflatten_state(tensors: dict, skeleton):
    """Inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            name = skeleton["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"optimizer state refers to tensor {name!r}, which the file lacks")
            return tensors[name]
        if set(skeleton) == {"__items__"}:
            return {k: unflatten_state(tensors, v) for k, v in skeleton["__items__"]}
        return {k: unflatten_state(tensors, v) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(tensors, v) for v in skeleton]
    return skeleton


# ---------------------------------------------------------------- save and load


def _siblings(ckpt_dir: Path) -> tuple[Path, Path]:
    return ckpt_dir.with_name(f".{ckpt_dir.name}.tmp"), ckpt_dir.with_name(f".{ckpt_dir.name}.old")


def _recover(ckpt_dir: Path) -> None:
    """After a crash between the two renames of a save, put the old checkpoint back in place."""
    _, old = _siblings(ckpt_dir)
    if not ckpt_dir.exists() and (old / "meta.json").exists():
        _rename(old, ckpt_dir)


def save_checkpoint(
    ckpt_dir, model_state: dict, optim_state: dict | None, meta: dict, files: dict | None = None
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring).

    Args:
        ckpt_dir: the directory to (re)place, e.g. out_dir/ckpt_latest; its parent is created.
        model_state: name -> array (the model's state_dict()).
        optim_state: the optimizer's state_dict() (nested; arrays become tensors), or None.
        meta: JSON-friendly dict.
        files: more files to write into the directory, name -> bytes (a BPE's vocab.json and merges.txt).
    Returns:
        ckpt_dir as a Path.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _siblings(ckpt_dir)
    _recover(ckpt_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_files(tmp, model_state, optim_state, meta, files)
    except BaseException:  # e.g. a full disk: the old checkpoint stays, and no half-written copy fills the disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if ckpt_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        _rename(ckpt_dir, old)
    _rename(tmp, ckpt_dir)  # between the two renames only `old` holds a checkpoint: loading finds it there
    shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir


def _write_files(tmp: Path, model_state: dict, optim_state: dict | None, meta: dict, files: dict | None) -> None:
    """The checkpoint's files in the new directory `tmp`, each fsynced, and the directory itself."""
    tmp.mkdir()
    model_bytes = safetensors.serialize(model_state, metadata={"format": "pt"})  # "pt": what transformers expects
    _write_synced(tmp / "model.safetensors", model_bytes)
    if optim_state is not None:
        tensors, skeleton = flatten_state(optim_state)
        optim_bytes = safetensors.serialize(tensors, metadata={"state": json.dumps(skeleton)})
        _write_synced(tmp / "optim.safetensors", optim_bytes)
    for name, data in (files or {}).items():
        _write_synced(tmp / name, data)
    meta = {"format": FORMAT, "version": VERSION, **meta}
    _write_synced(tmp / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))
    fsync_dir(tmp)


def is_checkpoint(path) -> bool:
    path = Path(path)
    return (path / "meta.json").is_file() or (_siblings(path)[1] / "meta.json").is_file()


def has_checkpoint(out_dir) -> bool:
    """Whether out_dir holds a checkpoint (ckpt_latest or ckpt_best) that a new run would replace."""
    return any(is_checkpoint(Path(out_dir) / name) for name in CHECKPOINT_NAMES)


def find_checkpoint(path, prefer: tuple = CHECKPOINT_NAMES) -> Path:
    """The checkpoint directory meant by `path`: a checkpoint itself, or an out_dir holding one.

    Args:
        path: a checkpoint directory, or an out_dir with `ckpt_best`/`ckpt_latest` inside.
        prefer: the names to look for inside an out_dir, in order.
    Raises:
        CheckpointError: one line saying what is missing.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (no out_dir or checkpoint there)")
    if is_checkpoint(path):
        return path
    for name in prefer:
        if is_checkpoint(path / name):
            return path / name
    raise CheckpointError(f"no checkpoint in {path} (looked for {' and '.join(prefer)}); train one first")


def load_checkpoint(ckpt_dir, with_optimizer: bool = True, check_meta=None) -> Checkpoint:
    """Read a checkpoint directory written by `save_checkpoint`.

    Args:
        ckpt_dir: the checkpoint directory.
        with_optimizer: also read optim.safetensors (skip it for sampling).
        check_meta: called as check_meta(meta, path of meta.json) before the weights are read; raises
            CheckpointError for a meta.json that does not fit (see validate.check_meta).
    Raises:
        CheckpointError: missing, oversized or unreadable meta.json, or a truncated/corrupted safetensors file.
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "meta.json").is_file() and is_checkpoint(ckpt_dir):
        ckpt_dir = _siblings(ckpt_dir)[1]  # a save was interrupted between its two renames
    meta_path = ckpt_dir / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint (no meta.json)")
    raw = read_limited(meta_path, META_LIMIT, "checkpoint file", error=CheckpointError)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{meta_path} is unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a tinygrad_gpt checkpoint")
    if check_meta is not None:
        check_meta(meta, meta_path)
    model_state = _load_tensors(ckpt_dir / "model.safetensors")
    optim_state = None
    if with_optimizer and (ckpt_dir / "optim.safetensors").exists():
        tensors, metadata = _load_tensors(ckpt_dir / "optim.safetensors", with_metadata=True)
        try:
            optim_state = unflatten_state(tensors, json.loads(metadata["state"]))
        except (KeyError, TypeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{ckpt_dir / 'optim.safetensors'}: corrupted optimizer metadata ({e!r})") from None
    return Checkpoint(ckpt_dir, model_state, optim_state, meta)


def _load_tensors(path: Path, with_metadata: bool = False):
    try:
        return safetensors.load_file(path, with_metadata=with_metadata)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
