"""CuPy parity: every op's forward values and gradients on the GPU equal NumPy's on the same inputs.

Runs the same table of ops as the PyTorch reference tests (test_ops_torch.CASES) on both devices.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinygrad_gpt import backend

if not backend.cupy_available():
    pytest.skip("CuPy with an NVIDIA GPU is not available (pip install \"tinygrad_gpt[gpu]\" on a CUDA machine)",
                allow_module_level=True)

from test_ops_torch import CASES  # noqa: E402  (after the skip: that table is what we run)

from helpers import tensor_on  # noqa: E402


def run_on(device: str, fn, arrays, dtype=np.float64, seed=0):
    """Outputs and float-input gradients (as host arrays) of sum(fn(*inputs) * w) with inputs on `device`."""
    inputs = []
    for a in arrays:
        a = np.asarray(a)
        is_float = a.dtype.kind == "f"
        inputs.append(tensor_on(device, a, dtype if is_float else None, requires_grad=is_float))
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    rng = np.random.default_rng(seed)
    loss = None
    for out in outs:
        assert out.device == device, f"an output on {out.device}, inputs on {device}"
        w = tensor_on(device, rng.standard_normal(out.shape), dtype)
        term = (out * w).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    grads = []
    for t in inputs:
        if t.requires_grad and t.grad is not None:
            assert t.grad.device == device and t.grad.dtype == dtype
            grads.append(t.grad.numpy())
        else:
            grads.append(None)
    return [o.numpy() for o in outs], grads


def _assert_same(expected, actual, rtol, atol):
    exp_outs, exp_grads = expected
    outs, grads = actual
    for k, (e, a) in enumerate(zip(exp_outs, outs)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"output {k}")
    for k, (e, a) in enumerate(zip(exp_grads, grads)):
        assert (e is None) == (a is None), f"gradient {k}: present on one device only"
        if e is not None:
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"gradient of input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_cupy_matches_numpy_float64(name):
    our_fn, _, arrays = CASES[name]
    _assert_same(run_on("cpu", our_fn, arrays), run_on("cuda", our_fn, arrays), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["matmul batched", "softmax", "log_softmax", "gelu", "var axis keepdims",
                                  "index int array repeats", "max ties share"])
def test_cupy_matches_numpy_float32(name):
    our_fn, _, arrays = CASES[name]
    cpu = run_on("cpu", our_fn, arrays, dtype=np.float32)
    _assert_same(cpu, run_on("cuda", our_fn, arrays, dtype=np.float32), rtol=1e-4, atol=1e-5)


def test_mixing_devices_is_a_clear_error():
    a = tensor_on("cpu", np.ones(3))
    b = a.to("cuda")
    with pytest.raises(ValueError, match="different devices"):
        a + b
