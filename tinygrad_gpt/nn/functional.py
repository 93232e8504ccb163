"""Fused, stateless building blocks of a GPT: each is one primitive Function with a hand-written backward.

Fusing (linear, layer_norm, softmax-cross-entropy, attention) keeps the graph small and lets
backward reuse what forward computed, which is where most of a NumPy framework's time goes.
The Functions whose job a Module of tinygrad_gpt.nn also does are named apart from it
(`LinearFunction` here, `nn.Linear` there); the lowercase functions are the public interface.
Where a fused kernel exists (tinygrad_gpt.kernels), a Function asks `kernels.find` once and
otherwise runs its NumPy body, the reference the kernels are tested against.
"""

from __future__ import annotations

import functools
import math

from tinygrad_gpt import backend, kernels, ops, shapes
from tinygrad_gpt.autograd import Function, as_tensors, is_grad_enabled
from tinygrad_gpt.tensor import Tensor, _raw


def _tensors(op_name: str, *xs) -> tuple:
    """The arguments as Tensors (None stays None): NumPy arrays, lists and numbers are accepted wherever a
    Tensor is, as constants in the dtype of the first float Tensor argument (the default float dtype if none)."""
    converted = iter(as_tensors(tuple(x for x in xs if x is not None), op_name))
    return tuple(None if x is None else next(converted) for x in xs)

# ---------------------------------------------------------------- linear


class LinearFunction(Function):
    """y = x @ W + b as one GEMM on the 2-D view of x, with the bias folded in."""

    def forward(self, x, W, b=None):
        self.in_shape = x.shape
        self.x2, self.W = x.reshape(-1, x.shape[-1]), W  # (N, in)
        y = self.x2 @ W  # (N, in) @ (in, out) -> (N, out)
        if b is not None:
            y += b
        return y.reshape(*x.shape[:-1], W.shape[1])

    def backward(self, gy):
        gy2 = gy.reshape(-1, gy.shape[-1])  # (N, out)
        gx = (gy2 @ self.W.T).reshape(self.in_shape) if self.needs_grad[0] else None
        gW = self.x2.T @ gy2 if self.needs_grad[1] else None  # (in, N) @ (N, out) -> (in, out)
        if len(self.needs_grad) == 2:
            return gx, gW
        gb = gy2.sum(axis=0) if self.needs_grad[2] else None
        return gx, gW, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Affine map in GPT-2's layout.

    Args:
        x: (..., in); weight: (in, out); bias: (out,) or None.
    Returns:
        (..., out)
    """
    x, weight, bias = _tensors("linear", x, weight, bias)
    if x.ndim < 1 or x.shape[-1] != weight.shape[0] or weight.ndim != 2:
        raise ValueError(f"linear: input of shape {x.shape} does not fit a weight of shape {weight.shape} (in, out)")
    if bias is None:
        return LinearFunction.apply(x, weight)
    if bias.shape != (weight.shape[1],):
        raise ValueError(f"linear: bias of shape {bias.shape} does not fit a weight of shape {weight.shape}")
    return LinearFunction.apply(x, weight, bias)


# ---------------------------------------------------------------- embedding


class EmbeddingFunction(Function):
    """Row lookup; backward adds each output gradient into its token's row."""

    def forward(self, W, idx=None):
        self.idx, self.n_rows = idx, W.shape[0]
        return W[idx]  # (..., C)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        idx = self.idx.reshape(-1)
        gy2 = gy.reshape(-1, gy.shape[-1])  # (N, C)
        if self.n_rows <= 1024:
            # a one-hot matmul is one fast GEMM for small vocabularies: (V, N) @ (N, C) -> (V, C)
            one_hot = xp.arange(self.n_rows, dtype=idx.dtype)[:, None] == idx[None, :]
            return one_hot.astype(gy.dtype) @ gy2
        gW = xp.zeros((self.n_rows, gy.shape[-1]), dtype=gy.dtype)
        backend.scatter_add(gW, idx, gy2)  # repeated tokens accumulate
        return gW


