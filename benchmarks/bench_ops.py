"""Time each op and fused function of a GPT step, forward and forward+backward, tinygrad_gpt vs torch.

    python benchmarks/bench_ops.py                          # the small and medium configs' shapes
    python benchmarks/bench_ops.py --configs medium --repeats 50 --ops linear,gelu
    python benchmarks/bench_ops.py --profile --config small  # cProfile of 20 training steps of our GPT

Shapes come from the named configs (B, T, C, n_head, vocab), so each row is a piece of a real step.
Each framework runs in its own worker subprocess with the same thread count; the parent alternates
between them op by op. Times are medians of --repeats after --warmup untimed runs; gradients are
cleared before each run, and backward gets a fixed random upstream gradient (or none for a scalar).
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import functools
import os
import pstats
import time
from pathlib import Path

from harness import (
    CONFIGS,
    FRAMEWORKS,
    HERE,
    THREAD_ENV_VARS,
    Worker,
    command_line,
    machine_line,
    markdown_table,
    median,
    param_shapes,
    serve,
    thread_env,
)

OPS = (
    "matmul",
    "matmul (batched)",
    "linear",
    "layer_norm",
    "gelu",
    "softmax",
    "cross_entropy",
    "attention",
    "embedding",
    "AdamW step",
    "clip_grad_norm_",
)
STEP_OPS = ("AdamW step", "clip_grad_norm_")  # no forward/backward: the whole call is timed


def op_arrays(op: str, cfg: dict, seed: int = 0) -> dict:
    """The op's inputs as named float32/int64 numpy arrays in GPT-2's layout (Linear weights (in, out))."""
    import numpy as np

    rng = np.random.default_rng(seed)
    B, T, C, nh, V = cfg["batch_size"], cfg["block_size"], cfg["n_embd"], cfg["n_head"], cfg["vocab_size"]
    hs = C // nh

    def randn(*shape, scale=1.0):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    if op == "matmul":
        return {"x": randn(B, T, C), "w": randn(C, 4 * C, scale=0.02)}  # (B, T, C) @ (C, 4C), the MLP's shape
    if op == "matmul (batched)":
        return {"q": randn(B, nh, T, hs), "kT": randn(B, nh, hs, T)}  # attention scores' shape
    if op == "linear":
        return {"x": randn(B, T, C), "w": randn(C, 4 * C, scale=0.02), "b": randn(4 * C, scale=0.02)}
    if op == "layer_norm":
        return {"x": randn(B, T, C), "w": 1.0 + randn(C, scale=0.1), "b": randn(C, scale=0.1)}
    if op == "gelu":
        return {"x": randn(B, T, 4 * C)}
    if op == "softmax":
        return {"x": randn(B, nh, T, T)}
    if op == "cross_entropy":
        return {"logits": randn(B, T, V), "targets": rng.integers(0, V, size=(B, T), dtype=np.int64)}
    if op == "attention":
        return {"q": randn(B, nh, T, hs), "k": randn(B, nh, T, hs), "v": randn(B, nh, T, hs)}
    if op == "embedding":
        return {"idx": rng.integers(0, V, size=(B, T), dtype=np.int64), "w": randn(V, C, scale=0.02)}
    if op in STEP_OPS:  # every parameter of the GPT, with a random gradient each
        arrays = {}
        for name, shape, _ in param_shapes(cfg):
            arrays[name] = randn(*shape, scale=0.02)
            arrays[name + ".grad"] = randn(*shape)
        return arrays
    raise ValueError(f"unknown op {op!r}; ops: {', '.join(OPS)}")


def describe_inputs(op: str, cfg: dict) -> str:
    if op in STEP_OPS:
        n = sum(a.size for k, a in op_arrays(op, cfg).items() if not k.endswith(".grad"))
        return f"{len(param_shapes(cfg))} tensors, {n / 1e6:.2f}M params"
    return ", ".join(f"{k} {tuple(a.shape)}" for k, a in op_arrays(op, cfg).items())


# ---------------------------------------------------------------- the two frameworks


def tinygrad_op(op: str, arrays: dict):
    """(function of no arguments, leaf Tensors whose .grad is cleared) for tinygrad_gpt."""
    from tinygrad_gpt import Tensor
    from tinygrad_gpt.nn import functional as F
    from tinygrad_gpt.optim import AdamW, clip_grad_norm_

    t = {k: Tensor(a, requires_grad=a.dtype.kind == "f" and not k.endswith(".grad")) for k, a in arrays.items()}
    if op in STEP_OPS:
        params = [p for k, p in t.items() if not k.endswith(".grad")]
        grads = [t[k + ".grad"] for k, p in t.items() if not k.endswith(".grad")]
        if op == "AdamW step":
            groups = [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ]
            optimizer = AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
            return _with_grads(params, grads, optimizer.step), []
        return _with_grads(params, grads, lambda: clip_grad_norm_(params, 1.0)), []
    fns = {
        "matmul": lambda: t["x"] @ t["w"],
        "matmul (batched)": lambda: t["q"] @ t["kT"],
        "linear": lambda: F.linear(t["x"], t["w"], t["b"]),
        "layer_norm": lambda: F.layer_norm(t["x"], t["w"], t["b"]),
        "gelu": lambda: F.gelu(t["x"]),
        "softmax": lambda: F.softmax(t["x"], axis=-1),
        "cross_entropy": lambda: F.cross_entropy(t["logits"], t["targets"]),
        "attention": lambda: F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True),
        "embedding": lambda: F.embedding(t["idx"], t["w"]),
    }
    return fns[op], [x for x in t.values() if x.requires_grad]


def torch_op(op: str, arrays: dict, device: str):
    """(function of no arguments, leaf tensors whose .grad is cleared) for PyTorch (Linear weights (out, in))."""
    import torch
    import torch.nn.functional as F

    def tensor(k, a):
        if k == "w" and op == "linear":
            a = a.T.copy()  # torch's Linear layout
        x = torch.from_numpy(a).to(device)
        return x.requires_grad_() if a.dtype.kind == "f" and not k.endswith(".grad") else x

    t = {k: tensor(k, a) for k, a in arrays.items()}
    if op in STEP_OPS:
        params = [p for k, p in t.items() if not k.endswith(".grad")]
        grads = [t[k + ".grad"] for k, p in t.items() if not k.endswith(".grad")]
        if op == "AdamW step":
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
            extra = {"fused": True} if device == "cuda" else {}  # as nanoGPT's configure_optimizers
            optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, **extra)
            return _with_grads(params, grads, optimizer.step), []
        return _with_grads(params, grads, lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)), []
    fns = {
        "matmul": lambda: t["x"] @ t["w"],
        "matmul (batched)": lambda: t["q"] @ t["kT"],
        "linear": lambda: F.linear(t["x"], t["w"], t["b"]),
        "layer_norm": lambda: F.layer_norm(t["x"], t["x"].shape[-1:], t["w"], t["b"]),
        "gelu": lambda: F.gelu(t["x"], approximate="tanh"),
        "softmax": lambda: F.softmax(t["x"], dim=-1),
        "cross_entropy": lambda: F.cross_entropy(t["logits"].flatten(0, 1), t["targets"].flatten()),
        "attention": lambda: F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True),
        "embedding": lambda: F.embedding(t["idx"], t["w"]),
    }
    return fns[op], [x for x in t.values() if x.requires_grad]


def _with_grads(params, grads, fn):
    """`fn` preceded by giving every parameter its gradient again (clipping may have replaced it)."""

    def run():
        for p, g in zip(params, grads):
            p.grad = g
        return fn()

    return run


# ---------------------------------------------------------------- worker


class OpTimer:
    """Worker side: builds one op at a time and times forward and forward+backward."""

    def setup(self, framework: str, device: str, threads: int, tf32: bool) -> dict:
        self.framework, self.device = framework, device
        if framework == "torch":
            import torch

            torch.set_num_threads(threads)
            torch.backends.cuda.matmul.allow_tf32 = tf32
            self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            return {"device": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
        from tinygrad_gpt import backend

        backend.tune_malloc()  # as the training CLI does
        self.sync = backend.synchronize
        return {"device": backend.device_name()}

    def bench(self, op: str, cfg: dict, repeats: int, warmup: int) -> dict:
        arrays = op_arrays(op, cfg)
        fn, leaves = tinygrad_op(op, arrays) if self.framework == "tinygrad" else torch_op(op, arrays, self.device)
        gy = None
        fwd, total = [], []
        for i in range(warmup + repeats):
            for x in leaves:
                x.grad = None
            self.sync()
            t0 = time.perf_counter()
            y = fn()
            self.sync()
            t1 = time.perf_counter()
            if op not in STEP_OPS:
                if gy is None:  # a fixed upstream gradient, made once outside the timings
                    gy = self._upstream_grad(y)
                y.backward(gy)
                self.sync()
            t2 = time.perf_counter()
            if i >= warmup:
                fwd.append(t1 - t0)
                total.append(t2 - t0)
        return {"fwd_ms": 1e3 * median(fwd), "total_ms": 1e3 * median(total)}

    def _upstream_grad(self, y):
        if y.ndim == 0 or y.shape == () or getattr(y, "size", 2) == 1:
            return None
        import numpy as np

        g = np.random.default_rng(1).standard_normal(tuple(y.shape), dtype=np.float32)
        if self.framework == "torch":
            import torch

            return torch.from_numpy(g).to(self.device)
        from tinygrad_gpt import Tensor

        return Tensor(g)


def worker_main() -> None:
    timer = OpTimer()
    serve({"setup": timer.setup, "bench": timer.bench})


# ---------------------------------------------------------------- parent


def run_ops(args, env: dict) -> tuple[list[list], dict]:
    """Rows of the table: for every config and op, both frameworks' medians (alternating who goes first)."""
    device = "cuda" if args.backend == "cupy" else "cpu"
    workers, labels, rows = {}, {}, []
    try:
        for fw in FRAMEWORKS:
            workers[fw] = Worker(fw, [str(HERE / "bench_ops.py"), "--worker"], env)
            labels[fw] = workers[fw].call("setup", framework=fw, device=device, threads=args.threads, tf32=args.tf32)
        k = 0
        for name in args.configs:
            cfg = CONFIGS[name]
            for op in args.ops:
                times = {}
                for fw in FRAMEWORKS if k % 2 == 0 else FRAMEWORKS[::-1]:
                    times[fw] = workers[fw].call("bench", op=op, cfg=cfg, repeats=args.repeats, warmup=args.warmup)
                k += 1
                ours, theirs = times["tinygrad"], times["torch"]
                step = op in STEP_OPS
                rows.append([
                    name, op, describe_inputs(op, cfg),
                    None if step else ours["fwd_ms"], ours["total_ms"],
                    None if step else theirs["fwd_ms"], theirs["total_ms"],
                    None if step else ours["fwd_ms"] / theirs["fwd_ms"], ours["total_ms"] / theirs["total_ms"],
                ])  # fmt: skip
    finally:
        for w in workers.values():
            w.close()
    return rows, labels


