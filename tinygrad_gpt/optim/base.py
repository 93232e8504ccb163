"""The Optimizer base class (parameter groups, zero_grad, state_dict bookkeeping), SGD and gradient clipping.

See tinygrad_gpt.optim for the conventions every optimizer follows (torch.optim's).
"""

from __future__ import annotations

import math

from tinygrad_gpt import backend
from tinygrad_gpt.tensor import Tensor

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


class MomentumOptimizer(Optimizer):
    """An optimizer whose state is one momentum buffer per parameter (SGD, Muon), in torch's layout."""

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        self._momentum_buffers: list = [None] * len(self._params)  # made at a parameter's first step

    def _get_state(self, i: int) -> dict | None:
        buf = self._momentum_buffers[i]
        return None if buf is None else {"momentum_buffer": buf.copy()}

    def _set_state(self, state: dict) -> None:
        self._momentum_buffers = [
            state[i]["momentum_buffer"].copy() if i in state else None for i in range(len(self._params))
        ]


class SGD(MomentumOptimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay, as torch.optim.SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

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



# ---------------------------------------------------------------- clipping


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


def _as_index(key) -> int:
    """A state or params key as an int (files may store them as strings)."""
    try:
        return int(key)
    except (TypeError, ValueError):
        raise ValueError(f"load_state_dict: {key!r} is not a parameter index") from None
