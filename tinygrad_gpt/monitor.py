"""What a training run shows and records while it runs, and how it is asked to stop.

- `MetricsLog`: out_dir/metrics.jsonl, one JSON object per line (a resumed run drops what a crashed
  one logged after its checkpoint).
- `Progress`: a tqdm bar with loss and tokens/s, or a plain line every log_interval without tqdm.
- `Throughput`: tokens per second since it was last restarted.
- `StopRequest`: Ctrl-C, SIGTERM or a closed stdout asks the loop to save and stop after the current step.
- `plot_losses`: out_dir/loss.png from metrics.jsonl (needs matplotlib).
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from tinygrad_gpt.checkpoint import atomic_write_bytes


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


class Throughput:
    """Tokens per second over the iterations counted since the last restart (evaluation time left out)."""

    def __init__(self, tokens_per_iter: int):
        self.tokens_per_iter = tokens_per_iter
        self.restart()

    def restart(self) -> None:
        self.t0, self.iters = time.perf_counter(), 0

    def count(self) -> float:
        """Count one iteration; returns the tokens per second so far."""
        self.iters += 1
        return self.iters * self.tokens_per_iter / max(time.perf_counter() - self.t0, 1e-9)


class Progress:
    """A tqdm bar with loss and tokens/s when tqdm is installed; a plain line every log_interval otherwise."""

    def __init__(self, total: int, initial: int, device: str):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.total = total
        self.bar = tqdm(total=total, initial=initial, desc=f"train [{device}]", unit="it") if tqdm else None

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


class StopRequest:
    """Asks the loop to save and stop after the current step: Ctrl-C (SIGINT), SIGTERM, or a closed stdout.

    A second Ctrl-C aborts. While it is active, a write to a closed stdout (`train | head`) raises no
    BrokenPipeError: stdout goes to /dev/null from then on, and `stdout_closed` is set.
    """

    def __init__(self):
        self.requested = False
        self.stdout_closed = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._stdout = sys.stdout
        sys.stdout = _GuardedStdout(sys.stdout, self._stdout_broken)
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        sys.stdout = self._stdout

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def _stdout_broken(self) -> None:
        silence_stdout(self._stdout)
        self.requested = self.stdout_closed = True


class _GuardedStdout:
    """A text stream whose writes and flushes call `on_broken()` instead of raising BrokenPipeError."""

    def __init__(self, stream, on_broken):
        self._stream, self._on_broken = stream, on_broken

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._on_broken()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._on_broken()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def silence_stdout(stream=None) -> None:
    """After a broken pipe: point stdout's file descriptor at /dev/null, so that later output (and the
    flush at exit) goes nowhere instead of raising again, as Python's documentation recommends."""
    stream = stream or sys.stdout
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured by a test)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Draw the training and evaluation losses of metrics.jsonl into a PNG (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
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
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(png_path, buffer.getvalue())
    return png_path
