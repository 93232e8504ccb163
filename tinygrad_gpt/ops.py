"""Primitive differentiable Functions: forward and backward on raw arrays (numpy or cupy).

Each backward returns one gradient per input, possibly still broadcast to the output's shape;
the engine (autograd.py) sums it back to the input's shape. Gradients are never modified in place
(an array may be shared between several inputs' gradients).
"""

from __future__ import annotations

import itertools
import math

from tinygrad_gpt import backend, kernels
from tinygrad_gpt.autograd import Function

xp_of = backend.get_array_module

# ---------------------------------------------------------------- binary arithmetic


class Add(Function):
    """a + b (broadcasting)."""

    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    """a - b (broadcasting)."""

    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        return gy, -gy if self.needs_grad[1] else None


class Mul(Function):
    """a * b (broadcasting)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = gy * self.b if self.needs_grad[0] else None
        gb = gy * self.a if self.needs_grad[1] else None
        return ga, gb


class Div(Function):
    """a / b (broadcasting)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = gy / self.b if self.needs_grad[0] else None
        gb = -gy * self.a / (self.b * self.b) if self.needs_grad[1] else None
        return ga, gb


class Pow(Function):
    """a ** b (broadcasting); the gradient w.r.t. b is 0 where a == 0."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a**b
        return self.y

    def backward(self, gy):
        a, b = self.a, self.b
        ga = gy * b * a ** (b - 1) if self.needs_grad[0] else None
        gb = None
        if self.needs_grad[1]:
            # NOTE: d(a**b)/db = a**b log(a) needs a > 0; at a == 0 we use 0 (a**b is flat there for b > 0), as torch
            xp = xp_of(a)
            gb = gy * xp.where(a == 0, 0, self.y * xp.log(xp.where(a == 0, 1, a)))
        return ga, gb


class Maximum(Function):
    """Elementwise max(a, b); ties split the gradient evenly."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return xp_of(a).maximum(a, b)

    def backward(self, gy):
        # NOTE: at ties each input gets half the gradient, as in PyTorch
        return _tie_split(gy, self.a > self.b, self.a == self.b)


class Minimum(Function):
    """Elementwise min(a, b); ties split the gradient evenly."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return xp_of(a).minimum(a, b)

    def backward(self, gy):
        return _tie_split(gy, self.a < self.b, self.a == self.b)


def _tie_split(gy, a_wins, tie):
    """Gradients (ga, gb): gy goes to the winner; ties give half to each (no float64 temporaries)."""
    half = gy * tie * 0.5
    ga = gy * a_wins + half
    return ga, gy - ga


class MatMul(Function):
    """a @ b with NumPy's rules: batched, broadcasting leading axes, 1-D operands."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        # treat 1-D operands as (1, n) rows / (n, 1) columns, as NumPy does, then drop that axis
        xp = xp_of(gy)
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        gy2 = gy
        if a.ndim == 1:
            gy2 = xp.expand_dims(gy2, -2 if b.ndim > 1 else 0)
        if b.ndim == 1:
            gy2 = gy2[..., None]
        ga = gb = None
        if self.needs_grad[0]:
            ga = gy2 @ xp.swapaxes(b2, -1, -2)  # (..., m, n) @ (..., n, k) -> (..., m, k)
            ga = ga[..., 0, :] if a.ndim == 1 else ga
        if self.needs_grad[1]:
            gb = xp.swapaxes(a2, -1, -2) @ gy2  # (..., k, m) @ (..., m, n) -> (..., k, n)
            gb = gb[..., 0] if b.ndim == 1 else gb
        return ga, gb


# ---------------------------------------------------------------- unary elementwise


