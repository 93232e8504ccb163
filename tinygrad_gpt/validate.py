"""Checks that keep bad input away from a run: file sizes, meta.json's schema, weights and memory.

Everything here runs before anything is allocated from the input or written to out_dir:

- `check_meta(meta, path, config_cls)`: every field of a checkpoint's meta.json against its type,
  driven by the config dataclasses' fields (a new flag needs no code here).
- `param_count(config)`: a GPT's parameter count from its GPTConfig, without building it, so a
  meta.json that claims sizes its weights do not have is refused before the model is allocated.
- `check_weights(ckpt, config)`: the weights match model_config's size and hold no NaN or inf.
- `check_memory(config, given, parts_of)`: a rough lower bound of a run's memory (`training_memory`,
  `sampling_memory`) against the machine's, naming the flag to lower (`$TINYGRAD_GPT_MAX_MEMORY`, in
  bytes, sets a lower limit).
"""

from __future__ import annotations

import dataclasses
import math
import os

from tinygrad_gpt import backend
from tinygrad_gpt.checkpoint import Checkpoint, CheckpointError
from tinygrad_gpt.cli import UsageError, build_config, check_value, flags_of, flatten_config, format_bytes
from tinygrad_gpt.model import GPTConfig

PROMPT_FILE_LIMIT = 1 << 20  # --prompt FILE:path
MAX_VOCAB = 1 << 21  # more than every Unicode code point: a character vocabulary cannot be larger