def print_ops_table(args, rows, labels) -> None:
    columns = ["config", "op", "inputs", "ours fwd (ms)", "ours fwd+bwd (ms)", "torch fwd (ms)"]
    columns += ["torch fwd+bwd (ms)", "ratio fwd", "ratio fwd+bwd"]
    print(f"## bench_ops: {', '.join(args.configs)} shapes, {args.backend} backend\n")
    print(f"- machine: {machine_line(args.threads)}")
    print(f"- tinygrad_gpt: {labels['tinygrad']['device']}; torch: {labels['torch']['device']}")
    print(f"- command: `{command_line()}`")
    print(f"- medians of {args.repeats} runs after {args.warmup} warm-up runs; ratio = tinygrad_gpt / torch;")
    print("  AdamW step and clip_grad_norm_ have no backward: their one call is in the fwd+bwd columns\n")
    print(markdown_table(columns, rows))


# ---------------------------------------------------------------- profile


def profile_training(args) -> None:
    """cProfile `args.steps` training steps of tinygrad_gpt's GPT and print the top functions by own time."""
    for var in THREAD_ENV_VARS:  # before numpy is imported
        os.environ[var] = str(args.threads)
    os.environ["TINYGRAD_GPT_BACKEND"] = args.backend
    from bench_train import TinygradTrainer

    cfg = CONFIGS[args.config]
    trainer = TinygradTrainer()
    info = trainer.setup(cfg, seed=1337, lr=1e-3)
    for _ in range(args.warmup):
        trainer.step()
    trainer.sync()
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(args.steps):
        trainer.step()
    trainer.sync()
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (primitive calls, calls, tottime, cumtime, callers)
    total = sum(v[2] for v in stats.values())
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.top]
    print(f"## bench_ops --profile: {args.steps} training steps of tinygrad_gpt, `{args.config}` config\n")
    print(f"- machine: {machine_line(args.threads)}; {info['device']}")
    print(f"- command: `{command_line()}`")
    print(f"- {1e3 * wall / args.steps:.1f} ms/step under the profiler (which adds overhead per Python call)\n")
    columns = ["function", "calls/step", "tottime ms/step", "% of tottime", "cumtime ms/step"]
    rows = [
        [_where(key), v[1] / args.steps, 1e3 * v[2] / args.steps, 100 * v[2] / total, 1e3 * v[3] / args.steps]
        for key, v in top
    ]
    print(markdown_table(columns, rows))


