"""Test configuration: hypothesis profile and dtype fixtures."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

if os.environ.get("TINYGRAD_GPT_TEST_FAKE_CUPY") == "1":  # CuPy's CPU stand-in, before tinygrad_gpt imports it
    import fake_cupy

    fake_cupy.install()
    os.environ["TINYGRAD_GPT_GPU_KERNELS"] = "0"  # the stand-in runs no CUDA
    _tests = os.path.dirname(os.path.abspath(__file__))  # and the commands that CLI tests start get it too:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(_tests, "fake_cupy_site"), _tests, *filter(None, [os.environ.get("PYTHONPATH")])])

# benchmarks/ holds the one PyTorch reference GPT (torch_gpt.py) that tests and benchmarks share; the benchmark
# scripts import it from their own folder, the tests from here (and test_benchmarks imports the harness)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import tinygrad_gpt  # noqa: E402
from tinygrad_gpt import autograd as _autograd  # noqa: E402

# Gradient checks are slow-ish and their speed varies: no deadline, few examples (the suite must
# run in minutes on 2 cores). Our function-scoped fixtures only set global flags, so reusing them
# across hypothesis examples is safe.
# In CI (CI=true) the examples are derandomized, so a run is reproducible; locally they vary run to run.
settings.register_profile(
    "tinygrad_gpt",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("CI", "").lower() == "true",
)
settings.load_profile("tinygrad_gpt")


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Undo a test's change of the default dtype or grad mode, so tests cannot leak into each other."""
    dtype, grad = tinygrad_gpt.get_default_dtype(), _autograd._grad_enabled
    yield
    tinygrad_gpt.set_default_dtype(dtype)
    _autograd._grad_enabled = grad


@pytest.fixture
def float64():
    """Make float64 the default float dtype for the test (gradient checks), float32 again after."""
    tinygrad_gpt.set_default_dtype(np.float64)
    yield
    tinygrad_gpt.set_default_dtype(np.float32)
