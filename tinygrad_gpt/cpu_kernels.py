"""Optional fused CPU kernels (numba), used automatically when numba is installed.

NumPy runs each elementwise step of a chain like GELU's backward as its own single-threaded pass
with its own temporary array; these kernels do the whole chain in one multi-threaded pass. Every
kernel has a pure-NumPy twin in the module that calls it, and the tests compare the two.
Transcendentals (exp, tanh) stay in NumPy where its SIMD versions are faster than numba's scalar
ones. Set TINYGRAD_GPT_NUMBA=0 to turn the kernels off.
"""

from __future__ import annotations

import math
import os

import numpy as np

# numba's default OpenMP layer fights OpenBLAS's threads for the cores (a step took 6x longer)
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

try:
    if os.environ.get("TINYGRAD_GPT_NUMBA", "1") == "0":
        raise ImportError("disabled by TINYGRAD_GPT_NUMBA=0")
    from numba import njit, prange

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

enabled = AVAILABLE  # flipped by tests to compare both paths
# below this many elements, starting the threads costs more than the kernel saves
min_size = 16384


def use(array) -> bool:
    """Whether to run the numba kernel on `array` (a large C-contiguous float32/64 host array)."""
    return (
        enabled
        and isinstance(array, np.ndarray)
        and array.size >= min_size
        and array.dtype in (np.float32, np.float64)
        and array.flags.c_contiguous
    )


if AVAILABLE:
    _jit = njit(parallel=True, cache=True, fastmath=True)
    _jit_exact = njit(parallel=True, cache=True)  # no reassociation: matches NumPy's rounding closely
    GELU_C = math.sqrt(2 / math.pi)

    @_jit
    def gelu_inner(x, out):
        """out = sqrt(2/pi) (x + 0.044715 x^3), the argument of GELU's tanh; 1-D arrays."""
        for i in prange(x.size):
            v = x[i]
            out[i] = GELU_C * (v + 0.044715 * v * v * v)

    @_jit
    def gelu_finish(x, t, out):
        """out = 0.5 x (1 + t) with t = tanh(inner); 1-D arrays."""
        for i in prange(x.size):
            out[i] = 0.5 * x[i] * (1 + t[i])

    @_jit
    def gelu_backward(gy, x, t, out):
        """out = d GELU(x) / dx * gy; 1-D arrays."""
        for i in prange(x.size):
            v, tt = x[i], t[i]
            out[i] = gy[i] * (0.5 * (1 + tt) + 0.5 * v * (1 - tt * tt) * GELU_C * (1 + 3 * 0.044715 * v * v))

    @_jit
    def layer_norm_forward(x, w, b, eps, y, xhat, rstd):
        """Rows of x (N, C) -> y, with xhat and rstd (N,) saved for backward."""
        n, c = x.shape
        for r in prange(n):
            mean = 0.0
            for j in range(c):
                mean += x[r, j]
            mean /= c
            var = 0.0
            for j in range(c):
                d = x[r, j] - mean
                var += d * d
            s = 1.0 / math.sqrt(var / c + eps)
            rstd[r] = s
            for j in range(c):
                h = (x[r, j] - mean) * s
                xhat[r, j] = h
                y[r, j] = h * w[j] + b[j]

    @_jit
    def layer_norm_backward(gy, xhat, rstd, w, gx, gw_parts, gb_parts):
        """gx (N, C); per-chunk partial sums of gw and gb (n_chunks, C), summed by the caller."""
        n, c = gy.shape
        n_chunks = gw_parts.shape[0]
        for k in prange(n_chunks):
            for r in range(k * n // n_chunks, (k + 1) * n // n_chunks):
                m1 = 0.0
                m2 = 0.0
                for j in range(c):
                    g = gy[r, j]
                    gxh = g * w[j]
                    m1 += gxh
                    m2 += gxh * xhat[r, j]
                    gw_parts[k, j] += g * xhat[r, j]
                    gb_parts[k, j] += g
                m1 /= c
                m2 /= c
                for j in range(c):
                    gx[r, j] = rstd[r] * (gy[r, j] * w[j] - m1 - xhat[r, j] * m2)

    @_jit
    def attention_softmax_(att, scale, causal):
        """In place: att (R, Tq, Tk) of raw scores -> softmax(scale * att) with the causal mask."""
        n_mat, t_q, t_k = att.shape
        for rr in prange(n_mat * t_q):
            m, i = rr // t_q, rr % t_q
            last = t_k - t_q + i if causal else t_k - 1  # the last key this query may see
            row_max = att[m, i, 0]  # in att's dtype, so exp runs in float32 for float32 scores
            for j in range(1, last + 1):
                row_max = max(row_max, att[m, i, j])
            total = 0.0
            for j in range(last + 1):
                e = math.exp((att[m, i, j] - row_max) * scale)
                att[m, i, j] = e
                total += e
            inv = 1.0 / total
            for j in range(last + 1):
                att[m, i, j] *= inv
            for j in range(last + 1, t_k):
                att[m, i, j] = 0.0

    @_jit
    def attention_softmax_backward_(gatt, att, scale):
        """In place: gatt <- scale * att * (gatt - sum(gatt * att)) along the last axis."""
        n_mat, t_q, t_k = att.shape
        for rr in prange(n_mat * t_q):
            m, i = rr // t_q, rr % t_q
            s = 0.0
            for j in range(t_k):
                s += gatt[m, i, j] * att[m, i, j]
            for j in range(t_k):
                gatt[m, i, j] = scale * att[m, i, j] * (gatt[m, i, j] - s)

    @_jit_exact
    def adamw_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2_sqrt):
        """One AdamW step in place on flat arrays (torch.optim.AdamW's formula)."""
        step_size = lr / bias_c1
        decay = 1.0 - lr * weight_decay
        for i in prange(p.size):
            gi = g[i]
            mi = beta1 * m[i] + (1.0 - beta1) * gi
            vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay - step_size * mi / (math.sqrt(vi) / bias_c2_sqrt + eps)
