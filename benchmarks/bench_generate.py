"""Time generation with a KV cache: tinygrad_gpt's `model.generate` beside PyTorch eager with a KV cache.

    python benchmarks/bench_generate.py --config small               # batch 1 and batch 8
    python benchmarks/bench_generate.py --config medium --blocks 3
    python benchmarks/bench_generate.py --tiny                       # one quick run (CI)

Both generate greedily (tinygrad_gpt: `generate(..., temperature=0)`; torch: `TorchGPT.generate_greedy(...,
use_cache=True)` from benchmarks/torch_gpt.py), from the same random prompt, the same number of new tokens,
so both do the same work: the prompt fills the cache, then each new token is one position's forward pass
over the cached keys and values. The default new-token count fills the context exactly (prompt + new =
block_size), so no step crops the context. Each framework runs in its own worker subprocess, alternating
block by block (as bench_train.py), with the same thread settings. tokens/s = batch * new tokens / time of
one whole `generate` call (prompt included); medians over the blocks' calls.
"""

from __future__ import annotations

import argparse
import json
import os
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
    peak_rss_mib,
    resolve_config,
    serve,
    thread_env,
)

HANDOFF_PAUSE_S = 0.1  # between blocks, so BLAS/OpenMP threads of the other worker have gone to sleep


