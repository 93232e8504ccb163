"""tinygrad_gpt: a from-scratch reverse-mode autograd Tensor library on NumPy/CuPy, and a GPT built on it.

The package reads bottom-up as the stack it is:

    backend.py      the only NumPy/CuPy switch: devices, dtypes, random streams, index checks
    kernels/        optional fused kernels (cpu.py: numba, cuda.py: CuPy) behind one `find`
    autograd.py     grad mode, Function and the backward engine
    ops.py          the primitive Functions; tensor.py: Tensor, its operators and composite ops
                    (movement.py: its reshape/permute/indexing methods; functions.py: einsum, zeros_like)
    viz.py          draw_graph: the recorded graph as Graphviz DOT text (and SVG/PNG with `dot`)
    nn/  optim/     Modules and layers (nn/functional.py: the fused Functions), optimizers and schedules
    model.py        GPTConfig and GPT

The public names below are imported on first use (PEP 562), so importing one layer, say
`tinygrad_gpt.autograd`, does not import the layers above it. Only the backend is imported at
once, so a wrong TINYGRAD_GPT_BACKEND fails at `import tinygrad_gpt`.
"""

import importlib

from tinygrad_gpt import backend  # noqa: F401  (chooses and checks the array backend at import)

# NOTE: imported at once because the function shares its module's name: importing the module later
# would rebind `tinygrad_gpt.gradcheck` to the module (gradcheck.py imports no Tensor, so this is light)
from tinygrad_gpt.gradcheck import gradcheck  # noqa: F401  (a public name)

__version__ = "0.1.0"

_HOME = {  # public name -> the module that defines it
    "Tensor": "tinygrad_gpt.tensor",
    "cat": "tinygrad_gpt.tensor",
    "matmul": "tinygrad_gpt.tensor",
    "stack": "tinygrad_gpt.tensor",
    "where": "tinygrad_gpt.tensor",
    "einsum": "tinygrad_gpt.functions",
    "zeros_like": "tinygrad_gpt.functions",
    "ones_like": "tinygrad_gpt.functions",
    "Function": "tinygrad_gpt.autograd",
    "draw_graph": "tinygrad_gpt.viz",
    "no_grad": "tinygrad_gpt.autograd",
    "is_grad_enabled": "tinygrad_gpt.autograd",
    "get_default_dtype": "tinygrad_gpt.backend",
    "set_default_dtype": "tinygrad_gpt.backend",
    "manual_seed": "tinygrad_gpt.backend",
    "GPT": "tinygrad_gpt.model",
    "GPTConfig": "tinygrad_gpt.model",
    "CharTokenizer": "tinygrad_gpt.data",
    "BPETokenizer": "tinygrad_gpt.tokenizers",
    "load_tokenizer": "tinygrad_gpt.pretrained",
}

__all__ = sorted([*_HOME, "gradcheck"])


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'tinygrad_gpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_HOME))
