"""Train a character-level GPT: `python -m tinygrad_gpt.train [--flag value ...]`.

With no arguments it trains a small GPT on Python's own documentation (`pydoc_data.topics`, part of
every Python install), so it works offline on a fresh machine. The flags carry nanoGPT's names and
meanings; `--help` lists them. The loop below is nanoGPT's train.py, kept in one readable piece:

    every eval_interval: estimate train/val loss, save out_dir/ckpt_latest (and ckpt_best when val improves)
    every iteration:     lr schedule, batch, forward, backward, clip, AdamW step
    every log_interval:  a line in out_dir/metrics.jsonl

`--init_from resume` continues the run in out_dir exactly (same losses, bit for bit on NumPy): the
checkpoint holds the weights, the optimizer's moments, and the states of the batch samplers and of
the library's generator (dropout). `--init_from DIR` fine-tunes the checkpoint in DIR on new text.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tinygrad_gpt import backend, gpu_kernels, no_grad
from tinygrad_gpt.amp import GradScaler, MasterWeights
from tinygrad_gpt.checkpoint import CheckpointError, find_checkpoint, is_checkpoint, load_checkpoint, save_checkpoint
from tinygrad_gpt.cli import UsageError, option, parse_args, report_error
from tinygrad_gpt.data import BatchSampler, CharTokenizer, build_dataset, load_corpus
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, clip_grad_norm_, cosine_lr
from tinygrad_gpt.sample import default_prompt, sample_texts

PROG = "python -m tinygrad_gpt.train"
DEFAULT_MAX_ITERS = 3500  # the no-argument run: about 5 minutes on 2 CPU cores (measured: README)
EXAMPLES = """examples:
  python -m tinygrad_gpt.train                                  # Python's docs, default model, ~5 minutes
  python -m tinygrad_gpt.train --data shakespeare --out_dir out-shakespeare
  python -m tinygrad_gpt.train --init_from resume               # continue out/ exactly where it stopped
  python -m tinygrad_gpt.train --init_from out/ckpt_best --data my_text.txt --out_dir out-ft --dropout 0.1
  python -m tinygrad_gpt.train --config run.toml --max_iters=500   # flags override the file
  TINYGRAD_GPT_BACKEND=cupy python -m tinygrad_gpt.train --dtype float16   # GPU, mixed precision
"""
MODEL_KEYS = ("block_size", "n_layer", "n_head", "n_embd", "bias", "activation", "norm", "pos_encoding", "tie_weights")


@dataclass
class TrainConfig:
    """Every setting of a training run; each field is also a command-line flag (nanoGPT's names)."""

    # I/O
    out_dir: str = option("out", "directory for checkpoints, metrics.jsonl, loss.png and the token files")
    data: str = option(
        "pydoc",
        "training text: a UTF-8 file, a directory of .txt files, 'shakespeare' (Tiny Shakespeare, downloaded "
        "once) or 'pydoc' (Python's documentation from the standard library, offline)",
    )
    cache_dir: str = option("", "where downloads are kept; '' means $TINYGRAD_GPT_CACHE or ~/.cache/tinygrad_gpt")
    init_from: str = option(
        "scratch", "'scratch', 'resume' (continue the run in out_dir exactly) or a checkpoint directory to fine-tune"
    )
    eval_interval: int = option(250, "estimate train/val loss and save checkpoints every this many iterations")
    log_interval: int = option(10, "write loss, lr and tokens/s to metrics.jsonl every this many iterations")
    eval_iters: int = option(20, "batches per split when estimating the loss")
    eval_only: bool = option(False, "only estimate the loss of the initial model (e.g. with --init_from resume)")
    overwrite: bool = option(False, "let a new run (scratch or fine-tune) replace the checkpoints already in out_dir")
    plot: bool = option(True, "draw out_dir/loss.png at the end (needs matplotlib)")
    max_new_tokens: int = option(500, "characters of the sample printed at the end (0: none)")
    # data
    batch_size: int = option(12, "sequences per batch")
    block_size: int = option(64, "context length in characters")
    # model
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "embedding width (divisible by n_head)")
    dropout: float = option(0.0, "dropout rate in [0, 1); try 0.1 or 0.2 when fine-tuning on little text")
    bias: bool = option(True, "biases in Linear and LayerNorm layers")
    activation: str = option("gelu", "MLP nonlinearity", choices=("gelu", "relu"))
    norm: str = option(
        "pre", "LayerNorm before each sublayer (GPT-2) or after each residual add (GPT-1)", ("pre", "post")
    )
    pos_encoding: str = option("learned", "position encoding", choices=("learned", "sinusoidal"))
    tie_weights: bool = option(True, "share the token embedding with the output layer (GPT-2)")
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
        """The GPTConfig of this run (raises ValueError for impossible sizes)."""
        return GPTConfig(vocab_size=vocab_size, dropout=self.dropout, **{k: getattr(self, k) for k in MODEL_KEYS})


