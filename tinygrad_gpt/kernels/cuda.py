"""Fused CUDA kernels for CuPy arrays: GELU, LayerNorm, softmax cross-entropy, attention softmax, AdamW.

Each CuPy call is one kernel launch that reads and writes whole arrays, so an elementwise chain
like GELU's backward costs a dozen launches and temporaries; each kernel here is one pass. Every
kernel has a pure `xp` twin in the Function that calls it (found through `kernels.find`, as the
numba kernels of cpu.py are, with the same signatures), and tests/test_gpu_kernels.py compares the two.

Importing this module never imports CuPy: the kernels are built on first use, from the cupy
module that `backend.xp_for("cuda")` hands out. Elementwise kernels are `cupy.ElementwiseKernel`s;
the row kernels (LayerNorm, softmax cross-entropy, attention softmax) are one CUDA thread block
per row, reducing in shared memory. float16 arrays are computed in float32 (mixed precision),
float32 in float32 and float64 in float64. Set TINYGRAD_GPT_GPU_KERNELS=0 to turn them off.
"""

from __future__ import annotations

import functools
import os

from tinygrad_gpt import backend

enabled = os.environ.get("TINYGRAD_GPT_GPU_KERNELS", "1") != "0"  # flipped by tests to compare both paths
DTYPES = backend.FLOAT_DTYPES  # float16 is computed in float32


def _cupy():
    return backend.xp_for("cuda")  # imports and checks CuPy the first time


def _check(name: str, *arrays) -> None:
    """Raise TypeError unless `arrays` are C-contiguous float CuPy arrays of one dtype."""
    for a in arrays:
        if not (backend.is_array(a) and backend.device_of(a) == "cuda" and a.dtype in backend.FLOAT_DTYPES
                and a.flags.c_contiguous):
            got = f"{type(a).__name__} of dtype {getattr(a, 'dtype', '?')}"
            raise TypeError(f"{name}: needs C-contiguous float16/32/64 CuPy arrays, got a {got}")
    if len({a.dtype for a in arrays}) > 1:
        raise TypeError(f"{name}: arrays must share one dtype, got {', '.join(str(a.dtype) for a in arrays)}")


def _acc_name(dtype_name: str) -> str:
    """The dtype arithmetic runs in: float64 for float64, float32 for float32 and float16."""
    return "float64" if dtype_name == "float64" else "float32"


def _acc_scalar(dtype, value):
    """`value` as a NumPy scalar of the accumulation type (kernels need exact C argument types)."""
    return _cupy().dtype(_acc_name(dtype.name)).type(value)


# ---------------------------------------------------------------- elementwise kernels

_CTYPES = {"float16": "unsigned short", "float32": "float", "float64": "double"}  # storage in raw kernels

# 0.7978845608028654 = sqrt(2 / pi); the bodies run once per element, with T the arrays' type
_GELU_FORWARD = """
const acc_t v = (acc_t)x;
y = (T)((acc_t)0.5 * v * ((acc_t)1 + tanh((acc_t)0.7978845608028654 * (v + (acc_t)0.044715 * v * v * v))));
"""

# recomputes tanh rather than reading a saved copy: the kernel is memory-bound, so that is free
_GELU_BACKWARD = """
const acc_t v = (acc_t)x;
const acc_t tt = tanh((acc_t)0.7978845608028654 * (v + (acc_t)0.044715 * v * v * v));
const acc_t dinner = (acc_t)0.7978845608028654 * ((acc_t)1 + (acc_t)(3 * 0.044715) * v * v);
gx = (T)((acc_t)gy * ((acc_t)0.5 * ((acc_t)1 + tt) + (acc_t)0.5 * v * ((acc_t)1 - tt * tt) * dinner));
"""

_ADAMW = """
const acc_t gi = (acc_t)g;
const acc_t mi = beta1 * (acc_t)m + ((acc_t)1 - beta1) * gi;
const acc_t vi = beta2 * (acc_t)v + ((acc_t)1 - beta2) * gi * gi;
m = (T)mi;
v = (T)vi;
p = (T)((acc_t)p * decay - step_size * mi / (sqrt(vi) / bias_c2_sqrt + eps));
"""

