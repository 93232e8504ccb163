"""Seeing the graph: draw_graph's DOT text, retain_graph, retain_grad and a readable Function repr."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tinygrad_gpt import Tensor, draw_graph, viz
from tinygrad_gpt.nn import functional as F

HAS_DOT = shutil.which("dot") is not None


def micrograd_neuron():
    """A 2-input tanh neuron, micrograd's draw_dot example: (names, output)."""
    x1, x2 = Tensor(2.0, requires_grad=True), Tensor(0.0, requires_grad=True)
    w1, w2 = Tensor(-3.0, requires_grad=True), Tensor(1.0, requires_grad=True)
    b = Tensor(6.8813735870195432, requires_grad=True)
    n = x1 * w1 + x2 * w2 + b
    o = n.tanh()
    return dict(x1=x1, x2=x2, w1=w1, w2=w2, b=b, n=n, o=o), o


def test_dot_text_shows_ops_names_values_and_after_backward_gradients():
    names, o = micrograd_neuron()
    before = draw_graph(o, names=names)
    assert before.startswith("digraph") and before.rstrip().endswith("}")
    labels = re.findall(r'label="([^"]*)"', before)
    ops = [label for label in labels if not label.startswith("{")]
    assert sorted(ops) == ["Add", "Add", "Mul", "Mul", "Tanh"]
    assert "{ x1 | float32 | data 2 }" in labels and "{ o | float32 | data 0.7071 }" in labels
    assert "| grad" not in before  # nothing computed yet

    names["n"].retain_grad()
    o.backward(retain_graph=True)
    after = draw_graph(o, names=names)
    assert "{ w1 | float32 | data -3 | grad 1 }" in after  # do/dw1 = x1 * (1 - o**2) = 2 * 0.5
    assert "{ x2 | float32 | data 0 | grad 0.5 }" in after
    assert "{ n | float32 | data 0.8814 | grad 0.5 }" in after  # retain_grad() on an intermediate
    # each op has one edge to its output and one from each input: 5 outputs, 4 x 2 + 1 inputs
    edges = re.findall(r"(\w+) -> (\w+);", after)
    assert all(dst == src.removeprefix("op_") for src, dst in edges if src.startswith("op_"))
    assert len(edges) == 5 + 4 * 2 + 1


def test_shapes_dtypes_and_constants_and_large_tensors():
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    w = Tensor(np.ones((4, 2)), requires_grad=True, dtype="float64").float()
    y = (x @ w * 2.0).sum()
    text = draw_graph(y, max_values=6)
    assert "(3, 4) float32" in text and "(3, 2) float32" in text and '"MatMul"' in text and '"Cast"' in text
    assert "data 0, 1, 2" not in text  # 12 elements: more than max_values, so no values
    assert "fillcolor" in text  # the constant 2.0 is drawn grey
    assert "data 2" in text


def test_a_freed_graph_cannot_be_drawn_but_a_retained_one_can():
    _, o = micrograd_neuron()
    o.backward()
    with pytest.raises(ValueError, match="retain_graph=True"):
        draw_graph(o)


def test_retain_graph_allows_a_second_backward_and_accumulates():
    a = Tensor([1.0, 2.0], requires_grad=True)
    loss = (a * a).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(a.grad.numpy(), 2 * 2 * a.numpy())
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()  # the second call freed it


def test_retain_graph_through_the_fused_cross_entropy():
    logits = Tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0, 2, 1, 1]))
    loss.backward(retain_graph=True)
    first = logits.grad.numpy().copy()
    loss.backward()
    np.testing.assert_allclose(logits.grad.numpy(), 2 * first, rtol=1e-6)


def test_retain_grad():
    a = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = (a * 2.0).retain_grad()
    other = a * 3.0  # not retained
    (h * h + other).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy())  # d sum(h^2) / dh
    assert other.grad is None and a.retain_grad() is a  # a leaf keeps its gradient anyway
    np.testing.assert_allclose(a.grad.numpy(), 8 * a.numpy() + 3)
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).retain_grad()


def test_function_repr_names_the_op_and_its_inputs():
    a, b = Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones(3))
    ctx = (a * b)._ctx
    assert repr(ctx) == "Mul((2, 3) float32, (3,) float32)"
    y = a.sum()
    y.backward()
    assert "released" in repr(y._ctx) and "object at" not in repr(y._ctx)


def test_draw_graph_writes_dot_text_without_graphviz(tmp_path, monkeypatch):
    _, o = micrograd_neuron()
    text = draw_graph(o, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == text
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz"):
        draw_graph(o, tmp_path / "g.svg")
    with pytest.raises(ValueError, match=r"\.txt"):
        draw_graph(o, tmp_path / "g.txt")


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed (apt-get install graphviz); optional")
def test_draw_graph_renders_svg_and_png_with_graphviz(tmp_path):
    _, o = micrograd_neuron()
    draw_graph(o, tmp_path / "g.svg")
    draw_graph(o, tmp_path / "g.png")
    assert "<svg" in (tmp_path / "g.svg").read_text() and "Tanh" in (tmp_path / "g.svg").read_text()
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")


def test_retain_graph_through_a_whole_gpt():
    """Every fused Function (linear, layer_norm, attention, cross_entropy) keeps what a second backward needs."""
    import tinygrad_gpt
    from tinygrad_gpt import GPT, GPTConfig

    tinygrad_gpt.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    ids = np.random.default_rng(0).integers(0, 11, (2, 8))
    _, loss = model(ids, ids)
    loss.backward(retain_graph=True)
    first = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    loss.backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), 2 * first[name], rtol=1e-5, atol=1e-7, err_msg=name)
