"""Train a GPT on characters or a byte-level BPE: `python -m tinygrad_gpt.train [--flag value ...]`.

With no arguments it trains a small GPT on Python's own documentation (`pydoc_data.topics`, part of
every Python install), so it works offline on a fresh machine. The flags carry nanoGPT's names and
meanings; `--help` lists them. They are the fields of TrainConfig (train_config.py), which `main`
builds once and passes on. The loop below is nanoGPT's train.py, kept in one readable piece:

    every eval_interval: estimate train/val loss, save out_dir/ckpt_latest (and ckpt_best when val improves)
    every iteration:     lr schedule, batch, forward, backward, clip, optimizer step (`train_step`)
    every log_interval:  a line in out_dir/metrics.jsonl

Each evaluation also reports `val_bpb`, the validation loss in bits per UTF-8 byte of the validation
text, which compares across tokenizers (`--tokenizer char` or `bpe`; a BPE run keeps its vocab.json
and merges.txt in every checkpoint).

float32 and float16 (`--dtype`) differ only in the `Precision` object the step calls (amp.py).

`--init_from resume` continues the run in out_dir exactly (same losses, bit for bit on NumPy): the
checkpoint holds the weights, the optimizer's moments, and the states of the batch samplers and of
the library's generator (dropout). `--init_from DIR` fine-tunes the checkpoint in DIR, or the
Hugging Face GPT-2 directory DIR, on new text, with its tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tinygrad_gpt import backend, no_grad
from tinygrad_gpt.amp import Precision, make_precision
from tinygrad_gpt.checkpoint import Checkpoint, CheckpointError, has_checkpoint, save_checkpoint
from tinygrad_gpt.cli import UsageError, flatten_config, one_line, parse_args, report_error
from tinygrad_gpt.data import (
    BatchSampler,
    CharTokenizer,
    Corpus,
    DataError,
    Tokenizer,
    build_dataset,
    fixed_windows,
    load_corpus,
    load_token_files,
    text_bytes,
    tokenizer_kind,
)
from tinygrad_gpt.distributed import DistributedError, World, get_world
from tinygrad_gpt.model import GPT
from tinygrad_gpt.monitor import MetricsLog, Progress, StopRequest, Throughput, plot_losses, silence_stdout
from tinygrad_gpt.optim import AdamW, MultiOptimizer, Muon, Optimizer, cosine_lr, wsd_lr
from tinygrad_gpt.parallel import (
    DataParallel,
    Discard,
    SameOnEveryRank,
    make_optimizer,
    optimizer_state,
    quiet_unless_main,
    start_from_rank_0,
)
from tinygrad_gpt.runlock import RunLock
from tinygrad_gpt.sample import default_prompt, sample_texts
from tinygrad_gpt.tokenizers import BPETokenizer, tokenizer_files
from tinygrad_gpt.train_config import TrainConfig, load_init_checkpoint, make_config
from tinygrad_gpt.validate import check_memory, training_memory

PROG = "python -m tinygrad_gpt.train"
EXAMPLES = """examples:
  python -m tinygrad_gpt.train                                  # Python's docs, the speedrun recipe, 2-5 minutes
  python -m tinygrad_gpt.train --config configs/gpt2.toml       # GPT-2's architecture and AdamW (exportable)
  python -m tinygrad_gpt.train --data shakespeare --out_dir out-shakespeare
  python -m tinygrad_gpt.train --init_from resume               # continue out/ exactly where it stopped
  python -m tinygrad_gpt.train --init_from out/ckpt_best --data my_text.txt --out_dir out-ft --dropout 0.1
  python -m tinygrad_gpt.train --tokenizer bpe --vocab_size 2048 --out_dir out-bpe   # train a BPE first
  python -m tinygrad_gpt.train --init_from path/to/gpt2 --data my_text.txt --out_dir out-gpt2 --batch_size 1
  python -m tinygrad_gpt.train --config run.toml --max_iters=500   # flags override the file
  python -m tinygrad_gpt.train --config configs/speedrun_char.toml --data shakespeare   # docs/faster.md
  TINYGRAD_GPT_BACKEND=cupy python -m tinygrad_gpt.train --dtype float16   # GPU, mixed precision
  mpiexec -n 2 python -m tinygrad_gpt.train --gradient_accumulation_steps 4   # 2 processes, 2 micro-batches each