@dataclass
class Run:
    """The state of a training run: what a checkpoint saves and restores."""

    config: TrainConfig
    model: GPT
    optimizer: AdamW
    tokenizer: CharTokenizer
    batches: dict  # "train" (training batches), "eval_train", "eval_val": BatchSampler each
    corpus_name: str
    iter_num: int = 0
    best_val_loss: float | None = None
    last_saved_iter: int | None = None
    elapsed_before: float = 0.0  # training seconds spent before this process (resumed runs)
    started: float = dataclasses.field(default_factory=time.perf_counter)
    masters: MasterWeights | None = None  # --dtype float16: the float32 weights AdamW updates
    scaler: GradScaler | None = None  # --dtype float16: the dynamic loss scale

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)


# ---------------------------------------------------------------- small helpers of the loop


def get_lr(config: TrainConfig, it: int) -> float:
    """The learning rate of iteration `it` (cosine schedule with warmup, or constant)."""
    if not config.decay_lr:
        return config.learning_rate
    return cosine_lr(it, config.learning_rate, config.warmup_iters, config.lr_decay_iters, config.min_lr)


@no_grad()
def estimate_loss(model: GPT, batches: dict, eval_iters: int) -> dict:
    """Mean loss over `eval_iters` batches of each split, in eval mode (no dropout).

    Returns:
        {"train": float, "val": float}
    """
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = [model(*batches[f"eval_{split}"].next_batch())[1].item() for _ in range(eval_iters)]
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def save(run: Run, name: str) -> Path:
    """Write out_dir/<name> (ckpt_latest or ckpt_best) atomically."""
    config = run.config
    meta = {
        "train_config": dataclasses.asdict(config),
        "model_config": dataclasses.asdict(run.model.config),
        "vocab": run.tokenizer.chars,
        "iter_num": run.iter_num,
        "best_val_loss": run.best_val_loss,
        "elapsed": run.elapsed(),
        "rng_state": backend.get_rng_state(),
        "sampler_states": {k: b.get_state() for k, b in run.batches.items()},
    }
    if run.scaler is not None:
        meta["grad_scaler"] = run.scaler.state_dict()
    weights = run.masters.state_dict() if run.masters is not None else run.model.state_dict()  # float32 always
    path = save_checkpoint(run.out_dir / name, weights, run.optimizer.state_dict(), meta)
    run.last_saved_iter = run.iter_num
    return path


