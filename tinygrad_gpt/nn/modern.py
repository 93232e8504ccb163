"""Fused Functions of the modern GPT recipe (the NanoGPT speedrun's): RMSNorm, rotary embeddings, ReLU^2, soft-capping.

Each is one primitive Function with a hand-written backward on raw arrays; `nn.functional`
re-exports the lowercase wrappers (F.rms_norm, F.rotary, F.qk_norm_rotary, F.relu2, F.softcap).
`qk_norm_rotary` fuses what attention needs on the fused (B, T, 3C) q, k, v projection: RMS-normalise
and rotate the q and k heads in one pass, v passing through, with no split and no concatenation.

References: RMSNorm (Zhang & Sennrich 2019), RoFormer (Su et al. 2021; the rotate-half layout of
GPT-NeoX and Llama), QK-norm (Dehghani et al. 2023), ReLU^2 (So et al. 2021, Primer), tanh logit
soft-capping (Gemma 2), all as in modded-nanogpt (Keller Jordan et al. 2024).
"""

from __future__ import annotations

import math

from tinygrad_gpt import backend, kernels
from tinygrad_gpt.autograd import as_tensors
from tinygrad_gpt.tensor import Function, Tensor, _raw

# ---------------------------------------------------------------- raw-array kernels, shared by the Functions


def _einsum(subscripts: str, a, b):
    """einsum without temporaries; float16 sums accumulate in float32 (a float16 sum of squares overflows at 65504)."""
    xp = backend.get_array_module(a)
    if a.dtype == xp.float16:
        return xp.einsum(subscripts, a, b, dtype=xp.float32)
    return xp.einsum(subscripts, a, b)


def _rows4(x):
    """x (..., C) as (R, T, H, C) for the numba row kernels: 4-D arrays as they are (views of heads too),
    C-contiguous ones reshaped; None otherwise."""
    if x.ndim == 4:
        return x
    return x.reshape(-1, 1, 1, x.shape[-1]) if x.ndim >= 1 and x.flags.c_contiguous else None


def _rms_norm_forward(x, w, eps: float):
    """[..., C], [C] -> y = xhat * w, xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps) [..., 1]."""
    k = kernels.find("rms_norm_forward", x, w)
    x4 = _rows4(x) if k else None
    if x4 is not None:
        y, xhat, rstd = k(x4, w, eps)
        return y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)
    xp = backend.get_array_module(x)
    ms = _einsum("...i,...i->...", x, x)[..., None]  # sum of squares without an (..., C) temporary
    ms *= 1.0 / x.shape[-1]
    ms += eps
    rstd = xp.sqrt(ms, out=ms)
    xp.divide(1.0, rstd, out=rstd)
    rstd = rstd.astype(x.dtype, copy=False)
    xhat = x * rstd
    return xhat * w, xhat, rstd


def _rms_norm_backward(gy, xhat, rstd, w, needs_w: bool = True):
    """Gradients w.r.t. x and w of y = (x * rstd) * w, from the saved xhat and rstd."""
    C = gy.shape[-1]
    k = kernels.find("rms_norm_backward", gy, xhat, rstd, w)
    gy4, xhat4 = (_rows4(gy), _rows4(xhat)) if k else (None, None)
    if gy4 is not None and xhat4 is not None:
        gx, gw = k(gy4, xhat4, rstd.reshape(xhat4.shape[:3]), w)
        return gx.reshape(gy.shape), gw if needs_w else None
    gw = None
    if needs_w:  # summed over every row
        gw = _einsum("ni,ni->i", gy.reshape(-1, C), xhat.reshape(-1, C)).astype(gy.dtype, copy=False)
    gx = gy * w  # d loss / d xhat
    # NOTE: d xhat_i / d x_j = rstd (delta_ij - xhat_i xhat_j / C): remove gx's projection on xhat
    proj = _einsum("...i,...i->...", gx, xhat)[..., None]
    proj *= 1.0 / C
    gx -= xhat * proj.astype(gx.dtype, copy=False)
    gx *= rstd
    return gx, gw


def _rotate(x, cos, sin, out):
    """out = x rotated pairwise (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin); x1, x2 the two halves of the last axis.

    cos and sin broadcast against x[..., :hs/2]; `out` must not overlap x. Rotating back uses -sin.
    """
    xp = backend.get_array_module(x)
    half = x.shape[-1] // 2
    x1, x2, out1, out2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    xp.multiply(x1, cos, out=out1)
    out1 -= x2 * sin
    xp.multiply(x2, cos, out=out2)
    out2 += x1 * sin
    return out


def _rotate_heads(x, cos, sin, out):
    """_rotate for x and out (R, T, H, hs), any strides, and tables cos, sin (T, hs/2); the numba kernel if it runs."""
    k = kernels.find("rotate_", x, cos, sin, out)
    if k:
        k(x, cos, sin, out)
        return out
    return _rotate(x, cos[:, None, :], sin[:, None, :], out)  # the tables broadcast over the heads


