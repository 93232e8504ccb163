"""Data parallelism for `python -m tinygrad_gpt.train`: the pieces the training loop calls.

One optimizer step of a run with G = gradient_accumulation_steps on R ranks (R = 1 without mpiexec):

    draw all G micro-batches of the step from the "train" sampler, in order; keep this rank's G/R
    for each: forward, backward of loss / (G/R)              (one process: loss / G, as nanoGPT)
    GradSync: the gradients averaged over ranks              (one allreduce over one contiguous buffer)
    clip, AdamW step                                         (or ZeroAdamW: reduce-scatter, step, allgather)
    the step's loss: the mean of the G micro-batch losses    (one allreduce of 2 numbers, with the stop flag)

The batches of a step depend on (seed, iteration, G), not on R: every rank draws all G micro-batches
from the same sampler (a few random integers each; only its own are run), so the sampler's state,
saved in checkpoints, is the same on every rank and for every R. With G = 1 this is exactly the
stream of a single process before data parallelism existed.

Dropout: with G > 1 the library generator is reseeded from (seed, iteration, k) before micro-batch k,
so rank r draws the masks one process draws for the same micro-batch. With G = 1 (one process) the
generator runs on as it always did, so older runs and checkpoints continue bit for bit.

Every rank evaluates the same batches (the losses are equal on all ranks, so the loop takes the same
branches everywhere); only rank 0 writes checkpoints, metrics.jsonl and loss.png and prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

from tinygrad_gpt import backend
from tinygrad_gpt.cli import UsageError, one_line
from tinygrad_gpt.distributed import GradSync, World, broadcast_parameters
from tinygrad_gpt.optim import AdamW, Optimizer
from tinygrad_gpt.zero import ZeroAdamW

__all__ = ["DataParallel", "Discard", "SameOnEveryRank", "make_optimizer", "optimizer_state", "quiet_unless_main",
           "start_from_rank_0"]


def make_optimizer(param_groups: list, config, world: World) -> Optimizer:
    """AdamW, or with `config.zero` ZeroAdamW (moments sharded over `world`), at config's lr and betas."""
    kwargs = dict(lr=config.learning_rate, betas=(config.beta1, config.beta2))
    if config.zero:
        return ZeroAdamW(param_groups, world, **kwargs)
    return AdamW(param_groups, **kwargs)


def start_from_rank_0(model, precision, world: World) -> None:
    """Overwrite every rank's weights (the model's and float16's float32 masters) with rank 0's.

    A collective: call it once every rank has set its run up (SameOnEveryRank), not inside that block.
    """
    params = {id(p): p for p in [*model.parameters(), *precision.params]}
    broadcast_parameters(list(params.values()), world)


class DataParallel:
    """One optimizer step of G micro-batches spread over the ranks of `world` (G/R each)."""

    def __init__(self, world: World, grad_accum_steps: int, seed: int, params: list, optimizer: Optimizer):
        """
        Args:
            world: from distributed.init().
            grad_accum_steps: G, a multiple of world.size (ValueError otherwise).
            seed: the run's seed (dropout masks of micro-batch k of iteration it come from (seed, it, k)).
            params: the parameters the optimizer updates (Precision.params: float32 masters in float16).
            optimizer: AdamW (gradients averaged here) or ZeroAdamW (which averages them itself).
        """
        self.world, self.G, self.seed = world, grad_accum_steps, seed
        self.micro = world.micro_batches(grad_accum_steps)
        self.zero = isinstance(optimizer, ZeroAdamW)
        self.sync = GradSync(params, world) if world.size > 1 and not self.zero else None

    def forward_backward(self, model, precision, sampler, it: int) -> list:
        """Run this rank's micro-batches of iteration `it`, accumulating gradients; returns their losses (Tensors).

        Args:
            model: the GPT (train mode).
            precision: amp.Precision or MixedPrecision (scales the loss for backward).
            sampler: the "train" BatchSampler; all G micro-batches are drawn from it.
            it: the iteration (0-based, before it is counted).
        """
        drawn = [sampler.next_batch() for _ in range(self.G)]  # G x ((B, T) inputs, (B, T) targets)
        weight = 1.0 / len(self.micro)  # the mean over ranks then gives every micro-batch 1/G
        losses = []
        for k in self.micro:
            if self.G > 1:
                seed_micro_batch(self.seed, it, k)
            _, loss = model(*drawn[k])
            precision.scale_loss(loss if weight == 1.0 else loss * weight).backward()
            losses.append(loss.detach())
        return losses

    def step(self, precision, optimizer: Optimizer, max_norm: float) -> None:
        """Average the gradients over ranks, clip them to max_norm (0: no clipping) and step the optimizer."""
        if self.zero:
            optimizer.step(max_grad_norm=max_norm if max_norm > 0 else None)
            return
        precision.step(optimizer, max_norm, reduce_grads=self.sync.allreduce_ if self.sync else None)

    def mean_loss(self, losses: list, stop: bool) -> tuple[float, bool]:
        """The mean loss of the step's G micro-batches over all ranks, and whether any rank was asked to stop.

        One allreduce of two float64 numbers; every rank gets the same answers, so all take the same
        branch (stop, diverged, go on). Read after the optimizer step: a GPU runs the step without a wait.
        """
        local = sum(loss.item() for loss in losses)
        if self.world.size == 1:
            return local / self.G, stop
        both = backend.asarray([local, 1.0 if stop else 0.0], dtype="float64", device="cpu")  # (2,) on the host
        self.world.allreduce_mean_(both)
        return float(both[0]) * self.world.size / self.G, bool(both[1] > 0)


