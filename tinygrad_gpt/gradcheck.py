"""Numerical gradient check: compare autograd with central finite differences."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinygrad_gpt import backend
from tinygrad_gpt.autograd import no_grad

if TYPE_CHECKING:  # only for annotations: gradcheck needs no import of tensor.py, so the package can export it
    from tinygrad_gpt.tensor import Tensor


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def gradcheck(fn, *inputs: Tensor, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4,
              max_elements: int = 256, seed: int = 0, raise_exception: bool = True) -> bool:
    """Check the gradients of `fn(*inputs)` for every input that requires grad.

    The scalar checked is sum(fn(*inputs) * w) for a random w, so every output element counts.
    Inputs with at most `max_elements` elements are checked element by element; larger ones along
    one random direction (as Chainer's check_backward does). Use float64 inputs.

    Args:
        fn: maps the input tensors to one output tensor.
        inputs: tensors; those with requires_grad=True are checked.
    Returns:
        True when all gradients match; on a mismatch raises GradcheckError naming the input and
        its worst element (or returns False when raise_exception=False).
    """
    checked = [t for t in inputs if getattr(t, "requires_grad", False)]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for t in checked:
        if t.dtype != backend.as_dtype("float64"):
            raise TypeError(f"gradcheck: inputs must be float64 for finite differences, got {t.dtype}")
    rng = backend.host_generator(seed)
    out = fn(*inputs)
    weights = backend.asarray(rng.standard_normal(out.shape), dtype=out.dtype, device=out.device)

    def objective() -> float:
        with no_grad():
            return float((fn(*inputs).data * weights).sum())

    for t in checked:
        t.grad = None
    (out * weights).sum().backward()  # weights: a constant of out's dtype

    for i, t in enumerate(inputs):
        if not getattr(t, "requires_grad", False):
            continue
        analytic = backend.to_numpy(t.grad.data if t.grad is not None else t.data * 0).astype("float64")
        if t.size <= max_elements:
            numeric = _numeric_elementwise(objective, t, eps)
            err = abs(analytic - numeric)
            bad = err > atol + rtol * abs(numeric)
            if bad.any():
                worst_flat = int((err - rtol * abs(numeric)).argmax())
                worst = tuple(int(j) for j in backend.np.unravel_index(worst_flat, t.shape))
                msg = (f"gradcheck: input {i} (shape {t.shape}): {int(bad.sum())} of {t.size} elements wrong; "
                       f"worst at {worst}: analytic {analytic[worst]:.8g}, numerical {numeric[worst]:.8g}")
                return _fail(msg, raise_exception)
        else:
            direction = rng.standard_normal(t.shape)
            numeric = _numeric_directional(objective, t, direction, eps)
            expected = float((analytic * direction).sum())
            if abs(expected - numeric) > atol + rtol * abs(numeric):
                msg = (f"gradcheck: input {i} (shape {t.shape}): along a random direction analytic "
                       f"{expected:.8g}, numerical {numeric:.8g}")
                return _fail(msg, raise_exception)
    return True


def _numeric_elementwise(objective, t: Tensor, eps: float):
    np = backend.np
    numeric = np.zeros(t.shape)
    for j in np.ndindex(*t.shape):  # index the array itself: a reshape of a non-contiguous one would copy
        orig = t.data[j].item()
        t.data[j] = orig + eps
        up = objective()
        t.data[j] = orig - eps
        down = objective()
        t.data[j] = orig
        numeric[j] = (up - down) / (2 * eps)
    return numeric


def _numeric_directional(objective, t: Tensor, direction, eps: float) -> float:
    orig = t.data.copy()
    d = backend.asarray(direction, dtype=t.dtype, device=t.device)
    t.data[...] = orig + eps * d
    up = objective()
    t.data[...] = orig - eps * d
    down = objective()
    t.data[...] = orig
    return (up - down) / (2 * eps)


def _fail(msg: str, raise_exception: bool) -> bool:
    if raise_exception:
        raise GradcheckError(msg)
    return False
