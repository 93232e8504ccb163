"""Train a character-level GPT: `python -m tinygrad_gpt.train [--flag value ...]`.

With no arguments it trains a small GPT on Python's own documentation (`pydoc_data.topics`, part of
every Python install), so it works offline on a fresh machine. The flags carry nanoGPT's names and
meanings; `--help` lists them. They are the fields of TrainConfig (train_config.py), which `main`
builds once and passes on. The loop below is nanoGPT's train.py, kept in one readable piece:

    every eval_interval: estimate train/val loss, save out_dir/ckpt_latest (and ckpt_best when val improves)
    every iteration:     lr schedule, batch, forward, backward, clip, AdamW step (`train_step`)
    every log_interval:  a line in out_dir/metrics.jsonl

float32 and float16 (`--dtype`) differ only in the `Precision` object the step calls (amp.py).

`--init_from resume` continues the run in out_dir exactly (same losses, bit for bit on NumPy): the
checkpoint holds the weights, the optimizer's moments, and the states of the batch samplers and of
the library's generator (dropout). `--init_from DIR` fine-tunes the checkpoint in DIR on new text.
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

from tinygrad_gpt import backend, gpu_kernels, no_grad
from tinygrad_gpt.amp import Precision, make_precision
from tinygrad_gpt.checkpoint import Checkpoint, CheckpointError, has_checkpoint, save_checkpoint
from tinygrad_gpt.cli import UsageError, flatten_config, one_line, parse_args, report_error
from tinygrad_gpt.data import (
    BatchSampler,
    CharTokenizer,
    Corpus,
    DataError,
    build_dataset,
    load_corpus,
    load_token_files,
)
from tinygrad_gpt.model import GPT
from tinygrad_gpt.monitor import MetricsLog, Progress, StopRequest, Throughput, plot_losses, silence_stdout
from tinygrad_gpt.optim import AdamW, cosine_lr
from tinygrad_gpt.runlock import RunLock
from tinygrad_gpt.sample import default_prompt, sample_texts
from tinygrad_gpt.train_config import TrainConfig, load_init_checkpoint, make_config
from tinygrad_gpt.validate import check_memory, training_memory

PROG = "python -m tinygrad_gpt.train"
EXAMPLES = """examples:
  python -m tinygrad_gpt.train                                  # Python's docs, default model, ~5 minutes
  python -m tinygrad_gpt.train --data shakespeare --out_dir out-shakespeare
  python -m tinygrad_gpt.train --init_from resume               # continue out/ exactly where it stopped
  python -m tinygrad_gpt.train --init_from out/ckpt_best --data my_text.txt --out_dir out-ft --dropout 0.1
  python -m tinygrad_gpt.train --config run.toml --max_iters=500   # flags override the file
  TINYGRAD_GPT_BACKEND=cupy python -m tinygrad_gpt.train --dtype float16   # GPU, mixed precision
