"""The full Tiny Shakespeare run of the speed issue: nanoGPT's small CPU config, final val loss and wall time.

    python benchmarks/bench_quality.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/bench_quality.py --data PATH --frameworks tinygrad,torch   # also PyTorch, one after the other

Settings are nanoGPT's shakespeare_char run on the CPU (`--device=cpu --compile=False --eval_iters=20
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`): learning_rate 1e-3, min_lr 1e-4, beta2 0.99, warmup 100, weight_decay 0.1, grad_clip 1.0,
evaluation every 250 iterations over 20 batches. Character vocabulary, 90/10 train/val split; random
batches from one seeded generator, identical for both frameworks. Each framework trains in its own
subprocess; the data file is read where it lies, never copied.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

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

HPARAMS = dict(  # nanoGPT's names and the settings
    learning_rate=1e-3, min_lr=1e-4, beta1=0.9, beta2=0.99, warmup_iters=100, lr_decay_iters=2000,
    weight_decay=0.1, grad_clip=1.0, max_iters=2000, eval_interval=250, eval_iters=20, seed=1337,
    final_eval_iters=200,
)  # fmt: skip


class CharData:
    """A text file as character ids, split 90/10, with nanoGPT-style random batches."""

    def __init__(self, path: str, block_size: int, batch_size: int, seed: int):
        import numpy as np

        text = Path(path).read_text(encoding="utf-8")
        chars = sorted(set(text))
        self.vocab_size = len(chars)
        lookup = np.zeros(max(map(ord, chars)) + 1, dtype=np.uint16)
        lookup[[ord(c) for c in chars]] = np.arange(len(chars), dtype=np.uint16)
        ids = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]  # (n,)
        n = int(0.9 * len(ids))
        self.splits = {"train": ids[:n], "val": ids[n:]}
        if min(len(s) for s in self.splits.values()) <= block_size + 1:
            raise ValueError(f"{path}: {len(ids)} characters are too few for block_size {block_size} in both splits")
        self.block_size, self.batch_size = block_size, batch_size
        self.rng = np.random.default_rng(seed)
        self.offsets = np.arange(block_size)

    def batch(self, split: str):
        """(x, y) int64 arrays (B, T); y is x shifted by one character."""
        data = self.splits[split]
        starts = self.rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        idx = starts[:, None] + self.offsets  # (B, T)
        return data[idx].astype("int64"), data[idx + 1].astype("int64")


# ---------------------------------------------------------------- one framework's training loop


class TinygradRun:
    """tinygrad_gpt's side: model, optimizer and the few calls that differ from torch."""

    def __init__(self, cfg: dict, h: dict, threads: int):
        from tinygrad_gpt import backend, manual_seed, no_grad
        from tinygrad_gpt.model import GPT, GPTConfig
        from tinygrad_gpt.optim import AdamW, clip_grad_norm_

        backend.tune_malloc()  # as the training CLI does

        manual_seed(h["seed"])
        self.model = GPT(GPTConfig(**{k: cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}))
        self.params = self.model.parameters()
        groups = self.model.param_groups(h["weight_decay"])
        self.optimizer = AdamW(groups, lr=h["learning_rate"], betas=(h["beta1"], h["beta2"]))
        self.clip, self.no_grad = clip_grad_norm_, no_grad

    def train_step(self, x, y, lr: float, grad_clip: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, loss = self.model(x, y)
        loss.backward()
        if grad_clip > 0:
            self.clip(self.params, grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def eval_loss(self, batches) -> float:
        self.model.eval()
        with self.no_grad():
            losses = [self.model(x, y)[1].item() for x, y in batches]
        self.model.train()
        return sum(losses) / len(losses)


class TorchRun:
    """PyTorch's side (benchmarks/torch_gpt.py, nanoGPT's model and configure_optimizers)."""

    def __init__(self, cfg: dict, h: dict, threads: int):
        import torch
        from torch_gpt import TorchGPT, TorchGPTConfig

        torch.set_num_threads(threads)
        torch.manual_seed(h["seed"])
        self.torch = torch
        config = TorchGPTConfig(**{k: cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")})
        self.model = TorchGPT(config)
        self.optimizer = self.model.configure_optimizers(
            h["weight_decay"], h["learning_rate"], (h["beta1"], h["beta2"]), "cpu"
        )

    def train_step(self, x, y, lr: float, grad_clip: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, loss = self.model(self.torch.from_numpy(x), self.torch.from_numpy(y))
        loss.backward()
        if grad_clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def eval_loss(self, batches) -> float:
        self.model.eval()
        with self.torch.no_grad():
            losses = [self.model(self.torch.from_numpy(x), self.torch.from_numpy(y))[1].item() for x, y in batches]
        self.model.train()
        return sum(losses) / len(losses)


def train(framework: str, data_path: str, cfg: dict, h: dict, threads: int, lrs: list) -> dict:
    """nanoGPT's loop (evaluate every eval_interval and at the end; clip; AdamW at the rates `lrs`, one per iter)."""
    t_start = time.perf_counter()
    data = CharData(data_path, cfg["block_size"], cfg["batch_size"], h["seed"])
    cfg = {**cfg, "vocab_size": data.vocab_size}
    run = (TinygradRun if framework == "tinygrad" else TorchRun)(cfg, h, threads)
    label = FRAMEWORK_LABELS[framework]
    evals, step_times = [], []
    t_loop = time.perf_counter()
    for it in range(h["max_iters"] + 1):
        if it % h["eval_interval"] == 0 or it == h["max_iters"]:
            losses = {s: run.eval_loss([data.batch(s) for _ in range(h["eval_iters"])]) for s in ("train", "val")}
            evals.append({"iter": it, **losses})
            elapsed = time.perf_counter() - t_loop
            print(f"{label}: iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f} ({elapsed:.1f} s)")
        if it == h["max_iters"]:
            break
        x, y = data.batch("train")
        t0 = time.perf_counter()
        run.train_step(x, y, lrs[it], h["grad_clip"])
        step_times.append(time.perf_counter() - t0)
    t_end = time.perf_counter()
    # outside the timed loop: the final model once more on many batches, for a low-noise figure
    precise = {s: run.eval_loss([data.batch(s) for _ in range(h["final_eval_iters"])]) for s in ("train", "val")}
    print(f"{label}: final model on {h['final_eval_iters']} batches: train {precise['train']:.4f}, "
          f"val {precise['val']:.4f}")
    return {
        "precise_val": precise["val"],
        "evals": evals,
        "final_val": evals[-1]["val"],
        "final_train": evals[-1]["train"],
        "best_val": min(e["val"] for e in evals),
        "loop_s": t_end - t_loop,
        "setup_s": t_loop - t_start,
        "ms_per_iter": 1e3 * median(step_times) if step_times else float("nan"),
        "peak_rss_mib": peak_rss_mib(),
        "vocab_size": data.vocab_size,
    }


# ---------------------------------------------------------------- parent


def learning_rates(h: dict) -> list[float]:
    """Each iteration's rate from tinygrad_gpt.optim.cosine_lr (nanoGPT's schedule), the same for both frameworks.

    Computed here in the parent and sent to the workers, so the torch worker never imports tinygrad_gpt.
    """
    from tinygrad_gpt.optim import cosine_lr

    args = (h["learning_rate"], h["warmup_iters"], h["lr_decay_iters"], h["min_lr"])
    return [cosine_lr(it, *args) for it in range(h["max_iters"])]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="the Tiny Shakespeare text (e.g. ../shared/data/tinyshakespeare.txt)"
    )
    add_config_args(parser, default="small")
    for key, value in HPARAMS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value, help=f"nanoGPT's {key} (default {value})")
    parser.add_argument("--frameworks", default="tinygrad", help="comma-separated: tinygrad, torch (in this order)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all CPUs)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not args.frameworks or not set(args.frameworks) <= set(FRAMEWORKS):
        parser.error(f"--frameworks must name some of {', '.join(FRAMEWORKS)}")
    if not 0 <= args.warmup_iters <= args.lr_decay_iters:
        parser.error("need 0 <= --warmup_iters <= --lr_decay_iters")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    args.threads = args.threads or os.cpu_count()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        serve({"train": train})
        return
    cfg = resolve_config(args)
    h = {key: getattr(args, key) for key in HPARAMS}
    lrs = learning_rates(h)
    results = {}
    for fw in args.frameworks:  # one after the other: each gets the machine to itself
        t0 = time.perf_counter()
        with Worker(
            fw, [str(HERE / "bench_quality.py"), "--worker", "--data", args.data], thread_env(args.threads)
        ) as w:
            results[fw] = w.call(
                "train", framework=fw, data_path=args.data, cfg=cfg, h=h, threads=args.threads, lrs=lrs
            )
        results[fw]["process_s"] = time.perf_counter() - t0
    tokens = cfg["batch_size"] * cfg["block_size"]
    columns = ["framework", "final val loss", f"final val loss ({h['final_eval_iters']} batches)",
               "final train loss", "best val loss", "train loop (s)"]
    columns += ["process (s)", "ms/iter (median)", "tokens/s", "peak RSS (MiB)"]
    rows = [
        [FRAMEWORK_LABELS[fw], f"{r['final_val']:.4f}", f"{r['precise_val']:.4f}", f"{r['final_train']:.4f}",
         f"{r['best_val']:.4f}", r["loop_s"], r["process_s"],
         r["ms_per_iter"], 1e3 * tokens / r["ms_per_iter"], r["peak_rss_mib"]]
        for fw, r in results.items()
    ]  # fmt: skip
    cfg["vocab_size"] = next(iter(results.values()))["vocab_size"]
    print(f"\n## bench_quality: {h['max_iters']} iterations on {Path(args.data).name}\n")
    print(f"- machine: {machine_line(args.threads)}")
    print(f"- command: `{command_line()}`")
    print(f"- model: {describe_config(cfg)}")
    print("- settings: " + ", ".join(f"{k} {v}" for k, v in h.items()))
    print("- train loop = iterations + evaluations; process = interpreter start, imports, data and model included")
    print("- the issue's reference: nanoGPT reaches val loss 1.886 in 56 s on the 2-core machine\n")
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