def _where(key) -> str:
    """A profile entry as `file:line(Class.function)`, the path shortened to the package or benchmarks/."""
    file, line, name = key
    if file == "~":
        return name.replace("|", "/")  # built-ins such as <method 'dot' of 'numpy.ndarray' objects>
    name = _qualnames(file).get(line, name)
    parts = Path(file).parts
    for anchor in ("tinygrad_gpt", "benchmarks", "numpy", "numba"):
        if anchor in parts:
            file = str(Path(*parts[len(parts) - 1 - parts[::-1].index(anchor) :]))
            break
    return f"{file}:{line}({name})"


@functools.cache
def _qualnames(file: str) -> dict:
    """First line of each function in `file` -> qualified name (`Linear.backward`); profiles give only `backward`."""
    try:
        tree = ast.parse(Path(file).read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    names = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                for line in [child.lineno] + [d.lineno for d in child.decorator_list]:
                    names[line] = qualname
                visit(child, qualname + ".")

    visit(tree, "")
    return names


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium", help="comma-separated named configs for the shapes")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated ops (default all: {', '.join(OPS)})")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per op (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs (or profile steps) first")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all CPUs)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="cupy: both on the GPU")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (both frameworks)")
    parser.add_argument("--no_numba", action="store_true", help="tinygrad_gpt without its numba kernels")
    parser.add_argument("--profile", action="store_true", help="profile training steps of our GPT instead")
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS), help="--profile: the config")
    parser.add_argument("--steps", type=int, default=20, help="--profile: profiled training steps")
    parser.add_argument("--top", type=int, default=25, help="--profile: functions listed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not args.configs or not set(args.configs) <= set(CONFIGS):
        parser.error(f"--configs must name some of {', '.join(CONFIGS)}")
    if not args.ops or not set(args.ops) <= set(OPS):
        parser.error(f"--ops must name some of: {', '.join(OPS)}")
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0")
    args.threads = args.threads or os.cpu_count()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.no_numba:
        os.environ["TINYGRAD_GPT_NUMBA"] = "0"
    if args.worker:
        worker_main()
    elif args.profile:
        profile_training(args)
    else:
        env = thread_env(args.threads, args.backend)
        if args.tf32:
            env["CUPY_TF32"] = "1"
        rows, labels = run_ops(args, env)
        print_ops_table(args, rows, labels)


if __name__ == "__main__":
    main()