# g holds the softmax on entry; i is the flat index into the (N, C) array
_CROSS_ENTROPY_BACKWARD = """
const ptrdiff_t row = i / n_classes;
const long long target = targets[row];
acc_t d = (acc_t)g;
if (i - row * n_classes == target) d -= (acc_t)1;
g = (T)(target == ignore_index ? (acc_t)0 : d * scale[0]);
"""


def elementwise_kernel_specs(acc: str) -> dict[str, tuple[str, str, str, str, str]]:
    """(in_params, out_params, body, name, preamble) of each elementwise kernel computing in `acc`.

    The arguments of `cupy.ElementwiseKernel`; T is the arrays' dtype, acc_t `acc` ('float32' or 'float64').
    In our kernels a parameter of type T is an array and one with a named dtype is a scalar unless `raw`.
    """
    preamble = f"typedef {_CTYPES[acc]} acc_t;"
    hyper = ", ".join(f"{acc} {n}" for n in ("beta1", "beta2", "step_size", "decay", "bias_c2_sqrt", "eps"))
    specs = {
        "gelu_forward": ("T x", "T y", _GELU_FORWARD),
        "gelu_backward": ("T gy, T x", "T gx", _GELU_BACKWARD),
        "adamw": (f"T g, {hyper}", "T p, T m, T v", _ADAMW),
        "cross_entropy_backward": (f"raw int64 targets, raw {acc} scale, int64 ignore_index, int64 n_classes",
                                   "T g", _CROSS_ENTROPY_BACKWARD),
    }
    return {key: (ins, outs, body, f"tinygrad_gpt_{key}", preamble) for key, (ins, outs, body) in specs.items()}


@functools.cache
def _elementwise(acc: str):
    """The elementwise kernels computing in `acc`, built (not yet compiled) the first time they are asked for."""
    cp = _cupy()
    return {key: cp.ElementwiseKernel(ins, outs, body, name, preamble=preamble)
            for key, (ins, outs, body, name, preamble) in elementwise_kernel_specs(acc).items()}


def gelu_forward(x):
    """GPT-2's GELU in one pass.

    Args:
        x: any shape.
    Returns:
        GELU(x), of x's shape.
    """
    _check("gelu_forward", x)
    return _elementwise(_acc_name(x.dtype.name))["gelu_forward"](x)


def gelu_backward(gy, x):
    """GELU's input gradient in one pass, recomputing tanh.

    Args:
        gy, x: the output gradient and the input; one shape.
    Returns:
        gx = d GELU(x) / dx * gy, of x's shape.
    """
    _check("gelu_backward", gy, x)
    return _elementwise(_acc_name(x.dtype.name))["gelu_backward"](gy, x)


def adamw_(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2_sqrt) -> None:
    """One AdamW step in place (torch.optim.AdamW's formula), as cpu.adamw_.

    param <- param (1 - lr wd) - lr / bias_c1 * m / (sqrt(v) / bias_c2_sqrt + eps), with the moments
    m = exp_avg and v = exp_avg_sq updated first.

    Args:
        param, grad, exp_avg, exp_avg_sq: arrays of one shape and dtype; `grad` is only read.
        lr, beta1, beta2, eps, weight_decay: floats; bias_c1 = 1 - beta1^step, bias_c2_sqrt = sqrt(1 - beta2^step).
    """
    _check("adamw_", param, grad, exp_avg, exp_avg_sq)
    if not param.shape == grad.shape == exp_avg.shape == exp_avg_sq.shape:
        raise ValueError(f"adamw_: shapes differ: param {param.shape}, grad {grad.shape}, "
                         f"exp_avg {exp_avg.shape}, exp_avg_sq {exp_avg_sq.shape}")
    step_size, decay = lr / bias_c1, 1.0 - lr * weight_decay
    _elementwise(_acc_name(param.dtype.name))["adamw"](
        grad, beta1, beta2, step_size, decay, bias_c2_sqrt, eps, param, exp_avg, exp_avg_sq)


# ---------------------------------------------------------------- row kernels (one thread block per row)

