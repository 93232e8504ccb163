"""A data-parallel training run of a tiny GPT, for tests/test_distributed.py (run with or without mpiexec).

    mpiexec -n 2 python tests/dist_worker.py --out run.npz --G 2 --steps 3 [--zero] [--dtype float64]

The G micro-batches of iteration `it` are drawn from (seed, it, k), k = 0..G-1, so any number of
ranks dividing G sees the same batches. Rank r starts from weights seeded with seed + r and takes
rank 0's by broadcast. Rank 0 writes the step losses, the final parameters and the optimizer state
(AdamW's layout) to --out; --load continues from such a file (possibly written with another R).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np

from tinygrad_gpt import backend, distributed, manual_seed, set_default_dtype
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, clip_grad_norm_
from tinygrad_gpt.zero import ZeroAdamW

CONFIG = dict(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
BATCH_SIZE = 2


def get_batch(seed: int, it: int, k: int):
    """Micro-batch k of iteration it: (x, y) int64 (B, T), the same on every rank and for every R."""
    rng = np.random.default_rng([seed, it, k])
    tokens = rng.integers(0, CONFIG["vocab_size"], size=(BATCH_SIZE, CONFIG["block_size"] + 1))
    return tokens[:, :-1], tokens[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--G", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--zero", action="store_true")
    parser.add_argument("--load", default=None)
    parser.add_argument("--fail_on_rank", type=int, default=-1, help="this rank fails in the first step")
    parser.add_argument("--fail", choices=("raise", "kill"), default="raise", help="by an exception or SIGKILL")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()

    world = distributed.init()  # under mpiexec an uncaught exception on any rank aborts the job
    world.check_same(json.dumps(vars(args), sort_keys=True), "command line")
    set_default_dtype(args.dtype)
    manual_seed(args.seed + world.rank)  # different weights per rank: the broadcast must fix them
    model = GPT(GPTConfig(**CONFIG))
    distributed.broadcast_parameters(model.parameters(), world)
    groups = model.param_groups(0.1)
    if args.zero:
        optimizer = ZeroAdamW(groups, world, lr=3e-3, betas=(0.9, 0.99))
    else:
        optimizer, sync = AdamW(groups, lr=3e-3, betas=(0.9, 0.99)), distributed.GradSync(model.parameters(), world)
    start = 0
    if args.load:
        start = load(args.load, model, optimizer)

    losses = []
    for it in range(start, start + args.steps):
        micro = world.micro_batches(args.G)
        step_loss = 0.0
        for k in micro:
            if world.rank == args.fail_on_rank:  # the fault tests: this rank dies while the others wait
                fail(args.fail, world.rank)
            _, loss = model(*get_batch(args.seed, it, k))
            (loss * (1.0 / len(micro))).backward()
            step_loss += float(backend.to_numpy(loss.data)) / args.G
        if args.zero:
            optimizer.step(max_grad_norm=1.0)
        else:
            sync.allreduce_()
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad()
        losses.append(sum(world.allgather_object(step_loss)))
    state = optimizer.state_dict()  # collective for ZeroAdamW
    if world.is_main:
        save(args.out, model, state, losses, start + args.steps, optimizer)


def fail(how: str, rank: int) -> None:
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"rank {rank} fails on purpose")


def save(path: str, model, state: dict, losses: list, iteration: int, optimizer) -> None:
    arrays = {f"param.{name}": backend.to_numpy(p.data) for name, p in model.named_parameters()}
    for i, entry in state["state"].items():
        arrays.update({f"state.{i}.{key}": backend.to_numpy(entry[key]) for key in ("exp_avg", "exp_avg_sq")})
        arrays[f"state.{i}.step"] = np.array(entry["step"])
    meta = {"losses": losses, "iteration": iteration, "groups": state["param_groups"],
            "state_nbytes": getattr(optimizer, "state_nbytes", None)}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load(path: str, model, optimizer) -> int:
    """Weights and optimizer state from a file `save` wrote; returns the iteration to continue from."""
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        model.load_state_dict({k[len("param."):]: f[k] for k in f.files if k.startswith("param.")})
        state = {}
        for k in f.files:
            if k.startswith("state."):
                _, i, key = k.split(".")
                state.setdefault(int(i), {})[key] = f[k]
    optimizer.load_state_dict({"param_groups": meta["groups"], "state": state})
    return meta["iteration"]


if __name__ == "__main__":
    main()
