"""Time to quality: the speedrun recipe against nanoGPT's CPU run, both timed in one run on this machine.

    python benchmarks/bench_speedrun.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/bench_speedrun.py --data PATH --seeds 1337 --ablation    # docs/faster.md's table
    python benchmarks/bench_speedrun.py --data PATH --tiny                     # seconds: CI checks it runs

For each seed:
1. The baseline: nanoGPT's Tiny Shakespeare CPU run in PyTorch (benchmarks/torch_gpt.py, nanoGPT's model and
   AdamW groups; bench_quality.py's settings: 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0,
   lr 1e-3 with warmup 100 and cosine to 1e-4 at 2000 iterations, betas (0.9, 0.99), weight decay 0.1,
   grad clip 1), evaluated every --baseline_eval_interval iterations. Its loss at the end is the target.
2. The recipe: `python -m tinygrad_gpt.train --config configs/speedrun_char.toml --data PATH --seed S`,
   our training code as a user runs it, evaluated every --recipe_eval_interval iterations.
Both are evaluated on the same fixed validation windows: those train.py evaluates on (data.fixed_windows:
the recipe's eval_iters x batch_size windows of block_size, evenly spaced over the validation split).
Time to target counts training steps only (evaluations excluded: metrics.jsonl's train_time_s for ours,
the same sum of step times for the baseline), interpolated linearly between the evaluation before the
target is reached and the first one at or below it. Both run with the same thread count (every BLAS and
OpenMP pool pinned, torch.set_num_threads), one after the other per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_quality import HPARAMS, CharData, TorchRun, learning_rates
from harness import HERE, Worker, command_line, machine_line, markdown_table, median, serve, thread_env

REPO = HERE.parent
RECIPE = REPO / "configs" / "speedrun_char.toml"
BASELINE_MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)  # nanoGPT's CPU command
TINY_MODEL = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4)
TINY_RECIPE = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
               "--max_iters", "30", "--warmup_iters", "3", "--eval_iters", "2"]  # fmt: skip
# docs/faster.md's ablation: each row adds one change to the row above; the last row is the recipe itself
ABLATION = [
    ("nanoGPT's settings, our code", ["--optimizer", "adamw", "--learning_rate", "1e-3", "--min_lr", "1e-4",
     "--warmup_iters", "100", "--lr_schedule", "cosine", "--max_iters", "2000", "--pos_encoding", "learned",
     "--norm_type", "layernorm", "--qk_norm", "false", "--activation", "gelu", "--tie_weights", "true",
     "--zero_init_head", "false", "--logit_softcap", "none", "--bias", "true"]),
    ("+ Muon (hidden matrices) and AdamW lr 6e-3", ["--optimizer", "muon", "--learning_rate", "6e-3",
     "--min_lr", "6e-4", "--warmup_iters", "20", "--lr_schedule", "cosine", "--max_iters", "600",
     "--pos_encoding", "learned", "--norm_type", "layernorm", "--qk_norm", "false", "--activation", "gelu",
     "--tie_weights", "true", "--zero_init_head", "false", "--logit_softcap", "none", "--bias", "true"]),
    ("+ rotary positions, no biases", ["--optimizer", "muon", "--learning_rate", "6e-3", "--min_lr", "6e-4",
     "--warmup_iters", "20", "--lr_schedule", "cosine", "--max_iters", "600", "--norm_type", "layernorm",
     "--qk_norm", "false", "--activation", "gelu", "--tie_weights", "true", "--zero_init_head", "false",
     "--logit_softcap", "none"]),
    ("+ ReLU^2", ["--optimizer", "muon", "--learning_rate", "6e-3", "--min_lr", "6e-4", "--warmup_iters", "20",
     "--lr_schedule", "cosine", "--max_iters", "600", "--norm_type", "layernorm", "--qk_norm", "false",
     "--tie_weights", "true", "--zero_init_head", "false", "--logit_softcap", "none"]),
    ("+ RMSNorm and QK-norm", ["--learning_rate", "6e-3", "--min_lr", "6e-4", "--lr_schedule", "cosine",
     "--max_iters", "600", "--tie_weights", "true", "--zero_init_head", "false", "--logit_softcap", "none"]),
    ("+ untied zero-initialised head, logit soft-cap", ["--min_lr", "6e-4", "--lr_schedule", "cosine",
     "--max_iters", "600"]),
    ("+ warmup-stable-decay schedule (the recipe)", []),
    ("the recipe with ns_steps 3", ["--ns_steps", "3"]),
    ("the recipe with batch 24, 200 iterations", ["--batch_size", "24", "--eval_iters", "10", "--max_iters", "200",
                                                  "--warmup_iters", "10"]),
]


# ---------------------------------------------------------------- the baseline (PyTorch worker)


def baseline(data_path: str, cfg: dict, h: dict, threads: int, lrs: list, windows: list, eval_interval: int) -> dict:
    """nanoGPT's run in PyTorch; evaluations on `windows` every eval_interval iterations and at the end."""
    import numpy as np

    data = CharData(data_path, cfg["block_size"], cfg["batch_size"], h["seed"])
    run = TorchRun({**cfg, "vocab_size": data.vocab_size}, h, threads)
    batches = [(np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)) for x, y in windows]
    evals, train_s = [], 0.0
    for it in range(h["max_iters"] + 1):
        if it % eval_interval == 0 or it == h["max_iters"]:
            evals.append({"iter": it, "val_loss": run.eval_loss(batches), "train_time_s": train_s})
            print(f"torch seed {h['seed']}: iter {it}: val {evals[-1]['val_loss']:.4f} ({train_s:.1f} s)", flush=True)
        if it == h["max_iters"]:
            break
        x, y = data.batch("train")
        t0 = time.perf_counter()
        run.train_step(x, y, lrs[it], h["grad_clip"])
        train_s += time.perf_counter() - t0
    return {"evals": evals}