class Neg(Function):
    """-x."""

    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Exp(Function):
    """e ** x; backward reuses the output."""

    def forward(self, x):
        self.y = xp_of(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    """natural logarithm."""

    def forward(self, x):
        self.x = x
        return xp_of(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Sqrt(Function):
    """square root; backward reuses the output."""

    def forward(self, x):
        self.y = xp_of(x).sqrt(x)
        return self.y

    def backward(self, gy):
        return gy / (2 * self.y)


class Tanh(Function):
    """hyperbolic tangent; backward reuses the output."""

    def forward(self, x):
        self.y = xp_of(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class Sin(Function):
    """sine."""

    def forward(self, x):
        self.x = x
        return xp_of(x).sin(x)

    def backward(self, gy):
        return gy * xp_of(gy).cos(self.x)


class Cos(Function):
    """cosine."""

    def forward(self, x):
        self.x = x
        return xp_of(x).cos(x)

    def backward(self, gy):
        return -gy * xp_of(gy).sin(self.x)


class Log1p(Function):
    """log(1 + x), accurate for small x."""

    def forward(self, x):
        self.x = x
        return xp_of(x).log1p(x)

    def backward(self, gy):
        return gy / (1 + self.x)


class Sigmoid(Function):
    """1 / (1 + e ** -x), computed as 0.5 (1 + tanh(x / 2)) so it never overflows."""

    def forward(self, x):
        xp = xp_of(x)
        # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x))
        self.y = 0.5 * (1 + xp.tanh(0.5 * x))
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


class Relu(Function):
    """max(x, 0); the kink at 0 gets gradient 0."""

    def forward(self, x):
        self.y = xp_of(x).maximum(x, 0)
        return self.y

    def backward(self, gy):
        # NOTE: the kink at 0 gets gradient 0, as in PyTorch
        return gy * (self.y > 0)


GELU_C = math.sqrt(2 / math.pi)


class Gelu(Function):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def forward(self, x):
        self.x = x
        k = kernels.find("gelu_forward", x)
        if k:  # one fused pass; backward recomputes tanh instead of keeping it
            self.t = None
            return k(x)
        self.t = xp_of(x).tanh(GELU_C * (x + 0.044715 * x * x * x))
        return 0.5 * x * (1 + self.t)

    def backward(self, gy):
        x, t = self.x, self.t
        if t is None:  # forward ran a kernel: the backward kernel fits too, unless it was switched off since
            gy = xp_of(gy).ascontiguousarray(gy)  # e.g. a broadcast gradient from sum()
            k = kernels.find("gelu_backward", gy, x)
            if k:
                return k(gy, x)
            t = xp_of(x).tanh(GELU_C * (x + 0.044715 * x * x * x))
        dinner = GELU_C * (1 + 3 * 0.044715 * x * x)
        return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner)


class Abs(Function):
    """|x|; the kink at 0 gets gradient 0."""

    def forward(self, x):
        self.x = x
        return xp_of(x).abs(x)

    def backward(self, gy):
        # NOTE: sign(0) = 0, so the kink at 0 gets gradient 0, as in PyTorch
        return gy * xp_of(gy).sign(self.x)


class Clip(Function):
    """x limited to [lo, hi] (either may be None); gradient 1 inside, 0 outside."""

    def forward(self, x, lo=None, hi=None):
        self.x, self.lo, self.hi = x, lo, hi
        return xp_of(x).clip(x, lo, hi)

    def backward(self, gy):
        inside = True
        if self.lo is not None:
            inside = inside & (self.x >= self.lo)
        if self.hi is not None:
            inside = inside & (self.x <= self.hi)
        return gy * inside


class Cast(Function):
    """x as another dtype; the gradient goes back to x's dtype."""

    def forward(self, x, dtype=None):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, gy):
        return gy.astype(self.in_dtype)


class ToDevice(Function):
    """x copied to another device; the gradient goes back to x's device."""

    def forward(self, x, device=None):
        self.in_device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, gy):
        return backend.to_device(gy, self.in_device)


# ---------------------------------------------------------------- reductions


class Sum(Function):
    """Sum over `axis` (a tuple of axes), keeping them as size 1 when `keepdims`."""

    def forward(self, x, axis=None, keepdims=False):
        self.in_shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, gy):
        xp = xp_of(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axis)
        return xp.broadcast_to(gy, self.in_shape)


class Max(Function):
    """Max over `axis` (a tuple of axes), keeping them as size 1 when `keepdims`; ties share the gradient."""

    def forward(self, x, axis=None, keepdims=False):
        self.x, self.axis, self.keepdims = x, axis, keepdims
        self.y = x.max(axis=axis, keepdims=True)
        return self.y if keepdims else self.y.squeeze(axis)

    def backward(self, gy):
        # NOTE: ties share the gradient equally, as torch.amax does
        xp = xp_of(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axis)
        is_max = self.x == self.y
        return gy * is_max / is_max.sum(axis=self.axis, keepdims=True).astype(gy.dtype)


class Cumsum(Function):
    """Running sums along `axis`; the gradient is the running sum of gy taken from the other end."""

    def forward(self, x, axis=0):
        self.axis = axis
        return xp_of(x).cumsum(x, axis=axis)

    def backward(self, gy):
        # y[i] = sum_{j <= i} x[j], so gx[j] = sum_{i >= j} gy[i]: a cumsum of the reversed gy, reversed
        xp = xp_of(gy)
        return xp.flip(xp.cumsum(xp.flip(gy, self.axis), axis=self.axis), self.axis)


