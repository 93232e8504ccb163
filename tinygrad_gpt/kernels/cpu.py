"""Optional fused CPU kernels (numba), used automatically when numba is installed.

NumPy runs each elementwise step of a chain like GELU's backward as its own single-threaded pass
with its own temporary array; these kernels do the whole chain in one multi-threaded pass. Every
kernel has a pure-NumPy twin in the Function that calls it, and the tests compare the two
(tests/test_cpu_kernels.py). float32 exp and tanh use a hand-written polynomial that vectorises,
since NumPy's and numba's run one element at a time on this CPU. Set TINYGRAD_GPT_NUMBA=0 to turn
the kernels off. The row kernels (LayerNorm, the attention softmax) are compiled twice: multi-threaded
(prange) for arrays of at least `parallel_min_size` elements, serial below, where starting the threads
costs more than the loop (one 128-wide LayerNorm row: about 60 us threaded, 11 us through NumPy's
calls, 1-4 us serial), as in generation with a KV cache; they run on arrays of any size. The
elementwise and optimizer kernels are threaded only (serial, numba does not vectorise them: it cannot
tell that the output does not alias the input), so arrays below `min_size` elements take the NumPy path.
The kernels of the speedrun options (RoPE, RMSNorm and QK-norm) are serial only: their rows are short
and their work per element small, so threads did not pay at the sizes measured; they take strided
views (`VIEW_KERNELS`: the q and k heads inside a fused qkv array).

The public functions at the end take the signatures of their CUDA twins in cuda.py, where one
exists (they return new arrays, and those ending in `_` work in place); `KERNELS` names them for
`kernels.find`. Each wraps a jitted loop that writes into arrays the wrapper allocates.
"""

from __future__ import annotations

import functools
import math
import os
import types as pytypes

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
min_size = 16384  # the elementwise kernels: below this many elements the NumPy body runs instead
parallel_min_size = 16384  # the row kernels: below this many elements (of the first array) the serial twin runs
ROW_KERNELS = frozenset({"layer_norm_forward", "layer_norm_backward", "attention_softmax_",
                         "attention_softmax_backward_", "rotate_", "rms_norm_forward",
                         "rms_norm_backward"})  # fmt: skip
VIEW_KERNELS = frozenset({"rotate_", "rms_norm_forward", "rms_norm_backward"})  # strided views too (q, k heads)


def runs_on(name: str, size: int) -> bool:
    """Whether kernel `name` runs on a first array of `size` elements (else the NumPy body does)."""
    return size >= (min(1, min_size) if name in ROW_KERNELS else min_size)
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes the kernels are compiled for