def embedding(idx, weight: Tensor) -> Tensor:
    """Look up rows of `weight`.

    Args:
        idx: integer array or Tensor of any shape, values in [0, num_embeddings).
        weight: (num_embeddings, dim).
    Returns:
        idx.shape + (dim,)
    """
    idx = backend.asarray(_raw(idx), device=weight.device)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if idx.size and bool(((idx < 0) | (idx >= weight.shape[0])).any()):  # one host sync on a GPU
        raise ValueError(
            f"embedding: indices must be in [0, {weight.shape[0]}), got min {int(idx.min())} max {int(idx.max())}"
        )
    return EmbeddingFunction.apply(weight, idx=idx)


# ---------------------------------------------------------------- layer norm


class LayerNormFunction(Function):
    """Normalise over the last axis, then scale and shift."""

    def forward(self, x, w, b, eps=1e-5):
        xp = backend.get_array_module(x)
        self.w = w
        k = kernels.find("layer_norm_forward", x, w, b)
        if k:  # one pass over each row
            y, self.xhat, self.rstd = k(x.reshape(-1, x.shape[-1]), w, b, eps)  # (N, C), (N, C), (N,)
            return y.reshape(x.shape)
        xhat = x - x.mean(axis=-1, keepdims=True)
        var = (xhat * xhat).mean(axis=-1, keepdims=True)
        self.rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
        xhat *= self.rstd
        self.xhat = xhat
        return xhat * w + b

    def backward(self, gy):
        C = gy.shape[-1]
        xhat, rstd = self.xhat.reshape(-1, C), self.rstd.reshape(-1, 1)  # (N, C), (N, 1)
        gy2 = gy.reshape(-1, C)  # (N, C)
        k = kernels.find("layer_norm_backward", gy2, xhat, rstd, self.w)
        if k:
            gx, gw, gb = k(gy2, xhat, rstd.reshape(-1), self.w)
            return gx.reshape(gy.shape), gw, gb
        gw = (gy2 * xhat).sum(axis=0) if self.needs_grad[1] else None
        gb = gy2.sum(axis=0) if self.needs_grad[2] else None
        gx = None
        if self.needs_grad[0]:
            gxhat = gy2 * self.w
            # d/dx of (x - mean) * rstd: remove the mean of gxhat and its projection on xhat
            proj = (gxhat * xhat).mean(axis=-1, keepdims=True)
            gx = gxhat - gxhat.mean(axis=-1, keepdims=True)
            gx -= xhat * proj
            gx *= rstd
            gx = gx.reshape(gy.shape)
        return gx, gw, gb


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis.

    Args:
        x: (..., C); weight, bias: (C,).
    Returns:
        (..., C)
    """
    x, weight, bias = _tensors("layer_norm", x, weight, bias)
    if x.ndim < 1 or weight.shape != (x.shape[-1],) or bias.shape != (x.shape[-1],):
        raise ValueError(
            f"layer_norm: input of shape {x.shape} needs weight and bias of shape ({x.shape[-1] if x.ndim else '?'},), "
            f"got {weight.shape} and {bias.shape}"
        )
    return LayerNormFunction.apply(x, weight, bias, eps=eps)


# ---------------------------------------------------------------- activations and dropout


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU (tanh approximation)."""
    return ops.Gelu.apply(x)