_ROW_KERNELS = r"""
// scalar_t: how elements are stored; acc_t: what arithmetic runs in (typedefs prepended per dtype).
// float16 is stored as its 16 bits and converted with the PTX instructions that cuda_fp16.h's
// __half2float / __float2half use, so no header has to be found by NVRTC.

__device__ __forceinline__ float load(const float* p, long long k) { return p[k]; }
__device__ __forceinline__ double load(const double* p, long long k) { return p[k]; }
__device__ __forceinline__ float load(const unsigned short* p, long long k) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[k]));
    return f;
}
__device__ __forceinline__ void store(float* p, long long k, float v) { p[k] = v; }
__device__ __forceinline__ void store(double* p, long long k, double v) { p[k] = v; }
__device__ __forceinline__ void store(unsigned short* p, long long k, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[k] = h;
}

#define MAX_THREADS 1024

// The sum (or max) of v over the block's threads; blockDim.x must be a power of two.
__device__ acc_t block_sum(acc_t v, acc_t* buf) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    const acc_t total = buf[0];
    __syncthreads();  // everyone has read buf[0] before buf is reused
    return total;
}

__device__ acc_t block_max(acc_t v, acc_t* buf) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] = max(buf[threadIdx.x], buf[threadIdx.x + s]);
        __syncthreads();
    }
    const acc_t total = buf[0];
    __syncthreads();
    return total;
}

// Rows of x (N, C) -> y = xhat * w + b, with xhat = (x - mean) * rstd and rstd (N,) saved.
extern "C" __global__ void layer_norm_forward(const scalar_t* x, const scalar_t* w, const scalar_t* b,
                                              const acc_t eps, const int C,
                                              scalar_t* y, scalar_t* xhat, scalar_t* rstd) {
    __shared__ acc_t buf[MAX_THREADS];
    const long long row = (long long)blockIdx.x * C;
    acc_t s = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += load(x, row + j);
    const acc_t mean = block_sum(s, buf) / C;
    acc_t ss = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const acc_t d = load(x, row + j) - mean;
        ss += d * d;
    }
    const acc_t r = (acc_t)1 / sqrt(block_sum(ss, buf) / C + eps);
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const acc_t h = (load(x, row + j) - mean) * r;
        store(xhat, row + j, h);
        store(y, row + j, h * load(w, j) + load(b, j));
    }
    if (threadIdx.x == 0) store(rstd, blockIdx.x, r);
}

// gx = rstd * (gy w - mean(gy w) - xhat * mean(gy w xhat)) for each row of (N, C).
extern "C" __global__ void layer_norm_backward(const scalar_t* gy, const scalar_t* xhat, const scalar_t* rstd,
                                               const scalar_t* w, const int C, scalar_t* gx) {
    __shared__ acc_t buf[MAX_THREADS];
    const long long row = (long long)blockIdx.x * C;
    acc_t s1 = 0, s2 = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const acc_t g = load(gy, row + j) * load(w, j);
        s1 += g;
        s2 += g * load(xhat, row + j);
    }
    const acc_t m1 = block_sum(s1, buf) / C;
    const acc_t m2 = block_sum(s2, buf) / C;
    const acc_t r = load(rstd, blockIdx.x);
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        store(gx, row + j, r * (load(gy, row + j) * load(w, j) - m1 - load(xhat, row + j) * m2));
    }
}

// Partial column sums for LayerNorm's weight and bias gradients. Block (32, 8) covers 32 columns; block
// row k of the grid (ceil(C / 32), K) sums rows k * 8 + threadIdx.y, k * 8 + threadIdx.y + 8 K, ... into
// gw_parts[k] = sum(gy * xhat) and gb_parts[k] = sum(gy), each (K, C); the caller sums over k.
extern "C" __global__ void layer_norm_param_grads(const scalar_t* gy, const scalar_t* xhat, const int N, const int C,
                                                  acc_t* gw_parts, acc_t* gb_parts) {
    __shared__ acc_t sw[8][32];
    __shared__ acc_t sb[8][32];
    const int j = blockIdx.x * 32 + threadIdx.x;  // this thread's column: a warp reads 32 neighbours
    acc_t w = 0, b = 0;
    if (j < C) {
        for (int r = blockIdx.y * 8 + threadIdx.y; r < N; r += gridDim.y * 8) {
            const acc_t g = load(gy, (long long)r * C + j);
            w += g * load(xhat, (long long)r * C + j);
            b += g;
        }
    }
    sw[threadIdx.y][threadIdx.x] = w;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && j < C) {
        for (int k = 1; k < 8; ++k) {
            w += sw[k][threadIdx.x];
            b += sb[k][threadIdx.x];
        }
        gw_parts[(long long)blockIdx.y * C + j] = w;
        gb_parts[(long long)blockIdx.y * C + j] = b;
    }
}

// Rows of logits (N, C) -> probs = softmax(logits) and nll (N,) = -log probs[target] (0 where ignored).
extern "C" __global__ void softmax_cross_entropy_forward(const scalar_t* logits, const long long* targets,
                                                         const long long ignore_index, const int C,
                                                         scalar_t* probs, acc_t* nll) {
    __shared__ acc_t buf[MAX_THREADS];
    const long long row = (long long)blockIdx.x * C;
    acc_t m = load(logits, row + min((int)threadIdx.x, C - 1));  // any element of the row starts the max
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = max(m, load(logits, row + j));
    m = block_max(m, buf);  // subtracting the max keeps exp finite
    acc_t s = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += exp(load(logits, row + j) - m);
    s = block_sum(s, buf);
    const acc_t inv = (acc_t)1 / s;
    for (int j = threadIdx.x; j < C; j += blockDim.x) store(probs, row + j, exp(load(logits, row + j) - m) * inv);
    if (threadIdx.x == 0) {
        const long long t = targets[blockIdx.x];
        nll[blockIdx.x] = t == ignore_index ? (acc_t)0 : log(s) - (load(logits, row + t) - m);
    }
}

// In place: rows of att (R * Tq rows of Tk raw scores) -> softmax(scale * scores) where query i
// of its (Tq, Tk) matrix sees keys 0 .. Tk - Tq + i when causal (bottom-right aligned), 0 elsewhere.
extern "C" __global__ void attention_softmax(scalar_t* att, const acc_t scale, const int t_q, const int t_k,
                                             const int causal) {
    __shared__ acc_t buf[MAX_THREADS];
    const long long row = (long long)blockIdx.x * t_k;
    const int last = causal ? t_k - t_q + (int)(blockIdx.x % t_q) : t_k - 1;  // the last key this query sees
    acc_t m = load(att, row + min((int)threadIdx.x, last));
    for (int j = threadIdx.x; j <= last; j += blockDim.x) m = max(m, load(att, row + j));
    m = block_max(m, buf);  // the max of the raw scores is the max of the scaled ones (scale > 0)
    acc_t s = 0;
    for (int j = threadIdx.x; j <= last; j += blockDim.x) s += exp((load(att, row + j) - m) * scale);
    s = block_sum(s, buf);
    const acc_t inv = (acc_t)1 / s;
    for (int j = threadIdx.x; j < t_k; j += blockDim.x) {
        store(att, row + j, j <= last ? exp((load(att, row + j) - m) * scale) * inv : (acc_t)0);
    }
}

// In place: gatt <- scale * att * (gatt - sum(gatt * att)) along each row of Tk.
extern "C" __global__ void attention_softmax_backward(scalar_t* gatt, const scalar_t* att, const acc_t scale,
                                                      const int t_k) {
    __shared__ acc_t buf[MAX_THREADS];
    const long long row = (long long)blockIdx.x * t_k;
    acc_t s = 0;
    for (int j = threadIdx.x; j < t_k; j += blockDim.x) s += load(gatt, row + j) * load(att, row + j);
    s = block_sum(s, buf);
    for (int j = threadIdx.x; j < t_k; j += blockDim.x) {
        store(gatt, row + j, scale * load(att, row + j) * (load(gatt, row + j) - s));
    }
}
"""