# ---------------------------------------------------------------- RMSNorm


class RMSNorm(Function):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis (no mean subtraction, no bias)."""

    def forward(self, x, w, eps=1e-5):
        y, self.xhat, self.rstd = _rms_norm_forward(x, w, eps)
        self.w = w
        return y

    def backward(self, gy):
        return _rms_norm_backward(gy, self.xhat, self.rstd, self.w, self.needs_grad[1])


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Root-mean-square normalisation over the last axis, then a per-channel gain.

    Args:
        x: (..., C); weight: (C,).
    Returns:
        (..., C)
    """
    x, weight = as_tensors((x, weight), "rms_norm")  # NumPy arrays and lists too, as the other functions
    if x.ndim < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: input of shape {x.shape} needs a weight of shape "
                         f"({x.shape[-1] if x.ndim else '?'},), got {weight.shape}")
    return RMSNorm.apply(x, weight, eps=eps)


# ---------------------------------------------------------------- rotary position embeddings


def rotary_tables(n_positions: int, head_size: int, base: float = 10000.0, start: int = 0):
    """cos and sin of the rotary angles t * base^(-2i / head_size), float64 numpy arrays (n_positions, head_size / 2).

    Positions run from `start`. Build once (GPT keeps them as buffers) and slice per call.
    """
    np = backend.np
    if head_size % 2 != 0:
        raise ValueError(f"rotary_tables: head_size must be even, got {head_size}")
    inv_freq = base ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (hs/2,)
    angles = np.arange(start, start + n_positions, dtype=np.float64)[:, None] * inv_freq  # (P, hs/2)
    return np.cos(angles), np.sin(angles)


class Rotary(Function):
    """Rotate each (x_i, x_{i + hs/2}) pair of the last axis by its position's angle."""

    def forward(self, x, cos=None, sin=None):
        self.cos, self.sin = cos, sin
        return self._turn(x, sin)

    def backward(self, gy):
        return self._turn(gy, -self.sin)  # rotate back

    def _turn(self, x, sin):
        """x (..., T, hs) rotated into a new C-contiguous array, through its (R, T, 1, hs) view."""
        out = backend.get_array_module(x).empty(x.shape, dtype=x.dtype)
        T, hs = x.shape[-2:]
        _rotate_heads(x.reshape(-1, T, 1, hs), self.cos, sin, out.reshape(-1, T, 1, hs))
        return out


def _check_tables(name: str, x: Tensor, cos, sin, n_positions: int, head_size: int):
    """cos, sin as raw arrays of x's dtype and device, checked to be (n_positions, head_size / 2)."""
    if head_size % 2 != 0:
        raise ValueError(f"{name}: input of shape {x.shape} has an odd head size {head_size}; RoPE needs it even")
    want = (n_positions, head_size // 2)
    tables = []
    for table in (cos, sin):
        table = backend.asarray(_raw(table), dtype=x.dtype, device=x.device)
        if tuple(table.shape) != want:
            raise ValueError(f"{name}: input of shape {x.shape} needs cos and sin of shape {want}, "
                             f"got {tuple(table.shape)}")
        tables.append(table)
    return tables


def rotary(x: Tensor, cos, sin) -> Tensor:
    """Rotary position embedding (RoPE, rotate-half layout) of queries or keys.

    Args:
        x: (..., T, hs) with hs even, e.g. (B, nh, T, hs).
        cos, sin: (T, hs/2) arrays or Tensors (rotary_tables sliced to the positions of x); no gradient.
    Returns:
        (..., T, hs): [x1 cos - x2 sin, x2 cos + x1 sin] with x1, x2 the halves of the last axis.
    """
    (x,) = as_tensors((x,), "rotary")
    if x.ndim < 2:
        raise ValueError(f"rotary: input of shape {x.shape} is not (..., T, hs)")
    cos, sin = _check_tables("rotary", x, cos, sin, x.shape[-2], x.shape[-1])
    return Rotary.apply(x, cos=cos, sin=sin)


# ---------------------------------------------------------------- q, k normalisation and rotation on a fused qkv


class QKNormRotary(Function):
    """On a (B, T, 3C) q, k, v projection: RMS-normalise (optional) then rotate (optional) each q and k head."""

    def forward(self, qkv, q_weight=None, k_weight=None, cos=None, sin=None, n_head=1, eps=1e-5):
        xp = backend.get_array_module(qkv)
        B, T, C3 = qkv.shape
        heads = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head))  # (B, T, 3, nh, hs)
        self.heads_shape = heads.shape
        out = xp.empty_like(heads)
        out[:, :, 2] = heads[:, :, 2]  # v passes through
        self.cos, self.sin = cos, sin  # (T, hs/2)
        self.weights, self.saved = (q_weight, k_weight), []
        for i, w in enumerate(self.weights):
            x = heads[:, :, i]  # (B, T, nh, hs) view
            if w is not None:
                x, xhat, rstd = _rms_norm_forward(x, w, eps)
                self.saved.append((xhat, rstd))
            if self.cos is not None:
                _rotate_heads(x, self.cos, self.sin, out[:, :, i])
            else:
                out[:, :, i] = x
        return out.reshape(qkv.shape)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        g_heads = gy.reshape(self.heads_shape)  # (B, T, 3, nh, hs)
        gqkv = xp.empty_like(g_heads)
        gqkv[:, :, 2] = g_heads[:, :, 2]
        gws = []
        for i, w in enumerate(self.weights):
            g, out = g_heads[:, :, i], gqkv[:, :, i]
            if self.cos is not None:  # rotate the gradient back, straight into place when no norm follows
                g = _rotate_heads(g, self.cos, -self.sin, out if w is None else xp.empty_like(g))
            if w is not None:
                xhat, rstd = self.saved[i]
                g, gw = _rms_norm_backward(g, xhat, rstd, w, self.needs_grad[1 + i])
                gws.append(gw)
            if g is not out:
                out[...] = g
        return (gqkv.reshape(gy.shape), *gws)


