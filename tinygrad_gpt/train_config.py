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
from pathlib import Path

from tinygrad_gpt.checkpoint import Checkpoint, CheckpointError, find_checkpoint, load_checkpoint
from tinygrad_gpt.cli import UsageError, build_config, flags_of, option, section
from tinygrad_gpt.data import tokenizer_kind
from tinygrad_gpt.model import GPTConfig
from tinygrad_gpt.pretrained import HF_CONFIG, checkpoint_tokenizer, hf_checkpoint
from tinygrad_gpt.validate import check_meta, check_weights

DEFAULT_MAX_ITERS = 2000  # the no-argument run: about 2 minutes on 2 CPU cores of 2026 (measured: README)
DEFAULT_BPE_VOCAB = 1024  # --tokenizer bpe without --vocab_size
MAX_VOCAB = 1 << 16  # the token files are uint16


def default_model() -> GPTConfig:
    """The model of the no-argument run: nanoGPT's CPU shape (about 0.8M parameters) with the NanoGPT speedrun's
    architecture (docs/faster.md); vocab_size is set from the data. GPTConfig's own defaults stay GPT-2's, and
    configs/gpt2.toml trains GPT-2's layout (for export to Hugging Face's format)."""
    return GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False, pos_encoding="rope",
                     norm_type="rmsnorm", qk_norm=True, activation="relu2", tie_weights=False, zero_init_head=True,
                     logit_softcap=15.0)


