"""The array backend: choosing it by environment variable, moving tensors, and keeping numpy/cupy in backend.py."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygrad_gpt
from helpers import tensor_on
from tinygrad_gpt import Tensor, backend

PACKAGE = Path(tinygrad_gpt.__file__).resolve().parent
REPO = PACKAGE.parent

# Host-only modules that may import numpy: they read and write files or run CPU-only kernels,
# never compute on tensor data that could live on the GPU.
HOST_ONLY = {
    "tinygrad_gpt/data.py": "loads the text corpus and token files from disk (host arrays)",
    "tinygrad_gpt/safetensors.py": "reads and writes .safetensors files (host bytes <-> numpy arrays)",
    "tinygrad_gpt/checkpoint.py": "saves and restores checkpoints on disk (host arrays)",
    "tinygrad_gpt/kernels/cpu.py": "numba CPU kernels; used only for numpy arrays, each with a pure xp twin",
    "tinygrad_gpt/viz.py": "formats values for a picture of the graph: host copies (backend.to_numpy) only",
    "tinygrad_gpt/tokenizers.py": "text <-> token ids on the host (ids as lists or host arrays)",
    "tinygrad_gpt/pretrained.py": "reads and writes model files through host buffers (one tensor at a time)",
}
ARRAY_MODULES = ("numpy", "cupy", "cupyx")


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (the backend is chosen at import), with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env}, cwd=REPO,
    )


# ---------------------------------------------------------------- choosing the backend


def test_unknown_backend_is_a_clear_error_listing_valid_ones():
    result = _run_python("import tinygrad_gpt", TINYGRAD_GPT_BACKEND="jax")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tinygrad_gpt.backend.BackendError"), last
    assert "TINYGRAD_GPT_BACKEND='jax'" in last and "numpy, cupy" in last, last


def test_cupy_requested_without_cupy_says_how_to_install_it():
    # sys.modules['cupy'] = None makes `import cupy` fail as if it were not installed
    result = _run_python("import sys; sys.modules['cupy'] = None; import tinygrad_gpt", TINYGRAD_GPT_BACKEND="cupy")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tinygrad_gpt.backend.BackendError"), f"not a clear error: {last}"
    assert 'pip install "tinygrad_gpt[gpu]"' in last and "CuPy" in last, last


def test_numpy_backend_by_name_and_by_default():
    code = "from tinygrad_gpt import Tensor, backend; print(backend.BACKEND, Tensor.zeros(2).device)"
    assert _run_python(code, TINYGRAD_GPT_BACKEND=" NumPy ").stdout.split() == ["numpy", "cpu"]
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD_GPT_BACKEND"}
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert default.stdout.split() == ["numpy", "cpu"], default.stderr


# ---------------------------------------------------------------- devices


def test_numpy_returns_a_host_array():
    t = Tensor([[1.0, 2.0], [3.0, 4.0]])
    a = t.numpy()
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    np.testing.assert_array_equal(a, [[1, 2], [3, 4]])


def test_to_its_own_device_is_a_no_op_and_unknown_devices_are_errors():
    t = Tensor(np.ones(3), requires_grad=True)
    assert t.to(t.device) is t
    with pytest.raises(ValueError, match="unknown device 'gpu'.*cpu, cuda"):
        t.to("gpu")


@pytest.mark.skipif(backend.cupy_available(), reason="checks the error shown where CuPy or a GPU is missing")
def test_to_cuda_without_cupy_is_a_clear_error():
    with pytest.raises(backend.BackendError, match=r"CuPy|GPU"):
        Tensor(np.ones(3)).to("cuda")


@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and an NVIDIA GPU")
def test_to_cuda_and_back_keeps_values_and_gradients():
    x = tensor_on("cpu", np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda" and isinstance(y.numpy(), np.ndarray)
    (y * y).sum().to("cpu").backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())


def test_repr_shows_values_shape_dtype_and_device():
    text = repr(Tensor([1.5, 2.0], requires_grad=True))
    assert "1.5" in text and "shape=(2,)" in text and "float32" in text and "requires_grad" in text
    assert f"device={backend.DEFAULT_DEVICE}" in text


# ---------------------------------------------------------------- only backend.py imports numpy/cupy


def _array_imports(path: Path) -> list:
    """(line, module) for every import of numpy/cupy in `path`, including importlib and __import__ calls."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ARRAY_MODULES]
    return found


def test_only_backend_imports_numpy_or_cupy():
    """Library code gets its array module from backend.get_array_module, so the GPU path cannot rot."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "tinygrad_gpt/backend.py" or rel in HOST_ONLY:
            continue
        offenders += [f"{rel}:{line} imports {name}" for line, name in _array_imports(path)]
    assert not offenders, "use backend.get_array_module(x) instead: " + "; ".join(offenders)


def test_import_scan_finds_imports(tmp_path):
    """The scan itself: it must see every way of importing numpy."""
    src = tmp_path / "mod.py"
    src.write_text("import os\nimport numpy as np\nfrom numpy.linalg import norm\n"
                   "def f():\n    import cupy\n    return importlib.import_module('cupyx.scipy')\n")
    assert [n for _, n in _array_imports(src)] == ["numpy", "numpy.linalg", "cupy", "cupyx.scipy"]


def test_backend_imports_cupy_only_lazily():
    """A top-level `import cupy` would break `import tinygrad_gpt` wherever CuPy is missing."""
    tree = ast.parse((PACKAGE / "backend.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level for a in getattr(n, "names", [])] + [getattr(n, "module", "") for n in top_level]
    assert not [n for n in names if n and n.split(".")[0] in ("cupy", "cupyx")]


def test_with_cupy_loaded_host_arrays_and_numpy_scalars_stay_on_the_cpu(monkeypatch):
    """Full reductions give NumPy scalars, not arrays: they must not be taken for GPU arrays."""

    class FakeCupy:
        class ndarray:  # no real array is ever an instance of this
            pass

        @staticmethod
        def get_array_module(*arrays):
            return np

    x = tensor_on("cpu", np.arange(6.0).reshape(2, 3), requires_grad=True)
    monkeypatch.setattr(backend, "_cupy", FakeCupy)
    total = x.sum()  # .data is a numpy scalar here
    assert backend.device_of(total.data) == "cpu" and total.device == "cpu"
    assert float(total.numpy()) == 15.0
    (total * 2).backward()
    np.testing.assert_allclose(x.grad.numpy(), 2.0)


def test_the_device_argument_puts_a_new_tensor_on_that_device():
    t = Tensor(np.ones(2), device="cpu")  # on the cupy backend too
    assert t.device == "cpu" and isinstance(t.data, np.ndarray)
    assert Tensor([1.0]).device == backend.DEFAULT_DEVICE
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        Tensor([1.0], device="gpu")