if AVAILABLE:
    class _Twin:
        """A row loop compiled twice: threaded for large arrays, serial for small ones (see the module docstring)."""

        def __init__(self, fn, fastmath: bool):
            self.threaded = njit(parallel=True, cache=True, fastmath=fastmath)(fn)
            # a function of its own name, so that numba's on-disk cache keeps the two compilations apart
            serial = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__)
            serial.__qualname__ = fn.__qualname__ + "_serial"
            # error_model "numpy": x / 0 gives inf or nan as in the threaded loop, instead of raising
            self.serial = njit(cache=True, fastmath=fastmath, error_model="numpy")(serial)
            self.__doc__ = fn.__doc__

        def __call__(self, *args):
            return (self.threaded if args[0].size >= parallel_min_size else self.serial)(*args)

    _jit = njit(parallel=True, cache=True, fastmath=True)
    _jit_exact = njit(parallel=True, cache=True)  # no reassociation: matches NumPy's rounding closely

    def _jit_rows(fn):
        return _Twin(fn, fastmath=True)
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
    def _gelu_forward_loop(x, y, k):
        """y = GELU(x); 1-D arrays; k = (sqrt(2/pi), 0.044715, 0.5, 1) in x's dtype.

        Constants come in as an array of x's dtype because numba would compute float32 data in
        float64 (half the vector width) when mixed with Python floats.
        """
        c, a, half, one = k[0], k[1], k[2], k[3]
        for i in prange(x.size):
            v = x[i]
            y[i] = half * v * (one + fast_tanh(c * (v + a * v * v * v)))

    @_jit
    def _gelu_backward_loop(gy, x, out, k):
        """out = d GELU(x) / dx * gy, recomputing tanh (cheaper than keeping it); 1-D arrays; k as above."""
        c, a, half, one = k[0], k[1], k[2], k[3]
        three_a = a + a + a
        for i in prange(x.size):
            v = x[i]
            tt = fast_tanh(c * (v + a * v * v * v))
            out[i] = gy[i] * (half * (one + tt) + half * v * (one - tt * tt) * c * (one + three_a * v * v))

    @_jit_rows
    def _layer_norm_forward_loop(x, w, b, eps, y, xhat, rstd):
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

    @_jit_rows
    def _layer_norm_backward_loop(gy, xhat, rstd, w, gx, gw_parts, gb_parts):
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

    @_jit_rows
    def _attention_softmax_loop(att, scale, causal):
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

    @_jit_rows
    def _attention_softmax_backward_loop(gatt, att, scale):
        """In place: gatt <- scale * att * (gatt - sum(gatt * att)) along the last axis."""
        n_mat, t_q, t_k = att.shape
        for rr in prange(n_mat * t_q):
            m, i = rr // t_q, rr % t_q
            s = 0.0
            for j in range(t_k):
                s += gatt[m, i, j] * att[m, i, j]
            for j in range(t_k):
                gatt[m, i, j] = scale * att[m, i, j] * (gatt[m, i, j] - s)

    @njit(cache=True, fastmath=True)
    def _rotate_loop(x, cos, sin, out):
        """out[r, t, h] = x[r, t, h] with its halves (x1, x2) turned by position t's angles: (x1 c - x2 s, x2 c + x1 s).

        Serial: four flops per element do not pay for waking threads (the default run's q heads, 49k pairs in
        strided views: 43 us serial, 147 us on two threads; NumPy's broadcast ufuncs 207 us).
        """
        n_r, n_t, n_h, hs = x.shape
        half = hs // 2
        for rt in range(n_r * n_t):
            r, t = rt // n_t, rt % n_t
            for h in range(n_h):
                for i in range(half):
                    x1, x2, c, s = x[r, t, h, i], x[r, t, h, i + half], cos[t, i], sin[t, i]
                    out[r, t, h, i] = x1 * c - x2 * s
                    out[r, t, h, i + half] = x2 * c + x1 * s

    @njit(cache=True, fastmath=True)
    def _rms_norm_forward_loop(x, w, eps, y, xhat, rstd):
        """Rows x[r, t, h] (any strides) -> xhat = x * rstd, y = xhat * w, rstd = 1 / sqrt(mean(x^2) + eps).

        Serial, as rotate: the rows are short (a head, or the default run's 128 channels).
        """
        n_r, n_t, n_h, c = x.shape
        for rt in range(n_r * n_t):
            r, t = rt // n_t, rt % n_t
            for h in range(n_h):
                ss = 0.0
                for j in range(c):
                    ss += x[r, t, h, j] * x[r, t, h, j]
                s = 1.0 / math.sqrt(ss / c + eps)
                rstd[r, t, h] = s
                for j in range(c):
                    xh = x[r, t, h, j] * s
                    xhat[r, t, h, j] = xh
                    y[r, t, h, j] = xh * w[j]

    @njit(cache=True, fastmath=True)
    def _rms_norm_backward_loop(gy, xhat, rstd, w, gx, gw):
        """gx = rstd (gy w - xhat mean(gy w xhat)) per row; gw (float64) += sum over rows of gy xhat."""
        n_r, n_t, n_h, c = gy.shape
        for rt in range(n_r * n_t):
            r, t = rt // n_t, rt % n_t
            for h in range(n_h):
                proj = 0.0
                for j in range(c):
                    proj += gy[r, t, h, j] * w[j] * xhat[r, t, h, j]
                proj /= c
                s = rstd[r, t, h]
                for j in range(c):
                    gx[r, t, h, j] = s * (gy[r, t, h, j] * w[j] - xhat[r, t, h, j] * proj)
                    gw[j] += gy[r, t, h, j] * xhat[r, t, h, j]

    @_jit_exact
    def _adamw_loop(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2_sqrt):
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

    # ------------------------------------------------------------ the public kernels: cuda.py's signatures

    @functools.lru_cache(maxsize=4)
    def _gelu_constants(dtype):
        return np.asarray([GELU_C, 0.044715, 0.5, 1.0], dtype=dtype)

    def gelu_forward(x):
        """GELU(x) (GPT-2's tanh approximation) of a C-contiguous array, any shape."""
        y = np.empty_like(x)
        _gelu_forward_loop(x.reshape(-1), y.reshape(-1), _gelu_constants(x.dtype))
        return y

    def gelu_backward(gy, x):
        """d GELU(x) / dx * gy, recomputing tanh (cheaper than keeping it); gy and x of one shape."""
        gx = np.empty_like(x)
        _gelu_backward_loop(gy.reshape(-1), x.reshape(-1), gx.reshape(-1), _gelu_constants(x.dtype))
        return gx

    def layer_norm_forward(x2, w, b, eps: float):
        """Rows of x2 (N, C) -> (y, xhat, rstd): y and xhat (N, C), rstd (N,)."""
        y, xhat, rstd = np.empty_like(x2), np.empty_like(x2), np.empty(x2.shape[0], x2.dtype)
        _layer_norm_forward_loop(x2, w, b, eps, y, xhat, rstd)
        return y, xhat, rstd

    def layer_norm_backward(gy2, xhat, rstd, w):
        """(gx (N, C), gw (C,), gb (C,)) from gy2, xhat (N, C), rstd (N,) and w (C,)."""
        n, c = gy2.shape
        gx = np.empty_like(gy2)
        n_chunks = min(64, n)
        gw_parts, gb_parts = np.zeros((2, n_chunks, c), dtype=gy2.dtype)
        _layer_norm_backward_loop(gy2, xhat, rstd, w, gx, gw_parts, gb_parts)
        return gx, gw_parts.sum(axis=0), gb_parts.sum(axis=0)

    def attention_softmax_(att, scale: float, causal: bool) -> None:
        """In place: att (R, Tq, Tk) of raw scores -> softmax(scale * att) with the bottom-right causal mask."""
        _attention_softmax_loop(att, att.dtype.type(scale), causal)

    def attention_softmax_backward_(gatt, att, scale: float) -> None:
        """In place: gatt (R, Tq, Tk) <- scale * att * (gatt - sum(gatt * att)) along the last axis."""
        _attention_softmax_backward_loop(gatt, att, att.dtype.type(scale))

    def rotate_(x, cos, sin, out) -> None:
        """out (R, T, H, hs) <- x (R, T, H, hs) rotated by RoPE tables cos, sin (T, hs/2); views allowed, no overlap."""
        _rotate_loop(x, cos, sin, out)

    def rms_norm_forward(x, w, eps: float):
        """Rows of x (R, T, H, C), any strides -> (y, xhat) C-contiguous (R, T, H, C) and rstd (R, T, H).

        A strided view (the q or k heads of a fused qkv) is copied to contiguous rows first: numba vectorises
        only loops over rows it knows to be contiguous (medium's q heads: 0.27 ms with the copy, 0.79 without).
        """
        x = np.ascontiguousarray(x)
        y, xhat, rstd = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype), np.empty(x.shape[:3], x.dtype)
        _rms_norm_forward_loop(x, w, eps, y, xhat, rstd)
        return y, xhat, rstd

    def rms_norm_backward(gy, xhat, rstd, w):
        """(gx (R, T, H, C) C-contiguous, gw (C,)) from gy, xhat (R, T, H, C), rstd (R, T, H) and w (C,)."""
        gy, xhat = np.ascontiguousarray(gy), np.ascontiguousarray(xhat)  # as in rms_norm_forward
        gx, gw = np.empty(gy.shape, gy.dtype), np.zeros(gy.shape[-1], np.float64)
        _rms_norm_backward_loop(gy, xhat, rstd, w, gx, gw)
        return gx, gw.astype(gy.dtype)

    def adamw_(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2_sqrt) -> None:
        """One AdamW step in place on C-contiguous arrays of one shape (grad is only read)."""
        flat = [a.reshape(-1) for a in (param, grad, exp_avg, exp_avg_sq)]  # views: the arrays are contiguous
        _adamw_loop(*flat, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2_sqrt)

    KERNELS = {f.__name__: f for f in (gelu_forward, gelu_backward, layer_norm_forward, layer_norm_backward,
                                       attention_softmax_, attention_softmax_backward_, rotate_, rms_norm_forward,
                                       rms_norm_backward, adamw_)}
else:
    KERNELS = {}
