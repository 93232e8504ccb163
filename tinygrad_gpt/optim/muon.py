"""Muon (Newton-Schulz orthogonalised momentum) for 2-D hidden matrices, and MultiOptimizer to pair it with AdamW."""

from __future__ import annotations

import math

from tinygrad_gpt import backend
from tinygrad_gpt.optim.base import MomentumOptimizer, Optimizer

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


class Muon(MomentumOptimizer):
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

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
                    "ns_steps": ns_steps, "muon_blocks": 1}
        super().__init__(params, defaults)
        for g, group in enumerate(self.param_groups):
            _check_muon_group(group, group["params"], f"Muon: parameter group {g}")

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
