"""Optional fused CPU kernels (numba), used automatically when numba is installed.

NumPy runs each elementwise step of a chain like GELU's backward as its own single-threaded pass
with its own temporary array; these kernels do the whole chain in one multi-threaded pass. Every
kernel has a pure-NumPy twin in the module that calls it, and the tests compare the two
(tests/test_cpu_kernels.py). float32 exp and tanh use a hand-written polynomial that vectorises,
since NumPy's and numba's run one element at a time on this CPU. Set TINYGRAD_GPT_NUMBA=0 to turn
the kernels off; arrays below `min_size` elements always take the NumPy path.
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
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload

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

    # ------------------------------------------------------------ exp and tanh that vectorize
    # NumPy's exp/tanh and numba's math.exp run about one element per 2.5 ns here; the float32
    # exp below (Cody-Waite range reduction, a degree-6 polynomial, 2^n built from its bits)
    # compiles to AVX2 code at about 0.3 ns per element, with a relative error under 3e-7.

    @intrinsic
    def _int32_bits_as_float32(typingctx, i):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    @njit(inline="always", fastmath=True, cache=True)
    def _exp_float32(x):
        x = np.float32(-87.0) if x < np.float32(-87.0) else x  # exp(-87) ~ 1.6e-38, the smallest normal
        x = np.float32(88.0) if x > np.float32(88.0) else x
        n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))  # x = n ln2 + r, |r| <= ln2 / 2
        r = x - n * np.float32(0.693145751953125) - n * np.float32(1.428606765330187e-06)
        p = np.float32(0.0013888889)
        for c in (0.008333334, 0.041666668, 0.16666667, 0.5, 1.0, 1.0):
            p = p * r + np.float32(c)
        return p * _int32_bits_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))  # p * 2^n

    def fast_exp(x):
        return math.exp(x)

    @overload(fast_exp)
    def _fast_exp(x):
        if x == types.float32:
            return lambda x: _exp_float32(x)
        return lambda x: math.exp(x)

    def fast_tanh(x):
        return math.tanh(x)

    @overload(fast_tanh)
    def _fast_tanh(x):
        if x == types.float32:
            return lambda x: _tanh_float32(x)
        return lambda x: math.tanh(x)

    @njit(inline="always", fastmath=True, cache=True)
    def _tanh_float32(x):
        # on |x| and then the sign: for large |x| this gives exactly +-1 even when fastmath
        # turns the division into an approximate reciprocal
        a = abs(x)
        t = np.float32(1.0) - np.float32(2.0) / (_exp_float32(a + a) + np.float32(1.0))
        return math.copysign(t, x)

    # ------------------------------------------------------------ kernels

    @_jit
    def gelu_forward(x, y, k):
        """y = GELU(x); 1-D arrays; k = (sqrt(2/pi), 0.044715, 0.5, 1) in x's dtype.

        Constants come in as an array of x's dtype because numba would compute float32 data in
        float64 (half the vector width) when mixed with Python floats.
        """
        c, a, half, one = k[0], k[1], k[2], k[3]
        for i in prange(x.size):
            v = x[i]
            y[i] = half * v * (one + fast_tanh(c * (v + a * v * v * v)))

    @_jit
    def gelu_backward(gy, x, out, k):
        """out = d GELU(x) / dx * gy, recomputing tanh (cheaper than keeping it); 1-D arrays; k as above."""
        c, a, half, one = k[0], k[1], k[2], k[3]
        three_a = a + a + a
        for i in prange(x.size):
            v = x[i]
            tt = fast_tanh(c * (v + a * v * v * v))
            out[i] = gy[i] * (half * (one + tt) + half * v * (one - tt * tt) * c * (one + three_a * v * v))

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
                e = fast_exp((att[m, i, j] - row_max) * scale)
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