def relu(x: Tensor) -> Tensor:
    """max(x, 0) elementwise."""
    return ops.Relu.apply(x)


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent elementwise."""
    return ops.Tanh.apply(x)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)) elementwise, computed without overflow."""
    return ops.Sigmoid.apply(x)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    return ops.Softmax.apply(x, axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log(softmax(x)) along `axis`, computed stably."""
    return ops.LogSoftmax.apply(x, axis=axis)


class DropoutFunction(Function):
    """Zero each element with probability p and scale the rest by 1 / (1 - p)."""

    def forward(self, x, p=0.5):
        keep = backend.rand(x.shape, x.dtype, backend.device_of(x)) >= p
        self.scaled_mask = keep.astype(x.dtype)
        self.scaled_mask *= 1.0 / (1.0 - p)
        return x * self.scaled_mask

    def backward(self, gy):
        return gy * self.scaled_mask


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Dropout with the library's seeded generator (`tinygrad_gpt.manual_seed`); identity when not training."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    (x,) = _tensors("dropout", x)
    if not training or p == 0.0:
        return x
    return DropoutFunction.apply(x, p=p)


# ---------------------------------------------------------------- losses


class CrossEntropy(Function):
    """Mean negative log-likelihood of the targets under softmax(logits), fused and stable."""

    def forward(self, logits, targets=None, ignore_index=-1):
        xp = backend.get_array_module(logits)
        x = logits.reshape(-1, logits.shape[-1])  # (N, C)
        t = targets.reshape(-1)  # (N,)
        self.in_shape, self.in_dtype = logits.shape, logits.dtype
        if x.dtype == xp.float16:  # mixed precision: a float32 loss, so a scaled loss (x 2**16) cannot overflow
            x = x.astype(xp.float32)
        k = kernels.find("softmax_cross_entropy_forward", x)
        if k:  # one kernel, no host sync (there is a CUDA kernel only)
            self.t, self.ignore_index, self.rows = t, ignore_index, None
            self.backward_kernel = kernels.find("softmax_cross_entropy_backward_", x)
            loss, self.probs = k(x, t, ignore_index)
            return loss
        valid = t != ignore_index
        t = xp.where(valid, t, 0)
        rows = xp.arange(x.shape[0])
        shifted = x - x.max(axis=1, keepdims=True)  # subtracting the max keeps exp finite
        probs = xp.exp(shifted)
        sum_exp = probs.sum(axis=1, keepdims=True)
        probs /= sum_exp
        nll = xp.log(sum_exp[:, 0]) - shifted[rows, t]  # (N,)
        n_valid = int(valid.sum())
        self.probs, self.t, self.rows, self.valid, self.n_valid = probs, t, rows, valid, n_valid
        return (nll * valid).sum() / max(n_valid, 1) if n_valid else xp.asarray(float("nan"), dtype=x.dtype)

    def backward(self, gy):
        return self._logits_grad(gy).astype(self.in_dtype, copy=False)  # float16 logits get a float16 gradient

    def _logits_grad(self, gy):
        # d loss / d logits = (softmax - one_hot(target)) / n_valid, zero on ignored rows
        if self.retain_graph:  # another backward will need the saved softmax: work on a copy
            g = self.probs.copy()
        else:  # reused: the saved softmax is not needed after this
            g, self.probs = self.probs, None
        if self.rows is None:  # the forward ran the kernel: so does backward, whatever the switches say now
            return self.backward_kernel(g, self.t, self.ignore_index, gy).reshape(self.in_shape)
        g[self.rows, self.t] -= 1
        g *= (self.valid * (gy / max(self.n_valid, 1)))[:, None].astype(g.dtype)
        return g.reshape(self.in_shape)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy over targets that are not `ignore_index`.

    Args:
        logits: (N, C), (B, T, C), or (C,) for one example.
        targets: integers of shape (N,), (B, T) or () (class indices, not one-hot rows).
    Returns:
        a scalar Tensor.
    """
    (logits,) = _tensors("cross_entropy", logits)
    targets = backend.asarray(_raw(targets), device=logits.device)
    if logits.ndim == 1 and targets.ndim == 0:  # one example: class scores (C,) and its class, as torch allows
        return cross_entropy(logits.reshape(1, -1), targets.reshape(1), ignore_index)
    if logits.ndim not in (2, 3) or targets.shape != logits.shape[:-1]:
        need = f"need targets of shape {logits.shape[:-1]} (one class index per row of scores)" if logits.ndim \
            else "are not class scores"
        raise ValueError(f"cross_entropy: logits of shape {logits.shape} {need}, got targets of shape "
                         f"{tuple(targets.shape)} (accepted: logits (N, C), (B, T, C) or (C,) with targets (N,), "
                         "(B, T) or ())")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    n_classes = logits.shape[-1]
    if bool((((targets < 0) | (targets >= n_classes)) & (targets != ignore_index)).any()):  # one host sync
        valid = targets[targets != ignore_index]
        raise ValueError(f"cross_entropy: targets must be in [0, {n_classes}) or {ignore_index}, "
                         f"got min {int(valid.min())} max {int(valid.max())}")
    return CrossEntropy.apply(logits, targets=targets, ignore_index=ignore_index)


def mse_loss(pred: Tensor, target) -> Tensor:
    """Mean squared error."""
    pred, target = _tensors("mse_loss", pred, target)
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: prediction of shape {pred.shape} and target of shape {target.shape} differ")
    diff = pred - target
    return (diff * diff).mean()


class BinaryCrossEntropy(Function):
    """Mean of -(t log p + (1 - t) log(1 - p)); logs clamped at -100, the gradient's denominator at 1e-12 (torch's)."""

    def forward(self, p, t):
        xp = backend.get_array_module(p)
        self.p, self.t = p, t
        # log(0) is -100 without a divide-by-zero warning: the log is taken of 1 there, then replaced
        self.log_p = xp.where(p > 0, xp.maximum(xp.log(xp.where(p > 0, p, 1)), -100), -100).astype(p.dtype)
        self.log_q = xp.where(p < 1, xp.maximum(xp.log(xp.where(p < 1, 1 - p, 1)), -100), -100).astype(p.dtype)
        return -(t * self.log_p + (1 - t) * self.log_q).sum() / max(p.size, 1)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        p, t, n = self.p, self.t, max(self.p.size, 1)
        # d/dp = (p - t) / (p (1 - p)), finite at p = 0 or 1 (a saturated sigmoid)
        gp = gy * (p - t) / xp.maximum(p * (1 - p), 1e-12) / n if self.needs_grad[0] else None
        gt = gy * (self.log_q - self.log_p) / n if self.needs_grad[1] else None
        return gp, gt


def binary_cross_entropy(probs: Tensor, targets) -> Tensor:
    """Mean binary cross-entropy of probabilities (after a sigmoid) against targets in [0, 1], as torch's.

    Args:
        probs: any shape, values in [0, 1]; targets: the same shape, values in [0, 1] (usually 0 or 1).
    Returns:
        a scalar Tensor.
    """
    probs, targets = _tensors("binary_cross_entropy", probs, targets)
    if not backend.is_float(probs.dtype):
        raise TypeError(f"binary_cross_entropy: probabilities must be floats, got dtype {probs.dtype}")
    targets = targets.astype(probs.dtype)  # integer 0/1 labels are fine
    if probs.shape != targets.shape:
        raise ValueError(f"binary_cross_entropy: probabilities of shape {probs.shape} need targets of the same "
                         f"shape, got {targets.shape}")
    if bool(((probs.data < 0) | (probs.data > 1)).any()):  # one host sync
        raise ValueError("binary_cross_entropy: probabilities must be in [0, 1] (apply sigmoid to logits first), "
                         f"got min {float(probs.data.min())} max {float(probs.data.max())}")
    return BinaryCrossEntropy.apply(probs, targets)


def one_hot(indices, num_classes: int = -1) -> Tensor:
    """Rows of the identity picked by integer `indices`: indices.shape + (num_classes,), int64, as torch's.

    Args:
        indices: integers in [0, num_classes); num_classes: -1 takes max(indices) + 1.
    """
    idx = backend.asarray(_raw(indices))
    if idx.dtype.kind not in "iu":
        raise TypeError(f"one_hot: indices must be integers, got dtype {idx.dtype}")
    if num_classes == -1:
        if idx.size == 0:
            raise ValueError("one_hot: cannot infer num_classes from empty indices; pass num_classes")
        num_classes = int(idx.max()) + 1
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(f"one_hot: indices must be in [0, {num_classes}), got min {int(idx.min())} "
                         f"max {int(idx.max())}")
    xp = backend.get_array_module(idx)
    return Tensor((idx[..., None] == xp.arange(num_classes)).astype("int64"))  # (..., num_classes)


# ---------------------------------------------------------------- attention


@functools.lru_cache(maxsize=64)
def _causal_bias(t_q: int, t_k: int, dtype_name: str, device: str):
    """(Tq, Tk) additive mask: 0 where query i may see key j (j <= Tk - Tq + i), -inf elsewhere."""
    xp = backend.xp_for(device)
    future = xp.arange(t_k)[None, :] > xp.arange(t_k - t_q, t_k)[:, None]
    return xp.where(future, -xp.inf, 0.0).astype(dtype_name)


def _softmax_scores_(att, scale: float, causal: bool, mask=None) -> None:
    """In place: raw scores (..., Tq, Tk) -> softmax(scale * scores + causal mask or `mask`) along the last axis."""
    k = kernels.find("attention_softmax_", att) if mask is None else None
    if k:
        k(att.reshape(-1, *att.shape[-2:]), scale, causal)  # (R, Tq, Tk), a view: att is contiguous
        return
    xp = backend.get_array_module(att)
    att *= scale
    if causal and att.shape[-2] > 1:  # one query row sits at the last position: it sees every key
        att += _causal_bias(att.shape[-2], att.shape[-1], att.dtype.name, backend.device_of(att))
    if mask is not None:  # a boolean mask (True: attend) as 0 / -inf, or a float mask as it is
        att += xp.where(mask, 0.0, -xp.inf).astype(att.dtype) if mask.dtype == bool else mask
    att -= att.max(axis=-1, keepdims=True)  # stable softmax
    xp.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)


