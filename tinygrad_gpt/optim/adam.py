"""Adam and AdamW on flat per-group buffers, and the in-place AdamW update they (and ZeRO) share.

Adam and AdamW keep the parameters of each group (and dtype/device) in ONE contiguous flat array:
at construction every parameter is copied in and its `.data` is rebound to a view of its slice.
The moments are flat too, so a step is a dozen whole-array operations instead of a dozen per
parameter. Two consequences:

- Create the optimizer after the model is moved to its device and dtype (`model.to(...)`), since
  that rebinds `.data`. A parameter whose `.data` is later rebound to an array of the same shape,
  dtype and device is copied back into the flat buffer at the next step (so it is still trained);
  any other change is an error.
- `Module.load_state_dict` writes into the parameter arrays in place, so the views stay linked.
"""

from __future__ import annotations

import math

from tinygrad_gpt import backend, kernels
from tinygrad_gpt.optim.base import Optimizer
from tinygrad_gpt.tensor import Tensor

# ---------------------------------------------------------------- the Adam update


def adamw_update_(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step) -> None:
    """One AdamW step, in place, on arrays of one shape (normally a parameter group's flat buffers).

    Same math as torch.optim.AdamW. `param`, `exp_avg` and `exp_avg_sq` are updated in place;
    `grad` serves as scratch space and is left overwritten, so pass a buffer the optimizer owns,
    never a Tensor's gradient array. No temporary arrays are allocated.

    Args:
        param, grad, exp_avg, exp_avg_sq: arrays of one shape and dtype, e.g. (N,).
        lr, beta1, beta2, eps, weight_decay: Python floats (decay is decoupled: param *= 1 - lr * wd).
        step: the number of this step, 1 for the first (for the bias corrections).
    """
    xp = backend.get_array_module(param)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    k = kernels.find("adamw_", param, grad, exp_avg, exp_avg_sq)
    if k:  # one (multi-threaded) pass instead of 13 whole-array operations
        k(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
          bias_correction1, bias_correction2_sqrt)
        return
    if weight_decay != 0.0:
        param *= 1.0 - lr * weight_decay
    exp_avg *= beta1
    grad *= 1.0 - beta1
    exp_avg += grad  # m = beta1 m + (1 - beta1) g
    # NOTE: grad now holds (1 - beta1) g; squaring it and rescaling gives (1 - beta2) g^2 without a temporary
    grad *= grad
    grad *= (1.0 - beta2) / (1.0 - beta1) ** 2
    exp_avg_sq *= beta2
    exp_avg_sq += grad  # v = beta2 v + (1 - beta2) g^2
    # param -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with sqrt(bc2) moved out of the denominator
    denom = xp.sqrt(exp_avg_sq, out=grad)
    denom += eps * bias_correction2_sqrt
    update = xp.divide(exp_avg, denom, out=grad)
    update *= -lr * bias_correction2_sqrt / bias_correction1
    param += update


# ---------------------------------------------------------------- Adam and AdamW


