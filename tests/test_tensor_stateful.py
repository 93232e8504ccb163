"""A hypothesis state machine on the Tensor API: random chains of ops, then backward.

Where the op tests check one op on fresh inputs, this builds graphs the way code does: outputs reused
as inputs, broadcasting between unrelated branches, one leaf reaching the loss along several paths,
reductions of reductions, several backward passes over one growing set of leaves. Every op's value
is checked against the same computation in NumPy (float64), and every backward against central finite
differences of that NumPy computation. (backward frees the graph it used, as PyTorch's does, so each
backward replays the node's recipe from the leaves.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from tinygrad_gpt import Tensor, cat, where

SHAPES = [(3,), (2, 3), (1, 3), (2, 1), (4, 2, 3), ()]
UNARY = {
    "tanh": (lambda t: t.tanh(), np.tanh),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "square": (lambda t: t * t, lambda x: x * x),
    "neg": (lambda t: -t, lambda x: -x),
    "log1p_square": (lambda t: (t * t + 1).log(), lambda x: np.log(x * x + 1)),
    "sqrt1p_square": (lambda t: (t * t + 1).sqrt(), lambda x: np.sqrt(x * x + 1)),
    "exp_tanh": (lambda t: t.tanh().exp(), lambda x: np.exp(np.tanh(x))),
    "pow3": (lambda t: t**3, lambda x: x**3),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1)),
    "maximum_smooth": (lambda a, b: a * 0.5 + b.tanh(), lambda a, b: a * 0.5 + np.tanh(b)),
}


@dataclass
class Node:
    """A tensor built by the machine and the NumPy function of the leaves' values that it should equal."""

    tensor: Tensor
    build: object  # list of leaf Tensors -> a fresh Tensor (its own graph) equal to `tensor`
    fn: object  # list of leaf arrays -> np.ndarray


