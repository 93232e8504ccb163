"""Run every ```python block of docs/*.md, so the documentation cannot go stale.

Each Markdown file runs top to bottom in one fresh namespace (a later block may use what an earlier
one defined), inside a temporary working directory. A failure names the file, the block's number
and line, and its first line of code.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import struct
import sys
from pathlib import Path

import pytest

from tinygrad_gpt import backend

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
SLOW_DOCS = {"tutorial.md"}  # trains a small GPT: a few seconds on a free core, more on a busy one

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, line number of the opening fence, code) for every fenced block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)]


def run_blocks(path: Path) -> None:
    """Execute the python blocks of `path` in order in one namespace; raise naming the failing block."""
    namespace = {"__name__": f"docs_{path.stem}"}
    blocks = [b for b in code_blocks(path) if b[0] == "python"]
    for number, (_, line, code) in enumerate(blocks, 1):
        first_line = next((s.strip() for s in code.splitlines() if s.strip()), "")
        try:
            exec(compile(code, f"{path.name}:block{number}(line {line})", "exec"), namespace)
        except Exception as e:
            raise AssertionError(
                f"{path.name}: python block {number} at line {line} ({first_line!r}) failed: {type(e).__name__}: {e}"
            ) from e


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A temporary working directory; the library's random state is restored afterwards."""
    monkeypatch.chdir(tmp_path)
    state = backend.get_rng_state()
    yield tmp_path
    backend.set_rng_state(state)


def _doc_param(path: Path):
    marks = [pytest.mark.slow] if path.name in SLOW_DOCS else []
    return pytest.param(path, id=path.name, marks=marks)


def test_docs_exist():
    names = {p.name for p in DOC_FILES}
    assert {"tutorial.md", "autograd.md"} <= names, f"docs/ holds {sorted(names)}"


@pytest.mark.parametrize("path", [_doc_param(p) for p in DOC_FILES])
def test_doc_code_blocks_run(path, isolated):
    assert any(lang == "python" for lang, _, _ in code_blocks(path)), f"{path.name} has no python block"
    run_blocks(path)


def test_readme_python_blocks_run(isolated):
    readme = DOCS.parent / "README.md"
    assert any(lang == "python" for lang, _, _ in code_blocks(readme)), "README.md has no python example"
    run_blocks(readme)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in DOC_FILES])
def test_every_code_block_is_executed(path):
    """Blocks in another language (or none) would silently escape the test above."""
    untested = [f"line {line}: ```{lang}" for lang, line, _ in code_blocks(path) if lang != "python"]
    assert not untested, f"{path.name} has code blocks that are not ```python, so never run: {untested}"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in DOC_FILES])
def test_images_exist_and_are_small_pngs(path):
    for target in IMAGE.findall(path.read_text(encoding="utf-8")):
        image = DOCS / target
        assert image.is_file(), f"{path.name} shows {target}, which does not exist (run python docs/make_figures.py)"
        data = image.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{target} is not a PNG"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 300 and height >= 200, f"{target} is only {width}x{height} pixels"
        assert len(data) < 100_000, f"{target} is {len(data)} bytes; keep committed figures under 100 kB"


def _private_names(code: str) -> list[str]:
    """Private names a code block uses: `from tinygrad_gpt... import _x`, `module._x`, `t._ctx` (dunders are fine)."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinygrad_gpt"):
            parts = node.module.split(".") + [alias.name for alias in node.names]
            found += [f"from {node.module} import {p}" for p in parts if p.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
            found.append(f".{node.attr}")
    return found


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in [*DOC_FILES, DOCS.parent / "README.md"]])
def test_docs_use_only_public_names(path):
    """What the docs teach must be the public interface, not helpers that may change."""
    private = [f"block at line {line}: {name}" for lang, line, code in code_blocks(path) if lang == "python"
               for name in _private_names(code)]
    assert not private, f"{path.name} uses private names: {private}"


def _github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercase, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in DOC_FILES])
def test_links_point_to_existing_sections_and_files(path):
    text = path.read_text(encoding="utf-8")
    prose = FENCE.sub("", text)  # a '#' comment in a code block is not a heading
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", prose, re.MULTILINE)}
    for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", prose):
        if target.startswith(("http://", "https://")):
            continue
        file_part, _, anchor = target.partition("#")
        if file_part:
            assert (DOCS / file_part).is_file(), f"{path.name} links to {target}, which does not exist"
        elif anchor:
            assert anchor in anchors, f"{path.name} links to #{anchor}, but no heading has that anchor"


def test_code_blocks_are_found_with_their_lines(tmp_path):
    doc = tmp_path / "demo.md"
    doc.write_text("Intro\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'x'\n```\n")
    assert [(lang, line) for lang, line, _ in code_blocks(doc)] == [("python", 3), ("python", 9)]
    with pytest.raises(AssertionError, match=r"demo.md: python block 2 at line 9 \(\"assert x == 2, 'x'\"\)"):
        run_blocks(doc)


def _load_make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_make_figures_quick_writes_both_pngs(isolated):
    pytest.importorskip("matplotlib", reason="make_figures.py needs matplotlib (the 'plot' extra)")
    make_figures = _load_make_figures()
    make_figures.main(["--quick", "--out-dir", str(isolated)])
    for name in ("attention.png", "loss_curve.png"):
        data = (isolated / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 100_000, name