class Einsum(Function):
    """numpy.einsum with explicit subscripts ('ij,jk->ik'); each input's gradient is an einsum too.

    The gradient w.r.t. input i contracts gy with the other inputs onto input i's letters. Letters
    that appear only in input i were summed away, so the gradient is broadcast along them; a letter
    repeated within input i (a diagonal, 'ii->i') is spread back onto the diagonal by an identity.
    """

    def forward(self, *xs, subscripts=""):
        self.xs, self.subscripts = xs, subscripts
        return xp_of(*xs).einsum(subscripts, *xs)

    def backward(self, gy):
        ins, out = self.subscripts.split("->")
        ins = ins.split(",")
        return tuple(self._input_grad(gy, ins, out, i) if need else None for i, need in enumerate(self.needs_grad))

    def _input_grad(self, gy, ins: list, out: str, i: int):
        xp, x = xp_of(gy), self.xs[i]
        others = [s for j, s in enumerate(ins) if j != i]
        known = set(out).union(*others)  # letters gy and the other inputs carry
        letters = "".join(dict.fromkeys(ins[i]))  # input i's letters, each once, in order
        kept = "".join(c for c in letters if c in known)
        g = xp.einsum(",".join([out, *others]) + "->" + kept, gy, *(x for j, x in enumerate(self.xs) if j != i))
        size = {c: n for c, n in zip(ins[i], x.shape)}
        g = g.reshape([size[c] if c in known else 1 for c in letters])  # summed-away letters: size 1
        g = xp.broadcast_to(g, [size[c] for c in letters])  # (letters...) in input i's sizes
        if letters == ins[i]:
            return g
        # a letter repeated in input i: put g on the diagonal, one identity per extra occurrence
        target, eyes, spare = "", [], iter(sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
                                                  - set("".join(ins)) - set(out)))
        for c in ins[i]:
            if c in target:
                new = next(spare)
                eyes.append(c + new)
                c = new
            target += c
        eye_arrays = [xp.eye(size[pair[0]], dtype=g.dtype) for pair in eyes]
        return xp.einsum(",".join([letters, *eyes]) + "->" + target, g, *eye_arrays)


# ---------------------------------------------------------------- shape


class Reshape(Function):
    """x with a new shape of the same size."""

    def forward(self, x, shape=None):
        self.in_shape = x.shape
        return x.reshape(shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Permute(Function):
    """x with its axes reordered (`axes` is a permutation)."""

    def forward(self, x, axes=None):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return gy.transpose(inverse)


class Expand(Function):
    """x broadcast to `shape`; the engine sums the gradient back."""

    def forward(self, x, shape=None):
        return xp_of(x).broadcast_to(x, shape)

    def backward(self, gy):
        return gy  # the engine sums it back to the input's shape


class GetItem(Function):
    """x[index] with NumPy's indexing rules; backward scatters the gradient back (repeated indices add)."""

    def forward(self, x, index=None):
        self.in_shape, self.index = x.shape, index
        backend.check_index_in_range(x, index)  # CuPy would wrap an out-of-range index around
        return x[index]

    def backward(self, gy):
        xp = xp_of(gy)
        gx = xp.zeros(self.in_shape, dtype=gy.dtype)
        if _has_int_array(self.index):
            backend.scatter_add(gx, self.index, gy)  # repeated indices accumulate
        else:
            gx[self.index] = gy
        return gx


def _has_int_array(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(backend.is_array(p) and p.dtype.kind in "iu" or isinstance(p, list) for p in parts)


class Cat(Function):
    """Inputs joined along an existing axis."""

    def forward(self, *xs, axis=0):
        self.axis = axis
        self.sizes = [x.shape[axis] for x in xs]
        return xp_of(*xs).concatenate(xs, axis=axis)

    def backward(self, gy):
        xp = xp_of(gy)
        bounds = list(itertools.accumulate(self.sizes))[:-1]
        return tuple(xp.split(gy, bounds, axis=self.axis))


class Where(Function):
    """a where `cond` is true, b elsewhere (`cond` is a constant boolean array)."""

    def forward(self, a, b, cond=None):
        self.cond = cond
        return xp_of(a).where(cond, a, b)

    def backward(self, gy):
        zero = gy.dtype.type(0)
        xp = xp_of(gy)
        ga = xp.where(self.cond, gy, zero) if self.needs_grad[0] else None
        gb = xp.where(self.cond, zero, gy) if self.needs_grad[1] else None
        return ga, gb


# ---------------------------------------------------------------- softmax


class Softmax(Function):
    """exp(x) / sum(exp(x)) along `axis`, with the max subtracted first; backward reuses the output."""

    def forward(self, x, axis=-1):
        xp = xp_of(x)
        self.axis = axis
        e = xp.exp(x - x.max(axis=axis, keepdims=True))  # subtracting the max keeps exp finite
        self.y = e / e.sum(axis=axis, keepdims=True)
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    """x - log(sum(exp(x))) along `axis`, computed stably."""

    def forward(self, x, axis=-1):
        xp = xp_of(x)
        self.axis = axis
        shifted = x - x.max(axis=axis, keepdims=True)
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        return self.y

    def backward(self, gy):
        xp = xp_of(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)
