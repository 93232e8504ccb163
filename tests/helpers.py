"""Shared test helpers: compare an op with PyTorch (values and gradients)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from tinygrad_gpt import Tensor, backend

# tests/fake_cupy.py stands in for CuPy (device plumbing only, no CUDA): the fused kernels cannot run
FAKE_CUPY = os.environ.get("TINYGRAD_GPT_TEST_FAKE_CUPY") == "1"
requires_real_gpu = pytest.mark.skipif(
    FAKE_CUPY or not backend.cupy_available(),
    reason='needs CuPy on an NVIDIA GPU (pip install "tinygrad_gpt[gpu]" on a CUDA machine); fake_cupy runs no CUDA',
)



def tensor_on(device: str, array, dtype=None, requires_grad: bool = False) -> Tensor:
    """A leaf tensor on `device`, whichever device TINYGRAD_GPT_BACKEND makes new tensors on."""
    return Tensor(array, dtype=dtype).to(device).detach().requires_grad_(requires_grad)


HAS_TORCH = importlib.util.find_spec("torch") is not None
requires_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch not installed: reference tests need it (CI installs it)"
)


def _as_list(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _our_input(a: np.ndarray) -> Tensor:
    if a.dtype.kind == "f":
        return Tensor(a.astype(np.float64), requires_grad=True, dtype=np.float64)
    return Tensor(a)  # integer arrays are indices, boolean arrays are masks


def _torch_input(a: np.ndarray):
    import torch

    if a.dtype.kind == "f":
        return torch.tensor(a.astype(np.float64), dtype=torch.float64, requires_grad=True)
    if a.dtype.kind == "b":
        return torch.tensor(a, dtype=torch.bool)
    return torch.tensor(a.astype(np.int64), dtype=torch.long)


def compare_with_torch(our_fn, torch_fn, *arrays, grad=True, atol=1e-6, rtol=1e-6, seed=0):
    """Run `our_fn` and `torch_fn` on float64 copies of `arrays` and compare values and gradients.

    Float arrays become float64 tensors that require grad; integer arrays pass through as index
    tensors (torch.long for torch) and boolean arrays as masks. The functions may return one tensor
    or a list/tuple of tensors. With grad=True the gradient of sum(out * w), for a random w per
    output, w.r.t. each float input is compared (a missing gradient counts as zeros).

    Args:
        our_fn: tinygrad_gpt Tensors -> Tensor (or list of Tensors).
        torch_fn: torch tensors -> torch tensor (or list of them).
        arrays: numpy arrays, one per argument of both functions.
    Returns:
        (our outputs as numpy arrays, our input gradients as numpy arrays or None) for extra checks.
    """
    import torch

    arrays = [np.asarray(a) for a in arrays]
    ours = [_our_input(a) for a in arrays]
    theirs = [_torch_input(a) for a in arrays]
    our_out, torch_out = _as_list(our_fn(*ours)), _as_list(torch_fn(*theirs))
    assert len(our_out) == len(torch_out), f"{len(our_out)} outputs, torch gives {len(torch_out)}"
    for k, (o, t) in enumerate(zip(our_out, torch_out)):
        expected = t.detach().numpy()
        assert o.shape == tuple(expected.shape), f"output {k}: shape {o.shape}, torch gives {tuple(expected.shape)}"
        np.testing.assert_allclose(o.numpy(), expected, atol=atol, rtol=rtol, err_msg=f"forward output {k}")
    if not grad:
        return [o.numpy() for o in our_out], None

    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(t.shape) for t in torch_out]
    our_loss = sum((o * Tensor(w, dtype=np.float64)).sum() for o, w in zip(our_out, weights))
    torch_loss = sum((t * torch.tensor(w, dtype=torch.float64)).sum() for t, w in zip(torch_out, weights))
    our_loss.backward()
    torch_loss.backward()
    grads = []
    for k, (a, o, t) in enumerate(zip(arrays, ours, theirs)):
        if a.dtype.kind != "f":
            grads.append(None)
            continue
        g = o.grad.numpy() if o.grad is not None else np.zeros(a.shape)
        expected = t.grad.numpy() if t.grad is not None else np.zeros(a.shape)
        assert g.shape == a.shape, f"gradient of input {k}: shape {g.shape}, input shape {a.shape}"
        np.testing.assert_allclose(g, expected, atol=atol, rtol=rtol, err_msg=f"gradient of input {k}")
        grads.append(g)
    return [o.numpy() for o in our_out], grads
