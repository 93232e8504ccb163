"""Hugging Face GPT-2 directories in and out, and the checkpoints `tinygrad_gpt.train` writes, as Python calls.

Two kinds of directory load with `GPT.from_pretrained(path)` (= `load_pretrained`):

- a Hugging Face GPT-2 directory: `config.json` (model_type "gpt2") and `model.safetensors`, as
  `transformers` writes it or as `openai-community/gpt2` ships it. Keys may carry the `transformer.`
  prefix or not; the `attn.bias` / `attn.masked_bias` buffers are ignored; `lm_head.weight` equal to
  `wte.weight` is the tied head, a different one is loaded as an untied head;
- a checkpoint directory written by `tinygrad_gpt.train` (`meta.json` + `model.safetensors`), or the
  out_dir holding `ckpt_best` / `ckpt_latest`.

`model.save_pretrained(path, tokenizer)` (= `save_pretrained`) writes the first kind, which
`transformers.GPT2LMHeadModel.from_pretrained(path)` loads with the same logits. `load_tokenizer(path)`
returns the tokenizer of either kind of directory. For the command line, `hf_checkpoint(path)` gives a
Hugging Face directory as the `Checkpoint` that `train --init_from` fine-tunes, and
`checkpoint_tokenizer(ckpt)` the tokenizer a checkpoint's meta.json names.

Loading reads each tensor straight from the file into its parameter (no random init, no second copy
of the weights), so peak memory stays close to the weights' own bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
from pathlib import Path

import numpy as np

from tinygrad_gpt import backend, safetensors
from tinygrad_gpt.checkpoint import (
    CHECKPOINT_NAMES,
    FORMAT,
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    is_checkpoint,
)
from tinygrad_gpt.data import CharTokenizer, Tokenizer, tokenizer_kind
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.tokenizers import BPETokenizer, read_json_object

HF_CONFIG, WEIGHTS, META, CHARS = "config.json", "model.safetensors", "meta.json", "tinygrad_gpt_chars.json"
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some transformers versions save
_HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
_GPT2_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                      layer_norm_epsilon=1e-5, activation_function="gelu_new", resid_pdrop=0.1)  # GPT2Config's


# ---------------------------------------------------------------- configs


def gpt_config_from_hf(hf: dict, source) -> GPTConfig:
    """GPTConfig of a Hugging Face GPT-2 config.json dict (missing keys take GPT2Config's defaults).

    Raises:
        ValueError naming `source` and the key, for another architecture or an option GPT cannot express.
    """
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}; only 'gpt2' directories load")
    hf = {**_GPT2_DEFAULTS, **hf}
    activation = _HF_ACTIVATIONS.get(hf["activation_function"])
    if activation is None:
        raise ValueError(f"{source}: activation_function {hf['activation_function']!r} is not supported "
                         f"(supported: {', '.join(_HF_ACTIVATIONS)})")
    unsupported = {"n_inner": (None, 4 * hf["n_embd"]), "scale_attn_weights": (True,),
                   "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,)}
    for key, allowed in unsupported.items():
        if key in hf and hf[key] not in allowed:
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (supported: {allowed})")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"],
            n_embd=hf["n_embd"], dropout=float(hf["resid_pdrop"] or 0.0), activation=activation,
            layer_norm_epsilon=hf["layer_norm_epsilon"], tie_weights=bool(hf.get("tie_word_embeddings", True)),
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


def hf_config_from_gpt(config: GPTConfig, eot_id: int | None = None) -> dict:
    """The config.json dict of a GPT for transformers' GPT2LMHeadModel.

    Raises:
        ValueError naming the option when GPT-2 cannot express the model (post-norm, sinusoidal or rotary
        positions, bias=False, RMSNorm, qk_norm, relu2, logit soft-capping).
    """
    unexpressible = {"norm": "pre", "pos_encoding": "learned", "bias": True, "norm_type": "layernorm",
                     "qk_norm": False, "logit_softcap": None}  # fmt: skip
    if config.activation not in ("gelu", "relu"):
        raise ValueError(f"save_pretrained: Hugging Face GPT-2 has no activation={config.activation!r} "
                         "(it has 'gelu' and 'relu'); this model cannot be written as a GPT-2 directory")
    for key, needed in unexpressible.items():
        if getattr(config, key) != needed:
            raise ValueError(f"save_pretrained: Hugging Face GPT-2 has no {key}={getattr(config, key)!r} "
                             f"(it needs {key}={needed!r}); this model cannot be written as a GPT-2 directory")
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
        "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new" if config.activation == "gelu" else "relu",
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": 0.0,
        "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": config.tie_weights, "bos_token_id": eot_id, "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }  # fmt: skip


# ---------------------------------------------------------------- reading tensors straight into parameters


def read_header(path: Path) -> tuple[dict, int]:
    """{name: (dtype, shape, begin, end)} of a safetensors file and the offset where its data starts.

    Reads only the header. Raises ValueError naming the file when it is missing, truncated or corrupted.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            head += f.read(min(n, max(size - 8, 0)))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    header, _, data_start = safetensors._parse_header(_Sized(head, size), str(path))
    entries = {name: safetensors._check_entry(name, entry, size - data_start, str(path))
               for name, entry in header.items()}
    return entries, data_start


class _Sized(bytes):
    """The header bytes of a file, reporting the whole file's length (for safetensors' bounds checks)."""

    def __new__(cls, data: bytes, size: int):
        obj = super().__new__(cls, data)
        obj.size = size
        return obj

    def __len__(self) -> int:
        return self.size


def _read_into(f, data_start: int, entry, target, transpose: bool) -> None:
    """Read one tensor from open file f into array `target` (host or device), converting as needed."""
    dtype, shape, begin, end = entry
    f.seek(data_start + begin)
    direct = isinstance(target, np.ndarray) and not transpose and target.dtype == dtype and target.flags.c_contiguous
    buffer = target if direct else np.empty(shape, dtype=dtype)  # one tensor's bytes at a time
    if f.readinto(memoryview(buffer).cast("B")) != end - begin:
        raise ValueError(f"{f.name}: file ended inside tensor data (truncated)")
    if not direct:
        values = buffer.T if transpose else buffer
        target[...] = backend.asarray(values, dtype=target.dtype, device=backend.device_of(target))


def _same_bytes(f, data_start: int, first, second, block: int = 1 << 24) -> bool:
    """Whether two tensors of a file hold the same bytes (compared block by block)."""
    if first[0] != second[0] or first[1] != second[1]:
        return False
    for offset in range(0, first[3] - first[2], block):
        n = min(block, first[3] - first[2] - offset)
        f.seek(data_start + first[2] + offset)
        a = f.read(n)
        f.seek(data_start + second[2] + offset)
        if a != f.read(n):
            return False
    return True


class _Unfilled(GPT):
    """A GPT whose parameters are allocated but not initialised: a load overwrites every one of them."""

    def _init_weights(self) -> None:
        pass


@contextlib.contextmanager
def _no_random_draws():
    """Layers built inside get zeros instead of random draws (calloc'd: no page is touched until written).

    NOTE: this swaps backend.rand/randn for the duration of one constructor, so it is not thread-safe;
    it also leaves the library's random stream where it was (loading draws nothing).
    """

    def empty(shape, dtype, device=None):
        return backend.xp_for(device or backend.DEFAULT_DEVICE).zeros(shape, dtype=dtype)

    saved = {name: getattr(backend, name) for name in ("rand", "randn") if hasattr(backend, name)}
    for name in saved:
        setattr(backend, name, empty)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(backend, name, fn)


def empty_model(config: GPTConfig) -> GPT:
    """A GPT of `config` with uninitialised parameters (to be filled by a load)."""
    with _no_random_draws():
        model = _Unfilled(config)
    model.__class__ = GPT  # NOTE: only the constructor differed; from here on it is a plain GPT
    return model


def load_weights(model: GPT, path: Path, names: dict, transposed: set) -> None:
    """Fill every parameter of `model` from safetensors file `path`.

    Args:
        names: file key -> parameter name (keys absent from it must be in the file's ignorable buffers).
        transposed: parameter names stored transposed in the file (an HF untied lm_head is (vocab, n_embd)).
    Raises:
        ValueError naming the file and key: a missing or unexpected tensor, or a shape that disagrees.
    """
    entries, data_start = read_header(path)
    params = dict(model.named_parameters())
    by_param = {param: key for key, param in names.items()}
    missing = [name for name in params if name not in by_param]
    if missing:
        raise ValueError(f"{path}: no tensor for parameter {missing[0]!r}" + (f" and {len(missing) - 1} more"
                                                                             if len(missing) > 1 else ""))
    for key, param in names.items():
        shape = params[param].shape[::-1] if param in transposed else params[param].shape
        if entries[key][1] != tuple(shape):
            raise ValueError(f"{path}: tensor {key!r} has shape {entries[key][1]}, but config.json/meta.json "
                             f"implies {tuple(shape)}")
    with open(path, "rb") as f:
        for key, param in sorted(names.items(), key=lambda kv: entries[kv[0]][2]):  # in file order
            _read_into(f, data_start, entries[key], params[param].data, param in transposed)


# ---------------------------------------------------------------- the two kinds of directory


def _hf_names(keys, source: Path, tie: bool) -> tuple[dict, set]:
    """(file key -> parameter name, transposed parameter names) for a Hugging Face GPT-2 file's keys."""
    names = {}
    for key in keys:
        name = key.removeprefix("transformer.")
        if name.endswith(_HF_BUFFERS) or (tie and name == "lm_head.weight"):
            continue
        if name in names.values():
            raise ValueError(f"{source}: tensor {name!r} appears twice (with and without the 'transformer.' prefix)")
        names[key] = name
    return names, set() if tie else {"lm_head.weight"}


def _check_names(names: dict, model: GPT, source: Path) -> None:
    params = dict(model.named_parameters())
    unexpected = [key for key, name in names.items() if name not in params]
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]!r} (not a GPT-2 parameter of this config)")