class _FlatGroup:
    """Parameters of one group, dtype and device packed into flat arrays, with flat moments."""

    def __init__(self, group: dict, params: list):
        xp = backend.get_array_module(params[0].data)
        self.group, self.params = group, params
        self.shapes = [p.shape for p in params]
        self.offsets = [0]
        for p in params:
            self.offsets.append(self.offsets[-1] + p.size)
        self.param = xp.empty(self.offsets[-1], dtype=params[0].dtype)  # (N,)
        self.views = []
        for j, p in enumerate(params):
            self._link(j, p)
        self.grad = xp.empty_like(self.param)  # gradients are gathered here; also the update's scratch
        self.exp_avg = xp.zeros_like(self.param)
        self.exp_avg_sq = xp.zeros_like(self.param)
        self.steps = [0] * len(params)  # per parameter: one skipped while others step falls behind

    def slice(self, j: int) -> slice:
        return slice(self.offsets[j], self.offsets[j + 1])

    def _link(self, j: int, p: Tensor) -> None:
        """Copy p's values into its slice and make p.data a view of it."""
        self.param[self.slice(j)] = p.data.reshape(-1)
        p.data = self.param[self.slice(j)].reshape(self.shapes[j])
        if len(self.views) == j:
            self.views.append(p.data)
        else:
            self.views[j] = p.data

    def relink(self) -> None:
        """Take back parameters whose .data was rebound since the last step (same shape, dtype, device)."""
        for j, p in enumerate(self.params):
            if p.data is self.views[j]:
                continue
            if p.shape != self.shapes[j] or p.dtype != self.param.dtype or p.device != backend.device_of(self.param):
                raise ValueError(
                    f"optimizer: a parameter changed from {self.shapes[j]} {self.param.dtype} on "
                    f"{backend.device_of(self.param)} to {p.shape} {p.dtype} on {p.device}; create the optimizer "
                    "after moving or casting the model"
                )
            self._link(j, p)

    def gather_grads(self, with_grad: list) -> None:
        """Copy the gradients of the parameters at positions `with_grad` into the flat grad buffer."""
        if len(with_grad) == len(self.params):
            xp = backend.get_array_module(self.grad)
            xp.concatenate([p.grad.data.reshape(-1) for p in self.params], out=self.grad)
            return
        for j in with_grad:
            self.grad[self.slice(j)] = self.params[j].grad.data.reshape(-1)


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient, as torch.optim.Adam; flat buffers per group."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")
    _decoupled = False  # AdamW: decay the weights directly instead of through the gradient

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self._flat_groups: list[_FlatGroup] = []
        where = {}
        for group in self.param_groups:
            by_kind: dict = {}  # one flat buffer per (dtype, device) within the group
            for p in group["params"]:
                by_kind.setdefault((p.dtype, p.device), []).append(p)
            for params in by_kind.values():
                flat = _FlatGroup(group, params)
                self._flat_groups.append(flat)
                where.update({id(p): (flat, j) for j, p in enumerate(params)})
        self._where = [where[id(p)] for p in self._params]  # parameter index -> (flat group, position)

    def step(self) -> None:
        """One Adam step for every parameter that has a gradient."""
        for flat in self._flat_groups:
            flat.relink()
            with_grad = [j for j, p in enumerate(flat.params) if p.grad is not None]
            flat.gather_grads(with_grad)
            # Normally one run covers the whole flat buffer; a parameter without a gradient (skipped,
            # as torch) or with a different step count splits it into runs updated one by one.
            for start, stop in _runs(with_grad, flat.steps):
                step = flat.steps[start] + 1
                flat.steps[start:stop] = [step] * (stop - start)
                self._update(flat, slice(flat.offsets[start], flat.offsets[stop]), step)

    def _update(self, flat: _FlatGroup, part: slice, step: int) -> None:
        group = flat.group
        lr, eps, weight_decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        param, grad = flat.param[part], flat.grad[part]
        if not self._decoupled and weight_decay != 0.0:
            grad += param * weight_decay  # L2: the decay goes through the moments
            weight_decay = 0.0
        adamw_update_(param, grad, flat.exp_avg[part], flat.exp_avg_sq[part], lr, beta1, beta2, eps, weight_decay, step)

    def _get_state(self, i: int) -> dict | None:
        flat, j = self._where[i]
        if flat.steps[j] == 0:
            return None
        part, shape = flat.slice(j), flat.shapes[j]
        return {
            "step": flat.steps[j],
            "exp_avg": flat.exp_avg[part].reshape(shape).copy(),
            "exp_avg_sq": flat.exp_avg_sq[part].reshape(shape).copy(),
        }

    def _set_state(self, state: dict) -> None:
        for i, (flat, j) in enumerate(self._where):
            part, entry = flat.slice(j), state.get(i)
            flat.steps[j] = entry["step"] if entry else 0
            flat.exp_avg[part] = entry["exp_avg"].reshape(-1) if entry else 0.0
            flat.exp_avg_sq[part] = entry["exp_avg_sq"].reshape(-1) if entry else 0.0


class AdamW(Adam):
    """Adam with decoupled weight decay (param *= 1 - lr * weight_decay), as torch.optim.AdamW."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _runs(positions: list, steps: list) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of consecutive positions whose step counts are equal."""
    runs = []
    for j in positions:
        if runs and runs[-1][1] == j and steps[j] == steps[runs[-1][0]]:
            runs[-1][1] = j + 1
        else:
            runs.append([j, j + 1])
    return [(start, stop) for start, stop in runs]