"""


@dataclass
class Run:
    """The state of a training run: what a checkpoint saves and restores."""

    config: TrainConfig
    model: GPT
    optimizer: AdamW
    precision: Precision  # float32, or float16 with float32 master weights and a loss scale
    tokenizer: CharTokenizer
    batches: dict  # "train" (training batches), "eval_train", "eval_val": BatchSampler each
    corpus_name: str
    iter_num: int = 0
    best_val_loss: float | None = None
    last_saved_iter: int | None = None
    elapsed_before: float = 0.0  # training seconds spent before this process (resumed runs)
    started: float = dataclasses.field(default_factory=time.perf_counter)

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


def train_step(run: Run, lr: float) -> float:
    """One iteration: a batch, forward, backward, clip and optimizer step at learning rate lr; returns the loss.

    The same for float32 and float16 (run.precision): a float16 step whose gradients hold inf/NaN is
    skipped and the loss scale lowered.
    """
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    backend.start_gpu_stream(run.iter_num + 1)  # dropout on a GPU draws the same after a resume
    x, y = run.batches["train"].next_batch()  # (B, T) inputs and next-character targets
    _, loss = run.model(x, y)
    run.precision.zero_grad(run.optimizer)
    run.precision.scale_loss(loss).backward()
    run.precision.step(run.optimizer, run.config.grad_clip)
    return loss.item()  # read after the step: a GPU runs forward and backward without a wait


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
    """Write out_dir/<name> (ckpt_latest or ckpt_best) atomically, with float32 weights in either precision."""
    meta = {
        "train_config": flatten_config(run.config),
        "model_config": dataclasses.asdict(run.model.config),
        "vocab": run.tokenizer.chars,
        "iter_num": run.iter_num,
        "best_val_loss": run.best_val_loss,
        "elapsed": run.elapsed(),
        "rng_state": backend.get_rng_state(),
        "sampler_states": {k: b.get_state() for k, b in run.batches.items()},
        **run.precision.state_dict(),  # float16: the loss scale
    }
    path = save_checkpoint(run.out_dir / name, run.precision.weights(), run.optimizer.state_dict(), meta)
    run.last_saved_iter = run.iter_num
    return path


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


# ---------------------------------------------------------------- setting a run up


def setup(config: TrainConfig, ckpt: Checkpoint | None, data_given: bool = True) -> Run:
    """Everything a run needs, checked before any checkpoint is written.

    Args:
        config: the run's settings (make_config).
        ckpt: the checkpoint of --init_from, or None.
        data_given: whether --data was given; a resume without it continues on out_dir's token files.
    Raises:
        UsageError, ValueError (DataError, CheckpointError) or OSError, for one-line reports.
    """
    if config.tf32:  # before the first matmul: CuPy reads CUPY_TF32 once
        gpu_kernels.enable_tf32()
    resume = config.init_from == "resume"
    if not (resume or config.eval_only or config.overwrite) and has_checkpoint(Path(config.out_dir)):
        raise UsageError(
            f"{config.out_dir} already holds checkpoints of an earlier run; continue it with --init_from resume, "
            "pick another --out_dir, or pass --overwrite to replace them"
        )
    corpus = load_corpus(config.data, config.cache_dir or None) if data_given or not resume else None
    tokenizer, splits = prepare_data(config, corpus, ckpt)
    backend.manual_seed(config.seed)
    model = GPT(config.model_config(tokenizer.vocab_size))
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state if resume else widen_vocab(ckpt.model_state, model))
    groups = model.param_groups(config.weight_decay)
    precision = make_precision(config.dtype, model)  # float16: keeps float32 masters, casts the model
    optimizer = AdamW(precision.param_groups(groups), lr=config.learning_rate, betas=(config.beta1, config.beta2))
    name = corpus.name if corpus is not None else f"the token files in {config.out_dir}"
    run = Run(config, model, optimizer, precision, tokenizer, make_batches(config, splits), name)
    if resume:
        restore(run, ckpt)
    return run


def prepare_data(config: TrainConfig, corpus: Corpus | None, ckpt: Checkpoint | None) -> tuple[CharTokenizer, dict]:
    """The tokenizer (a checkpoint's, widened when fine-tuning on new characters) and the token splits.

    A resume reads the text of --data, or without it (corpus None) the token files in out_dir, and
    says so when --data differs from the text the checkpoint was trained on.
    """
    tokenizer = CharTokenizer(ckpt.meta["vocab"]) if ckpt else None
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
        corpus, config.out_dir, config.model.block_size, tokenizer, allow_new_chars=fine_tune
    )
    if tokenizer is not None and new_tokenizer.vocab_size > tokenizer.vocab_size:
        added = new_tokenizer.chars[tokenizer.vocab_size :]
        print(f"fine-tuning: {len(added)} new characters added to the vocabulary: {''.join(added)!r}")
    return new_tokenizer, splits


def make_batches(config: TrainConfig, splits: dict) -> dict:
    """Separate sampler streams, so evaluating never shifts the training batches."""
    B, T, seed = config.batch_size, config.model.block_size, config.seed
    return {
        "train": BatchSampler(splits["train"], B, T, seed=[seed, 0]),
        "eval_train": BatchSampler(splits["train"], B, T, seed=[seed, 1]),
        "eval_val": BatchSampler(splits["val"], B, T, seed=[seed, 2]),
    }


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
        run.optimizer.load_state_dict(ckpt.optim_state)
        for group in run.optimizer.param_groups:  # flags given now win over the saved hyperparameters
            group["betas"] = (run.config.beta1, run.config.beta2)
        run.optimizer.param_groups[0]["weight_decay"] = run.config.weight_decay
        meta = ckpt.meta
        run.iter_num, run.best_val_loss = int(meta["iter_num"]), meta["best_val_loss"]
        run.elapsed_before, run.last_saved_iter = float(meta.get("elapsed", 0.0)), run.iter_num
        backend.set_rng_state(meta["rng_state"])
        for name, batches in run.batches.items():
            batches.set_state(meta["sampler_states"][name])
        run.precision.load_state_dict(meta)  # a float32 checkpoint resumed in float16 starts a fresh scale
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{ckpt.path} is incomplete or corrupted ({one_line(repr(e))[:200]})") from None


# ---------------------------------------------------------------- the training loop


def train(run: Run) -> int:
    """Run the training loop to max_iters (or Ctrl-C), then sample, plot and summarise. Returns the exit status."""
    config = run.config
    device = backend.device_name()
    resumed_at = run.iter_num if config.init_from == "resume" else None
    metrics = MetricsLog(run.out_dir / "metrics.jsonl", keep_until_iter=resumed_at)
    announce(run, device, resumed_at)
    run.started = time.perf_counter()
    progress = Progress(config.max_iters, run.iter_num, device)
    with StopRequest() as stop, contextlib.closing(progress):  # the bar ends before any error line
        if run.iter_num == 0 and not evaluate(run, metrics, progress):
            return diverged(run, progress, "the initial loss is not finite")
        run.model.train()
        speed = Throughput(tokens_per_iter=config.batch_size * config.model.block_size)
        while run.iter_num < config.max_iters and not stop.requested:
            lr = get_lr(config, run.iter_num)
            loss = train_step(run, lr)
            if not math.isfinite(loss):  # nothing is saved from here, so the step's weights are dropped
                return diverged(run, progress, f"loss is {loss} at iteration {run.iter_num + 1}")
            run.iter_num += 1
            log_step(run, metrics, progress, speed, loss, lr)
            if run.iter_num % config.eval_interval == 0 or run.iter_num == config.max_iters:
                if not evaluate(run, metrics, progress):
                    return diverged(run, progress, f"the estimated loss is not finite at iteration {run.iter_num}")
                speed.restart()
        if stop.requested and run.last_saved_iter != run.iter_num:
            save(run, "ckpt_latest")
    if stop.requested:
        saved = f"saved iteration {run.iter_num} to {run.out_dir / 'ckpt_latest'}"
        resume = f"continue with --init_from resume --out_dir {run.out_dir}"
        if stop.stdout_closed:  # `train | head`: stop quietly, with one line on stderr about the saved state
            print(f"{PROG}: stdout was closed, so training stopped: {saved}; {resume}", file=sys.stderr, flush=True)
        else:
            print(f"interrupted: {saved}; {resume}", flush=True)
        return 0
    finish(run, time.perf_counter() - run.started, device, resumed_at)
    return 0


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
    tokens = iters * config.batch_size * config.model.block_size
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
    the last good checkpoint stays), 130 a second Ctrl-C.
    """
    try:
        values, given = parse_args(TrainConfig, argv, PROG, __doc__.split("\n\n")[0], EXAMPLES)
    except SystemExit as e:  # argparse: --help, or a bad flag already reported
        return e.code or 0
    except (UsageError, ValueError, OSError) as e:
        return report_error(PROG, e)
    lock = RunLock(values["out_dir"])
    try:
        lock.acquire(create=values["init_from"] != "resume")  # resuming a missing out_dir: reported next
        return start(values, given, lock)
    except BrokenPipeError:  # stdout closed (`train | head`) outside the loop: nothing unsaved is lost
        silence_stdout()
        return 0
    except (UsageError, ValueError, OSError) as e:  # before training: bad input
        return report_error(PROG, e)
    except MemoryError:  # sizes that passed the memory estimate (a lower bound) but not the machine
        report_error(PROG, "out of memory while setting the run up; use smaller sizes (--batch_size, --n_embd, ...)")
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    finally:
        lock.release()


def start(values: dict, given: set, lock: RunLock) -> int:
    """Everything after the flags, under out_dir's lock: check, set up, then train (or evaluate)."""
    if lock.stale_pid:
        print(f"note: took over {lock.path}, left by process {lock.stale_pid}, which is no longer running")
    ckpt = load_init_checkpoint(values["init_from"], values["out_dir"])
    config = make_config(values, given, ckpt)
    vocab_size = len(ckpt.meta["vocab"]) if ckpt else 1  # before reading the text: a lower bound
    check_memory(config, given, lambda c: training_memory(c.model_config(vocab_size), c.batch_size, c.dtype))
    run = setup(config, ckpt, data_given="data" in given)
    if config.eval_only:
        losses = estimate_loss(run.model, run.batches, config.eval_iters)
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
