"""Optimizers (SGD, Adam, AdamW, Muon; MultiOptimizer), gradient clipping, the cosine and WSD schedules.

The optimizers follow torch.optim: `params` is an iterable of Tensors or a list of parameter groups
(dicts with "params" and their own hyperparameters), `optimizer.param_groups[i]["lr"]` may be set
before each step, `step()` skips parameters whose `.grad` is None, and `state_dict()` /
`load_state_dict()` save and restore the moments and step counts for an exact resume.

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


# ---------------------------------------------------------------- Optimizer base


class Optimizer:
    """Parameter groups, zero_grad and the state_dict bookkeeping shared by every optimizer."""

    _state_keys: tuple = ()  # the keys of one parameter's entry in state_dict()["state"]

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = _make_groups(params, self.defaults)
        self._params: list[Tensor] = [p for group in self.param_groups for p in group["params"]]
        seen = {}
        for i, p in enumerate(self._params):
            if id(p) in seen:
                raise ValueError(f"parameter {i} is the same Tensor as parameter {seen[id(p)]}; pass each once")
            seen[id(p)] = i

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (sets .grad to None, as torch's default)."""
        for p in self._params:
            p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        groups = "; ".join(
            ", ".join(f"{k}={v}" for k, v in g.items() if k != "params") + f" ({len(g['params'])} params)"
            for g in self.param_groups
        )
        return f"{type(self).__name__}({groups})"

    # ------------------------------------------------------------ state_dict

    def state_dict(self) -> dict:
        """Hyperparameters and per-parameter state, PyTorch's layout; arrays are copies.

        Returns:
            {"param_groups": [{hyperparameters..., "params": [int indices]}],
             "state": {index: {key: int or array of the parameter's shape}}}; parameters that were
            never stepped have no entry.
        """
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            hyper = {k: v for k, v in group.items() if k != "params"}
            groups.append({**hyper, "params": list(range(start, start + n))})
            start += n
        state = {}
        for i in range(len(self._params)):
            entry = self._get_state(i)
            if entry is not None:
                state[i] = entry
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state saved by `state_dict()`; everything is checked first.

        Arrays may be numpy arrays (e.g. read from a file); they are copied to each parameter's
        device and dtype. Parameters without a saved entry start afresh (no moments, step 0).

        Raises:
            ValueError naming the first wrong entry (group or parameter count, key, shape); a
            failed load changes nothing.
        """
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("load_state_dict: expected a dict with 'param_groups' and 'state'")
        hypers, index_of = self._check_groups(state_dict["param_groups"])
        state = {}
        for key, entry in state_dict["state"].items():
            if _as_index(key) not in index_of:
                raise ValueError(f"load_state_dict: state[{key!r}] names no parameter of the saved groups")
            i = index_of[_as_index(key)]
            state[i] = self._check_entry(i, entry, f"state[{key!r}]")
        # everything checked: now apply
        for group, hyper in zip(self.param_groups, hypers):
            group.update(hyper)
        self._set_state(state)

    def _check_groups(self, saved_groups) -> tuple[list[dict], dict]:
        """Converted hyperparameters per group, and saved parameter index -> our index."""
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"load_state_dict: {len(saved_groups)} parameter groups saved, "
                f"the optimizer has {len(self.param_groups)}"
            )
        hypers, index_of, ours = [], {}, 0
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            saved_params = list(saved.get("params", []))
            if len(saved_params) != len(group["params"]):
                raise ValueError(
                    f"load_state_dict: param_groups[{g}] has {len(saved_params)} parameters saved, "
                    f"the optimizer's group has {len(group['params'])}"
                )
            for key in saved_params:
                index_of[_as_index(key)] = ours
                ours += 1
            hyper = {k: v for k, v in saved.items() if k != "params"}
            for name in self.defaults:
                if name not in hyper:
                    raise ValueError(f"load_state_dict: param_groups[{g}] lacks hyperparameter {name!r}")
            hypers.append(_clean_hyper(hyper, f"param_groups[{g}]"))
        return hypers, index_of

    def _check_entry(self, i: int, entry, where: str) -> dict:
        """One saved state entry checked and converted to parameter i's device and dtype."""
        if not isinstance(entry, dict):
            raise ValueError(f"load_state_dict: {where} must be a dict, got {type(entry).__name__}")
        missing = [k for k in self._state_keys if k not in entry]
        if missing:
            raise ValueError(f"load_state_dict: {where} lacks {missing}; needs {list(self._state_keys)}")
        p, out = self._params[i], {}
        for key in self._state_keys:
            value, name = entry[key], f"{where}[{key!r}]"
            if key == "step":
                try:
                    step = int(backend.to_numpy(backend.asarray(value, device="cpu")))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"load_state_dict: {name} is not an integer ({e})") from None
                if step < 0:
                    raise ValueError(f"load_state_dict: {name} is {step}; a step count cannot be negative")
                out[key] = step
                continue
            try:
                array = backend.asarray(value, dtype=p.dtype, device=p.device)
            except (TypeError, ValueError) as e:
                raise ValueError(f"load_state_dict: {name} is not an array of numbers ({e})") from None
            if tuple(array.shape) != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {tuple(array.shape)}, parameter {i} has {p.shape}")
            out[key] = array
        return out

    def _get_state(self, i: int) -> dict | None:
        raise NotImplementedError

    def _set_state(self, state: dict) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- SGD


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay, as torch.optim.SGD."""

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self._momentum_buffers: list = [None] * len(self._params)

    def step(self) -> None:
        """p -= lr * buf, buf = momentum * buf + (g + weight_decay * p) (buf = g alone without momentum)."""
        i = -1  # the parameter's index, counted across groups
        for group in self.param_groups:
            lr, momentum, weight_decay = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
            for p in group["params"]:
                i += 1
                if p.grad is None:
                    continue
                g = p.grad.data  # never modified in place: the engine may share it
                if weight_decay != 0.0:
                    g = g + p.data * weight_decay
                if momentum != 0.0:
                    buf = self._momentum_buffers[i]
                    if buf is None:  # xp.array, not .copy(): a 0-d result may be a NumPy scalar
                        buf = self._momentum_buffers[i] = backend.get_array_module(g).array(g, copy=True)
                    else:
                        buf *= momentum
                        buf += g
                    g = buf
                p.data -= g * lr

    def _get_state(self, i: int) -> dict | None:
        buf = self._momentum_buffers[i]
        return None if buf is None else {"momentum_buffer": buf.copy()}

    def _set_state(self, state: dict) -> None:
        self._momentum_buffers = [
            state[i]["momentum_buffer"].copy() if i in state else None for i in range(len(self._params))
        ]


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


# ---------------------------------------------------------------- clipping and schedule


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale all gradients by one factor so their total L2 norm is at most `max_norm`, as torch.

    Gradients are replaced by new arrays (never scaled in place: the engine may share one array
    between several gradients). Parameters without a gradient are ignored.

    Args:
        params: an iterable of Tensors (or one Tensor).
        max_norm: the largest allowed total norm (>= 0).
    Returns:
        The total norm of the gradients before clipping, a Python float.
    """
    if max_norm < 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm}")
    params = [params] if isinstance(params, Tensor) else list(params)
    grads = [p for p in params if p.grad is not None]
    # per-parameter sums stay on the device (a GPU syncs once below, not once per parameter)
    flat_grads = [p.grad.data.reshape(-1) for p in grads]
    squares = [backend.get_array_module(g).vdot(g, g).astype("float64") for g in flat_grads]
    total_norm = math.sqrt(float(sum(squares))) if squares else 0.0
    scale = max_norm / (total_norm + 1e-6)
    if scale < 1.0:  # torch multiplies by min(scale, 1): nothing to do when it is 1
        for p in grads:
            scaled = p.grad.data * scale
            p.grad = Tensor(scaled, dtype=scaled.dtype, device=p.device)
    return total_norm


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


