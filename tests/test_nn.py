"""Tests of tinygrad_gpt.nn's Module machinery and layers (nn.functional has its own tests)."""

from __future__ import annotations

import numpy as np
import pytest

import tinygrad_gpt
from tinygrad_gpt import Tensor, nn


class TwoLayer(nn.Module):
    """A small MLP with a nested module, a ModuleList, a plain list and a constant tensor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
        self.extra = [nn.Linear(4, 2, bias=False)]
        self.scale = Tensor(np.ones(2, dtype=np.float32))  # no grad: a buffer, not a parameter
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.blocks[1](self.blocks[0](self.fc(x)).relu())
        return self.drop(self.extra[0](x)) * self.scale


EXPECTED_NAMES = [
    "fc.weight", "fc.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias", "extra.0.weight",
]


# ---------------------------------------------------------------- registration and naming


def test_parameters_register_by_attribute_with_dotted_names():
    m = TwoLayer()
    names = [n for n, _ in m.named_parameters()]
    assert names == EXPECTED_NAMES
    assert all(p.requires_grad for p in m.parameters())
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 4 + 4 + 4 + 4 + 4 * 2


def test_intermediate_and_constant_tensors_are_not_parameters():
    m = TwoLayer()
    m.last_output = m(Tensor.randn(2, 3))  # requires grad but is not a leaf
    m.constant = Tensor.zeros(5)
    assert [n for n, _ in m.named_parameters()] == EXPECTED_NAMES


def test_shared_parameter_is_listed_once_under_its_first_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight  # tied (shape aside, the registration is what matters)

    m = Tied()
    assert [n for n, _ in m.named_parameters()] == ["emb.weight"]
    assert m.num_parameters() == 15
    assert list(m.state_dict()) == ["emb.weight"]


def test_named_modules_walks_the_tree():
    m = TwoLayer()
    names = [n for n, _ in m.named_modules()]
    assert names == ["", "fc", "blocks", "blocks.0", "blocks.1", "extra.0", "drop"]


def test_module_list_behaves_like_a_list():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3
    assert layers[1] is list(layers)[1]
    assert isinstance(layers[1:], nn.ModuleList) and len(layers[1:]) == 2
    layers.append(nn.ReLU())
    assert len(layers) == 4
    with pytest.raises(TypeError, match="holds Modules"):
        layers.append(3)


def test_sequential_chains_its_modules():
    tinygrad_gpt.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    W1, b1, W2, b2 = (p.numpy() for p in seq.parameters())
    expected = np.maximum(x @ W1 + b1, 0) @ W2 + b2
    np.testing.assert_allclose(seq(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_repr_is_nested_and_names_children():
    text = repr(TwoLayer())
    assert text.startswith("TwoLayer(\n  (fc): Linear(in_features=3, out_features=4, bias=True)")
    assert "  (blocks): ModuleList(\n    (0): Linear(in_features=4, out_features=4, bias=True)" in text
    assert "(1): LayerNorm((4,), eps=1e-05, bias=True)" in text
    assert "(drop): Dropout(p=0.5)" in text
    repeated = repr(nn.ModuleList([nn.Linear(2, 2) for _ in range(3)]))
    assert "(0-2): 3 x Linear(in_features=2, out_features=2, bias=True)" in repeated


# ---------------------------------------------------------------- state dicts


def test_state_dict_round_trip_reproduces_outputs():
    tinygrad_gpt.manual_seed(1)
    a, b = TwoLayer().eval(), TwoLayer().eval()
    x = Tensor.randn(5, 3)
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    state = {k: v.copy() for k, v in a.state_dict().items()}
    assert list(state) == EXPECTED_NAMES
    b.load_state_dict(state)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_load_state_dict_writes_in_place_and_casts():
    m = TwoLayer()
    arrays_before = [p.data for p in m.parameters()]
    state = {k: np.full(v.shape, 0.5, dtype=np.float64) for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    for p, before in zip(m.parameters(), arrays_before):
        assert p.data is before  # optimizers holding views of the arrays stay linked
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p.numpy(), 0.5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("blocks.1.bias"), "missing 'blocks.1.bias'"),
        (lambda s: s.update({"blocks.2.weight": np.zeros(3)}), "unexpected 'blocks.2.weight'"),
        (lambda s: s.update({"fc.weight": np.zeros((4, 3))}), r"'fc.weight' has shape \(4, 3\), the model needs"),
    ],
)
def test_load_state_dict_errors_name_the_entry_and_change_nothing(change, message):
    m = TwoLayer()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    state = {k: v + 1.0 for k, v in before.items()}
    change(state)
    with pytest.raises(ValueError, match=message):
        m.load_state_dict(state)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} changed by a failed load")


def test_load_state_dict_non_strict_skips_missing_and_unexpected_but_checks_shapes():
    m = TwoLayer()
    m.load_state_dict({"fc.bias": np.arange(4.0), "not.a.param": np.zeros(2)}, strict=False)
    np.testing.assert_array_equal(m.fc.bias.numpy(), np.arange(4.0))
    with pytest.raises(ValueError, match="'fc.bias' has shape"):
        m.load_state_dict({"fc.bias": np.zeros(5)}, strict=False)
    with pytest.raises(TypeError, match="'fc.bias'"):
        m.load_state_dict({"fc.bias": np.array(["a", "b", "c", "d"])}, strict=False)


# ---------------------------------------------------------------- modes, gradients, devices


def test_train_eval_set_every_submodule_and_switch_dropout():
    tinygrad_gpt.manual_seed(0)
    m = TwoLayer()
    assert m.eval() is m
    assert all(not mod.training for mod in m.modules())
    x = Tensor.randn(64, 3)
    np.testing.assert_array_equal(m(x).numpy(), m(x).numpy())  # dropout is the identity in eval
    m.train()
    assert all(mod.training for mod in m.modules())
    out = m(x).numpy()
    assert (out == 0).mean() > 0.3  # about half the outputs are dropped
    assert not np.array_equal(out, m(x).numpy())


def test_dropout_scales_kept_values_and_is_seeded():
    drop = nn.Dropout(0.25)
    x = Tensor.ones(1000)
    tinygrad_gpt.manual_seed(5)
    y1 = drop(x).numpy()
    tinygrad_gpt.manual_seed(5)
    y2 = drop(x).numpy()
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.18 < (y1 == 0).mean() < 0.32
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.0)


def test_zero_grad_clears_every_gradient():
    m = TwoLayer().eval()
    m(Tensor.randn(2, 3)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_to_dtype_casts_parameters_gradients_and_buffers():
    m = TwoLayer().eval()
    m(Tensor.randn(2, 3)).sum().backward()
    assert m.to(dtype=np.float64) is m
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in m.parameters())
    assert m.scale.dtype == np.float64
    out = m(Tensor(np.ones((2, 3)), dtype=np.float64))
    assert out.dtype == np.float64
    with pytest.raises(TypeError, match="float dtype"):
        m.to(dtype=np.int32)


# ---------------------------------------------------------------- layers


def test_linear_stores_weight_in_out_and_computes_x_w_plus_b():
    lin = nn.Linear(3, 5)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (5,)
    bound = 1 / np.sqrt(3)
    assert np.abs(lin.weight.numpy()).max() <= bound and np.abs(lin.weight.numpy()).std() > 0.1 * bound
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(lin(Tensor(x)).numpy(), x @ lin.weight.numpy() + lin.bias.numpy(), rtol=1e-5, atol=1e-6)
    assert nn.Linear(3, 5, bias=False).bias is None
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Linear(0, 5)


def test_embedding_looks_up_rows():
    emb = nn.Embedding(10, 4)
    idx = np.array([[1, 3], [9, 1]])
    np.testing.assert_array_equal(emb(idx).numpy(), emb.weight.numpy()[idx])
    assert "Embedding(10, 4)" == repr(emb)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_normalises_the_last_axis(bias):
    ln = nn.LayerNorm(6, bias=bias)
    assert (ln.bias is not None) == bias
    ln.weight.data[...] = np.arange(6, dtype=np.float32)
    if bias:
        ln.bias.data[...] = 1.0
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32) * 3 + 2
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    expected = xhat * np.arange(6) + (1.0 if bias else 0.0)
    np.testing.assert_allclose(ln(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in ln.named_parameters()] == (["weight", "bias"] if bias else ["weight"])


def test_activations():
    x = np.linspace(-3, 3, 13).astype(np.float32)
    np.testing.assert_array_equal(nn.ReLU()(Tensor(x)).numpy(), np.maximum(x, 0))
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(nn.GELU()(Tensor(x)).numpy(), gelu, rtol=1e-5, atol=1e-6)


def test_module_gradients_flow_to_every_parameter(float64):
    m = TwoLayer().eval()
    m.to(dtype=np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)))
    tinygrad_gpt.gradcheck(lambda *params: m(x), *m.parameters(), max_elements=16)
