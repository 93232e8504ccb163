"""Time GPT training steps of tinygrad_gpt and of the same model in PyTorch, side by side in one run.

    python benchmarks/bench_train.py --config small            # nanoGPT's CPU config
    python benchmarks/bench_train.py --config medium --steps 5 --blocks 4
    python benchmarks/bench_train.py --config gpt2 --backend cupy

A step is forward, backward, clip_grad_norm_(1.0), AdamW step and zero_grad. Each framework runs in its
own worker subprocess (so peak RSS is its own, and torch never shares a process with tinygrad_gpt); both
stay alive and the parent tells them in turn to run a block of steps, alternating the order each block,
so both see the same machine conditions while only one computes at a time. Thread pools are pinned to
--threads in both. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

from harness import (
    FRAMEWORK_LABELS,
    FRAMEWORKS,
    HERE,
    Worker,
    add_config_args,
    command_line,
    describe_config,
    machine_line,
    markdown_table,
    median,
    num_params,
    peak_rss_mib,
    resolve_config,
    serve,
    thread_env,
    train_flops_per_step,
)

N_BATCHES = 4  # distinct random batches, cycled (identical in both workers)
HANDOFF_PAUSE_S = 0.1  # between blocks, so BLAS threads the last worker left spinning (~30 ms) have gone to sleep


def make_batches(cfg: dict, seed: int) -> list:
    """N_BATCHES random (x, y) int64 batches of shape (B, T), y shifted by one as in language modelling."""
    import numpy as np

    rng = np.random.default_rng(seed)
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    tokens = rng.integers(0, V, size=(N_BATCHES, B, T + 1), dtype=np.int64)
    return [(t[:, :-1].copy(), t[:, 1:].copy()) for t in tokens]


# ---------------------------------------------------------------- workers (one per framework)


def numba_kernels_enabled() -> bool:
    """Whether tinygrad_gpt's optional numba CPU kernels are in use (TINYGRAD_GPT_NUMBA=0 turns them off)."""
    try:
        from tinygrad_gpt.kernels import cpu as cpu_kernels
    except ImportError:
        return False
    return bool(getattr(cpu_kernels, "enabled", False))


