"""Probe the machine's float32 matmul (sgemm) throughput: the yardstick for a training step's GFLOP/s.

    python benchmarks/sgemm.py                       # numpy, 2048 x 2048 @ 2048 x 2048, all cores
    python benchmarks/sgemm.py --threads 2 --json    # one JSON line (what bench_train.py reads)
    python benchmarks/sgemm.py --framework torch     # torch's GEMM on the same shapes, for comparison
    python benchmarks/sgemm.py --backend cupy --size 8192

Thread counts must be fixed before numpy/torch are imported, so they are imported inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from harness import THREAD_ENV_VARS, median


def _numpy_matmul(n: int, backend: str):
    if backend == "cupy":
        import cupy as xp

        sync = xp.cuda.Device().synchronize
    else:
        import numpy as xp

        def sync():
            return None

    rng = xp.random.RandomState(0) if backend == "cupy" else xp.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=xp.float32)
    b = rng.standard_normal((n, n), dtype=xp.float32)
    out = xp.empty((n, n), dtype=xp.float32)
    return (lambda: xp.matmul(a, b, out=out)), sync


def _torch_matmul(n: int, backend: str, threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if backend == "cupy" else "cpu"
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return (lambda: torch.matmul(a, b, out=out)), sync


def measure_sgemm(
    n: int = 2048, repeats: int = 10, backend: str = "numpy", framework: str = "numpy", threads: int | None = None
) -> dict:
    """Time `repeats` float32 (n, n) @ (n, n) products after two warm-up ones.

    Args:
        n: matrix size.
        repeats: timed products; the median is reported.
        backend: "numpy" (CPU) or "cupy" (GPU).
        framework: "numpy" (numpy/cupy's matmul) or "torch".
        threads: torch's thread count (numpy's is set by the environment before import).
    Returns:
        dict with n, repeats, median_ms, gflops (from the median), best_gflops.
    """
    if framework == "torch":
        matmul, sync = _torch_matmul(n, backend, threads)
    else:
        matmul, sync = _numpy_matmul(n, backend)
    for _ in range(2):
        matmul()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul()
        sync()
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    return {
        "n": n,
        "repeats": repeats,
        "median_ms": 1e3 * median(times),
        "gflops": flops / median(times) / 1e9,
        "best_gflops": flops / min(times) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="matrix size n of the (n, n) @ (n, n) product")
    parser.add_argument("--repeats", type=int, default=10, help="timed products (median reported)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--framework", choices=["numpy", "torch"], default="numpy")
    parser.add_argument("--threads", type=int, default=None, help="thread count (default: leave as is)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()
    if args.threads:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(args.threads)
    result = measure_sgemm(args.size, args.repeats, args.backend, args.framework, args.threads)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.framework} float32 matmul {args.size}x{args.size} @ {args.size}x{args.size} on {args.backend}: "
            f"{result['gflops']:.1f} GFLOP/s (median of {args.repeats}, {result['median_ms']:.2f} ms), "
            f"best {result['best_gflops']:.1f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
