"""Optimizers (SGD, Adam, AdamW, Muon; MultiOptimizer), gradient clipping, the cosine and WSD schedules.

The optimizers follow torch.optim: `params` is an iterable of Tensors or a list of parameter groups
(dicts with "params" and their own hyperparameters), `optimizer.param_groups[i]["lr"]` may be set
before each step, `step()` skips parameters whose `.grad` is None, and `state_dict()` /
`load_state_dict()` save and restore the moments and step counts for an exact resume.

    base.py       Optimizer (the shared bookkeeping), SGD, clip_grad_norm_
    adam.py       Adam, AdamW (flat per-group buffers: create them after model.to(...)), adamw_update_
    muon.py       Muon, zeropower_via_newtonschulz5, MultiOptimizer
    schedules.py  cosine_lr, wsd_lr
"""

from tinygrad_gpt.optim.adam import Adam, AdamW, adamw_update_
from tinygrad_gpt.optim.base import SGD, Optimizer, clip_grad_norm_
from tinygrad_gpt.optim.muon import MultiOptimizer, Muon, zeropower_via_newtonschulz5
from tinygrad_gpt.optim.schedules import cosine_lr, wsd_lr

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "Muon", "MultiOptimizer", "adamw_update_", "zeropower_via_newtonschulz5",
    "clip_grad_norm_", "cosine_lr", "wsd_lr",
]
