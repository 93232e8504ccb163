"""Neural-network building blocks: the Module base class, layers, and `functional` (stateless ops)."""

from tinygrad_gpt.nn import functional
from tinygrad_gpt.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, ReLU2, RMSNorm, Sigmoid, Tanh
from tinygrad_gpt.nn.module import Module, ModuleList, Sequential

__all__ = [
    "GELU", "Dropout", "Embedding", "LayerNorm", "Linear", "Module", "ModuleList", "ReLU", "Sequential", "Sigmoid",
    "Tanh", "functional", "RMSNorm", "ReLU2",
]