"""


@dataclass
class Run:
    """The state of a training run: what a checkpoint saves and restores."""

    config: TrainConfig
    model: GPT
    optimizer: Optimizer  # AdamW, ZeroAdamW (--zero 1) or MultiOptimizer: Muon and AdamW (--optimizer muon)
    precision: Precision  # float32, or float16 with float32 master weights and a loss scale
    tokenizer: Tokenizer  # CharTokenizer or BPETokenizer
    batches: dict  # "train": the BatchSampler of the training batches
    eval_batches: dict  # "train", "val": the fixed (x, y) batches every evaluation uses
    corpus_name: str
    world: World  # the ranks (one without mpiexec); only rank 0 writes files and prints
    parallel: DataParallel  # this rank's micro-batches, the gradient averaging and the step's loss
    val_bytes: int = 0  # UTF-8 bytes of the validation text (for bits per byte)
    iter_num: int = 0
    best_val_loss: float | None = None
    last_saved_iter: int | None = None
    elapsed_before: float = 0.0  # training seconds spent before this process (resumed runs)
    split_sizes: dict = dataclasses.field(default_factory=dict)  # tokens per split, for the first line printed
    train_time: float = 0.0  # seconds spent in training steps, evaluations and saves excluded (resumes add on)
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)


# ---------------------------------------------------------------- small helpers of the loop


def get_lr(config: TrainConfig, it: int, peak_lr: float | None = None) -> float:
    """The learning rate of iteration `it` for a group whose peak rate is peak_lr (None: learning_rate).

    The schedule (--lr_schedule cosine or wsd, with warmup; constant without --decay_lr) scaled to
    the group's peak: its final rate is min_lr * peak_lr / learning_rate.
    """
    lr = config.learning_rate if peak_lr is None else peak_lr
    if not config.decay_lr:
        return lr
    min_lr = config.min_lr if lr == config.learning_rate else config.min_lr * (lr / config.learning_rate)
    if config.lr_schedule == "wsd":
        return wsd_lr(it, lr, config.warmup_iters, config.lr_decay_iters, config.decay_frac, min_lr)
    return cosine_lr(it, lr, config.warmup_iters, config.lr_decay_iters, min_lr)


def set_learning_rates(run: Run) -> float:
    """Set every group's rate for iteration run.iter_num from its own peak ("initial_lr"); returns AdamW's default."""
    for group in run.optimizer.param_groups:
        group["lr"] = get_lr(run.config, run.iter_num, group["initial_lr"])
    return get_lr(run.config, run.iter_num)


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """A loss in nats per token as bits per UTF-8 byte of a text of n_tokens tokens and n_bytes bytes."""
    return loss * n_tokens / (math.log(2) * n_bytes)


@no_grad()
def estimate_loss(model: GPT, eval_batches: dict) -> dict:
    """Mean loss over the fixed evaluation batches of each split, in eval mode (no dropout).

    Args:
        eval_batches: {"train": [(x, y), ...], "val": [...]}, the same at every evaluation.
    Returns:
        {"train": float, "val": float}
    """
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = [model(x, y)[1].item() for x, y in eval_batches[split]]
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def train_step(run: Run, stop_requested: bool) -> tuple[float, bool]:
    """One iteration at the rates set: G micro-batches (this rank's G/R), averaged gradients, clip, step.

    The same for float32 and float16 (run.precision): a float16 step whose gradients hold inf/NaN is
    skipped and the loss scale lowered.

    Returns:
        (the mean loss of the G micro-batches, whether any rank was asked to stop), equal on every rank.
    """
    backend.start_gpu_stream(run.iter_num + 1)  # dropout on a GPU draws the same after a resume
    run.precision.zero_grad(run.optimizer)
    losses = run.parallel.forward_backward(run.model, run.precision, run.batches["train"], run.iter_num)
    run.parallel.step(run.precision, run.optimizer, run.config.grad_clip)
    return run.parallel.mean_loss(losses, stop_requested)  # read after the step: a GPU runs it without a wait


def log_step(run: Run, metrics: MetricsLog, progress: Progress, speed: Throughput, loss: float, lr: float) -> None:
    """Advance the progress bar; every log_interval iterations also write a line of metrics.jsonl."""
    tokens_per_sec = speed.count()
    logged = run.iter_num % run.config.log_interval == 0
    if logged:
        metrics.write(iter=run.iter_num, loss=loss, lr=lr, tokens_per_sec=tokens_per_sec, time=run.elapsed(),
                      **run.precision.metrics())  # fmt: skip
        speed.restart()
    progress.step(run.iter_num, loss, tokens_per_sec, logged)


def save(run: Run, name: str) -> Path:
    """Write out_dir/<name> (ckpt_latest or ckpt_best) atomically, with float32 weights in either precision.

    Every rank calls it (the generator states move on alike; ZeroAdamW gathers its moments); rank 0 writes.
    """
    meta = {
        "train_config": flatten_config(run.config),
        "model_config": dataclasses.asdict(run.model.config),
        "tokenizer": tokenizer_kind(run.tokenizer),
        **({"vocab": run.tokenizer.chars} if isinstance(run.tokenizer, CharTokenizer) else {}),
        "iter_num": run.iter_num,
        "best_val_loss": run.best_val_loss,
        "elapsed": run.elapsed(),
        "train_time_s": run.train_time,
        "rng_state": backend.get_rng_state(),
        "sampler_states": {k: b.get_state() for k, b in run.batches.items()},
        **run.precision.state_dict(),  # float16: the loss scale
    }
    files = tokenizer_files(run.tokenizer) if isinstance(run.tokenizer, BPETokenizer) else None  # vocab.json, ...
    optim_state = optimizer_state(run.optimizer, run.world)
    path = run.out_dir / name
    if run.world.is_main:
        path = save_checkpoint(path, run.precision.weights(), optim_state, meta, files)
    run.last_saved_iter = run.iter_num
    return path


def evaluate(run: Run, metrics: MetricsLog, progress: Progress) -> bool:
    """Estimate the losses, log them and save ckpt_latest (and ckpt_best when val improved); False on NaN/inf."""
    losses = estimate_loss(run.model, run.eval_batches)
    bpb = bits_per_byte(losses["val"], run.split_sizes["val"], run.val_bytes)
    metrics.write(iter=run.iter_num, train_loss=losses["train"], val_loss=losses["val"], val_bpb=bpb,
                  train_time_s=run.train_time)  # fmt: skip
    if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
        return False
    improved = run.best_val_loss is None or losses["val"] < run.best_val_loss
    if improved:
        run.best_val_loss = losses["val"]
    save(run, "ckpt_latest")
    if improved:
        save(run, "ckpt_best")
    note = " (best so far)" if improved else ""
    progress.print(f"iter {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                   f"val bpb {bpb:.4f}{note}")
    return True


# ---------------------------------------------------------------- setting a run up


def setup(config: TrainConfig, ckpt: Checkpoint | None, world: World | None = None, data_given: bool = True) -> Run:
    """Everything a run needs, checked before any checkpoint is written (no collectives: see `start_from_rank_0`).

    Args:
        config: the run's settings (make_config).
        ckpt: the checkpoint of --init_from, or None.
        data_given: whether --data was given; a resume without it continues on out_dir's token files.
    Raises:
        UsageError, ValueError (DataError, CheckpointError) or OSError, for one-line reports.
    """
    if config.tf32:  # before the first matmul: CuPy reads CUPY_TF32 once
        backend.enable_tf32()
    resume = config.init_from == "resume"
    if not (resume or config.eval_only or config.overwrite) and has_checkpoint(Path(config.out_dir)):
        raise UsageError(
            f"{config.out_dir} already holds checkpoints of an earlier run; continue it with --init_from resume, "
            "pick another --out_dir, or pass --overwrite to replace them"
        )
    corpus = load_corpus(config.data, config.cache_dir or None) if data_given or not resume else None
    tokenizer, splits = prepare_data(config, corpus, ckpt)
    backend.manual_seed(config.seed)
    model = GPT(config.model_config(model_vocab_size(tokenizer, ckpt)))
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state if resume else widen_vocab(ckpt.model_state, model))
    world = world or World()
    precision = make_precision(config.dtype, model)  # float16: keeps float32 masters, casts the model
    optimizer = build_optimizer(config, model, precision, world)
    parallel = DataParallel(world, config.gradient_accumulation_steps, config.seed, precision.params, optimizer)
    batches, eval_batches = make_batches(config, splits)
    name = corpus.name if corpus is not None else f"the token files in {config.out_dir}"
    run = Run(config, model, optimizer, precision, tokenizer, batches, eval_batches, name, world, parallel,
              val_bytes=text_bytes(tokenizer, splits["val"]))  # fmt: skip
    run.split_sizes = {split: len(tokens) for split, tokens in splits.items()}
    if resume:
        restore(run, ckpt)
    return run


def prepare_data(config: TrainConfig, corpus: Corpus | None, ckpt: Checkpoint | None) -> tuple[Tokenizer, dict]:
    """The tokenizer (a checkpoint's, widened when fine-tuning on new characters; or a new one) and the token splits.

    A resume reads the text of --data, or without it (corpus None) the token files in out_dir, and
    says so when --data differs from the text the checkpoint was trained on.
    """
    tokenizer = ckpt.tokenizer if ckpt else None
    resume = config.init_from == "resume"
    if resume and corpus is None:
        try:
            return tokenizer, load_token_files(config.out_dir, tokenizer)
        except DataError as e:
            recorded = ckpt.meta["train_config"].get("data")
            raise UsageError(
                f"--init_from resume without --data reads the token files in {config.out_dir}, but {e}; "
                f"give the training text with --data (the checkpoint was trained on {recorded!r})"
            ) from None
    recorded = ckpt.meta["train_config"].get("data") if resume else None
    if resume and recorded != config.data:
        print(f"note: resuming on --data {config.data}; the checkpoint was trained on {recorded!r}", flush=True)
    fine_tune = ckpt is not None and not resume
    new_tokenizer, splits = build_dataset(
        corpus, config.out_dir, config.model.block_size, tokenizer, allow_new_chars=fine_tune,
        bpe_vocab_size=config.vocab_size if config.new_bpe else None,
    )  # fmt: skip
    if isinstance(tokenizer, CharTokenizer) and new_tokenizer.vocab_size > tokenizer.vocab_size:
        added = new_tokenizer.chars[tokenizer.vocab_size :]
        print(f"fine-tuning: {len(added)} new characters added to the vocabulary: {''.join(added)!r}")
    if config.new_bpe and new_tokenizer.vocab_size < config.vocab_size:
        print(f"note: the training text has pairs for only {new_tokenizer.vocab_size} of the {config.vocab_size} "
              "BPE tokens asked for; the vocabulary is that size")
    return new_tokenizer, splits


def model_vocab_size(tokenizer: Tokenizer, ckpt: Checkpoint | None) -> int:
    """The tokenizer's size; from a checkpoint at least its model's (GPT-2 directories may pad the vocabulary)."""
    return max(tokenizer.vocab_size, ckpt.meta["model_config"]["vocab_size"] if ckpt else 0)


def build_optimizer(config: TrainConfig, model: GPT, precision: Precision, world: World) -> Optimizer:
    """AdamW (ZeroAdamW with --zero 1), or with --optimizer muon: Muon for the hidden matrices, AdamW for the rest.

    Every group carries its peak rate as "initial_lr" (torch's name), which the schedule scales.
    """
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw":
        groups = [{**g, "initial_lr": config.learning_rate} for g in model.param_groups(config.weight_decay)]
        return make_optimizer(precision.param_groups(groups), config, world)
    peaks = {"qkv": config.muon_lr, "hidden": config.muon_lr, "embeddings": config.embedding_lr,
             "head": config.head_lr, "scalars": config.scalar_lr}  # fmt: skip
    muon_groups, adamw_groups = model.optimizer_groups()
    muon_groups, adamw_groups = (
        precision.param_groups([{**g, "initial_lr": peaks[g["name"]] or config.learning_rate} for g in groups])
        for groups in (muon_groups, adamw_groups)
    )
    muon = Muon(muon_groups, lr=config.muon_lr, momentum=config.muon_momentum,
                weight_decay=config.muon_weight_decay, ns_steps=config.ns_steps)  # fmt: skip
    return MultiOptimizer([muon, AdamW(adamw_groups, lr=config.learning_rate, betas=betas)])


def make_batches(config: TrainConfig, splits: dict) -> tuple[dict, dict]:
    """The training batches' sampler, and the fixed evaluation batches (eval_iters of each split).

    Returns:
        ({"train": BatchSampler}, {"train": [(x, y), ...], "val": [...]})
    """
    B, T, seed = config.batch_size, config.model.block_size, config.seed
    evals = {split: fixed_windows(splits[split], config.eval_iters, B, T) for split in ("train", "val")}
    return {"train": BatchSampler(splits["train"], B, T, seed=[seed, 0])}, evals


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


def restore(run: Run, ckpt: Checkpoint) -> None:
    """Continue exactly where `ckpt` stopped: optimizer moments, iteration, losses, loss scale and every generator."""
    if ckpt.optim_state is None:
        raise CheckpointError(f"{ckpt.path} has no optim.safetensors, so it cannot be resumed (fine-tune from it)")
    try:
        hypers = [{k: v for k, v in group.items() if k != "params"} for group in run.optimizer.param_groups]
        run.optimizer.load_state_dict(ckpt.optim_state)
        for group, hyper in zip(run.optimizer.param_groups, hypers):  # the run's settings (flags given now win)
            group.update(hyper)
        meta = ckpt.meta
        run.iter_num, run.best_val_loss = int(meta["iter_num"]), meta["best_val_loss"]
        run.elapsed_before, run.last_saved_iter = float(meta.get("elapsed", 0.0)), run.iter_num
        run.train_time = float(meta.get("train_time_s", 0.0))
        backend.set_rng_state(meta["rng_state"])
        for name, batches in run.batches.items():
            batches.set_state(meta["sampler_states"][name])
        run.precision.load_state_dict(meta)  # a float32 checkpoint resumed in float16 starts a fresh scale
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{ckpt.path} is incomplete or corrupted ({one_line(repr(e))[:200]})") from None


# ---------------------------------------------------------------- the training loop


def train(run: Run) -> int:
    """Run the training loop to max_iters (or Ctrl-C), then sample, plot and summarise. Returns the exit status."""
    config, main_rank = run.config, run.world.is_main
    device = backend.device_name()
    resumed_at = run.iter_num if config.init_from == "resume" else None
    metrics = MetricsLog(run.out_dir / "metrics.jsonl", keep_until_iter=resumed_at) if main_rank else Discard()
    if main_rank:
        announce(run, device, resumed_at)
    run.started = time.perf_counter()
    progress = Progress(config.max_iters, run.iter_num, device) if main_rank else Discard()
    stopping = False  # agreed by every rank after each step
    with StopRequest() as stop, contextlib.closing(progress):  # the bar ends before any error line
        if run.iter_num == 0 and resumed_at is None and not evaluate(run, metrics, progress):  # resumed: saved at 0
            return diverged(run, progress, "the initial loss is not finite")
        run.model.train()
        speed = Throughput(tokens_per_iter=tokens_per_iter(config))
        while run.iter_num < config.max_iters and not stopping:
            lr = set_learning_rates(run)
            started = time.perf_counter()
            loss, stopping = train_step(run, stop.requested)
            run.train_time += time.perf_counter() - started
            if not math.isfinite(loss):  # nothing is saved from here, so the step's weights are dropped
                return diverged(run, progress, f"loss is {loss} at iteration {run.iter_num + 1}")
            run.iter_num += 1
            log_step(run, metrics, progress, speed, loss, lr)
            if run.iter_num % config.eval_interval == 0 or run.iter_num == config.max_iters:
                if not evaluate(run, metrics, progress):
                    return diverged(run, progress, f"the estimated loss is not finite at iteration {run.iter_num}")
                speed.restart()
        if stopping and run.last_saved_iter != run.iter_num:
            save(run, "ckpt_latest")
    if stopping:
        saved = f"saved iteration {run.iter_num} to {run.out_dir / 'ckpt_latest'}"
        resume = f"continue with --init_from resume --out_dir {run.out_dir}"
        if stop.stdout_closed and main_rank:  # `train | head`: stop quietly, one line on stderr about the state
            print(f"{PROG}: stdout was closed, so training stopped: {saved}; {resume}", file=sys.stderr, flush=True)
        elif main_rank:
            print(f"interrupted: {saved}; {resume}", flush=True)
        return 0
    if main_rank:
        finish(run, time.perf_counter() - run.started, device, resumed_at)
    return 0


def tokens_per_iter(config: TrainConfig) -> int:
    """Tokens of one optimizer step, over all ranks: G micro-batches of batch_size x block_size."""
    return config.gradient_accumulation_steps * config.batch_size * config.model.block_size


def announce(run: Run, device: str, resumed_at: int | None) -> None:
    n_train, n_val = run.split_sizes["train"], run.split_sizes["val"]
    print(
        f"{run.model.num_parameters():,} parameters, vocabulary of {vocabulary(run.tokenizer)}, "
        f"{run.corpus_name}: {n_train:,} train / {n_val:,} val tokens; device {device}, {run.config.dtype}",
        flush=True,
    )
    world, G = run.world, run.config.gradient_accumulation_steps
    if world.size > 1 or G > 1:
        print(f"data parallel: {world.size} rank(s) ({world.backend_name}) x {G // world.size} micro-batch(es) of "
              f"{run.config.batch_size} = {tokens_per_iter(run.config):,} tokens per step"
              f"{zero_memory(run)}", flush=True)
    if resumed_at is not None:
        print(f"resuming from iteration {resumed_at} of {run.config.max_iters}", flush=True)
    elif has_checkpoint(run.out_dir):
        print(f"note: --overwrite: this new run replaces the checkpoints in {run.out_dir}")


def zero_memory(run: Run) -> str:
    """With --zero 1: ', ZeRO-1: optimizer state X MB per rank (AdamW's: Y MB)', measured on the arrays."""
    if not run.config.zero:
        return ""
    full = 2 * sum(p.data.nbytes for p in run.precision.params)  # AdamW's two moments of every parameter
    mine = run.optimizer.state_nbytes
    return f", ZeRO-1: optimizer state {mine / 1e6:.2f} MB per rank (AdamW's: {full / 1e6:.2f} MB)"


def vocabulary(tokenizer: Tokenizer) -> str:
    """'65 characters' or '1,024 BPE tokens'."""
    unit = "BPE tokens" if isinstance(tokenizer, BPETokenizer) else "characters"
    return f"{tokenizer.vocab_size:,} {unit}"


def diverged(run: Run, progress: Progress, what: str) -> int:
    """Stop on a NaN/inf loss without saving: the checkpoints on disk stay the last good ones."""
    progress.close()
    kept = (
        f"the last good checkpoint is {run.out_dir / 'ckpt_latest'} (iteration {run.last_saved_iter})"
        if run.last_saved_iter is not None
        else "no checkpoint was saved"
    )
    if run.world.is_main:
        report_error(PROG, f"{what}; training stopped, {kept}; try a smaller --learning_rate or --grad_clip")
    return 1


def finish(run: Run, wall: float, device: str, resumed_at: int | None) -> None:
    """Print a sample and the summary line; draw the loss curve."""
    config = run.config
    if config.max_new_tokens > 0:
        run.model.eval()
        prompt = "" if isinstance(run.tokenizer, BPETokenizer) else default_prompt(run.tokenizer)  # BPE: after EOT
        (text,) = sample_texts(run.model, run.tokenizer, prompt, 1, config.max_new_tokens, seed=config.seed)
        print(f"---------- sample ----------\n{text}\n----------------------------", flush=True)
    if config.plot:
        png = plot_losses(run.out_dir / "metrics.jsonl", run.out_dir / "loss.png")
        if png is not None:
            print(f"loss curve: {png}")
    iters = run.iter_num - (resumed_at or 0)
    resumed = f" (resumed at {resumed_at})" if resumed_at else ""
    best = f"{run.best_val_loss:.4f}" if run.best_val_loss is not None else "n/a"
    tokens = iters * tokens_per_iter(config)
    print(
        f"done: {iters:,} iterations{resumed}, {tokens:,} tokens, {wall:.1f} s wall on {device}; "
        f"best val loss {best}; checkpoint {run.out_dir / 'ckpt_best'}",
        flush=True,
    )


# ---------------------------------------------------------------- entry point


def main(argv=None) -> int:
    """Parse flags, build the run's TrainConfig, set the run up and train; returns the exit status.

    Exit status: 0 done (or stopped by Ctrl-C or a closed stdout, after saving), 2 bad input (one line on
    stderr, nothing in out_dir changed), 1 a failure while running (a full disk, no memory, a NaN loss;
    the last good checkpoint stays), 130 a second Ctrl-C. Under mpiexec every rank runs this; an error in
    setting up on any rank is one line (from rank 0) and exit 2 on every rank; only rank 0 locks out_dir.
    """
    backend.tune_malloc()  # the training process keeps NumPy's large freed blocks (faster steps)
    try:
        world = get_world()  # before any tensor: on GPUs it picks this rank's device
    except DistributedError as e:
        return report_error(PROG, e)
    try:
        with SameOnEveryRank(world), quiet_unless_main(world):
            values, given = parse_args(TrainConfig, argv, PROG, __doc__.split("\n\n")[0], EXAMPLES)
    except SystemExit as e:  # argparse: --help, or a bad flag already reported
        return e.code or 0
    except (UsageError, ValueError, OSError) as e:
        return report_error(PROG, e) if world.is_main else 2
    lock = RunLock(values["out_dir"]) if world.is_main else None
    try:
        return start(values, given, lock, world)
    except BrokenPipeError:  # stdout closed (`train | head`) outside the loop: nothing unsaved is lost
        silence_stdout()
        return 0
    except (UsageError, ValueError, OSError) as e:  # before training: bad input
        return report_error(PROG, e) if world.is_main else 2
    except MemoryError:  # sizes that passed the memory estimate (a lower bound) but not the machine
        report_error(PROG, "out of memory while setting the run up; use smaller sizes (--batch_size, --n_embd, ...)")
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


def start(values: dict, given: set, lock: RunLock | None, world: World) -> int:
    """Everything after the flags, under out_dir's lock (held by rank 0): check, set up, then train (or evaluate)."""
    with SameOnEveryRank(world) as ranks, quiet_unless_main(world):
        if lock is not None:
            lock.acquire(create=values["init_from"] != "resume")  # resuming a missing out_dir: reported next
            if lock.stale_pid:
                print(f"note: took over {lock.path}, left by process {lock.stale_pid}, which is no longer running")
        ckpt = load_init_checkpoint(values["init_from"], values["out_dir"])
        config = make_config(values, given, ckpt)
        world.micro_batches(config.gradient_accumulation_steps)  # G must be a multiple of the ranks
        ranks.compare(flatten_config(config))
        vocab_size = ckpt.tokenizer.vocab_size if ckpt else 1  # before reading the text: a lower bound
        check_memory(config, given, lambda c: training_memory(c.model_config(vocab_size), c.batch_size, c.dtype))
    with SameOnEveryRank(world), quiet_unless_main(world):
        run = setup(config, ckpt, world, data_given="data" in given)
    start_from_rank_0(run.model, run.precision, world)
    if config.eval_only:
        losses = estimate_loss(run.model, run.eval_batches)
        if world.is_main:
            print(f"iter {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return 0
    try:
        with warnings.catch_warnings():  # overflow warnings add nothing: a non-finite loss is reported by the loop
            warnings.simplefilter("ignore", RuntimeWarning)
            return train(run)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the checkpoints on disk are complete
        print(f"\n{PROG}: interrupted twice; stopped without saving", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed after the loop: main ends quietly
        raise
    except (OSError, MemoryError) as e:
        return failed(run, e)


def failed(run: Run, error: OSError | MemoryError) -> int:
    """A full disk (or no memory) while training: one line and exit status 1; the checkpoints on disk stay."""
    kept = "no checkpoint was saved"
    if run.last_saved_iter is not None:
        kept = f"the last good checkpoint is iteration {run.last_saved_iter}"
    what = "out of memory" if isinstance(error, MemoryError) else (error.strerror or str(error))
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    report_error(PROG, f"training stopped at iteration {run.iter_num}: {what}{where}; {kept}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