def row_kernel_source(dtype_name: str) -> str:
    """The CUDA source of the row kernels for arrays of `dtype_name` ("float16", "float32" or "float64")."""
    acc = _acc_name(dtype_name)
    return f"typedef {_CTYPES[dtype_name]} scalar_t;\ntypedef {_CTYPES[acc]} acc_t;\n{_ROW_KERNELS}"


@functools.cache
def _row_kernel(dtype_name: str, kernel_name: str):
    return _row_module(dtype_name).get_function(kernel_name)


@functools.cache
def _row_module(dtype_name: str):
    return _cupy().RawModule(code=row_kernel_source(dtype_name))


def threads_per_row(row_len: int) -> int:
    """Threads of a row kernel's block: a power of two from 32 (one warp) to 1024, about the row's length."""
    threads = 32
    while threads < min(row_len, 1024):
        threads *= 2
    return threads


def _launch_rows(kernel_name: str, dtype, n_rows: int, row_len: int, args: tuple) -> None:
    """Run a row kernel with one thread block per row."""
    if n_rows > 0:
        _row_kernel(dtype.name, kernel_name)((n_rows,), (threads_per_row(row_len),), args)


def layer_norm_forward(x2, w, b, eps: float):
    """LayerNorm of each row, one thread block per row.

    Args:
        x2: (N, C); w, b: (C,), all of one dtype; eps: added to the variance.
    Returns:
        (y, xhat, rstd): y and xhat (N, C), rstd (N,), in x2's dtype.
    """
    _check("layer_norm_forward", x2, w, b)
    if x2.ndim != 2 or w.shape != (x2.shape[1],) or b.shape != (x2.shape[1],):
        raise ValueError(f"layer_norm_forward: x2 {x2.shape} must be (N, C) with w {w.shape} and b {b.shape} (C,)")
    cp = _cupy()
    n, c = x2.shape
    y, xhat, rstd = cp.empty_like(x2), cp.empty_like(x2), cp.empty(n, dtype=x2.dtype)
    _launch_rows("layer_norm_forward", x2.dtype, n, c,
                 (x2, w, b, _acc_scalar(x2.dtype, eps), cp.int32(c), y, xhat, rstd))
    return y, xhat, rstd