def make_prompt(batch_size: int, prompt_len: int, vocab_size: int, seed: int):
    """(B, prompt_len) int64 random token ids, identical in both workers."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch_size, prompt_len), dtype=np.int64)


class TinygradGenerator:
    """Worker side for tinygrad_gpt: a GPT in eval mode; `generate` with its KV cache."""

    def setup(self, cfg: dict, seed: int, **_) -> dict:
        from tinygrad_gpt import backend, manual_seed
        from tinygrad_gpt.kernels import cpu as cpu_kernels
        from tinygrad_gpt.model import GPT, GPTConfig

        import_rss = peak_rss_mib()
        manual_seed(seed)
        config = GPTConfig(
            vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
            n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=True,
        )  # fmt: skip
        self.model = GPT(config)
        self.model.eval()
        self.backend = backend
        device = backend.device_name()
        if backend.DEFAULT_DEVICE == "cpu":
            device += ", numba kernels on" if cpu_kernels.enabled else ", pure NumPy (no numba kernels)"
        return {"device": device, "import_rss_mib": import_rss}

    def generate(self, prompt, new_tokens: int):
        out = self.model.generate(prompt, new_tokens, temperature=0.0)
        self.backend.synchronize()
        return out


class TorchGenerator:
    """Worker side for the PyTorch reference (benchmarks/torch_gpt.py) with its TorchKVCache."""

    def setup(self, cfg: dict, seed: int, threads: int, **_) -> dict:
        import torch
        from torch_gpt import TorchGPT, TorchGPTConfig

        import_rss = peak_rss_mib()
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        config = TorchGPTConfig(
            vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
            n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=True,
        )  # fmt: skip
        self.model = TorchGPT(config).eval()
        device = f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}"
        return {"device": device, "import_rss_mib": import_rss}

    def generate(self, prompt, new_tokens: int):
        return self.model.generate_greedy(self.torch.from_numpy(prompt), new_tokens, use_cache=True).numpy()


def worker_main(framework: str) -> None:
    generator = TinygradGenerator() if framework == "tinygrad" else TorchGenerator()

    def run(batch_size: int, prompt_len: int, new_tokens: int, vocab_size: int, seed: int, calls: int) -> dict:
        prompt = make_prompt(batch_size, prompt_len, vocab_size, seed)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            out = generator.generate(prompt, new_tokens)
            times.append(time.perf_counter() - t0)
        if out.shape != (batch_size, prompt_len + new_tokens):
            raise RuntimeError(f"generate returned shape {out.shape}, expected {(batch_size, prompt_len + new_tokens)}")
        return {"times": times}

    serve({"setup": generator.setup, "run": run, "stats": lambda: {"peak_rss_mib": peak_rss_mib()}})


# ---------------------------------------------------------------- parent


def run_blocks(args, cfg: dict, env: dict) -> dict:
    """{framework: {"times": {batch_size: [s, ...]}, ...}} from alternating blocks of `--calls` generate calls."""
    results = {fw: {"times": {b: [] for b in args.batch_sizes}} for fw in args.frameworks}
    workers = {}
    try:
        for fw in args.frameworks:  # started one after the other, so imports do not overlap
            workers[fw] = Worker(fw, [str(HERE / "bench_generate.py"), "--worker", fw], env)
            results[fw].update(workers[fw].call("setup", cfg=cfg, seed=args.seed, threads=args.threads))
        for b in args.batch_sizes:
            work = dict(batch_size=b, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                        vocab_size=cfg["vocab_size"], seed=args.seed)  # fmt: skip
            for fw in args.frameworks if args.warmup else ():
                workers[fw].call("run", calls=args.warmup, **work)
            for block in range(args.blocks):
                for fw in args.frameworks if block % 2 == 0 else args.frameworks[::-1]:
                    time.sleep(HANDOFF_PAUSE_S)
                    results[fw]["times"][b] += workers[fw].call("run", calls=args.calls, **work)["times"]
        for fw in args.frameworks:
            results[fw].update(workers[fw].call("stats"))
    finally:
        for w in workers.values():
            w.close()
    return results


def summarize(args, results: dict) -> tuple[list[str], list[list]]:
    """One row per (batch size, framework), and a ratio row per batch size when both ran."""
    columns = ["batch", "framework", "ms/call (median)", "ms/token (median)", "tokens/s", "peak RSS (MiB)"]
    rows = []
    for b in args.batch_sizes:
        per_fw = {}
        for fw in args.frameworks:
            med = median(results[fw]["times"][b])
            rss = results[fw]["peak_rss_mib"]
            per_fw[fw] = [1e3 * med, 1e3 * med / args.new_tokens, b * args.new_tokens / med, rss]
            rows.append([str(b), FRAMEWORK_LABELS[fw], *per_fw[fw]])
        if len(per_fw) == 2:
            ours, theirs = per_fw["tinygrad"], per_fw["torch"]
            rows.append([str(b), "ratio tinygrad_gpt / torch", *(x / y for x, y in zip(ours, theirs))])
    return columns, rows


def report(args, cfg: dict, results: dict) -> str:
    columns, rows = summarize(args, results)
    lines = [
        f"## bench_generate: `{args.config}` config, KV cache, greedy",
        "",
        f"- machine: {machine_line(args.threads)}",
        *[f"- {FRAMEWORK_LABELS[fw]}: {r['device']}" for fw, r in results.items()],
        f"- command: `{command_line()}`",
        f"- model: {describe_config(cfg)} (batch_size: see the table)",
        f"- work per call: a {args.prompt_len}-token prompt, then {args.new_tokens} new tokens per sequence",
        f"- timing: {args.blocks} blocks x {args.calls} calls per framework and batch size, alternating, after "
        f"{args.warmup} warm-up calls; ratio rows: tinygrad_gpt / torch (tokens/s above 1: tinygrad_gpt is faster)",
        "",
        markdown_table(columns, rows),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--batch_sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--prompt_len", type=int, default=8, help="prompt tokens per sequence")
    parser.add_argument("--new_tokens", type=int, default=None, help="new tokens (default: block_size - prompt_len)")
    parser.add_argument("--calls", type=int, default=2, help="timed generate calls per block")
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per framework and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per framework and batch size")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all CPUs)")
    parser.add_argument("--frameworks", default="tinygrad,torch", help="comma-separated: tinygrad, torch")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no_numba", action="store_true", help="tinygrad_gpt without its numba kernels")
    parser.add_argument("--tiny", action="store_true", help="one quick run: tiny config, 1 block of 1 call, 1 thread")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.blocks, args.calls, args.warmup, args.threads = "tiny", 1, 1, 0, args.threads or 1
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not args.frameworks or not set(args.frameworks) <= set(FRAMEWORKS) or len(set(args.frameworks)) < len(
        args.frameworks
    ):
        parser.error(f"--frameworks must name some of {', '.join(FRAMEWORKS)}, each once")
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch_sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or min(args.calls, args.blocks, args.prompt_len) < 1:
        parser.error("--batch_sizes, --calls, --blocks and --prompt_len must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    args.threads = args.threads or os.cpu_count()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    cfg = resolve_config(args)
    if args.new_tokens is None:
        args.new_tokens = cfg["block_size"] - args.prompt_len
    if args.prompt_len >= cfg["block_size"] or args.new_tokens < 1 or args.prompt_len + args.new_tokens > cfg[
        "block_size"
    ]:
        raise SystemExit(f"error: prompt_len {args.prompt_len} + new_tokens {args.new_tokens} must fit in "
                         f"block_size {cfg['block_size']} with at least one new token")
    env = thread_env(args.threads)
    if args.no_numba:
        env["TINYGRAD_GPT_NUMBA"] = "0"
    results = run_blocks(args, cfg, env)
    print(report(args, cfg, results))
    if args.json:
        raw = {"config": cfg, "args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
