"""ZeRO stage 1: AdamW with its moments sharded across data-parallel ranks (Rajbhandari et al., 2020).

Every rank holds all parameters, but only 1/R of the moments. A step is:

    reduce-scatter the gradients (mean over ranks)   -> this rank's slice of the averaged gradient
    AdamW on this rank's slice of the parameters, with its slice of the moments
    allgather the parameter slices                   -> every rank holds the whole updated model

which is the same arithmetic, element by element, as AdamW after an allreduce of the gradients, so
losses match plain data parallelism to float rounding. `state_dict()` gathers the moments to the
layout `optim.AdamW` writes (per parameter, full shapes), so checkpoints are interchangeable, and
`load_state_dict` takes each rank's slice of such a dict: a run may resume on another number of ranks.

All parameters live in ONE flat (N_padded,) buffer (N rounded up to a multiple of R; the padding is
never updated) and each `.data` is a view of its slice, as in AdamW. Every parameter needs a
gradient at each step (a data-parallel GPT has them all).
"""

from __future__ import annotations

from tinygrad_gpt import backend
from tinygrad_gpt.distributed import FlatBuffer, World
from tinygrad_gpt.optim import Optimizer, adamw_update_


class ZeroAdamW(Optimizer):
    """AdamW (decoupled weight decay, as torch.optim.AdamW) whose moments are split across `world`'s ranks."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params, world: World, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.world = world
        kinds = {(p.dtype, p.device) for p in self._params}
        if len(kinds) != 1:
            raise ValueError(f"ZeroAdamW: parameters must share one dtype and device, got {sorted(map(str, kinds))}")
        shapes = [p.shape for p in self._params]
        n = sum(p.size for p in self._params)
        padded = -(-n // world.size) * world.size
        self.flat = FlatBuffer(shapes + [(padded - n,)], self._params[0].dtype, self._params[0].device)  # (padded,)
        self.flat.pack([p.data for p in self._params] + [None])
        self.views = [self.flat.view(j) for j in range(len(self._params))]
        for p, view in zip(self._params, self.views):
            p.data = view
        self.shard_size = padded // world.size
        self.shard_start = world.rank * self.shard_size  # this rank owns flat[shard_start : shard_start + shard_size]
        xp = backend.get_array_module(self.flat.data)
        self.grads = FlatBuffer(shapes + [(padded - n,)], self._params[0].dtype, self._params[0].device)  # (padded,)
        self.grad_shard = xp.zeros(self.shard_size, dtype=self.flat.data.dtype)  # averaged; the update's scratch
        self.exp_avg = xp.zeros_like(self.grad_shard)  # (padded / R,)
        self.exp_avg_sq = xp.zeros_like(self.grad_shard)
        self.steps = [0] * len(self._params)
        self._group_of = [g for g, group in enumerate(self.param_groups) for _ in group["params"]]
        self._gathered = None  # the full moments while state_dict() runs

    @property
    def state_nbytes(self) -> int:
        """Bytes of optimizer state on this rank (the two moment slices)."""
        return int(self.exp_avg.nbytes + self.exp_avg_sq.nbytes)

    def step(self, max_grad_norm: float | None = None) -> float | None:
        """Reduce-scatter the gradients, update this rank's slice, allgather the parameters (collective).

        Args:
            max_grad_norm: if given, first scale the averaged gradient so its total L2 norm is at most
                this, as `optim.clip_grad_norm_` does to allreduced gradients (each rank only has a
                slice, so clipping must happen here).
        Returns:
            The total norm of the averaged gradient before clipping, or None without max_grad_norm.
        """
        self._relink()
        missing = [i for i, p in enumerate(self._params) if p.grad is None and p.requires_grad]
        if missing:
            raise ValueError(f"ZeroAdamW: parameters {missing[:5]} have no gradient; every trainable one needs one")
        # NOTE: a frozen parameter (requires_grad False) takes part as zeros and is not updated, as AdamW skips it
        self.grads.pack([None if p.grad is None else p.grad.data for p in self._params] + [None])
        self.world.reduce_scatter_mean(self.grads.data, out=self.grad_shard)
        total_norm = None if max_grad_norm is None else self._clip_(max_grad_norm)
        self.steps = [s + p.requires_grad for s, p in zip(self.steps, self._params)]
        for i, lo, hi in self._runs():
            if not self._params[i].requires_grad:
                continue
            group = self.param_groups[self._group_of[i]]
            beta1, beta2 = (float(b) for b in group["betas"])
            local = slice(lo - self.shard_start, hi - self.shard_start)
            adamw_update_(self.flat.data[lo:hi], self.grad_shard[local], self.exp_avg[local], self.exp_avg_sq[local],
                          float(group["lr"]), beta1, beta2, float(group["eps"]), float(group["weight_decay"]),
                          self.steps[i])
        self.world.allgather_(self.flat.data)
        return total_norm

    def _clip_(self, max_norm: float) -> float:
        """Scale the averaged gradient slice so the whole gradient's norm is at most max_norm; the norm before."""
        if max_norm < 0:
            raise ValueError(f"ZeroAdamW.step: max_grad_norm must be >= 0, got {max_norm}")
        xp = backend.get_array_module(self.grad_shard)
        squares = xp.zeros(1, dtype="float64")  # (1,) this rank's sum of squares, then the mean over ranks
        squares[0] = xp.vdot(self.grad_shard, self.grad_shard).astype("float64")
        self.world.allreduce_mean_(squares)
        total_norm = float((float(squares[0]) * self.world.size) ** 0.5)
        scale = max_norm / (total_norm + 1e-6)
        if scale < 1.0:
            self.grad_shard *= scale
        return total_norm

    def _runs(self):
        """(first parameter, lo, hi): flat ranges within this rank's shard sharing one group and step count."""
        start, stop = self.shard_start, self.shard_start + self.shard_size
        runs = []
        for i in range(len(self._params)):
            lo, hi = max(self.flat.offsets[i], start), min(self.flat.offsets[i + 1], stop)
            if lo >= hi:
                continue
            last = runs[-1] if runs else None
            if last and last[2] == lo and self._group_of[last[0]] == self._group_of[i] and \
                    self.steps[last[0]] == self.steps[i] and \
                    self._params[last[0]].requires_grad == self._params[i].requires_grad:
                last[2] = hi
            else:
                runs.append([i, lo, hi])
        return runs

    def _relink(self) -> None:
        """Copy back parameters whose .data was rebound (same shape, dtype and device) and view them again."""
        for j, p in enumerate(self._params):
            if p.data is self.views[j]:
                continue
            if p.shape != self.views[j].shape or p.dtype != self.views[j].dtype or \
                    p.device != backend.device_of(self.views[j]):
                raise ValueError(f"ZeroAdamW: parameter {j} changed to {p.shape} {p.dtype} on {p.device}; create the "
                                 "optimizer after moving or casting the model")
            self.views[j][...] = p.data
            p.data = self.views[j]

    # ------------------------------------------------------------ state_dict in AdamW's layout

    def state_dict(self) -> dict:
        """AdamW's layout (full moments per parameter) on every rank; a collective: call it on all ranks."""
        xp = backend.get_array_module(self.exp_avg)
        full = []
        for moment in (self.exp_avg, self.exp_avg_sq):
            buf = xp.zeros_like(self.flat.data)
            buf[self.shard_start : self.shard_start + self.shard_size] = moment
            full.append(self.world.allgather_(buf))
        self._gathered = full
        try:
            return super().state_dict()
        finally:
            self._gathered = None

    def _get_state(self, i: int) -> dict | None:
        if self.steps[i] == 0:
            return None
        part, shape = slice(self.flat.offsets[i], self.flat.offsets[i + 1]), self._params[i].shape
        exp_avg, exp_avg_sq = (m[part].reshape(shape).copy() for m in self._gathered)
        return {"step": self.steps[i], "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

    def _set_state(self, state: dict) -> None:
        start, stop = self.shard_start, self.shard_start + self.shard_size
        for i in range(len(self._params)):
            entry = state.get(i)
            self.steps[i] = entry["step"] if entry else 0
            lo, hi = max(self.flat.offsets[i], start), min(self.flat.offsets[i + 1], stop)
            if lo >= hi:
                continue
            src, dst = slice(lo - self.flat.offsets[i], hi - self.flat.offsets[i]), slice(lo - start, hi - start)
            for key, moment in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                moment[dst] = entry[key].reshape(-1)[src] if entry else 0.0
