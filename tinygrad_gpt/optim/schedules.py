"""Learning-rate schedules: nanoGPT's warmup + cosine, and the speedrun's warmup-stable-decay."""

from __future__ import annotations

import math

# ---------------------------------------------------------------- cosine


def cosine_lr(it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """nanoGPT's learning-rate schedule: linear warmup, cosine decay to min_lr, then min_lr.

    Args:
        it: the iteration (0-based).
        learning_rate: the peak rate, reached at the end of warmup.
        warmup_iters: iterations of linear warmup, learning_rate * (it + 1) / (warmup_iters + 1).
        lr_decay_iters: the iteration where the cosine reaches min_lr (>= warmup_iters).
        min_lr: the rate from lr_decay_iters on.
    Returns:
        The learning rate for iteration `it`.
    """
    if warmup_iters < 0 or lr_decay_iters < warmup_iters:
        raise ValueError(
            f"cosine_lr: need 0 <= warmup_iters <= lr_decay_iters, got warmup_iters={warmup_iters}, "
            f"lr_decay_iters={lr_decay_iters}"
        )
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:  # nanoGPT tests `>`; at equality its cosine gives min_lr exactly too
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return min_lr + coeff * (learning_rate - min_lr)


# ---------------------------------------------------------------- warmup-stable-decay


def wsd_lr(it: int, learning_rate: float, warmup_iters: int, max_iters: int, decay_frac: float,
           min_lr: float) -> float:
    """The warmup-stable-decay ("trapezoidal") schedule of the NanoGPT speedrun.

    Linear warmup (as cosine_lr), then learning_rate constant, then a linear decay to min_lr over
    the last decay_frac * max_iters iterations, reaching min_lr at max_iters (and staying there).

    Args:
        it: the iteration (0-based).
        learning_rate: the rate of the stable phase.
        warmup_iters: iterations of linear warmup, learning_rate * (it + 1) / (warmup_iters + 1).
        max_iters: the iteration where the decay reaches min_lr.
        decay_frac: the fraction of max_iters spent decaying, in [0, 1].
        min_lr: the rate at the end.
    Returns:
        The learning rate for iteration `it`.
    """
    if not 0.0 <= decay_frac <= 1.0:
        raise ValueError(f"wsd_lr: decay_frac must be in [0, 1], got {decay_frac}")
    decay_iters = decay_frac * max_iters
    decay_start = max_iters - decay_iters
    if warmup_iters < 0 or warmup_iters > decay_start:
        raise ValueError(
            f"wsd_lr: need 0 <= warmup_iters <= max_iters * (1 - decay_frac), got warmup_iters={warmup_iters}, "
            f"max_iters={max_iters}, decay_frac={decay_frac}"
        )
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= max_iters:
        return min_lr
    if it < decay_start:
        return learning_rate
    progress = (it - decay_start) / decay_iters  # from 0 at decay_start to 1 at max_iters
    return learning_rate + progress * (min_lr - learning_rate)
