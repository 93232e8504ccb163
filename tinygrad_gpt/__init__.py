"""tinygrad_gpt: a from-scratch reverse-mode autograd Tensor library on NumPy/CuPy, and a GPT built on it."""

from tinygrad_gpt.backend import manual_seed
from tinygrad_gpt.data import CharTokenizer
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
from tinygrad_gpt.tokenizers import BPETokenizer

__version__ = "0.1.0"


def load_tokenizer(path):
    """The tokenizer of a Hugging Face GPT-2 directory or a tinygrad_gpt checkpoint / out_dir (see pretrained.py)."""
    from tinygrad_gpt.pretrained import load_tokenizer as load

    return load(path)


__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "Tensor",
    "cat",
    "get_default_dtype",
    "gradcheck",
    "is_grad_enabled",
    "load_tokenizer",
    "manual_seed",
    "matmul",
    "no_grad",
    "set_default_dtype",
    "stack",
    "where",
]