def _softmax_scores_backward_(gatt, att, scale: float) -> None:
    """In place: gatt <- scale * att * (gatt - sum(gatt * att)), the gradient w.r.t. the raw scores."""
    k = kernels.find("attention_softmax_backward_", gatt, att)
    if k:
        shape = (-1, *att.shape[-2:])  # (R, Tq, Tk), views: both are contiguous
        k(gatt.reshape(shape), att.reshape(shape), scale)
        return
    gatt -= (gatt * att).sum(axis=-1, keepdims=True)
    gatt *= att
    gatt *= scale


def _attend(q, k, v, causal: bool, out=None, mask=None):
    """Attention on raw arrays: q (..., Tq, hs), k and v (..., Tk, hs) -> (probabilities, output)."""
    xp = backend.get_array_module(q)
    att = xp.matmul(q, xp.swapaxes(k, -1, -2))  # (..., Tq, hs) @ (..., hs, Tk) -> (..., Tq, Tk)
    _softmax_scores_(att, 1.0 / math.sqrt(q.shape[-1]), causal, mask)
    return att, xp.matmul(att, v, out=out)  # (..., Tq, Tk) @ (..., Tk, hs) -> (..., Tq, hs)


def _attend_backward(gy, q, k, v, att, needs_grad=(True, True, True), out=(None, None, None)):
    """Gradients of _attend's output w.r.t. q, k, v (written into `out` views when given)."""
    xp = backend.get_array_module(gy)
    gv = xp.matmul(xp.swapaxes(att, -1, -2), gy, out=out[2]) if needs_grad[2] else None  # (..., Tk, hs)
    gatt = xp.matmul(gy, xp.swapaxes(v, -1, -2))  # (..., Tq, Tk)
    _softmax_scores_backward_(gatt, att, 1.0 / math.sqrt(q.shape[-1]))
    gq = xp.matmul(gatt, k, out=out[0]) if needs_grad[0] else None  # (..., Tq, hs)
    gk = xp.matmul(xp.swapaxes(gatt, -1, -2), q, out=out[1]) if needs_grad[1] else None  # (..., Tk, hs)
    return gq, gk, gv