# ---------------------------------------------------------------- helpers


def _make_groups(params, defaults: dict) -> list[dict]:
    """`params` (Tensors or group dicts) as a list of group dicts with every hyperparameter filled in."""
    if isinstance(params, Tensor) or isinstance(params, dict):
        raise TypeError(f"params must be an iterable of Tensors or of dicts, got a {type(params).__name__}")
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out = []
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"parameter group {g} must be a dict with a 'params' entry")
        group = dict(group)
        ps = group["params"]
        group["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        for k, p in enumerate(group["params"]):
            if not isinstance(p, Tensor):
                raise TypeError(f"parameter group {g}: item {k} is a {type(p).__name__}, not a Tensor")
            if not backend.is_float(p.dtype):
                raise TypeError(f"parameter group {g}: item {k} has dtype {p.dtype}; only float tensors are optimized")
        for name, value in defaults.items():
            group.setdefault(name, value)
        out.append(_clean_hyper(group, f"parameter group {g}"))
    return out


def _clean_hyper(group: dict, where: str) -> dict:
    """Known hyperparameters as Python floats (no NumPy scalars that would upcast float32), checked."""
    group = dict(group)
    for name in ("lr", "eps", "weight_decay", "momentum"):
        if name in group:
            group[name] = float(group[name])
            if not group[name] >= 0.0:
                raise ValueError(f"{where}: {name} must be >= 0, got {group[name]}")
    if "betas" in group:
        betas = tuple(float(b) for b in group["betas"])
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{where}: betas must be two numbers in [0, 1), got {group['betas']}")
        group["betas"] = betas
    return group


def _runs(positions: list, steps: list) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of consecutive positions whose step counts are equal."""
    runs = []
    for j in positions:
        if runs and runs[-1][1] == j and steps[j] == steps[runs[-1][0]]:
            runs[-1][1] = j + 1
        else:
            runs.append([j, j + 1])
    return [(start, stop) for start, stop in runs]


def _as_index(key) -> int:
    """A state or params key as an int (files may store them as strings)."""
    try:
        return int(key)
    except (TypeError, ValueError):
        raise ValueError(f"load_state_dict: {key!r} is not a parameter index") from None


# ---------------------------------------------------------------- Muon


_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: steepest slope at 0, converges near 1


def zeropower_via_newtonschulz5(G, steps: int = 5):
    """Muon's quintic Newton-Schulz iteration: G's nearest semi-orthogonal matrix, approximately (U V^T of its SVD).

    The last two axes are the matrix (a leading axis is a batch, e.g. the three blocks of qkv). The
    iteration runs on the wide orientation (transposed when rows > cols) of G / (||G||_F + 1e-7), in
    float32 (float64 inputs stay float64), on a copy: G is not changed. Its singular values come
    out in roughly [0.7, 1.2], not exactly 1; that is what Muon wants (speed over precision).

    Args:
        G: (..., rows, cols) float array.
        steps: number of iterations.
    Returns:
        (..., rows, cols), float32 or float64.
    """
    xp = backend.get_array_module(G)
    a, b, c = _NS_COEFFICIENTS
    transposed = G.shape[-2] > G.shape[-1]
    X = xp.swapaxes(G, -1, -2) if transposed else G  # (..., small, large): A = X X^T is the smaller Gram matrix
    # NOTE: a C-contiguous copy: NumPy's matmul falls back to a slow loop on other strides
    X = X.astype(xp.float64 if G.dtype == xp.float64 else xp.float32, order="C")
    X /= xp.sqrt((X * X).sum(axis=(-2, -1), keepdims=True)) + 1e-7
    for _ in range(steps):
        A = xp.matmul(X, xp.swapaxes(X, -1, -2))  # (..., r, r)
        B = xp.matmul(A, A)
        B *= c
        B += b * A  # B = b A + c A @ A
        BX = xp.matmul(B, X)
        X *= a
        X += BX  # X = a X + B @ X
    return xp.swapaxes(X, -1, -2) if transposed else X


class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Keller Jordan 2024), for the 2-D hidden matrices of a network.

    Per parameter W and step:
        m = momentum * m + g
        u = g + momentum * m  (nesterov)  or  m
        u = zeropower_via_newtonschulz5(u) * sqrt(max(1, rows / cols))
        W *= 1 - lr * weight_decay;  W -= lr * u

    This is modded-nanogpt's form. The later `momentum.lerp_(grad, 1 - momentum)` form scales m and u
    by (1 - momentum), which the normalisation inside Newton-Schulz removes (up to its 1e-7), so both
    give the same step. Newton-Schulz runs in float32 here, where the reference GPU code uses bfloat16.

    NOTE: rows and cols are torch's (out_features, in_features). Our Linear stores W as (in, out),
    so the update is computed on the (out, in) view W^T; the orthogonalisation is transpose-
    equivariant but the scale is not, and this way the result equals torch's Muon on the same layer.

    A group option `muon_blocks=n` splits each of its matrices along out_features into n equal
    blocks orthogonalised separately (each scaled by its own shape): GPT's fused c_attn (C, 3C) is
    q, k and v, three square matrices, so its group uses muon_blocks=3 (GPT.optimizer_groups does).
    Embeddings, the LM head, gains and biases belong to AdamW instead: Muon raises on non-2-D
    parameters. State per parameter: "momentum_buffer", as torch.optim.SGD.
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
                    "ns_steps": ns_steps, "muon_blocks": 1}
        super().__init__(params, defaults)
        for g, group in enumerate(self.param_groups):
            _check_muon_group(group, group["params"], f"Muon: parameter group {g}")
        self._momentum_buffers: list = [None] * len(self._params)

    def step(self) -> None:
        """One Muon step for every parameter that has a gradient."""
        i = -1  # the parameter's index, counted across groups
        for group in self.param_groups:
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                i += 1
                if p.grad is None:
                    continue
                g = p.grad.data  # never modified in place: the engine may share it
                if self._momentum_buffers[i] is None:
                    self._momentum_buffers[i] = backend.get_array_module(p.data).zeros_like(p.data)
                buf = self._momentum_buffers[i]
                buf *= momentum
                buf += g
                update = g + momentum * buf if group["nesterov"] else buf  # (in, out)
                update, scale = _orthogonalized(update, group["muon_blocks"], group["ns_steps"])
                if weight_decay != 0.0:
                    p.data *= 1.0 - lr * weight_decay
                update *= lr * scale
                p.data -= update.astype(p.dtype, copy=False)

    def _check_groups(self, saved_groups) -> tuple[list[dict], dict]:
        hypers, index_of = super()._check_groups(saved_groups)
        for g, (hyper, group) in enumerate(zip(hypers, self.param_groups)):
            _check_muon_group(hyper, group["params"], f"load_state_dict: param_groups[{g}]")
        return hypers, index_of

    def _get_state(self, i: int) -> dict | None:
        buf = self._momentum_buffers[i]
        return None if buf is None else {"momentum_buffer": buf.copy()}

    def _set_state(self, state: dict) -> None:
        self._momentum_buffers = [
            state[i]["momentum_buffer"].copy() if i in state else None for i in range(len(self._params))
        ]


def _orthogonalized(update, n_blocks: int, ns_steps: int):
    """Muon's orthogonalised update of an (in, out) matrix, and its scale sqrt(max(1, rows / cols)).

    Computed in torch's (out, in) orientation, split into n_blocks along out.
    """
    n_in, n_out = update.shape
    rows = n_out // n_blocks
    blocks = update.reshape(n_in, n_blocks, rows).transpose(1, 2, 0)  # (n, rows, in): torch's (out, in) blocks
    ortho = zeropower_via_newtonschulz5(blocks, ns_steps)  # (n, rows, in)
    ortho = ortho.transpose(2, 0, 1).reshape(n_in, n_out)  # back to (in, out)
    return ortho, math.sqrt(max(1.0, rows / n_in))


def _check_muon_group(group: dict, params: list, where: str) -> None:
    """Muon's own hyperparameters and parameter shapes, or a ValueError naming them."""
    if not isinstance(group["nesterov"], bool):
        raise ValueError(f"{where}: nesterov must be True or False, got {group['nesterov']!r}")
    for name in ("ns_steps", "muon_blocks"):
        value = group[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    for k, p in enumerate(params):
        if p.ndim != 2:
            raise ValueError(f"{where}: parameter {k} has shape {p.shape}; Muon updates 2-D matrices only "
                             "(give embeddings, gains and biases to AdamW: see GPT.optimizer_groups)")
        if p.shape[1] % group["muon_blocks"] != 0:
            raise ValueError(f"{where}: parameter {k} of shape {p.shape} (in, out) does not split into "
                             f"muon_blocks={group['muon_blocks']} equal blocks along out")


# ---------------------------------------------------------------- warmup-stable-decay schedule


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


# ---------------------------------------------------------------- several optimizers as one


class MultiOptimizer:
    """Several optimizers used as one (Muon for the hidden matrices, AdamW for the rest): one step, one state_dict.

    `param_groups` lists every optimizer's groups (the same dicts, so setting `group["lr"]` works),
    which is all a training loop, gradient clipping or AMP's `GradScaler.step` needs.
    """

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)
        if not self.optimizers or not all(isinstance(o, Optimizer) for o in self.optimizers):
            raise TypeError("MultiOptimizer needs a non-empty list of optimizers")

    @property
    def param_groups(self) -> list[dict]:
        return [group for o in self.optimizers for group in o.param_groups]

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad()

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        """{"optimizers": [each optimizer's state_dict()], "types": [their class names]}."""
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "types": [type(o).__name__ for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore every optimizer; on an error none is changed (the ones already loaded are rolled back)."""
        types = [type(o).__name__ for o in self.optimizers]
        if not isinstance(state_dict, dict) or state_dict.get("types") != types:
            saved = state_dict.get("types") if isinstance(state_dict, dict) else None
            raise ValueError(f"load_state_dict: saved optimizers {saved}, this MultiOptimizer has {types}")
        before = [o.state_dict() for o in self.optimizers]
        try:
            for o, saved in zip(self.optimizers, state_dict["optimizers"]):
                o.load_state_dict(saved)
        except ValueError:
            for o, old in zip(self.optimizers, before):
                o.load_state_dict(old)
            raise

    def __repr__(self) -> str:
        return "MultiOptimizer(" + ", ".join(repr(o) for o in self.optimizers) + ")"