def qk_norm_rotary(qkv: Tensor, n_head: int, q_weight: Tensor | None = None, k_weight: Tensor | None = None,
                   cos=None, sin=None, eps: float = 1e-5) -> Tensor:
    """Prepare q and k of a fused (B, T, 3C) projection for attention: QK-norm, then RoPE; v unchanged.

    Equal to splitting qkv into q, k, v (B, T, nh, hs), applying rms_norm(q, q_weight, eps) and
    rms_norm(k, k_weight, eps) per head (when the weights are given), then rotary with cos, sin (when
    given), and concatenating again, in one Function without the copies.

    Args:
        qkv: (B, T, 3C); n_head divides C.
        q_weight, k_weight: (hs,) gains of the q and k RMSNorms, both or neither.
        cos, sin: (T, hs/2) rotary tables for the positions of qkv, both or neither.
    Returns:
        (B, T, 3C)
    """
    (qkv,) = as_tensors((qkv,), "qk_norm_rotary")
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head) != 0:
        raise ValueError(f"qk_norm_rotary: qkv of shape {qkv.shape} is not (B, T, 3 C) with C divisible by "
                         f"n_head={n_head}")
    if (q_weight is None) != (k_weight is None) or (cos is None) != (sin is None):
        raise ValueError("qk_norm_rotary: give both q_weight and k_weight or neither, and both cos and sin or neither")
    hs = qkv.shape[-1] // (3 * n_head)
    if cos is not None:
        cos, sin = _check_tables("qk_norm_rotary", qkv, cos, sin, qkv.shape[1], hs)
    weights = ()
    if q_weight is not None:
        q_weight, k_weight = as_tensors((q_weight, k_weight), "qk_norm_rotary")
        if q_weight.shape != (hs,) or k_weight.shape != (hs,):
            raise ValueError(f"qk_norm_rotary: head size {hs} needs q_weight and k_weight of shape ({hs},), "
                             f"got {q_weight.shape} and {k_weight.shape}")
        weights = (q_weight, k_weight)
    if not weights and cos is None:
        return qkv
    return QKNormRotary.apply(qkv, *weights, cos=cos, sin=sin, n_head=n_head, eps=eps)


# ---------------------------------------------------------------- ReLU^2 and soft-capping


class Relu2(Function):
    """relu(x)^2: 0 for x <= 0, x^2 above."""

    def forward(self, x):
        self.r = backend.get_array_module(x).maximum(x, 0)
        return self.r * self.r

    def backward(self, gy):
        gx = gy * self.r
        gx *= 2
        return gx


def relu2(x: Tensor) -> Tensor:
    """The squared ReLU of Primer and the speedrun's MLP; smooth at 0 (its derivative 2 relu(x) is continuous)."""
    return Relu2.apply(x)


class SoftCap(Function):
    """y = cap * tanh(x / cap): about x for |x| << cap, bounded by +-cap."""

    def forward(self, x, cap=1.0):
        xp = backend.get_array_module(x)
        self.t = xp.tanh(x * (1.0 / cap))  # saved: the derivative is 1 - t^2
        return self.t * cap

    def backward(self, gy):
        gx = self.t * self.t
        gx -= 1.0
        gx *= -gy  # gy (1 - t^2)
        return gx


def softcap(x: Tensor, cap: float) -> Tensor:
    """tanh soft-capping (Gemma 2, the speedrun's logits): cap * tanh(x / cap), cap > 0."""
    if not (isinstance(cap, (int, float)) and math.isfinite(cap) and cap > 0):
        raise ValueError(f"softcap: cap must be a positive finite number, got {cap!r}")
    return SoftCap.apply(x, cap=float(cap))