# Settings a checkpoint written before they existed was trained with (their defaults have changed since):
# resuming such a checkpoint keeps them.
BEFORE_THEY_EXISTED = {"optimizer": "adamw", "lr_schedule": "cosine"}


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
        "scratch", "'scratch', 'resume' (continue the run in out_dir exactly), or a directory to fine-tune: a "
        "checkpoint (or out_dir) of an earlier run, or a Hugging Face GPT-2 directory (config.json, "
        "model.safetensors, vocab.json, merges.txt)",
        command_line_only=True,
    )
    tokenizer: str = option(
        "char", "'char' (the text's characters) or 'bpe' (a byte-level BPE with GPT-2's rules, trained on the "
        "training split); resumed and fine-tuned runs keep their checkpoint's tokenizer", choices=("char", "bpe")
    )
    vocab_size: int | None = option(
        None, f"--tokenizer bpe: tokens in the vocabulary, 257..{MAX_VOCAB} (256 bytes + merges + <|endoftext|>); "
        f"None: {DEFAULT_BPE_VOCAB}"
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
    max_new_tokens: int = option(500, "tokens of the sample printed at the end (characters of a char model; 0: none)")
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
    # Muon (--optimizer muon)
    optimizer: str | None = option(
        None,
        "adamw: AdamW for every parameter; muon: Muon for the blocks' hidden matrices and AdamW (beta1, beta2, "
        "no weight decay) for the embeddings, the head, gains and biases (GPT.optimizer_groups); None: muon for a "
        "run from scratch, adamw to fine-tune (--init_from a directory) or with --zero 1",
        choices=("adamw", "muon"),
    )
    muon_lr: float = option(0.02, "--optimizer muon: Muon's peak learning rate (the hidden matrices)")
    muon_momentum: float = option(0.95, "--optimizer muon: Muon's (Nesterov) momentum")
    muon_weight_decay: float = option(0.0, "--optimizer muon: Muon's decoupled weight decay")
    ns_steps: int = option(5, "--optimizer muon: Newton-Schulz iterations per Muon step")
    embedding_lr: float | None = option(None, "--optimizer muon: peak rate of the embeddings (None: learning_rate)")
    head_lr: float | None = option(None, "--optimizer muon: peak rate of the untied head (None: learning_rate)")
    scalar_lr: float | None = option(None, "--optimizer muon: peak rate of gains and biases (None: learning_rate)")
    # learning-rate schedule (it scales every group's own peak rate; min_lr scales along)
    decay_lr: bool = option(True, "linear warmup then the lr_schedule's decay; False keeps every rate constant")
    lr_schedule: str = option(
        "wsd",
        "cosine: warmup, cosine decay to min_lr (nanoGPT); wsd: warmup, constant, then a linear decay to min_lr "
        "over the last decay_frac of lr_decay_iters (the NanoGPT speedrun's)",
        choices=("cosine", "wsd"),
    )
    decay_frac: float = option(0.4, "--lr_schedule wsd: the fraction of lr_decay_iters spent decaying")
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
    # data parallelism (README: "More than one process")
    gradient_accumulation_steps: int = option(
        1, "micro-batches of batch_size per optimizer step, counted over all ranks (under mpiexec -n R each rank "
        "runs G/R of them; G must be a multiple of R); each micro-batch's loss is scaled by 1/G"
    )
    zero: int = option(
        0, "1: ZeRO stage 1, AdamW's moments split across the ranks (optimizer memory / R; --dtype float32); "
        "0: every rank holds all of them", choices=(0, 1),
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
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be >= 1"),
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
            ("muon_lr", math.isfinite(self.muon_lr) and self.muon_lr > 0, "must be positive"),
            ("muon_momentum", 0 <= self.muon_momentum < 1, "must be in [0, 1)"),
            ("muon_weight_decay", self.muon_weight_decay >= 0, "must be >= 0"),
            ("ns_steps", self.ns_steps >= 1, "must be >= 1"),
            ("embedding_lr", self.embedding_lr is None or self.embedding_lr > 0, "must be positive"),
            ("head_lr", self.head_lr is None or self.head_lr > 0, "must be positive"),
            ("scalar_lr", self.scalar_lr is None or self.scalar_lr > 0, "must be positive"),
            ("decay_frac", 0 <= self.decay_frac <= 1, "must be in [0, 1]"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise UsageError(f"--{name} {requirement}, got {getattr(self, name)}")
        if self.zero and self.dtype != "float32":
            raise UsageError(f"--zero 1 works with --dtype float32 only, got --dtype {self.dtype}")
        if self.zero and self.optimizer == "muon":
            raise UsageError(f"--zero 1 shards AdamW's moments, so it needs --optimizer adamw, got {self.optimizer}")
        if self.vocab_size is not None and self.tokenizer != "bpe":
            raise UsageError(f"--vocab_size is for --tokenizer bpe (a character vocabulary is the text's characters), "
                             f"got --vocab_size {self.vocab_size} with --tokenizer {self.tokenizer}")
        if self.vocab_size is not None and not 257 <= self.vocab_size <= MAX_VOCAB:
            raise UsageError(f"--vocab_size must be in 257..{MAX_VOCAB} (256 bytes + <|endoftext|> at least; the "
                             f"token files hold uint16 ids), got {self.vocab_size}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < (self.warmup_iters or 0):
            raise UsageError(f"--lr_decay_iters {self.lr_decay_iters} must be >= --warmup_iters {self.warmup_iters}")

    def resolved(self) -> TrainConfig:
        """A copy with the None defaults of the optimizer, the schedule and a new BPE's size filled in (saved: a resume
        keeps them)."""
        lr_decay_iters = self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters
        warmup = min(100, self.max_iters // 10) if self.warmup_iters is None else self.warmup_iters
        warmup = min(warmup, lr_decay_iters)
        if self.decay_lr and self.lr_schedule == "wsd" and warmup > lr_decay_iters * (1 - self.decay_frac):
            raise UsageError(
                f"--lr_schedule wsd: the warmup ({warmup} iterations) overlaps the decay over the last "
                f"{self.decay_frac} of {lr_decay_iters} iterations; lower --warmup_iters or --decay_frac"
            )
        if self.optimizer is None:
            optimizer = "muon" if self.init_from == "scratch" and not self.zero else "adamw"
        else:
            optimizer = self.optimizer
        return dataclasses.replace(
            self,
            optimizer=optimizer,
            warmup_iters=warmup,
            lr_decay_iters=lr_decay_iters,
            min_lr=self.learning_rate / 10 if self.min_lr is None else self.min_lr,
            vocab_size=DEFAULT_BPE_VOCAB if self.new_bpe and self.vocab_size is None else self.vocab_size,
        )

    @property
    def new_bpe(self) -> bool:
        """Whether this run trains a BPE of its own (from scratch with --tokenizer bpe)."""
        return self.tokenizer == "bpe" and self.init_from == "scratch"

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig of this run, for a vocabulary of vocab_size tokens."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)


def load_init_checkpoint(init_from: str, out_dir: str) -> Checkpoint | None:
    """The checkpoint `--init_from` names, with its tokenizer loaded.

    None for 'scratch', out_dir/ckpt_latest for 'resume', else a directory: a Hugging Face GPT-2
    directory (config.json), or a checkpoint or out_dir of an earlier run. A checkpoint's meta.json is
    checked against the schema (validate.check_meta) before the weights are read, and the weights
    against model_config's sizes before anything is built from them.
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
    elif (Path(init_from) / HF_CONFIG).is_file():
        return hf_checkpoint(init_from)
    else:
        ckpt = load_checkpoint(find_checkpoint(init_from), with_optimizer=False, check_meta=check)
    check_weights(ckpt, GPTConfig(**ckpt.meta["model_config"]))
    ckpt.tokenizer = checkpoint_tokenizer(ckpt)
    return ckpt


def keep_tokenizer(values: dict, given: set, ckpt: Checkpoint) -> dict:
    """The tokenizer settings of a run that starts from `ckpt`: its tokenizer's, whatever the flags say.

    Raises:
        UsageError: a --tokenizer or --vocab_size given that contradicts the checkpoint's tokenizer.
    """
    kind, size = tokenizer_kind(ckpt.tokenizer), ckpt.tokenizer.vocab_size
    saved = ckpt.meta.get("train_config", {}).get("vocab_size") if values["init_from"] == "resume" else None
    if "tokenizer" in given and values["tokenizer"] != kind:
        raise UsageError(f"--tokenizer {values['tokenizer']} conflicts with the {kind} tokenizer of {ckpt.path} "
                         "(a trained model keeps its tokenizer)")
    if "vocab_size" in given and (kind != "bpe" or values["vocab_size"] not in (size, saved)):
        raise UsageError(f"--vocab_size {values['vocab_size']} conflicts with the {kind} tokenizer of {size} tokens "
                         f"of {ckpt.path} (a trained model keeps its tokenizer)")
    return {"tokenizer": kind, "vocab_size": saved}


def make_config(values: dict, given: set, ckpt: Checkpoint | None) -> TrainConfig:
    """The run's TrainConfig: flags over the config file over defaults, checked, schedule resolved.

    From a checkpoint the model's architecture and tokenizer are kept (flags that contradict them are an
    error); to resume, its settings are too, except those given now (e.g. a larger --max_iters) and those
    that belong to the command (out_dir, cache_dir, ...: `option(command_line_only=True)`), which never
    come from a checkpoint.

    Args:
        values: every flag's value (parse_args).
        given: the flags set on the command line or in the config file.
        ckpt: the checkpoint of --init_from (its meta.json checked by load_init_checkpoint), or None.
    Raises:
        UsageError for a flag that contradicts the checkpoint or its tokenizer; ValueError (CheckpointError) for
        bad values.
    """
    if ckpt is None:
        return build_config(TrainConfig, values).resolved()
    meta_path = ckpt.path / "meta.json"
    saved = GPTConfig(**ckpt.meta["model_config"]).architecture()
    del saved["vocab_size"]  # the vocabulary follows the checkpoint's tokenizer (keep_tokenizer)
    for key in sorted(given & saved.keys(), key=list(values).index):
        if values[key] != saved[key]:
            raise UsageError(
                f"--{key} {values[key]} conflicts with the checkpoint's {key}={saved[key]} in {ckpt.path} "
                "(a trained model's shape cannot change)"
            )
    tokenizer = keep_tokenizer(values, given, ckpt)
    if values["init_from"] == "resume":
        flags = {flag.name: flag for flag in flags_of(TrainConfig)}
        kept = {k: v for k, v in ckpt.meta["train_config"].items() if k in flags and not flags[k].command_line_only}
        kept = {**BEFORE_THEY_EXISTED, **kept}
        try:
            build_config(TrainConfig, {**kept, **saved})
        except (UsageError, ValueError, TypeError) as e:
            raise CheckpointError(f"{meta_path}: train_config is invalid ({e})") from None
        values = {**kept, **{k: values[k] for k in given}, **saved, "init_from": "resume"}
    else:
        values = {**values, **saved}
    values.update(tokenizer)
    return build_config(TrainConfig, values).resolved()