class TinygradTrainer:
    """Worker side for tinygrad_gpt: builds the GPT and AdamW, runs timed steps on command."""

    def setup(self, cfg: dict, seed: int, lr: float, **_) -> dict:
        from tinygrad_gpt import Tensor, backend, manual_seed
        from tinygrad_gpt.model import GPT, GPTConfig
        from tinygrad_gpt.optim import AdamW, clip_grad_norm_

        import_rss = peak_rss_mib()
        backend.tune_malloc()  # as the training CLI does
        manual_seed(seed)
        config = GPTConfig(
            vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
            n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=True,
        )  # fmt: skip
        self.model = GPT(config)
        self.params = list(self.model.parameters())
        groups = self.model.param_groups(weight_decay=0.1)  # nanoGPT: decay matrices, not biases/gains
        self.optimizer = AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
        self.clip = clip_grad_norm_
        self.backend = backend
        self.batches = [(Tensor(x), Tensor(y)) for x, y in make_batches(cfg, seed)]
        self.i, self.loss, self.gpu_peak = 0, None, 0
        device = backend.device_name()
        if backend.DEFAULT_DEVICE == "cpu":
            device += ", numba kernels on" if numba_kernels_enabled() else ", pure NumPy (no numba kernels)"
        return {"device": device, "n_params": sum(p.size for p in self.params), "import_rss_mib": import_rss}

    def step(self) -> None:
        x, y = self.batches[self.i % N_BATCHES]
        self.i += 1
        _, self.loss = self.model(x, y)
        self.loss.backward()
        self.clip(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def sync(self) -> None:
        self.backend.synchronize()
        if self.backend.DEFAULT_DEVICE == "cuda":  # the pool keeps what it once held, so this tracks the peak
            self.gpu_peak = max(self.gpu_peak, self.backend.memory_stats()["total_bytes"])

    def loss_value(self) -> float:
        return float(self.loss.item()) if self.loss is not None else float("nan")  # nan: no step yet

    def gpu_peak_mib(self) -> float | None:
        return self.gpu_peak / (1 << 20) if self.backend.DEFAULT_DEVICE == "cuda" else None


class TorchTrainer:
    """Worker side for the PyTorch reference (benchmarks/torch_gpt.py)."""

    def setup(self, cfg: dict, seed: int, lr: float, threads: int, device: str, tf32: bool, attention: str) -> dict:
        import torch
        from torch_gpt import TorchGPT, TorchGPTConfig

        import_rss = peak_rss_mib()
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.manual_seed(seed)
        self.torch, self.device = torch, device
        config = TorchGPTConfig(
            vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
            n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=True, attention=attention,
        )  # fmt: skip
        self.model = TorchGPT(config).to(device)
        self.optimizer = self.model.configure_optimizers(0.1, lr, (0.9, 0.99), device)
        self.batches = [
            (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in make_batches(cfg, seed)
        ]
        self.i, self.loss = 0, None
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        n_params = sum(p.numel() for p in self.model.parameters())
        return {"device": f"{name}, torch {torch.__version__}", "n_params": n_params, "import_rss_mib": import_rss}

    def step(self) -> None:
        x, y = self.batches[self.i % N_BATCHES]
        self.i += 1
        _, self.loss = self.model(x, y)
        self.loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def loss_value(self) -> float:
        return float(self.loss.item()) if self.loss is not None else float("nan")  # nan: no step yet

    def gpu_peak_mib(self) -> float | None:
        return self.torch.cuda.max_memory_reserved() / (1 << 20) if self.device == "cuda" else None


def worker_main(framework: str) -> None:
    trainer = TinygradTrainer() if framework == "tinygrad" else TorchTrainer()

    def run(steps: int) -> dict:
        times = []
        trainer.sync()
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.step()
            trainer.sync()
            times.append(time.perf_counter() - t0)
        return {"times": times, "loss": trainer.loss_value()}

    def stats() -> dict:
        return {"peak_rss_mib": peak_rss_mib(), "gpu_peak_mib": trainer.gpu_peak_mib()}

    serve({"setup": trainer.setup, "run": run, "stats": stats})


# ---------------------------------------------------------------- parent


def measure_sgemm(args, env: dict) -> dict:
    """Run benchmarks/sgemm.py in its own process with the workers' thread settings."""
    size = args.sgemm_size or (8192 if args.backend == "cupy" else 2048)
    cmd = [sys.executable, str(HERE / "sgemm.py"), "--json", "--size", str(size), "--backend", args.backend]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_blocks(args, cfg: dict, env: dict) -> dict:
    """Set up each framework's worker, warm both up, then time alternating blocks. Returns per-framework results."""
    device = "cuda" if args.backend == "cupy" else "cpu"
    setup = dict(
        cfg=cfg, seed=args.seed, lr=args.learning_rate, threads=args.threads,
        device=device, tf32=args.tf32, attention=args.torch_attention,
    )  # fmt: skip
    results = {fw: {"times": [], "losses": []} for fw in args.frameworks}
    workers = {}
    try:
        for fw in args.frameworks:  # started one after the other, so imports and init do not overlap
            workers[fw] = Worker(fw, [str(HERE / "bench_train.py"), "--worker", fw], env)
            results[fw].update(workers[fw].call("setup", **setup))
        for fw in args.frameworks:
            workers[fw].call("run", steps=args.warmup)
        for block in range(args.blocks):
            order = args.frameworks if block % 2 == 0 else args.frameworks[::-1]
            for fw in order:
                time.sleep(HANDOFF_PAUSE_S)
                reply = workers[fw].call("run", steps=args.steps)
                results[fw]["times"] += reply["times"]
                results[fw]["losses"].append(reply["loss"])
        for fw in args.frameworks:
            results[fw].update(workers[fw].call("stats"))
    finally:
        for w in workers.values():
            w.close()
    return results


def summarize(results: dict, cfg: dict, sgemm_gflops: float) -> tuple[list[str], list[list]]:
    """The table: one row per framework and, with both, a ratio row (tinygrad_gpt / torch)."""
    tokens = cfg["batch_size"] * cfg["block_size"]
    flops = train_flops_per_step(cfg)
    columns = ["framework", "ms/step (median)", "ms/step (min)", "tokens/s", "GFLOP/s", "% of sgemm"]
    columns += ["RSS after imports (MiB)", "peak RSS (MiB)", "peak GPU mem (MiB)", "last loss"]
    rows = {}
    for fw, r in results.items():
        med, best = median(r["times"]), min(r["times"])
        gflops = flops / med / 1e9
        rows[fw] = [
            FRAMEWORK_LABELS[fw], 1e3 * med, 1e3 * best, tokens / med, gflops, 100 * gflops / sgemm_gflops,
            r["import_rss_mib"], r["peak_rss_mib"], r["gpu_peak_mib"], r["losses"][-1],
        ]  # fmt: skip
    table = list(rows.values())
    if len(rows) == 2:
        a, b = rows["tinygrad"], rows["torch"]
        ratio = ["ratio tinygrad_gpt / torch"]
        for x, y in zip(a[1:-1], b[1:-1]):
            ratio.append(x / y if x is not None and y is not None and y != 0 else None)
        table.append(ratio + [None])
    return columns, table


def report(args, cfg: dict, results: dict, sgemm: list[dict]) -> str:
    sgemm_gflops = max(s["gflops"] for s in sgemm)
    columns, rows = summarize(results, cfg, sgemm_gflops)
    first = results[args.frameworks[0]]
    lines = [
        f"## bench_train: `{args.config}` config, {args.backend} backend",
        "",
        f"- machine: {machine_line(args.threads)}",
        *[f"- {FRAMEWORK_LABELS[fw]}: {r['device']}" for fw, r in results.items()],
        f"- command: `{command_line()}`",
        f"- model: {describe_config(cfg)}; {first['n_params'] / 1e6:.2f}M parameters (formula: {num_params(cfg)})",
        f"- work: {cfg['batch_size'] * cfg['block_size']} tokens/step, "
        f"{train_flops_per_step(cfg) / 1e9:.3f} GFLOP/step "
        "(exact matmul count of forward + backward, full T x T attention; elementwise work not counted)",
        f"- timing: {args.blocks} blocks x {args.steps} steps per framework, alternating, after {args.warmup} "
        f"warm-up steps; each step = forward, backward, clip_grad_norm_(1.0), AdamW, zero_grad",
        f"- sgemm: {'cupy' if args.backend == 'cupy' else 'numpy'} float32 {sgemm[0]['n']}^3 matmul, "
        f"{sgemm_gflops:.1f} GFLOP/s (best of the medians measured before ({sgemm[0]['gflops']:.1f}) "
        f"and after ({sgemm[1]['gflops']:.1f}) the steps); '% of sgemm' is relative to it",
        "",
        markdown_table(columns, rows),
    ]
    if len(results) == 2:
        ratio = rows[-1][1]
        lines += ["", f"Median step time ratio tinygrad_gpt / torch: **{ratio:.3f}** (below 1: tinygrad_gpt is faster)"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="cupy: both on the GPU")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per framework before the blocks")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all CPUs)")
    parser.add_argument("--frameworks", default="tinygrad,torch", help="comma-separated: tinygrad, torch")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no_numba", action="store_true", help="tinygrad_gpt without its numba kernels")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (both frameworks)")
    parser.add_argument("--torch_attention", choices=["sdpa", "manual"], default="sdpa", help="torch's attention")
    parser.add_argument("--sgemm_size", type=int, default=None, help="sgemm probe size (default 2048 CPU, 8192 GPU)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if (
        not args.frameworks
        or not set(args.frameworks) <= set(FRAMEWORKS)
        or len(set(args.frameworks)) < len(args.frameworks)
    ):
        parser.error(f"--frameworks must name some of {', '.join(FRAMEWORKS)}, each once")
    if min(args.steps, args.blocks) < 1 or args.warmup < 0:
        parser.error("--steps and --blocks must be >= 1, --warmup >= 0")
    args.threads = args.threads or os.cpu_count()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    cfg = resolve_config(args)
    env = thread_env(args.threads, args.backend)
    if args.tf32:
        env["CUPY_TF32"] = "1"
    if args.no_numba:
        env["TINYGRAD_GPT_NUMBA"] = "0"
    sgemm = [measure_sgemm(args, env)]
    results = run_blocks(args, cfg, env)
    sgemm.append(measure_sgemm(args, env))
    print(report(args, cfg, results, sgemm))
    if args.json:
        raw = {"config": cfg, "args": {k: v for k, v in vars(args).items() if k != "worker"}}
        raw.update(sgemm=sgemm, results=results, flops_per_step=train_flops_per_step(cfg))
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    if any(not math.isfinite(r["losses"][-1]) for r in results.values()):
        sys.exit("error: a framework's loss is not finite")


if __name__ == "__main__":
    main()
