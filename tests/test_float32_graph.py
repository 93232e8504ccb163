"""A training step stays in float32: no array saved for backward, and no gradient, is float64."""

from __future__ import annotations

import numpy as np
import pytest

from tinygrad_gpt import backend, manual_seed
from tinygrad_gpt.autograd import toposort
from tinygrad_gpt.kernels import cpu as cpu_kernels
from tinygrad_gpt.model import GPT, GPTConfig


def _saved_arrays(ctx):
    for name, value in vars(ctx).items():
        if backend.is_array(value):
            yield name, value


@pytest.mark.parametrize("kernels", ["numba kernels", "numpy only"])
def test_every_array_saved_in_a_training_step_is_float32_or_integer(kernels, monkeypatch):
    if kernels == "numba kernels":
        if not cpu_kernels.AVAILABLE:
            pytest.skip("numba not installed: only the NumPy path exists")
        monkeypatch.setattr(cpu_kernels, "min_size", 0)  # the tiny model's arrays take the kernel path too
    else:
        monkeypatch.setattr(cpu_kernels, "enabled", False)
    manual_seed(0)
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1)
    model = GPT(config)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 11, size=(2, 8)), rng.integers(0, 11, size=(2, 8))
    logits, loss = model(idx, targets)
    checked = 0
    for t in toposort(loss):
        assert t.dtype in (np.float32,), f"{type(t._ctx).__name__ if t._ctx else 'leaf'} output is {t.dtype}"
        if t._ctx is None:
            continue
        for name, array in _saved_arrays(t._ctx):
            checked += 1
            assert array.dtype.kind in "iub" or array.dtype == np.float32, (
                f"{type(t._ctx).__name__}.{name} saved as {array.dtype}"
            )
    assert checked > 20  # the walk really saw the graph
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32, f"gradient of {name} is not float32"