class TensorMachine(RuleBasedStateMachine):
    """Random op sequences on float64 tensors, checked against NumPy; backward against finite differences."""

    nodes = Bundle("nodes")

    def __init__(self):
        super().__init__()
        self.leaves: list[Tensor] = []
        self.values: list[np.ndarray] = []

    def _add(self, build, fn) -> Node:
        tensor, expected = build(self.leaves), fn(self.values)
        assert tensor.shape == np.shape(expected), (tensor.shape, np.shape(expected))
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-10, atol=1e-12)
        return Node(tensor, build, fn)

    def _leaf(self, shape, seed) -> Node:
        value = np.random.default_rng(seed).standard_normal(shape)
        self.values.append(value)
        self.leaves.append(Tensor(value, dtype=np.float64, requires_grad=True))
        i = len(self.values) - 1
        return self._add(lambda leaves: leaves[i], lambda vals: vals[i])

    @initialize(target=nodes, shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1))
    def first_leaf(self, shape, seed):
        return self._leaf(shape, seed)

    @rule(target=nodes, shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1))
    def leaf(self, shape, seed):
        if not (len(self.leaves) < 3):
            return multiple()  # nothing to add (an assume would drop the whole run)
        return self._leaf(shape, seed)

    @rule(target=nodes, node=nodes, op=st.sampled_from(sorted(UNARY)))
    def unary(self, node, op):
        ours, theirs = UNARY[op]
        return self._add(lambda leaves: ours(node.build(leaves)), lambda vals: theirs(node.fn(vals)))

    @rule(target=nodes, a=nodes, b=nodes, op=st.sampled_from(sorted(BINARY)))
    def binary(self, a, b, op):
        try:
            np.broadcast_shapes(a.tensor.shape, b.tensor.shape)
        except ValueError:
            return multiple()
        ours, theirs = BINARY[op]
        return self._add(
            lambda leaves: ours(a.build(leaves), b.build(leaves)), lambda vals: theirs(a.fn(vals), b.fn(vals))
        )

    @rule(target=nodes, node=nodes, op=st.sampled_from(["sum", "mean", "max"]), data=st.data())
    def reduce(self, node, op, data):
        ndim = node.tensor.ndim
        axis = data.draw(st.none() | st.integers(-ndim, ndim - 1) if ndim else st.none(), label="axis")
        keepdims = data.draw(st.booleans(), label="keepdims")
        if not (node.tensor.size > 0):
            return multiple()  # nothing to add (an assume would drop the whole run)
        ours = lambda leaves: getattr(node.build(leaves), op)(axis=axis, keepdims=keepdims)  # noqa: E731
        return self._add(ours, lambda vals: getattr(np, op)(node.fn(vals), axis=axis, keepdims=keepdims))

    @rule(target=nodes, node=nodes, how=st.sampled_from(["flatten", "transpose", "first", "tail", "take", "flip"]))
    def reshape_or_index(self, node, how):
        t, ndim = node.tensor, node.tensor.ndim  # t: only its shape is used; the ops run on a fresh build
        if not (ndim >= (2 if how == "transpose" else 0 if how == "flatten" else 1)):
            return multiple()  # nothing to add (an assume would drop the whole run)
        if not (how not in ("first", "take") or t.shape[0] > 0):
            return multiple()  # nothing to add (an assume would drop the whole run)
        ours, theirs = {
            "flatten": (lambda u: u.reshape(-1), lambda x: x.reshape(-1)),
            "transpose": (lambda u: u.transpose(-2, -1), lambda x: np.swapaxes(x, -2, -1)),
            "first": (lambda u: u[0], lambda x: x[0]),
            "tail": (lambda u: u[..., 1:], lambda x: x[..., 1:]),
            "take": (lambda u: u[np.array([0, 0, -1])], lambda x: x[np.array([0, 0, -1])]),  # repeated rows add up
            "flip": (lambda u: u[::-1], lambda x: x[::-1]),
        }[how]
        return self._add(lambda leaves: ours(node.build(leaves)), lambda vals: theirs(node.fn(vals)))

    @rule(target=nodes, node=nodes, log=st.booleans())
    def softmax(self, node, log):
        if not (node.tensor.ndim >= 1 and node.tensor.shape[-1] > 0):
            return multiple()  # nothing to add (an assume would drop the whole run)

        def reference(x):
            shifted = x - x.max(axis=-1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            return logp if log else np.exp(logp)

        def ours(leaves):
            t = node.build(leaves)
            return t.log_softmax(axis=-1) if log else t.softmax(axis=-1)

        return self._add(ours, lambda vals: reference(node.fn(vals)))

    @rule(target=nodes, a=nodes, b=nodes)
    def concatenate(self, a, b):
        if not (a.tensor.ndim >= 1 and a.tensor.shape[1:] == b.tensor.shape[1:] and a.tensor.ndim == b.tensor.ndim):
            return multiple()  # nothing to add (an assume would drop the whole run)
        return self._add(
            lambda leaves: cat([a.build(leaves), b.build(leaves)], axis=0),
            lambda vals: np.concatenate([a.fn(vals), b.fn(vals)]),
        )

    @rule(target=nodes, a=nodes, b=nodes)
    def matmul(self, a, b):
        if not (a.tensor.ndim >= 1 and b.tensor.ndim >= 1):
            return multiple()  # nothing to add (an assume would drop the whole run)
        try:
            np.matmul(np.zeros(a.tensor.shape), np.zeros(b.tensor.shape))
        except ValueError:
            return multiple()
        return self._add(lambda leaves: a.build(leaves) @ b.build(leaves), lambda vals: a.fn(vals) @ b.fn(vals))

    @rule(target=nodes, cond=nodes, a=nodes, b=nodes)
    def select(self, cond, a, b):
        try:
            np.broadcast_shapes(cond.tensor.shape, a.tensor.shape, b.tensor.shape)
        except ValueError:
            return multiple()
        mask = cond.tensor.numpy() > 0  # a constant mask: its own values are fixed, only a and b are differentiated
        return self._add(
            lambda leaves: where(mask, a.build(leaves), b.build(leaves)),
            lambda vals: np.where(mask, a.fn(vals), b.fn(vals)),
        )

    @rule(node=nodes, seed=st.integers(0, 2**32 - 1))
    def backward_matches_finite_differences(self, node, seed):
        if not (node.tensor.requires_grad):
            return
        weights = np.random.default_rng(seed).standard_normal(node.tensor.shape)
        for leaf in self.leaves:
            leaf.grad = None
        (node.build(self.leaves) * Tensor(weights, dtype=np.float64)).sum().backward()

        def loss(vals):
            return float((node.fn(vals) * weights).sum())

        for i, leaf in enumerate(self.leaves):
            numeric = np.zeros_like(self.values[i])
            for j in np.ndindex(self.values[i].shape):
                plus = [v.copy() for v in self.values]
                minus = [v.copy() for v in self.values]
                plus[i][j] += 1e-6
                minus[i][j] -= 1e-6
                numeric[j] = (loss(plus) - loss(minus)) / 2e-6
            got = leaf.grad.numpy() if leaf.grad is not None else np.zeros_like(numeric)
            assert got.shape == numeric.shape
            np.testing.assert_allclose(got, numeric, rtol=1e-4, atol=1e-5, err_msg=f"gradient of leaf {i}")

    @invariant()
    def leaves_are_unchanged(self):
        for leaf, value in zip(self.leaves, self.values):
            np.testing.assert_array_equal(leaf.numpy(), value)  # no op wrote into its input


TensorMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=20, deadline=None)
test_tensor_api_state_machine = pytest.mark.filterwarnings("ignore::RuntimeWarning")(TensorMachine.TestCase)
