"""The package's layers import only downwards: no import cycle, and the engine stands without Tensor."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import tinygrad_gpt

PACKAGE = Path(tinygrad_gpt.__file__).resolve().parent
REPO = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the tinygrad_gpt modules it imports}, from every import statement (top-level or not)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import (the package imports by absolute name)"
                base = node.module
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative depth-first search)."""
    state = {}  # module -> "active" while on the current path, "done" after
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [], [(start, iter(sorted(graph[start])))]
        state[start] = "active"
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = "done"
            elif state.get(child) == "active":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "active"
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


# Imports that go up the stack on purpose, each inside a function (never at import time), with why.
UPWARD_CALLS = {
    ("tinygrad_gpt.model", "tinygrad_gpt.pretrained"): "GPT.from_pretrained / save_pretrained (Hugging Face's "
    "API shape) call the file-format layer above the model",
}


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    for (low, high), why in UPWARD_CALLS.items():
        assert high in graph[low], f"{low} no longer imports {high}: drop it from UPWARD_CALLS ({why})"
        top_level = {n.module for n in ast.parse((REPO / (low.replace(".", "/") + ".py")).read_text()).body
                     if isinstance(n, ast.ImportFrom)}
        assert high not in top_level, f"{low} imports {high} at import time"
        graph[low] = graph[low] - {high}
    assert "tinygrad_gpt.autograd" in graph and "tinygrad_gpt.kernels.cuda" in graph, sorted(graph)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_imports_neither_tensor_nor_ops():
    graph = import_graph()
    below, todo = set(), ["tinygrad_gpt.autograd"]
    while todo:  # everything autograd imports, directly or not
        for m in graph[todo.pop()] - below:
            below.add(m)
            todo.append(m)
    assert not below & {"tinygrad_gpt.tensor", "tinygrad_gpt.ops"}, sorted(below)
    assert "tinygrad_gpt.autograd" not in graph["tinygrad_gpt.kernels"] | graph["tinygrad_gpt.backend"]
    assert "tinygrad_gpt.tensor" not in graph["tinygrad_gpt.ops"], "ops.py builds on autograd.py, not on Tensor"


def test_importing_the_engine_loads_no_layer_above_it():
    code = ("import sys; import tinygrad_gpt.autograd; "
            "print(sorted(m for m in sys.modules if m.startswith('tinygrad_gpt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "TINYGRAD_GPT_BACKEND": "numpy", "TINYGRAD_GPT_TEST_FAKE_CUPY": "0"})
    assert out.returncode == 0, out.stderr
    loaded = ast.literal_eval(out.stdout)  # a list of module names
    assert "tinygrad_gpt.autograd" in loaded
    above = {"tinygrad_gpt.tensor", "tinygrad_gpt.ops", "tinygrad_gpt.nn", "tinygrad_gpt.model"}
    assert not above & set(loaded), loaded


def test_public_names_import_from_the_package():
    from tinygrad_gpt import GPT, GPTConfig, Tensor, gradcheck, no_grad
    from tinygrad_gpt.model import GPT as model_gpt

    assert GPT is model_gpt and GPTConfig.__module__ == "tinygrad_gpt.model"
    assert callable(gradcheck) and Tensor.__module__ == "tinygrad_gpt.tensor" and no_grad is not None
    assert set(tinygrad_gpt.__all__) <= set(dir(tinygrad_gpt))
    for name in tinygrad_gpt.__all__:
        assert getattr(tinygrad_gpt, name) is not None, name


def test_every_public_tensor_method_and_primitive_function_says_what_it_does():
    import inspect

    from tinygrad_gpt import Tensor, ops
    from tinygrad_gpt.autograd import Function
    from tinygrad_gpt.nn import functional

    public = [name for name in dir(Tensor) if not name.startswith("_")]
    assert {"sum", "mean", "reshape", "backward", "exp"} <= set(public)
    learner_ops = {"min", "std", "cumsum", "sin", "cos", "log1p", "retain_grad", "grad_fn", "is_leaf", "eq", "ne"}
    assert learner_ops <= set(public), sorted(learner_ops - set(public))
    undocumented = [name for name in public if not inspect.getdoc(getattr(Tensor, name))]
    assert not undocumented, f"Tensor methods without a docstring: {undocumented}"
    assert "axis" in Tensor.sum.__doc__ and "keepdims" in Tensor.sum.__doc__
    assert "retain_graph" in Tensor.backward.__doc__
    for name in ("draw_graph", "einsum", "zeros_like", "ones_like", "Function"):
        assert inspect.getdoc(getattr(tinygrad_gpt, name)), name
    for module in (ops, functional):
        functions = [c for c in vars(module).values()
                     if isinstance(c, type) and issubclass(c, Function) and c is not Function]
        assert len(functions) >= 7
        assert not [c.__name__ for c in functions if not c.__doc__], f"{module.__name__}: Functions without a docstring"
