"""Time data-parallel GPT training steps: R=1 process with T threads vs R ranks with T/R threads each.

    python benchmarks/bench_ddp.py                     # small config, R=1 (2 threads) vs R=2 (1 thread each)
    python benchmarks/bench_ddp.py --config tiny --steps 2 --warmup 1      # CI-sized
    python benchmarks/bench_ddp.py --zero              # ZeroAdamW instead of AdamW + allreduce

Both runs train the same global batch per step: G = R_max micro-batches of `batch_size`, G/R per rank
(one process accumulates all G). A step is the micro-batches' forward and backward, a barrier (so the
allreduce is timed alone, not the wait for a slower rank), the gradient allreduce (one collective over
one contiguous buffer, `tinygrad_gpt.distributed.GradSync`), clip_grad_norm_(1.0), the AdamW step and
zero_grad. The library is used directly, not the training CLI. Prints a markdown table; medians over steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    HERE,
    add_config_args,
    describe_config,
    machine_line,
    markdown_table,
    median,
    num_params,
    resolve_config,
    thread_env,
)

COLUMNS = ["ranks x threads", "step (ms)", "fwd+bwd (ms)", "wait (ms)", "allreduce (ms)", "optimizer (ms)",
           "allreduce MB/step", "allreduce GB/s (algbw)", "tokens/s", "speedup"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser, default="small")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="threads in all: R ranks get threads/R each")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="numbers of ranks to compare")
    parser.add_argument("--zero", action="store_true", help="ZeroAdamW (ZeRO-1) instead of allreduce + AdamW")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: time one allreduce of 1 KB..64 MB float32 buffers on the largest --ranks")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or min(args.ranks) < 1 or args.threads < 1:
        parser.error("--steps and --ranks must be >= 1, --warmup >= 0, --threads >= 1")
    return args


# ---------------------------------------------------------------- one rank


def worker(args) -> None:
    """Run under mpiexec (or alone): time the steps; rank 0 prints one JSON line of medians."""
    import numpy as np

    from tinygrad_gpt import backend, distributed, manual_seed
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, clip_grad_norm_
    from tinygrad_gpt.zero import ZeroAdamW

    backend.tune_malloc()  # as the training CLI does

    cfg = resolve_config(args)
    world = distributed.init()
    manual_seed(1337)
    model = GPT(GPTConfig(**{k: cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}))
    groups = model.param_groups(0.1)
    optimizer = ZeroAdamW(groups, world, lr=1e-3) if args.zero else AdamW(groups, lr=1e-3)
    sync = distributed.GradSync(model.parameters(), world)
    G = max(args.ranks)
    rng = np.random.default_rng(world.rank)
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    times = {k: [] for k in ("step", "compute", "wait", "allreduce", "optimizer")}
    for step in range(args.warmup + args.steps):
        micro = world.micro_batches(G)
        t0 = time.perf_counter()
        for _ in micro:
            tokens = rng.integers(0, V, size=(B, T + 1))
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
            (loss * (1.0 / len(micro))).backward()
        t1 = time.perf_counter()
        world.barrier()
        t2 = time.perf_counter()
        if not args.zero:
            sync.allreduce_()
        t3 = time.perf_counter()
        if args.zero:
            optimizer.step(max_grad_norm=1.0)  # its reduce-scatter and allgather are counted here
        else:
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        if step >= args.warmup:
            for key, dt in zip(times, (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(dt)
    if world.is_main:
        result = {k: median(v) for k, v in times.items()}
        result.update(ranks=world.size, allreduce_bytes=0 if args.zero or world.size == 1 else sync.nbytes,
                      grad_bytes=sync.nbytes, tokens_per_step=G * B * T)
        print(json.dumps(result), flush=True)


def sweep_worker() -> None:
    """Time MPI allreduces of growing float32 buffers (rank 0 prints one JSON line: size -> seconds)."""
    import numpy as np

    from tinygrad_gpt import distributed

    world = distributed.init()
    result = {}
    for nbytes in [2**k for k in range(10, 27, 2)]:  # 1 KB .. 64 MB
        buf = np.ones(nbytes // 4, dtype=np.float32)
        repeats = max(3, min(100, (1 << 24) // nbytes))
        samples = []
        for _ in range(repeats + 1):
            world.barrier()
            t0 = time.perf_counter()
            world.allreduce_mean_(buf)
            samples.append(time.perf_counter() - t0)
        result[nbytes] = median(samples[1:])
    if world.is_main:
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent


def run(args, ranks: int, extra: list | None = None) -> dict:
    """One mpiexec run with `ranks` ranks of args.threads // ranks threads each; its JSON result."""
    threads = max(1, args.threads // ranks)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--config", args.config, "--ranks", *map(str, args.ranks)]
    command += [f"--{k}={v}" for k, v in resolve_config(args).items()]
    command += (["--zero"] if args.zero else []) + (extra or [])
    if ranks > 1 or shutil.which("mpiexec"):
        mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
        if mpiexec is None:
            raise SystemExit("error: mpiexec not found; pip install mpi4py mpich")
        command = [mpiexec, "-n", str(ranks), *command]
    env = thread_env(threads)
    env["PYTHONPATH"] = str(HERE.parent) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {ranks}-rank run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    return result


def sweep(args) -> None:
    """Print the allreduce time per buffer size, and the latency and bandwidth a line through them gives."""
    ranks = max(args.ranks)
    result = run(args, ranks, ["--sweep"])
    sizes = sorted(int(k) for k in result if k.isdigit())
    rows = [[f"{n / 1e6:.3f}", f"{1e6 * result[str(n)]:.0f}", f"{n / result[str(n)] / 1e9:.2f}",
             f"{2 * (ranks - 1) / ranks * n / result[str(n)] / 1e9:.2f}"] for n in sizes]
    print(f"# MPI allreduce (sum + scale) of float32 buffers, {ranks} ranks on one machine; "
          f"{machine_line(args.threads)}")
    print(markdown_table(["MB", "time (us)", "algbw GB/s", "busbw GB/s"], rows))


def row(result: dict, base_step: float) -> list:
    ms = {k: f"{1000 * result[k]:.1f}" for k in ("step", "compute", "wait", "allreduce", "optimizer")}
    nbytes, seconds = result["allreduce_bytes"], result["allreduce"]
    rate = f"{nbytes / seconds / 1e9:.2f}" if nbytes and seconds > 0 else "-"
    return [f"{result['ranks']} x {result['threads']}", ms["step"], ms["compute"], ms["wait"], ms["allreduce"],
            ms["optimizer"], f"{nbytes / 1e6:.2f}" if nbytes else "-", rate,
            f"{result['tokens_per_step'] / result['step']:.0f}", f"{base_step / result['step']:.2f}x"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        sweep_worker() if args.sweep else worker(args)
        return
    if args.sweep:
        sweep(args)
        return
    cfg = resolve_config(args)
    results = [run(args, ranks) for ranks in args.ranks]
    print(f"# bench_ddp: {describe_config(cfg)}; {num_params(cfg) / 1e6:.2f}M parameters, "
          f"fp32 gradients {results[0]['grad_bytes'] / 1e6:.2f} MB; global batch {max(args.ranks)} x "
          f"{cfg['batch_size']} x {cfg['block_size']} tokens per step; {'ZeroAdamW' if args.zero else 'AdamW'}")
    print(f"# {machine_line(args.threads)}; medians of {args.steps} steps after {args.warmup} warm-up")
    print(markdown_table(COLUMNS, [row(r, results[0]["step"]) for r in results]))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg, "results": results}, indent=1))


if __name__ == "__main__":
    main()
