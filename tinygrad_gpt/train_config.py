"""The settings of a training run: `TrainConfig`, built once from defaults, a config file, flags and a checkpoint.

`python -m tinygrad_gpt.train` makes its flags from TrainConfig (see tinygrad_gpt.cli): one flag per
field, and for the `model` section one per GPTConfig field, so a new model option needs no new code
here. The command builds the run's TrainConfig once and passes it on:

    values, given = parse_args(TrainConfig, argv, ...)           # every flag's value; the flags given
    ckpt = load_init_checkpoint(values["init_from"], values["out_dir"])
    config = make_config(values, given, ckpt)                    # typed, checked, schedule resolved
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from tinygrad_gpt.checkpoint import Checkpoint, CheckpointError, find_checkpoint, load_checkpoint
from tinygrad_gpt.cli import UsageError, build_config, flags_of, option, section
from tinygrad_gpt.model import GPTConfig
from tinygrad_gpt.validate import check_meta, check_weights

DEFAULT_MAX_ITERS = 3500  # the no-argument run: about 5 minutes on 2 CPU cores (measured: README)


def default_model() -> GPTConfig:
    """The model of the no-argument run (about 0.8M parameters); vocab_size is set from the data."""
    return GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128)


@dataclass
class TrainConfig:
    """Every setting of a training run; each field is also a command-line flag (nanoGPT's names)."""

    # I/O
    out_dir: str = option(
        "out", "directory for checkpoints, metrics.jsonl, loss.png and the token files", command_line_only=True
    )
    data: str = option(
        "pydoc",
        "training text: a UTF-8 file, a directory of .txt files, 'shakespeare' (Tiny Shakespeare, downloaded "
        "once) or 'pydoc' (Python's documentation from the standard library, offline); --init_from resume "
        "without --data continues on the token files in out_dir",
    )
    cache_dir: str = option(
        "", "where downloads are kept; '' means $TINYGRAD_GPT_CACHE or ~/.cache/tinygrad_gpt", command_line_only=True
    )
    init_from: str = option(
        "scratch",
        "'scratch', 'resume' (continue the run in out_dir exactly) or a checkpoint directory to fine-tune",
        command_line_only=True,
    )
    eval_interval: int = option(250, "estimate train/val loss and save checkpoints every this many iterations")
    log_interval: int = option(10, "write loss, lr and tokens/s to metrics.jsonl every this many iterations")
    eval_iters: int = option(20, "batches per split when estimating the loss")
    eval_only: bool = option(
        False, "only estimate the loss of the initial model (e.g. with --init_from resume)", command_line_only=True
    )
    overwrite: bool = option(
        False, "let a new run (scratch or fine-tune) replace the checkpoints already in out_dir", command_line_only=True
    )
    plot: bool = option(True, "draw out_dir/loss.png at the end (needs matplotlib)")
    max_new_tokens: int = option(500, "characters of the sample printed at the end (0: none)")
    # data
    batch_size: int = option(12, "sequences per batch")
    # model: one flag per GPTConfig field (--block_size, --n_layer, ..., --dropout, --tie_weights)
    model: GPTConfig = section(
        default_model, "model (GPTConfig's fields; the vocabulary size comes from the data)", skip=("vocab_size",)
    )
    # AdamW
    learning_rate: float = option(1e-3, "peak learning rate")
    max_iters: int = option(DEFAULT_MAX_ITERS, "total training iterations")
    weight_decay: float = option(0.1, "AdamW weight decay of the 2-D weights")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradients' total norm to this (0: no clipping)")
    # learning-rate schedule
    decay_lr: bool = option(True, "linear warmup then cosine decay; False keeps learning_rate constant")
    warmup_iters: int | None = option(None, "warmup iterations (None: min(100, max_iters // 10))")
    lr_decay_iters: int | None = option(None, "iteration where the decay reaches min_lr (None: max_iters)")
    min_lr: float | None = option(None, "learning rate at the end of the decay (None: learning_rate / 10)")
    seed: int = option(1337, "seed of the initialisation, dropout and batch sampling")
    # precision
    dtype: str = option(
        "float32",
        "float16: the model computes in float16, AdamW updates float32 master weights, the loss is scaled "
        "dynamically (checkpoints hold float32 weights either way)",
        choices=("float32", "float16"),
    )
    tf32: bool = option(
        False, "GPU only: allow TF32 tensor-core matmuls for float32 (sets CUPY_TF32=1 before the first matmul)"
    )

    def __post_init__(self):
        for f in dataclasses.fields(self):  # any float setting, today's and tomorrow's
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise UsageError(f"--{f.name} must be a finite number, got {getattr(self, f.name)}")
        checks = [
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("max_iters", self.max_iters >= 0, "must be >= 0"),
            ("eval_interval", self.eval_interval >= 1, "must be >= 1"),
            ("log_interval", self.log_interval >= 1, "must be >= 1"),
            ("eval_iters", self.eval_iters >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 0, "must be >= 0"),
            ("learning_rate", math.isfinite(self.learning_rate) and self.learning_rate > 0, "must be positive"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("beta1", 0 <= self.beta1 < 1, "must be in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "must be in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0"),
            ("warmup_iters", self.warmup_iters is None or self.warmup_iters >= 0, "must be >= 0"),
            ("min_lr", self.min_lr is None or self.min_lr >= 0, "must be >= 0"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise UsageError(f"--{name} {requirement}, got {getattr(self, name)}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < (self.warmup_iters or 0):
            raise UsageError(f"--lr_decay_iters {self.lr_decay_iters} must be >= --warmup_iters {self.warmup_iters}")

    def resolved(self) -> TrainConfig:
        """A copy with the None defaults of the schedule filled in (saved, so a resume keeps them)."""
        lr_decay_iters = self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters
        warmup = min(100, self.max_iters // 10) if self.warmup_iters is None else self.warmup_iters
        return dataclasses.replace(
            self,
            warmup_iters=min(warmup, lr_decay_iters),
            lr_decay_iters=lr_decay_iters,
            min_lr=self.learning_rate / 10 if self.min_lr is None else self.min_lr,
        )

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig of this run, for a vocabulary of vocab_size tokens."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)


def load_init_checkpoint(init_from: str, out_dir: str) -> Checkpoint | None:
    """The checkpoint `--init_from` names: None for 'scratch', out_dir/ckpt_latest for 'resume', else a directory.

    Its meta.json is checked against the schema (validate.check_meta) before the weights are read, and
    the weights against model_config's sizes before anything is built from them.
    """
    if init_from == "scratch":
        return None
    resume = init_from == "resume"
    check = functools.partial(check_meta, config_cls=TrainConfig if resume else None)
    if resume:
        try:
            ckpt = load_checkpoint(find_checkpoint(out_dir, prefer=("ckpt_latest",)), check_meta=check)
        except CheckpointError as e:
            raise UsageError(f"--init_from resume: {e}") from None
    else:
        ckpt = load_checkpoint(find_checkpoint(init_from), with_optimizer=False, check_meta=check)
    check_weights(ckpt, GPTConfig(**ckpt.meta["model_config"]))
    return ckpt


def make_config(values: dict, given: set, ckpt: Checkpoint | None) -> TrainConfig:
    """The run's TrainConfig: flags over the config file over defaults, checked, schedule resolved.

    From a checkpoint the model's architecture is kept (flags that contradict it are an error); to
    resume, its settings are too, except those given now (e.g. a larger --max_iters) and those that
    belong to the command (out_dir, cache_dir, ...: `option(command_line_only=True)`), which never
    come from a checkpoint.

    Args:
        values: every flag's value (parse_args).
        given: the flags set on the command line or in the config file.
        ckpt: the checkpoint of --init_from (its meta.json checked by load_init_checkpoint), or None.
    Raises:
        UsageError for a flag that contradicts the checkpoint; ValueError (CheckpointError) for bad values.
    """
    if ckpt is None:
        return build_config(TrainConfig, values).resolved()
    meta_path = ckpt.path / "meta.json"
    saved = GPTConfig(**ckpt.meta["model_config"]).architecture()
    for key in sorted(given & saved.keys(), key=list(values).index):
        if values[key] != saved[key]:
            raise UsageError(
                f"--{key} {values[key]} conflicts with the checkpoint's {key}={saved[key]} in {ckpt.path} "
                "(a trained model's shape cannot change)"
            )
    saved = {k: v for k, v in saved.items() if k in values}  # vocab_size is no flag: it comes from the vocabulary
    if values["init_from"] == "resume":
        flags = {flag.name: flag for flag in flags_of(TrainConfig)}
        kept = {k: v for k, v in ckpt.meta["train_config"].items() if k in flags and not flags[k].command_line_only}
        try:
            build_config(TrainConfig, {**kept, **saved})
        except (UsageError, ValueError, TypeError) as e:
            raise CheckpointError(f"{meta_path}: train_config is invalid ({e})") from None
        values = {**kept, **{k: values[k] for k in given}, **saved, "init_from": "resume"}
    else:
        values = {**values, **saved}
    return build_config(TrainConfig, values).resolved()
