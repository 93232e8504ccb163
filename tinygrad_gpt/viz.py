"""draw_graph: the graph autograd recorded, as Graphviz DOT text (and a picture when Graphviz is installed).

Like micrograd's `draw_dot`: each tensor is a box with its name, shape, dtype, values and gradient,
and each op is an oval between its inputs and its output. The DOT text needs nothing; turning it
into SVG or PNG needs Graphviz's `dot` program (apt-get install graphviz, brew install graphviz),
or paste the text into any online Graphviz viewer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from tinygrad_gpt import autograd, backend
from tinygrad_gpt.tensor import Tensor

_RENDERED = {".svg": "svg", ".png": "png", ".pdf": "pdf"}  # file suffix -> dot's -T format
_TEXT = {".dot", ".gv"}


def draw_graph(root: Tensor, path: str | Path | None = None, names: dict | None = None, max_values: int = 6) -> str:
    """The graph that computed `root`, as Graphviz DOT text; with `path`, also written to a file.

    Each tensor shows its shape and dtype, its values when it has at most `max_values` elements,
    and its gradient where backward() stored one (leaves, and tensors that called retain_grad()).
    Draw before backward(), or after backward(retain_graph=True): a plain backward() frees the graph.

    Args:
        root: the Tensor to draw (usually the loss).
        path: '.svg', '.png' or '.pdf' is rendered by Graphviz's `dot` (which must be installed);
            '.dot' or '.gv' gets the DOT text.
        names: {name: Tensor} labels, e.g. `locals()` (entries that are not Tensors are ignored).
        max_values: largest number of elements whose values and gradient are printed.
    Returns:
        the DOT text.
    Raises:
        ValueError when backward() already freed the graph; RuntimeError when `dot` is missing.
    """
    if not isinstance(root, Tensor):
        raise TypeError(f"draw_graph: expected a Tensor, got {type(root).__name__}")
    labels = {id(t): name for name, t in (names or {}).items() if isinstance(t, Tensor) and not name.startswith("_")}
    lines = ["digraph autograd {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=11];']
    node_names, drawn, stack = {}, set(), [root]  # id(tensor) -> its DOT node name
    while stack:  # iterative, so a deep graph cannot hit the recursion limit
        t = stack.pop()
        if id(t) in drawn:
            continue
        drawn.add(id(t))
        node = node_names.setdefault(id(t), f"t{len(node_names)}")
        style = "" if t.requires_grad else ', style=filled, fillcolor="#eeeeee"'  # constants are grey
        lines.append(f'  {node} [shape=record, label="{_tensor_label(t, labels.get(id(t)), max_values)}"{style}];')
        if t._ctx is None:
            continue
        if t._ctx is autograd.RELEASED:
            raise ValueError("draw_graph: backward() already freed this graph; draw it before backward(), or "
                             "call backward(retain_graph=True)")
        op = f"op_{node}"
        lines.append(f'  {op} [shape=ellipse, label="{type(t._ctx).__name__}"];')
        lines.append(f"  {op} -> {node};")
        for parent in t._ctx.parents:
            lines.append(f"  {node_names.setdefault(id(parent), f't{len(node_names)}')} -> {op};")
            stack.append(parent)
    text = "\n".join(lines) + "\n}\n"
    if path is not None:
        _write(text, Path(path))
    return text


def _tensor_label(t: Tensor, name: str | None, max_values: int) -> str:
    """A record label: { name | shape dtype | data ... | grad ... }."""
    fields = [name] if name else []
    fields.append(f"{t.shape} {t.dtype}" if t.ndim else str(t.dtype))
    if t.size <= max_values:
        fields.append("data " + _values(t.data))
        if t.grad is not None:
            fields.append("grad " + _values(t.grad.data))
    elif t.grad is not None:
        fields.append("grad stored")
    return "{ " + " | ".join(_escape(f) for f in fields) + " }"


def _values(array) -> str:
    values = np.asarray(backend.to_numpy(array), dtype=np.float64 if array.dtype.kind in "fc" else None)
    if values.ndim == 0:
        return f"{values.item():.4g}" if values.dtype.kind == "f" else str(values.item())
    return np.array2string(values, precision=4, separator=", ", suppress_small=True).replace("\n", "")


def _escape(text: str) -> str:
    """Escape the characters that mean something in a DOT record label."""
    for c in '\\{}|<>"':
        text = text.replace(c, "\\" + c)
    return text


def _write(text: str, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in _TEXT:
        path.write_text(text)
        return
    if suffix not in _RENDERED:
        raise ValueError(f"draw_graph: cannot write {path.name!r}; use .svg, .png, .pdf (Graphviz) or .dot")
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(f"draw_graph: writing {path.name!r} needs Graphviz's `dot` program (apt-get install "
                           "graphviz, or brew install graphviz); without it, write '.dot' or use the returned text")
    done = subprocess.run([dot, f"-T{_RENDERED[suffix]}", "-o", str(path)], input=text.encode(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"draw_graph: dot failed on {path.name!r}: {done.stderr.decode().strip()}")