# ---------------------------------------------------------------- the recipe (our CLI in a subprocess)


def recipe_config(recipe: Path, data: str, extra: list):
    """The recipe's resolved TrainConfig, parsed as the training command parses it."""
    from tinygrad_gpt.cli import build_config, parse_args
    from tinygrad_gpt.train_config import TrainConfig

    values, _ = parse_args(TrainConfig, ["--config", str(recipe), "--data", data, *extra], "bench_speedrun", "", "")
    return build_config(TrainConfig, values).resolved()


def eval_windows(config, work: Path) -> list:
    """The fixed validation batches train.py evaluates `config` on, as nested lists (for the torch worker)."""
    from tinygrad_gpt.data import build_dataset, fixed_windows, load_corpus

    _, splits = build_dataset(load_corpus(config.data), work, config.model.block_size)
    batches = fixed_windows(splits["val"], config.eval_iters, config.batch_size, config.model.block_size)
    return [(x.tolist(), y.tolist()) for x, y in batches]


def run_recipe(recipe: Path, data: str, seed: int, extra: list, threads: int, out_dir: Path) -> dict:
    """`python -m tinygrad_gpt.train --config recipe ...`; its evaluation rows from metrics.jsonl."""
    argv = [sys.executable, "-m", "tinygrad_gpt.train", "--config", str(recipe), "--data", data, "--seed", str(seed),
            "--out_dir", str(out_dir), "--overwrite", "--plot", "false", "--max_new_tokens", "0", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=thread_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the recipe failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    print(f"ours seed {seed}: " + ", ".join(f"{r['iter']}: {r['val_loss']:.4f} ({r['train_time_s']:.1f} s)"
                                            for r in evals), flush=True)  # fmt: skip
    return {"evals": evals, "process_s": time.perf_counter() - t0}


# ---------------------------------------------------------------- time to target


def time_to_target(evals: list, target: float) -> tuple[float, float] | None:
    """(training seconds, iterations) when the validation loss first reaches target, interpolated; None if never."""
    for before, row in zip([None] + evals[:-1], evals):
        if row["val_loss"] <= target:
            if before is None:
                return row["train_time_s"], row["iter"]
            f = (before["val_loss"] - target) / (before["val_loss"] - row["val_loss"])  # in (0, 1]
            return (before["train_time_s"] + f * (row["train_time_s"] - before["train_time_s"]),
                    before["iter"] + f * (row["iter"] - before["iter"]))  # fmt: skip
    return None


def measure_seed(args, seed: int, h: dict, cfg: dict, windows: list, work: Path) -> list[dict]:
    """The baseline, then each variant of the recipe (just the recipe, or the ablation's rows), for one seed."""
    h = {**h, "seed": seed}
    with Worker("torch", [str(HERE / "bench_speedrun.py"), "--worker", "--data", args.data],
                thread_env(args.threads)) as w:  # fmt: skip
        base = w.call("baseline", data_path=args.data, cfg=cfg, h=h, threads=args.threads, lrs=learning_rates(h),
                      windows=windows, eval_interval=args.baseline_eval_interval)  # fmt: skip
    target = base["evals"][-1]["val_loss"]
    base_time, base_iters = time_to_target(base["evals"], target)
    rows = []
    for name, extra in args.variants:
        extra = [*args.recipe_args, *extra, "--eval_interval", str(args.recipe_eval_interval)]
        config = recipe_config(args.recipe, args.data, extra)
        count, block = len(windows) * len(windows[0][0]), len(windows[0][0][0])  # windows, and their length
        if (config.eval_iters * config.batch_size, config.model.block_size) != (count, block):
            raise ValueError(f"{name}: its evaluation windows differ from the baseline's (keep eval_iters * "
                             "batch_size and block_size those of the recipe)")
        ours = run_recipe(args.recipe, args.data, seed, extra, args.threads, work / f"out-{seed}")
        reached = time_to_target(ours["evals"], target)
        rows.append({
            "seed": seed, "variant": name, "target": target, "baseline_s": base_time, "baseline_iters": base_iters,
            "baseline_total_s": base["evals"][-1]["train_time_s"], "ours_s": reached and reached[0],
            "ours_iters": reached and reached[1], "ours_final": ours["evals"][-1]["val_loss"],
            "ours_total_s": ours["evals"][-1]["train_time_s"], "ratio": reached and reached[0] / base_time,
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------- parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the Tiny Shakespeare text (../shared/data/tinyshakespeare.txt)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe's config file (default: %(default)s)")
    parser.add_argument("--recipe_args", default="", help="extra flags for the recipe's command, e.g. '--ns_steps 4'")
    parser.add_argument("--seeds", default="1337,1338", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both frameworks (default: 1)")
    parser.add_argument("--baseline_eval_interval", type=int, default=100)
    parser.add_argument("--recipe_eval_interval", type=int, default=25)
    parser.add_argument("--ablation", action="store_true", help="docs/faster.md's rows instead of the recipe alone")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and 30 iterations (CI)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds or args.threads < 1 or min(args.baseline_eval_interval, args.recipe_eval_interval) < 1:
        parser.error("need at least one seed, --threads >= 1 and evaluation intervals >= 1")
    args.recipe_args = args.recipe_args.split() + (TINY_RECIPE if args.tiny else [])
    args.variants = ABLATION if args.ablation else [("the recipe", [])]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        serve({"baseline": baseline})
        return
    h = {**HPARAMS, "final_eval_iters": 0}
    cfg = dict(TINY_MODEL if args.tiny else BASELINE_MODEL)
    if args.tiny:
        h.update(max_iters=30, lr_decay_iters=30, warmup_iters=3)
        args.baseline_eval_interval = min(args.baseline_eval_interval, 10)
        args.recipe_eval_interval = min(args.recipe_eval_interval, 5)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_speedrun-") as tmp:
        config = recipe_config(args.recipe, args.data, args.recipe_args)
        if config.model.block_size > cfg["block_size"]:
            sys.exit(f"bench_speedrun: the recipe's block_size {config.model.block_size} exceeds the baseline's "
                     f"{cfg['block_size']}, so the baseline cannot be evaluated on its windows")  # fmt: skip
        windows = eval_windows(config, Path(tmp))
        for seed in args.seeds:
            rows += measure_seed(args, seed, h, cfg, windows, Path(tmp))
    report(args, h, rows)


def report(args, h: dict, rows: list[dict]) -> None:
    """The markdown table (one row per seed and variant, then the median ratio) and the optional JSON."""
    def cell(x, digits=1):
        return "not reached" if x is None else f"{x:.{digits}f}"

    columns = ["seed", "variant", "target val loss", "baseline time to target (s)", "ours: iterations to target",
               "ours: time to target (s)", "ours: final val loss", "ratio ours / baseline"]  # fmt: skip
    table = [[str(r["seed"]), r["variant"], f"{r['target']:.4f}", cell(r["baseline_s"]), cell(r["ours_iters"], 0),
              cell(r["ours_s"]), f"{r['ours_final']:.4f}", cell(r["ratio"], 3)] for r in rows]  # fmt: skip
    for name, _ in args.variants:
        ratios = [r["ratio"] for r in rows if r["variant"] == name]
        ratio = median(ratios) if None not in ratios else None
        table.append(["median", name, "", "", "", "", "", cell(ratio, 3)])
    print(f"\n## bench_speedrun: time to nanoGPT's validation loss on {Path(args.data).name}\n")
    print(f"- machine: {machine_line(args.threads)} (OPENBLAS/OMP/MKL threads and torch.set_num_threads alike)")
    print(f"- command: `{command_line()}`")
    settings = ", ".join(f"{k} {v}" for k, v in h.items() if k not in ("eval_interval", "eval_iters", "seed",
                                                                         "final_eval_iters"))  # fmt: skip
    print(f"- baseline: PyTorch, nanoGPT's settings: {settings}; evaluated every {args.baseline_eval_interval}")
    print(f"- ours: {args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe}"
          + (f" with {' '.join(args.recipe_args)}" if args.recipe_args else ""))
    print("- times are training steps only (evaluations excluded), interpolated to the target\n")
    print(markdown_table(columns, table))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if any(math.isnan(r["target"]) for r in rows):
        sys.exit("bench_speedrun: the baseline's loss is NaN")


if __name__ == "__main__":
    main()
