"""tinygrad_gpt: a from-scratch reverse-mode autograd Tensor library on NumPy/CuPy, and a GPT built on it."""

from tinygrad_gpt.backend import manual_seed
from tinygrad_gpt.gradcheck import gradcheck
from tinygrad_gpt.tensor import (
    Tensor,
    cat,
    get_default_dtype,
    is_grad_enabled,
    matmul,
    no_grad,
    set_default_dtype,
    stack,
    where,
)

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "cat",
    "get_default_dtype",
    "gradcheck",
    "is_grad_enabled",
    "manual_seed",
    "matmul",
    "no_grad",
    "set_default_dtype",
    "stack",
    "where",
]
