"""Shared pieces of the benchmarks: named configs, FLOP counts, thread settings, worker subprocesses, tables.

Each framework runs in its own worker subprocess, so its peak resident memory is its own and torch is
never imported next to tinygrad_gpt. The parent talks to a worker over its stdin/stdout, one JSON object
per line; only one worker computes at a time, so both see the same machine.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("tinygrad", "torch")
FRAMEWORK_LABELS = {"tinygrad": "tinygrad_gpt", "torch": "torch"}

# Named model + batch configs. vocab 65 is Tiny Shakespeare's character set.
CONFIGS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=2, vocab_size=65),  # CI
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),  # nanoGPT CPU
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=4, vocab_size=50257),
}
CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


# ---------------------------------------------------------------- configs


def add_config_args(parser, default: str = "small") -> None:
    """Add `--config NAME` and one override flag per size (nanoGPT's names) to an argparse parser."""
    parser.add_argument("--config", default=default, choices=sorted(CONFIGS), help="named model/batch config")
    for key in CONFIG_KEYS:
        parser.add_argument(f"--{key}", type=int, default=None, help=f"override the config's {key}")


def resolve_config(args) -> dict:
    """The named config with any size flags applied; checks that the sizes make sense."""
    cfg = dict(CONFIGS[args.config])
    for key in CONFIG_KEYS:
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    bad = [k for k in CONFIG_KEYS if cfg[k] < 1]
    if bad or cfg["n_embd"] % cfg["n_head"]:
        raise SystemExit(f"error: bad config {cfg}: sizes must be >= 1 and n_embd divisible by n_head")
    return cfg


def describe_config(cfg: dict) -> str:
    return (
        f"n_layer {cfg['n_layer']}, n_head {cfg['n_head']}, n_embd {cfg['n_embd']}, block_size {cfg['block_size']}, "
        f"batch_size {cfg['batch_size']}, vocab_size {cfg['vocab_size']}"
    )


def param_shapes(cfg: dict) -> list[tuple[str, tuple, bool]]:
    """(name, shape, decays) of every GPT parameter in GPT-2's layout (Linear weights (in, out)); head tied."""
    C, V, T = cfg["n_embd"], cfg["vocab_size"], cfg["block_size"]
    shapes = [("wte.weight", (V, C)), ("wpe.weight", (T, C))]
    for i in range(cfg["n_layer"]):
        for name, shape in [
            ("ln_1.weight", (C,)), ("ln_1.bias", (C,)),
            ("attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.bias", (3 * C,)),
            ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
            ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
            ("mlp.c_fc.weight", (C, 4 * C)), ("mlp.c_fc.bias", (4 * C,)),
            ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,)),
        ]:  # fmt: skip
            shapes.append((f"h.{i}.{name}", shape))
    shapes += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    return [(name, shape, len(shape) >= 2) for name, shape in shapes]  # nanoGPT: decay every 2-D tensor


def num_params(cfg: dict) -> int:
    return sum(math.prod(shape) for _, shape, _ in param_shapes(cfg))


def train_flops_per_step(cfg: dict) -> int:
    """Exact matmul FLOPs of one training step (forward + backward); elementwise work is not counted.

    Forward per layer: qkv 2BTC*3C, scores QK^T 2BT*T*C, att@V 2BT*T*C (the full T x T, as computed),
    attention projection 2BTC*C, MLP 2BTC*4C twice; plus the LM head 2BTC*V. The backward of each matmul
    is two matmuls of the same size, so a step is 3x the forward: 6*N_matmul*tokens + 12*L*T*C*tokens,
    where N_matmul counts the matmul weights (head included, biases/LayerNorm/position table excluded).
    """
    B, T, C, L, V = cfg["batch_size"], cfg["block_size"], cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    per_layer = 2 * B * T * C * (3 * C) + 2 * (2 * B * T * T * C) + 2 * B * T * C * C + 2 * (2 * B * T * C * 4 * C)
    forward = L * per_layer + 2 * B * T * C * V
    return 3 * forward


# ---------------------------------------------------------------- threads and machine


def thread_env(threads: int, backend: str = "numpy") -> dict:
    """A copy of the environment that pins every BLAS/OpenMP/numba pool to `threads` and picks the backend."""
    env = dict(os.environ)
    for var in THREAD_ENV_VARS:
        env[var] = str(threads)
    env["TINYGRAD_GPT_BACKEND"] = backend
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int) -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, {threads} thread(s), Python {platform.python_version()}"


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


# ---------------------------------------------------------------- worker subprocesses


class Worker:
    """A benchmark subprocess driven by JSON-line commands; `call` blocks until it answers."""

    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1
        )

    def call(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited with code {self.proc.wait()} during {cmd!r}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"{self.name} worker failed during {cmd!r}:\n{reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(handlers: dict) -> None:
    """Worker side: answer JSON-line commands from stdin with `handlers[cmd](**args)` until 'quit' or EOF."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (by Python or C code) goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        try:
            reply = {"ok": True, **handlers[cmd](**msg)}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        protocol.write(json.dumps(reply) + "\n")
    protocol.close()


# ---------------------------------------------------------------- statistics and tables


def median(xs) -> float:
    xs = sorted(xs)
    n = len(xs)
    return float("nan") if n == 0 else (xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2]))


def fmt(x, digits: int = 3) -> str:
    """A number for a table: `digits` significant figures, no exponent for ordinary magnitudes."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:,.{decimals}f}".replace(",", "")


def markdown_table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table in `text` as (columns, rows of cell strings); used by the tests."""
    lines = [ln.strip() for ln in text.splitlines()]
    start = next(i for i in range(len(lines) - 1) if lines[i].startswith("|") and lines[i + 1].startswith("|---"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip() for c in ln.strip("|").split("|")])
    return table[0], table[2:]