def _tied_in_file(path: Path, entries: dict, data_start: int) -> bool | None:
    """Whether the file's lm_head.weight equals its wte.weight (None when there is no lm_head.weight)."""
    keys = {k.removeprefix("transformer."): k for k in entries}
    if "lm_head.weight" not in keys or "wte.weight" not in keys:
        return None
    with open(path, "rb") as f:
        return _same_bytes(f, data_start, entries[keys["wte.weight"]], entries[keys["lm_head.weight"]])


def _load_hf(path: Path) -> GPT:
    """A Hugging Face GPT-2 directory: config.json + model.safetensors."""
    config_path, weights = path / HF_CONFIG, path / WEIGHTS
    hf = read_json_object(config_path)
    if not weights.is_file():
        raise ValueError(f"{weights} is missing (a Hugging Face GPT-2 directory holds config.json and "
                         "model.safetensors; .bin files are pickles and are not read)")
    config = gpt_config_from_hf(hf, config_path)
    entries, data_start = read_header(weights)
    tied_in_file = _tied_in_file(weights, entries, data_start)
    if tied_in_file is False:
        config.tie_weights = False  # a separate head that differs from wte: keep it
    elif not config.tie_weights and tied_in_file is None:
        raise ValueError(f"{weights}: config.json has tie_word_embeddings=false but the file has no lm_head.weight")
    model = empty_model(config)
    names, transposed = _hf_names(entries, weights, config.tie_weights)
    _check_names(names, model, weights)
    load_weights(model, weights, names, transposed)
    return model


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory meant by path (itself, or out_dir/ckpt_best, ...), recovering an interrupted save."""
    ckpt = find_checkpoint(path, prefer=CHECKPOINT_NAMES)
    if not (ckpt / META).is_file() and is_checkpoint(ckpt):
        ckpt = ckpt.with_name(f".{ckpt.name}.old")  # a save was interrupted between its two renames
    return ckpt


def _load_checkpoint_dir(path: Path) -> GPT:
    ckpt = checkpoint_dir(path)
    meta = read_json_object(ckpt / META)
    if meta.get("format") != FORMAT or not isinstance(meta.get("model_config"), dict):
        raise ValueError(f"{ckpt / META} is not a tinygrad_gpt checkpoint (no format/model_config)")
    try:
        config = GPTConfig(**meta["model_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{ckpt / META}: model_config is invalid ({e})") from None
    model = empty_model(config)
    weights = ckpt / WEIGHTS
    entries, _ = read_header(weights)
    names = {key: key for key in entries}
    _check_names(names, model, weights)
    load_weights(model, weights, names, transposed=set())
    return model


def load_pretrained(path, device: str | None = None, dtype=None) -> GPT:
    """A GPT in eval mode from a Hugging Face GPT-2 directory or a tinygrad_gpt checkpoint (see the module docstring).

    Args:
        path: a directory with config.json (Hugging Face), or a checkpoint / out_dir (meta.json).
        device: 'cpu' or 'cuda' (default: the backend's device).
        dtype: parameter dtype (default: the library's default float dtype).
    Raises:
        ValueError naming the file and key: a missing file, another architecture, shapes that
        disagree with the config, missing or unexpected tensors.
    """
    path = Path(path)
    if (path / HF_CONFIG).is_file():
        model = _load_hf(path)
    elif is_checkpoint(path) or any(is_checkpoint(path / name) for name in CHECKPOINT_NAMES):
        model = _load_checkpoint_dir(path)
    elif not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    else:
        raise ValueError(f"{path} holds neither a Hugging Face GPT-2 model ({HF_CONFIG} + {WEIGHTS}) nor a "
                         f"tinygrad_gpt checkpoint ({META})")
    if device is not None or dtype is not None:
        model.to(device, dtype)
    return model.eval()


# ---------------------------------------------------------------- writing


def _write_safetensors(path: Path, tensors: dict) -> None:
    """Stream `tensors` (name -> host array) into a safetensors file, one tensor at a time (no joined copy)."""
    header, offset = {}, 0
    for name in sorted(tensors):
        array = tensors[name]
        header[name] = {"dtype": safetensors._dtype_name(array.dtype), "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = {"format": "pt"}  # what transformers expects
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for name in sorted(tensors):
            f.write(memoryview(np.ascontiguousarray(tensors[name], dtype=tensors[name].dtype.newbyteorder("<"))))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pretrained(model: GPT, path, tokenizer=None) -> None:
    """Write a Hugging Face GPT-2 directory: config.json, model.safetensors and the tokenizer's files.

    `transformers.GPT2LMHeadModel.from_pretrained(path)` loads it with the same logits. Keys carry the
    `transformer.` prefix as transformers writes them; an untied head is `lm_head.weight` (vocab, n_embd).

    Args:
        model: a GPT with GPT-2's options (pre-norm, learned positions, biases; gelu or relu).
        path: the directory (created if needed; files of these names in it are replaced).
        tokenizer: a BPETokenizer (writes vocab.json, merges.txt, tokenizer_config.json; bos/eos become
            its <|endoftext|>), a CharTokenizer (writes tinygrad_gpt_chars.json, which only tinygrad_gpt
            reads), or None.
    Raises:
        ValueError naming the option GPT-2 cannot express; TypeError for another tokenizer type.
    """
    eot_id = tokenizer.eot_id if isinstance(tokenizer, BPETokenizer) else None
    config = hf_config_from_gpt(model.config, eot_id)
    if tokenizer is not None and not isinstance(tokenizer, (BPETokenizer, CharTokenizer)):
        raise TypeError(f"save_pretrained: tokenizer must be a BPETokenizer or CharTokenizer, got {type(tokenizer)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.named_parameters():
        array = backend.to_numpy(p.data)
        if name == "lm_head.weight":
            tensors[name] = array.T  # ours is (n_embd, vocab); torch's Linear is (vocab, n_embd)
        else:
            tensors["transformer." + name] = array
    _write_safetensors(path / WEIGHTS, tensors)
    (path / HF_CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save_pretrained(path)
    elif isinstance(tokenizer, CharTokenizer):
        (path / CHARS).write_text(json.dumps({"chars": tokenizer.chars}, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------- tokenizers


def load_tokenizer(path) -> BPETokenizer | CharTokenizer:
    """The tokenizer of a Hugging Face directory, a checkpoint directory or an out_dir.

    Looks for vocab.json + merges.txt (a BPETokenizer) in the checkpoint directory, then in `path`
    itself (an out_dir may keep them once for all its checkpoints); then for tinygrad_gpt_chars.json
    (a char model written by save_pretrained); then for the checkpoint's meta.json "vocab" (a CharTokenizer).

    Raises:
        ValueError naming what is missing.
    """
    path = Path(path)
    places = [path]
    if not (path / HF_CONFIG).is_file() and (is_checkpoint(path) or any(is_checkpoint(path / n)
                                                                         for n in CHECKPOINT_NAMES)):
        places.insert(0, checkpoint_dir(path))
    for place in places:
        if (place / "vocab.json").is_file() or (place / "merges.txt").is_file():
            return BPETokenizer.from_pretrained(place)
    for place in places:
        if (place / CHARS).is_file():
            return CharTokenizer(read_json_object(place / CHARS).get("chars", []))
        if (place / META).is_file():
            meta = read_json_object(place / META)
            if isinstance(meta.get("vocab"), list):
                return CharTokenizer(meta["vocab"])
            raise ValueError(f"{place / META} has no 'vocab', and neither {place} nor {path} holds vocab.json + "
                             "merges.txt")
    raise ValueError(f"{path} has no tokenizer files (vocab.json + merges.txt, {CHARS}, or a checkpoint's {META})")


def checkpoint_tokenizer(ckpt: Checkpoint) -> Tokenizer:
    """The tokenizer a checkpoint of `tinygrad_gpt.train` was trained with, as its meta.json names it.

    "tokenizer": "bpe" reads vocab.json + merges.txt from the checkpoint directory; "char" (or no
    "tokenizer" key: checkpoints written before BPE existed) is the character list in "vocab".

    Raises:
        ValueError (CheckpointError) naming the file and key that is missing or wrong.
    """
    kind = ckpt.meta.get("tokenizer", "char")
    if kind == "bpe":
        return BPETokenizer.from_pretrained(ckpt.path)
    if kind != "char":
        raise CheckpointError(f"{ckpt.path / META}: unknown tokenizer {kind!r} (expected 'char' or 'bpe')")
    try:
        return CharTokenizer(ckpt.meta["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path / META}: 'vocab' is missing or not a list of characters ({e!r})") from None


def check_vocab(tokenizer: Tokenizer, config: GPTConfig, source) -> None:
    """Raise ValueError naming `source` when the tokenizer has ids the model has no embedding row for."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{source}: the tokenizer has {tokenizer.vocab_size} tokens, but the model's vocab_size "
                         f"is {config.vocab_size} (the tokenizer files and config.json/meta.json disagree)")


def hf_checkpoint(path) -> Checkpoint:
    """A Hugging Face GPT-2 directory as the Checkpoint to fine-tune: weights (host arrays), model_config, tokenizer.

    Raises:
        ValueError naming the file and key (see `load_pretrained` and `load_tokenizer`), also when the
        tokenizer has more tokens than the model's vocab_size.
    """
    path = Path(path)
    model = load_pretrained(path)
    tokenizer = load_tokenizer(path)
    check_vocab(tokenizer, model.config, path)
    state = {name: backend.to_numpy(value) for name, value in model.state_dict().items()}
    meta = {"model_config": dataclasses.asdict(model.config), "tokenizer": tokenizer_kind(tokenizer)}
    return Checkpoint(path, state, None, meta, tokenizer)