class Attention(Function):
    """softmax(q k^T / sqrt(hs) + mask) v in one Function (the mask: causal, given, or none)."""

    def forward(self, q, k, v, is_causal=False, mask=None):
        self.att, y = _attend(q, k, v, is_causal, mask=mask)
        self.q, self.k, self.v = q, k, v
        return y

    def backward(self, gy):
        return _attend_backward(gy, self.q, self.k, self.v, self.att, self.needs_grad)


class SelfAttention(Function):
    """Causal multi-head attention straight from the fused qkv projection to merged heads.

    Heads are strided views of the (B, T, 3C) input, and the output and gradients are written
    through views into (B, T, C) and (B, T, 3C) arrays, so NumPy never copies or transposes a head.
    (CuPy's batched matmul makes strided operands contiguous first, so on a GPU the heads are copied.)
    """

    def forward(self, qkv, n_head=1):
        xp = backend.get_array_module(qkv)
        B, T, C3 = qkv.shape
        self.heads = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head))  # (B, T, 3, nh, hs)
        q, k, v = (self.heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # 3 x (B, nh, T, hs) views
        y = xp.empty((B, T, C3 // 3), dtype=qkv.dtype)  # (B, T, C)
        self.att, _ = _attend(q, k, v, True, out=_as_heads(y, n_head))
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        heads = self.heads
        q, k, v = (heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        gqkv = xp.empty(heads.shape, dtype=gy.dtype)  # (B, T, 3, nh, hs)
        out = tuple(gqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        _attend_backward(_as_heads(gy, heads.shape[3]), q, k, v, self.att, out=out)
        return gqkv.reshape(*gqkv.shape[:2], -1)  # (B, T, 3C)


class CachedSelfAttention(Function):
    """Inference: causal attention of new positions over a key/value cache, straight from qkv (no graph).

    Writes the new positions' keys and values (heads of the (B, T, 3C) input) into the cache buffers
    at [start, start + T) and attends over [0, start + T), all on arrays: one Function per layer and
    token instead of the split, reshapes, transposes and cache appends of the generic path.
    """

    def forward(self, qkv, k_cache=None, v_cache=None, start=0, n_head=1):
        xp = backend.get_array_module(qkv)
        B, T, C3 = qkv.shape
        heads = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head))  # (B, T, 3, nh, hs)
        q, k, v = (heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # 3 x (B, nh, T, hs) views
        end = start + T
        k_cache[:, :, start:end] = k  # (B, nh, block_size, hs) buffers
        v_cache[:, :, start:end] = v
        y = xp.empty((B, T, C3 // 3), dtype=qkv.dtype)  # (B, T, C)
        _attend(q, k_cache[:, :, :end], v_cache[:, :, :end], True, out=_as_heads(y, n_head))
        return y

    def backward(self, gy):
        raise RuntimeError("cached_self_attention has no backward: a key/value cache is for inference")


def cached_self_attention(qkv: Tensor, n_head: int, k_cache, v_cache, start: int) -> Tensor:
    """Causal self-attention of T new positions over `start` cached ones, updating the cache (inference only).

    Equal to writing the new k, v heads into the cache at [start, start + T) and calling
    scaled_dot_product_attention(q, k_cache[..., :start + T, :], v_cache[..., :start + T, :], is_causal=True)
    (the mask aligned bottom-right), then merging the heads.

    Args:
        qkv: (B, T, 3 C) from the fused projection; n_head divides C.
        k_cache, v_cache: arrays (B, nh, block_size, hs) of qkv's dtype and device, written in place.
        start: positions already cached; start + T <= block_size.
    Returns:
        (B, T, C), without a graph.
    """
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) != 0:
        raise ValueError(f"cached_self_attention: qkv of shape {qkv.shape} is not (B, T, 3 C) with C divisible "
                         f"by n_head={n_head}")
    B, T, C3 = qkv.shape
    want = (B, n_head, C3 // (3 * n_head))
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.ndim != 4 or (cache.shape[0], cache.shape[1], cache.shape[3]) != want:
            raise ValueError(f"cached_self_attention: {name} of shape {tuple(cache.shape)} does not fit qkv "
                             f"{qkv.shape} with n_head={n_head}: need ({B}, {n_head}, block_size, {want[2]})")
    if not 0 <= start or start + T > k_cache.shape[2]:
        raise ValueError(f"cached_self_attention: positions [{start}, {start + T}) do not fit a cache of "
                         f"{k_cache.shape[2]} positions")
    if qkv.requires_grad and is_grad_enabled():
        raise RuntimeError("cached_self_attention holds no graph: use it under no_grad()")
    return CachedSelfAttention.apply(qkv, k_cache=k_cache, v_cache=v_cache, start=start, n_head=n_head)


def _as_heads(x, n_head: int):
    """(B, T, C) -> a (B, nh, T, hs) view."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def causal_self_attention(qkv: Tensor, n_head: int) -> Tensor:
    """Causal multi-head self-attention on the output of a fused q, k, v projection.

    Equal to splitting qkv into q, k, v, reshaping each to (B, nh, T, hs), calling
    scaled_dot_product_attention(q, k, v, is_causal=True) and merging the heads, without the copies
    (on NumPy; CuPy copies strided matmul operands itself).

    Args:
        qkv: (B, T, 3 C) with q, k, v side by side on the last axis; n_head divides C.
    Returns:
        (B, T, C)
    """
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) != 0:
        raise ValueError(f"causal_self_attention: qkv of shape {qkv.shape} is not (B, T, 3 C) with C divisible "
                         f"by n_head={n_head}")
    return SelfAttention.apply(qkv, n_head=n_head)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, is_causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v, with PyTorch's arguments and defaults (no mask unless asked).

    `attn_mask` is boolean (True: may attend, as torch) or float (added to the scores); it is a
    constant, no gradient flows into it. `is_causal=True` lets each query see itself and earlier
    keys. With a key/value cache (Tk > Tq) that mask is aligned bottom-right: query i sits at
    position Tk - Tq + i and sees keys 0..Tk - Tq + i (torch aligns it top-left there).

    Args:
        q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs) with Tk >= Tq when causal.
        attn_mask: None, or boolean/float broadcasting to (B, nh, Tq, Tk); not with is_causal.
    Returns:
        (B, nh, Tq, hs)
    """
    q, k, v = _tensors("scaled_dot_product_attention", q, k, v)
    if q.ndim < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "(B, nh, Tq, hs), (B, nh, Tk, hs), (B, nh, Tk, hs)")
    if is_causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: causal attention needs Tk >= Tq, got q {q.shape}, k {k.shape}")
    mask = None if attn_mask is None else _attention_mask(attn_mask, q, k, is_causal)
    return Attention.apply(q, k, v, is_causal=is_causal, mask=mask)


def _attention_mask(attn_mask, q: Tensor, k: Tensor, is_causal: bool):
    """attn_mask as a raw boolean array or an array of q's float dtype, checked against the scores' shape."""
    if is_causal:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal=True, not both (as torch)")
    mask = backend.asarray(_raw(attn_mask), device=q.device)
    scores = (*q.shape[:-1], k.shape[-2])
    if not shapes.broadcasts_to(tuple(mask.shape), scores):
        raise ValueError(f"scaled_dot_product_attention: attn_mask of shape {tuple(mask.shape)} does not broadcast "
                         f"to the scores' shape {scores}")
    if mask.dtype == bool:
        return mask
    if not backend.is_float(mask.dtype):
        raise TypeError(f"scaled_dot_product_attention: attn_mask must be boolean or float, got dtype {mask.dtype}")
    return mask.astype(q.dtype, copy=False)


# ---------------------------------------------------------------- the modern recipe's ops (defined in nn/modern.py)

from tinygrad_gpt.nn.modern import qk_norm_rotary, relu2, rms_norm, rotary, rotary_tables, softcap  # noqa: E402, F401