def seed_micro_batch(seed: int, it: int, k: int) -> None:
    """Reseed the library's generators (dropout, CPU and GPU) from (seed, it, k), in CuPy's 32-bit range."""
    backend.manual_seed(int(backend.host_generator([seed, it, k]).integers(0, 2**32)))


# ---------------------------------------------------------------- who writes and prints


class Discard:
    """Stands in for MetricsLog and Progress on ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def quiet_unless_main(world: World):
    """Collect stdout and stderr of the block on ranks other than 0 (argparse's --help and errors print once).

    Yields:
        an io.StringIO that holds what was written on this rank (empty on rank 0, which prints as usual).
    """
    captured = io.StringIO()
    if world.is_main:
        yield captured
        return
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        yield captured


def settings_digest(settings: dict) -> str:
    """A short hash of a run's flat settings (flatten_config), to compare across ranks."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SameOnEveryRank:
    """`with SameOnEveryRank(world) as ranks:` a block that fails on every rank if it fails on any.

    Setting up a run may fail on some ranks only (a file one machine lacks) while the others go on
    into a collective and wait forever. At the end of the block every rank reports how it went (one
    allgather); if any failed, every rank raises: its own error, or UsageError naming the first rank
    that failed. `ranks.compare(settings)` also checks that every rank was started with the same
    settings (a hash of flatten_config), so a mistyped flag on one machine is an error, not a silent
    difference. Expected errors (UsageError, ValueError, OSError, SystemExit) take part; anything else
    is a bug, left to the abort hook that ends the whole job. One process: no communication at all.
    """

    EXPECTED = (UsageError, ValueError, OSError, SystemExit)

    def __init__(self, world: World):
        self.world, self.digest, self.settings = world, None, None

    def __enter__(self):
        return self

    def compare(self, settings: dict) -> None:
        self.settings, self.digest = settings, settings_digest(settings)

    def __exit__(self, exc_type, exc, tb):
        if self.world.size == 1 or (exc is not None and not isinstance(exc, self.EXPECTED)):
            return False
        mine = None if exc is None else _describe(exc)
        reports = self.world.allgather_object((mine, self.digest, self.settings))
        failed = [(r, what) for r, (what, _, _) in enumerate(reports) if what is not None]
        if exc is not None:
            return False  # this rank's own error goes on to be reported (by rank 0) and exits 2
        if failed:
            rank, what = failed[0]
            raise UsageError(f"rank {rank} of {self.world.size}: {what}")
        differ = [r for r, (_, digest, _) in enumerate(reports) if digest != reports[0][1]]
        if differ:
            raise UsageError(f"ranks {differ} were started with different settings than rank 0 "
                             f"({_difference(reports[differ[0]][2], reports[0][2])})")
        return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"its command line was rejected (exit status {exc.code})"
    return one_line(exc)


def _difference(theirs: dict | None, ours: dict | None) -> str:
    """e.g. 'seed=2 vs 1' for the first few keys where two flat settings differ."""
    if not theirs or not ours:
        return "settings hash differs"
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    return ", ".join(f"{k}={theirs.get(k)!r} vs {ours.get(k)!r}" for k in keys[:4])


def optimizer_state(optimizer: Optimizer, world: World) -> dict | None:
    """The optimizer's state_dict to checkpoint on rank 0; None on the others.

    ZeroAdamW gathers its moments from every rank, so with it every rank must call this.
    """
    if world.is_main or isinstance(optimizer, ZeroAdamW):
        state = optimizer.state_dict()
        return state if world.is_main else None
    return None