def layer_norm_backward(gy2, xhat, rstd, w):
    """Gradients of LayerNorm from what layer_norm_forward saved.

    Args:
        gy2, xhat: (N, C); rstd: (N,); w: (C,), all of one dtype.
    Returns:
        (gx (N, C), gw (C,), gb (C,)).
    """
    _check("layer_norm_backward", gy2, xhat, rstd, w)
    if gy2.ndim != 2 or xhat.shape != gy2.shape or rstd.shape != gy2.shape[:1] or w.shape != gy2.shape[1:]:
        raise ValueError(f"layer_norm_backward: shapes gy2 {gy2.shape}, xhat {xhat.shape}, rstd {rstd.shape}, "
                         f"w {w.shape} do not fit (N, C), (N, C), (N,), (C,)")
    cp = _cupy()
    n, c = gy2.shape
    gx = cp.empty_like(gy2)
    _launch_rows("layer_norm_backward", gy2.dtype, n, c, (gy2, xhat, rstd, w, cp.int32(c), gx))
    # gw and gb are sums over rows: K blocks of rows give (K, C) partial sums, then one small sum
    n_parts = max(1, min(64, -(-n // 64)))
    gw_parts, gb_parts = cp.zeros((2, n_parts, c), dtype=_acc_name(gy2.dtype.name))
    if n and c:
        _row_kernel(gy2.dtype.name, "layer_norm_param_grads")(
            (-(-c // 32), n_parts), (32, 8), (gy2, xhat, cp.int32(n), cp.int32(c), gw_parts, gb_parts))
    return gx, gw_parts.sum(axis=0).astype(gy2.dtype), gb_parts.sum(axis=0).astype(gy2.dtype)


def softmax_cross_entropy_forward(logits2, targets, ignore_index: int):
    """Mean cross-entropy over the rows whose target is not `ignore_index`, without a host sync.

    Args:
        logits2: (N, C) floats; targets: (N,) integers in [0, C) or ignore_index.
    Returns:
        (loss, probs): a 0-d array in logits2's dtype (NaN when every row is ignored) and the
        softmax (N, C), which softmax_cross_entropy_backward_ turns into the gradient.
    """
    _check("softmax_cross_entropy_forward", logits2)
    if logits2.ndim != 2 or targets.shape != logits2.shape[:1]:
        raise ValueError(f"softmax_cross_entropy_forward: logits {logits2.shape} must be (N, C) with targets "
                         f"(N,), got targets {targets.shape}")
    cp = _cupy()
    n, c = logits2.shape
    acc = _acc_name(logits2.dtype.name)
    targets = cp.ascontiguousarray(targets, dtype=cp.int64)
    probs, nll = cp.empty_like(logits2), cp.empty(n, dtype=acc)
    _launch_rows("softmax_cross_entropy_forward", logits2.dtype, n, c,
                 (logits2, targets, cp.int64(ignore_index), cp.int32(c), probs, nll))
    n_valid = (targets != ignore_index).sum().astype(acc)
    loss = (nll.sum() / n_valid).astype(logits2.dtype)  # 0 / 0 = NaN when no target is valid
    return loss, probs


def softmax_cross_entropy_backward_(probs, targets, ignore_index: int, gy):
    """In place: probs <- (probs - one_hot(targets)) * gy / n_valid, zero on ignored rows.

    Args:
        probs: (N, C), the softmax from softmax_cross_entropy_forward; targets: (N,) integers;
        gy: the loss's gradient (a 0-d array or a float).
    Returns:
        probs, now the gradient w.r.t. the logits.
    """
    _check("softmax_cross_entropy_backward_", probs)
    if probs.ndim != 2 or targets.shape != probs.shape[:1]:
        raise ValueError(f"softmax_cross_entropy_backward_: probs {probs.shape} must be (N, C) with targets "
                         f"(N,), got targets {targets.shape}")
    cp = _cupy()
    acc = _acc_name(probs.dtype.name)
    targets = cp.ascontiguousarray(targets, dtype=cp.int64)
    n_valid = cp.maximum((targets != ignore_index).sum(), 1).astype(acc)
    scale = (cp.asarray(gy, dtype=acc) / n_valid).reshape(1)  # stays on the GPU
    _elementwise(acc)["cross_entropy_backward"](targets, scale, ignore_index, probs.shape[1], probs)
    return probs


def attention_softmax_(att, scale: float, causal: bool) -> None:
    """In place: raw scores -> softmax(scale * scores) along the last axis, with the bottom-right causal mask.

    Args:
        att: (R, Tq, Tk) raw scores, overwritten with the probabilities; with `causal`, query i of each
            (Tq, Tk) matrix sees keys 0 .. Tk - Tq + i (Tk >= Tq) and the others get probability 0.
        scale: a positive float, usually 1 / sqrt(head_size).
    """
    _check("attention_softmax_", att)
    if att.ndim != 3 or (causal and att.shape[1] > att.shape[2]):
        raise ValueError(f"attention_softmax_: att {att.shape} must be (R, Tq, Tk), with Tk >= Tq when causal")
    cp = _cupy()
    r, t_q, t_k = att.shape
    _launch_rows("attention_softmax", att.dtype, r * t_q, t_k,
                 (att, _acc_scalar(att.dtype, scale), cp.int32(t_q), cp.int32(t_k), cp.int32(bool(causal))))


def attention_softmax_backward_(gatt, att, scale: float) -> None:
    """In place: the gradient w.r.t. the raw scores from the one w.r.t. the probabilities.

    Args:
        gatt: (R, Tq, Tk), overwritten with scale * att * (gatt - sum(gatt * att, last axis)).
        att: (R, Tq, Tk), the probabilities attention_softmax_ made; scale: the same scale.
    """
    _check("attention_softmax_backward_", gatt, att)
    if att.ndim != 3 or gatt.shape != att.shape:
        raise ValueError(f"attention_softmax_backward_: gatt {gatt.shape} and att {att.shape} must be one (R, Tq, Tk)")
    cp = _cupy()
    r, t_q, t_k = att.shape
    _launch_rows("attention_softmax_backward", att.dtype, r * t_q, t_k,
                 (gatt, att, _acc_scalar(att.dtype, scale), cp.int32(t_k)))


KERNELS = {f.__name__: f for f in (gelu_forward, gelu_backward, layer_norm_forward, layer_norm_backward,
                                   softmax_cross_entropy_forward, softmax_cross_entropy_backward_,
                                   attention_softmax_, attention_softmax_backward_, adamw_)}