def short_repr(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- meta.json


def _require(ok: bool, path, field: str, requirement: str, value) -> None:
    if not ok:
        raise CheckpointError(f"{path}: {field} {requirement}, got {short_repr(value)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """A finite int or float (not a bool); an int beyond float's range is not."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_section(values, config_cls, path, field: str, ignore_unknown: bool) -> None:
    """A dict of settings (model_config, train_config) checked against the fields of `config_cls`."""
    _require(isinstance(values, dict), path, field, "must be an object", values)
    flags = {flag.name: flag for flag in flags_of(config_cls)}
    for key, value in values.items():
        if key not in flags:
            _require(ignore_unknown, path, field, "has an unknown key", key)
            continue
        flag = flags[key]
        try:
            check_value(key, value, flag.base, flag.optional, source=f"{path}: {field}")
        except UsageError as e:
            raise CheckpointError(str(e)) from None
        _require(not flag.choices or value in flag.choices, path, f"{field}.{key}", f"must be one of {flag.choices}",
                 value)  # fmt: skip


def check_meta(meta: dict, path, config_cls=None) -> GPTConfig:
    """Check what a checkpoint's meta.json holds before anything is built from it; return its GPTConfig.

    Args:
        meta: the parsed meta.json.
        path: meta.json's path, for messages.
        config_cls: the training config dataclass when resuming (then the run's state is checked too),
            else None (sampling and fine-tuning need only the vocabulary and the model's shape).
    Raises:
        CheckpointError naming the file, the field and the bad value.
    """
    kind = meta.get("tokenizer", "char")  # checkpoints before BPE runs name no tokenizer: characters
    _require(kind in ("char", "bpe"), path, "tokenizer", "must be 'char' or 'bpe'", kind)
    vocab = meta.get("vocab") if kind == "char" else None  # a BPE's vocab.json and merges.txt are checked on loading
    if kind == "char":
        _require(isinstance(vocab, list) and 0 < len(vocab) <= MAX_VOCAB, path, "vocab",
                 f"must be a list of 1 to {MAX_VOCAB} characters", vocab)  # fmt: skip
        _require(all(isinstance(c, str) and len(c) == 1 for c in vocab) and len(set(vocab)) == len(vocab), path,
                 "vocab", "must hold distinct single characters", vocab)  # fmt: skip
    model = meta.get("model_config")
    check_section(model, GPTConfig, path, "model_config", ignore_unknown=False)
    try:
        config = GPTConfig(**model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: model_config is invalid ({e})") from None
    if vocab is not None:
        _require(config.vocab_size == len(vocab), path, "model_config.vocab_size",
                 f"must be len(vocab) = {len(vocab)}", config.vocab_size)  # fmt: skip
    if config_cls is not None:
        check_section(meta.get("train_config"), config_cls, path, "train_config", ignore_unknown=True)
        iter_num, best = meta.get("iter_num"), meta.get("best_val_loss")
        _require(_is_int(iter_num) and iter_num >= 0, path, "iter_num", "must be an integer >= 0", iter_num)
        _require(best is None or _is_real(best), path, "best_val_loss", "must be a finite number or null", best)
        for key in ("elapsed", "train_time_s"):
            seconds = meta.get(key, 0.0)
            _require(_is_real(seconds) and seconds >= 0, path, key, "must be a number >= 0", seconds)
        for key in ("rng_state", "sampler_states"):
            _require(isinstance(meta.get(key), dict), path, key, "must be an object", meta.get(key))
    return config


# ---------------------------------------------------------------- weights


def param_count(config: GPTConfig) -> int:
    """The number of parameters of GPT(config) (its state_dict's elements), computed without building it."""
    C, V, bias = config.n_embd, config.vocab_size, config.bias
    layer_norm = C if config.norm_type == "rmsnorm" else C * (2 if bias else 1)  # RMSNorm: a gain, no bias
    qk_norm = 2 * (C // config.n_head) if config.qk_norm else 0  # the gains of q's and k's RMSNorms
    linear = lambda n_in, n_out: n_in * n_out + (n_out if bias else 0)  # noqa: E731
    block = 2 * layer_norm + qk_norm + linear(C, 3 * C) + linear(C, C) + linear(C, 4 * C) + linear(4 * C, C)
    total = V * C + config.n_layer * block  # wte and the blocks
    total += config.block_size * C if config.pos_encoding == "learned" else 0  # wpe
    total += layer_norm if config.norm == "pre" else 0  # ln_f
    total += 0 if config.tie_weights else C * V  # lm_head
    return total


def check_weights(ckpt: Checkpoint, config: GPTConfig) -> None:
    """The checkpoint's weights have the size model_config claims and hold only finite values.

    Raises:
        CheckpointError naming model.safetensors and the tensor (or the sizes that disagree).
    """
    source = ckpt.path / "model.safetensors"
    held = sum(math.prod(a.shape) for a in ckpt.model_state.values())
    needed = param_count(config)
    if held != needed:
        sizes = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items() if _is_int(v))
        raise CheckpointError(
            f"{source} holds {held:,} weights but meta.json's model_config ({sizes}) needs {needed:,}; "
            "the checkpoint is corrupted"
        )
    for name, array in ckpt.model_state.items():
        if array.dtype.kind == "f" and not backend.get_array_module(array).isfinite(array).all():
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or infinite values (a diverged run?)")


# ---------------------------------------------------------------- memory


def training_memory(config: GPTConfig, batch_size: int, dtype: str) -> dict:
    """A rough lower bound of the bytes a training run needs: {"parameters and optimizer": n, "activations": n}."""
    P = param_count(config)
    B, T, C, L, V = batch_size, config.block_size, config.n_embd, config.n_layer, config.vocab_size
    state = 4 * P * 4 + T * C * 4  # float32 weights, gradients and AdamW's two moments; positions
    if dtype == "float16":
        state += 2 * P * 2  # the float16 model and its gradients
    itemsize = 2 if dtype == "float16" else 4
    activations = B * T * (16 * C * L + 2 * V) * itemsize + L * B * config.n_head * T * T * itemsize
    return {"parameters and optimizer": state, "activations": activations}


def sampling_memory(config: GPTConfig, num_samples: int) -> dict:
    """A rough lower bound of the bytes sampling needs: the weights, and the key/value cache with one step's work."""
    T, C, L, V = config.block_size, config.n_embd, config.n_layer, config.vocab_size
    cache = num_samples * (2 * L * T * C + T * (8 * C + V)) * 4
    return {"weights": param_count(config) * 4 + T * C * 4, "key/value cache": cache}


def memory_limit() -> tuple[int, str]:
    """(bytes, what that is): $TINYGRAD_GPT_MAX_MEMORY, else the machine's memory (or a lower RLIMIT_AS)."""
    setting = os.environ.get("TINYGRAD_GPT_MAX_MEMORY")
    if setting:
        try:
            return int(setting), "set by $TINYGRAD_GPT_MAX_MEMORY"
        except ValueError:
            raise UsageError(f"$TINYGRAD_GPT_MAX_MEMORY must be a number of bytes, got {setting!r}") from None
    limit, what = math.inf, "of this machine's memory"
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft < limit:
            limit, what = soft, "allowed by the address-space limit (ulimit -v)"
    except (ImportError, OSError, ValueError):
        pass
    return limit, what


def check_memory(config, given: set, parts_of) -> None:
    """Refuse a run whose memory estimate exceeds the limit, with one line naming the flag to lower.

    Args:
        config: the run's config dataclass (TrainConfig, SampleConfig).
        given: the flags the user set; the one whose default would shrink the estimate most is named.
        parts_of: config -> {what: bytes} (e.g. a closure over training_memory).
    Raises:
        UsageError: "--n_embd 100000: the run needs at least 7.4 TiB of memory (...), more than the ...".
    """
    parts = parts_of(config)
    need = sum(parts.values())
    limit, what = memory_limit()
    if need <= limit:
        return
    detail = ", ".join(f"{name} {format_bytes(n)}" for name, n in parts.items())
    raise UsageError(
        f"{_culprit(config, given, parts_of)}: the run needs at least {format_bytes(need)} of memory ({detail}), "
        f"more than the {format_bytes(limit)} {what}; use smaller sizes"
    )


def _culprit(config, given: set, parts_of) -> str:
    """The given integer flag whose default value shrinks the estimate most, as '--name value'."""
    flat, flags = flatten_config(config), {flag.name: flag for flag in flags_of(type(config))}
    best = None
    for name in sorted(given & flat.keys()):
        value, default = flat[name], flags[name].default
        if not _is_int(value) or value == default or not _is_int(default):
            continue
        try:
            need = sum(parts_of(build_config(type(config), {**flat, name: default})).values())
        except (TypeError, ValueError, UsageError):  # the default does not fit the other values
            continue
        if best is None or need < best[0]:
            best = (need, f"--{name} {value}")
    return best[1] if best else "the model's and the batch's sizes"