class MetricsLog:
    """out_dir/metrics.jsonl: one JSON object per line."""

    def __init__(self, path: Path, keep_until_iter: int | None):
        """Start afresh, or (resume) keep the lines up to the checkpoint's iteration and append."""
        self.path = path
        kept = []
        if keep_until_iter is not None and path.exists():  # drop what a crashed run logged after its checkpoint
            kept = [line for line in path.read_text().splitlines() if _iter_of(line) <= keep_until_iter]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _iter_of(line: str) -> float:
    """The "iter" of a metrics line; infinity for a line cut short by a crash, so it is dropped."""
    try:
        return json.loads(line)["iter"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to save and stop after the current step; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Progress:
    """A tqdm bar with loss and tokens/s when tqdm is installed; a plain line every log_interval otherwise."""

    def __init__(self, run: Run, device: str):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.total = run.config.max_iters
        self.bar = tqdm(total=self.total, initial=run.iter_num, desc=f"train [{device}]", unit="it") if tqdm else None

    def step(self, it: int, loss: float, tokens_per_sec: float, logged: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if logged:
                self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
        elif logged:
            print(f"iter {it}/{self.total}: loss {loss:.4f}, {tokens_per_sec:,.0f} tokens/s", flush=True)

    def print(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- setting a run up


def load_init_checkpoint(values: dict):
    """The checkpoint `--init_from` names: None for 'scratch', out_dir/ckpt_latest for 'resume', else a directory."""
    init_from = values["init_from"]
    if init_from == "scratch":
        return None
    if init_from == "resume":
        try:
            return load_checkpoint(find_checkpoint(values["out_dir"], prefer=("ckpt_latest",)))
        except CheckpointError as e:
            raise UsageError(f"--init_from resume: {e}") from None
    return load_checkpoint(find_checkpoint(init_from), with_optimizer=False)


def merge_config(values: dict, explicit: set, ckpt) -> TrainConfig:
    """The run's config: flags over defaults; for a checkpoint, its model shape (and, to resume, its settings)."""
    if ckpt is None:
        return TrainConfig(**values)
    saved_model = ckpt.meta["model_config"]
    for key in MODEL_KEYS:
        if key in explicit and values[key] != saved_model[key]:
            raise UsageError(
                f"--{key} {values[key]} conflicts with the checkpoint's {key}={saved_model[key]} in {ckpt.path} "
                "(a trained model's shape cannot change)"
            )
    if values["init_from"] == "resume":
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = {k: v for k, v in ckpt.meta["train_config"].items() if k in known}
        return TrainConfig(**{**saved, **{k: values[k] for k in explicit}, "init_from": "resume"})
    return TrainConfig(**{**values, **{k: saved_model[k] for k in MODEL_KEYS}})


def widen_vocab(state: dict, model: GPT) -> dict:
    """A checkpoint's weights for `model`, whose vocabulary has new characters: their rows come from its init."""
    fresh = model.state_dict()
    state = dict(state)
    for name in ("wte.weight", "lm_head.weight"):  # (vocab, n_embd) and, untied, (n_embd, vocab)
        if name in state and name in fresh and tuple(state[name].shape) != tuple(fresh[name].shape):
            old, widened = state[name], backend.to_numpy(fresh[name]).copy()
            widened[: old.shape[0], : old.shape[1]] = old
            state[name] = widened
    return state


def restore(run: Run, ckpt) -> None:
    """Continue exactly where `ckpt` stopped: optimizer moments, iteration, losses and every generator."""
    if ckpt.optim_state is None:
        raise CheckpointError(f"{ckpt.path} has no optim.safetensors, so it cannot be resumed (fine-tune from it)")
    run.optimizer.load_state_dict(ckpt.optim_state)
    for group in run.optimizer.param_groups:  # flags given now win over the saved hyperparameters
        group["betas"] = (run.config.beta1, run.config.beta2)
    run.optimizer.param_groups[0]["weight_decay"] = run.config.weight_decay
    try:
        meta = ckpt.meta
        run.iter_num, run.best_val_loss = int(meta["iter_num"]), meta["best_val_loss"]
        run.elapsed_before, run.last_saved_iter = float(meta.get("elapsed", 0.0)), run.iter_num
        backend.set_rng_state(meta["rng_state"])
        for name, batches in run.batches.items():
            batches.set_state(meta["sampler_states"][name])
        if run.scaler is not None and "grad_scaler" in meta:  # a float32 checkpoint starts a fresh scale
            run.scaler.load_state_dict(meta["grad_scaler"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path / 'meta.json'} is incomplete or corrupted ({e!r})") from None


def setup(values: dict, explicit: set) -> Run:
    """Everything a run needs, checked before any checkpoint is written.

    Raises:
        UsageError, ValueError (DataError, CheckpointError, bad sizes) or OSError, for one-line reports.
    """
    ckpt = load_init_checkpoint(values)
    config = merge_config(values, explicit, ckpt).resolved()
    config.model_config(vocab_size=1)  # impossible sizes fail here, before any file is written
    if config.tf32:  # before the first matmul: CuPy reads CUPY_TF32 once
        gpu_kernels.enable_tf32()
    resume = config.init_from == "resume"
    if not (resume or config.eval_only or config.overwrite) and has_checkpoint(Path(config.out_dir)):
        raise UsageError(
            f"{config.out_dir} already holds checkpoints of an earlier run; continue it with --init_from resume, "
            "pick another --out_dir, or pass --overwrite to replace them"
        )
    corpus = load_corpus(config.data, config.cache_dir or None)
    tokenizer = CharTokenizer(ckpt.meta["vocab"]) if ckpt else None
    new_tokenizer, splits = build_dataset(
        corpus, config.out_dir, config.block_size, tokenizer, allow_new_chars=ckpt is not None and not resume
    )
    if tokenizer is not None and new_tokenizer.vocab_size > tokenizer.vocab_size:
        added = new_tokenizer.chars[tokenizer.vocab_size :]
        print(f"fine-tuning: {len(added)} new characters added to the vocabulary: {''.join(added)!r}")
    backend.manual_seed(config.seed)
    model = GPT(config.model_config(new_tokenizer.vocab_size))
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state if resume else widen_vocab(ckpt.model_state, model))
    groups, masters, scaler = model.param_groups(config.weight_decay), None, None
    if config.dtype == "float16":
        masters, scaler = MasterWeights(model, dtype="float16"), GradScaler()  # keeps float32 copies, casts model
        groups = masters.param_groups(groups)
    optimizer = AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2))
    B, T, seed = config.batch_size, config.block_size, config.seed
    batches = {  # separate streams, so evaluating never shifts the training batches
        "train": BatchSampler(splits["train"], B, T, seed=[seed, 0]),
        "eval_train": BatchSampler(splits["train"], B, T, seed=[seed, 1]),
        "eval_val": BatchSampler(splits["val"], B, T, seed=[seed, 2]),
    }
    run = Run(config, model, optimizer, new_tokenizer, batches, corpus.name, masters=masters, scaler=scaler)
    if resume:
        restore(run, ckpt)
    return run


# ---------------------------------------------------------------- the training loop


def evaluate(run: Run, metrics: MetricsLog, progress: Progress) -> bool:
    """Estimate the losses, log them and save ckpt_latest (and ckpt_best when val improved); False on NaN/inf."""
    losses = estimate_loss(run.model, run.batches, run.config.eval_iters)
    metrics.write(iter=run.iter_num, train_loss=losses["train"], val_loss=losses["val"])
    if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
        return False
    improved = run.best_val_loss is None or losses["val"] < run.best_val_loss
    if improved:
        run.best_val_loss = losses["val"]
    save(run, "ckpt_latest")
    if improved:
        save(run, "ckpt_best")
    note = " (best so far)" if improved else ""
    progress.print(f"iter {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{note}")
    return True


def train(run: Run) -> int:
    """Run the training loop to max_iters (or Ctrl-C), then sample, plot and summarise. Returns the exit status."""
    config, model, optimizer = run.config, run.model, run.optimizer
    device = backend.device_name()
    tokens_per_iter = config.batch_size * config.block_size
    resumed_at = run.iter_num if config.init_from == "resume" else None
    metrics = MetricsLog(run.out_dir / "metrics.jsonl", keep_until_iter=resumed_at)
    announce(run, device, resumed_at)
    run.started = time.perf_counter()
    progress = Progress(run, device)
    with StopRequest() as stop:
        if run.iter_num == 0 and not evaluate(run, metrics, progress):
            return diverged(run, progress, "the initial loss is not finite")
        model.train()
        t0, iters_since = time.perf_counter(), 0
        while run.iter_num < config.max_iters and not stop.requested:
            lr = get_lr(config, run.iter_num)
            for group in optimizer.param_groups:
                group["lr"] = lr
            backend.start_gpu_stream(run.iter_num + 1)  # dropout on a GPU draws the same after a resume
            x, y = run.batches["train"].next_batch()  # (B, T) inputs and next-character targets
            _, loss = model(x, y)
            backward_and_step(run, loss)
            loss_value = loss.item()  # read after the step: a GPU runs forward and backward without a wait
            if not math.isfinite(loss_value):  # nothing is saved from here, so the step's weights are dropped
                return diverged(run, progress, f"loss is {loss_value} at iteration {run.iter_num + 1}")
            run.iter_num += 1
            iters_since += 1
            logged = run.iter_num % config.log_interval == 0
            tokens_per_sec = iters_since * tokens_per_iter / max(time.perf_counter() - t0, 1e-9)
            if logged:
                scale = {"loss_scale": run.scaler.scale_value} if run.scaler is not None else {}
                metrics.write(iter=run.iter_num, loss=loss_value, lr=lr, tokens_per_sec=tokens_per_sec,
                              time=run.elapsed(), **scale)  # fmt: skip
                t0, iters_since = time.perf_counter(), 0
            progress.step(run.iter_num, loss_value, tokens_per_sec, logged)
            if run.iter_num % config.eval_interval == 0 or run.iter_num == config.max_iters:
                if not evaluate(run, metrics, progress):
                    return diverged(run, progress, f"the estimated loss is not finite at iteration {run.iter_num}")
                t0, iters_since = time.perf_counter(), 0
        if stop.requested and run.last_saved_iter != run.iter_num:
            save(run, "ckpt_latest")
    progress.close()
    if stop.requested:
        print(
            f"interrupted: saved iteration {run.iter_num} to {run.out_dir / 'ckpt_latest'}; "
            f"continue with --init_from resume --out_dir {run.out_dir}",
            flush=True,
        )
        return 0
    finish(run, time.perf_counter() - run.started, device, resumed_at)
    return 0


def backward_and_step(run: Run, loss) -> bool:
    """Backward, gradient clipping and one AdamW step; returns False for a float16 step skipped on inf/NaN.

    float32: the usual step. float16: backward of the scaled loss, gradients unscaled into the float32
    masters, clip and step there (skipped if any gradient is inf/NaN), then the scale is updated.
    """
    optimizer, max_norm, scaler = run.optimizer, run.config.grad_clip, run.scaler
    optimizer.zero_grad()
    if scaler is None:
        loss.backward()
        if max_norm > 0:
            clip_grad_norm_(run.model.parameters(), max_norm)
        optimizer.step()
        return True
    run.model.zero_grad()
    scaler.scale(loss).backward()
    if scaler.unscale_and_check(run.masters) and max_norm > 0:
        clip_grad_norm_(run.masters.params, max_norm)
    stepped = scaler.step(optimizer, run.masters)
    scaler.update()
    return stepped


def has_checkpoint(out_dir: Path) -> bool:
    return any(is_checkpoint(out_dir / name) for name in ("ckpt_latest", "ckpt_best"))


def announce(run: Run, device: str, resumed_at: int | None) -> None:
    n_train, n_val = len(run.batches["train"].tokens), len(run.batches["eval_val"].tokens)
    print(
        f"{run.model.num_parameters():,} parameters, vocabulary of {run.tokenizer.vocab_size} characters, "
        f"{run.corpus_name}: {n_train:,} train / {n_val:,} val tokens; device {device}, {run.config.dtype}",
        flush=True,
    )
    if resumed_at is not None:
        print(f"resuming from iteration {resumed_at} of {run.config.max_iters}", flush=True)
    elif has_checkpoint(run.out_dir):
        print(f"note: --overwrite: this new run replaces the checkpoints in {run.out_dir}")


def diverged(run: Run, progress: Progress, what: str) -> int:
    """Stop on a NaN/inf loss without saving: the checkpoints on disk stay the last good ones."""
    progress.close()
    kept = (
        f"the last good checkpoint is {run.out_dir / 'ckpt_latest'} (iteration {run.last_saved_iter})"
        if run.last_saved_iter is not None
        else "no checkpoint was saved"
    )
    report_error(PROG, f"{what}; training stopped, {kept}; try a smaller --learning_rate or --grad_clip")
    return 1


def finish(run: Run, wall: float, device: str, resumed_at: int | None) -> None:
    """Print a sample and the summary line; draw the loss curve."""
    config = run.config
    if config.max_new_tokens > 0:
        run.model.eval()
        prompt = default_prompt(run.tokenizer)
        (text,) = sample_texts(run.model, run.tokenizer, prompt, 1, config.max_new_tokens, seed=config.seed)
        print(f"---------- sample ----------\n{text}\n----------------------------", flush=True)
    if config.plot:
        png = plot_losses(run.out_dir / "metrics.jsonl", run.out_dir / "loss.png")
        if png is not None:
            print(f"loss curve: {png}")
    iters = run.iter_num - (resumed_at or 0)
    resumed = f" (resumed at {resumed_at})" if resumed_at else ""
    best = f"{run.best_val_loss:.4f}" if run.best_val_loss is not None else "n/a"
    print(
        f"done: {iters:,} iterations{resumed}, {iters * config.batch_size * config.block_size:,} tokens, "
        f"{wall:.1f} s wall on {device}; best val loss {best}; checkpoint {run.out_dir / 'ckpt_best'}",
        flush=True,
    )


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Draw the training and evaluation losses of metrics.jsonl into a PNG (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from tinygrad_gpt.checkpoint import atomic_write_bytes

    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    steps = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["iter"], r["train_loss"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if steps:
        ax.plot(*zip(*steps), color="0.75", linewidth=0.8, label="batch loss")
    if evals:
        its, train_losses, val_losses = zip(*evals)
        ax.plot(its, train_losses, "o-", label="train loss (estimated)")
        ax.plot(its, val_losses, "o-", label="val loss (estimated)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(png_path, buffer.getvalue())
    return png_path


# ---------------------------------------------------------------- entry point


def main(argv=None) -> int:
    """Parse flags, set the run up and train; returns the exit status (2 for bad input)."""
    try:
        values, explicit = parse_args(TrainConfig, argv, PROG, __doc__.split("\n\n")[0], EXAMPLES)
        run = setup(values, explicit)
    except SystemExit as e:  # argparse: --help, or a bad flag already reported
        return e.code or 0
    except (UsageError, ValueError, OSError) as e:
        return report_error(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    if run.config.eval_only:
        losses = estimate_loss(run.model, run.batches, run.config.eval_iters)
        print(f"iter {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return 0
    try:
        with warnings.catch_warnings():  # overflow warnings add nothing: a non-finite loss is reported by the loop
            warnings.simplefilter("ignore", RuntimeWarning)
            return train(run)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the checkpoints on disk are complete
        print(f"\n{PROG}: interrupted twice; stopped without saving", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
