"""The one PyTorch reference GPT, shared by the benchmarks and the tests: nanoGPT's model, GPT-2's layout.

Same architecture as tinygrad_gpt's GPT, with the same choices (`TorchGPTConfig` mirrors `GPTConfig`):
token + position embeddings (learned `wpe` or a fixed sinusoidal table), blocks with one fused qkv
projection and causal attention, a 4x MLP (GELU with the tanh approximation, or ReLU), LayerNorms before
each sublayer plus `ln_f` (GPT-2, "pre") or after each residual add (GPT-1, "post"), an LM head tied to
the token embedding or its own, biases or none, GPT-2 initialisation, dropout. Linear weights keep
torch's (out, in) layout; `load_gpt2_state_dict` / `gpt2_arrays` convert from / to tinygrad_gpt's
(in, out). The optimizer is nanoGPT's `configure_optimizers`: AdamW with every 2-D tensor decayed and
the rest not, fused on CUDA. `generate_greedy` extends sequences greedily, recomputing the cropped context
for every token (the plain reference) or, with use_cache=True, with a KV cache (`TorchKVCache`, preallocated
per layer, as tinygrad_gpt's `KVCache`).

The benchmarks import it as `torch_gpt` (their folder is on sys.path when a script runs); tests/conftest.py
puts this folder on sys.path too. It never imports tinygrad_gpt, so a torch worker stays torch-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

# parameters whose layout differs: torch's (out, in) against tinygrad_gpt's (in, out)
LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight", "lm_head.weight")


@dataclass
class TorchGPTConfig:
    """Sizes and choices of the reference GPT (nanoGPT's GPTConfig + tinygrad_gpt's choices + the attention kernel)."""

    vocab_size: int = 65  # Tiny Shakespeare's characters
    block_size: int = 64  # longest context
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    activation: str = "gelu"  # 'gelu' (tanh approximation, GPT-2) or 'relu'
    norm: str = "pre"  # 'pre' (GPT-2, with ln_f) or 'post' (GPT-1, no ln_f)
    pos_encoding: str = "learned"  # 'learned' wpe (GPT-2) or fixed 'sinusoidal'
    tie_weights: bool = True  # LM head shares wte's matrix (GPT-2)
    attention: str = "sdpa"  # "sdpa": F.scaled_dot_product_attention (nanoGPT's flash path); "manual": explicit

    @classmethod
    def from_config(cls, config, **overrides) -> TorchGPTConfig:
        """The same model as `config` (a tinygrad_gpt GPTConfig, or anything with those attributes)."""
        shared = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return cls(**{**shared, **overrides})


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused qkv projection."""

    def __init__(self, config: TorchGPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.attention = config.attention
        if self.attention == "manual":
            mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
            self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size), persistent=False)

    def forward(self, x: torch.Tensor, kv_cache: TorchKVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with a cache, x holds only the new positions."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        start = 0
        if kv_cache is not None:
            start = kv_cache.length
            k, v = kv_cache.update(layer, k, v)  # (B, nh, start + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        Tk = k.size(2)
        if self.attention == "sdpa" and start == 0:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=dropout_p, is_causal=True)
        elif self.attention == "sdpa" and T == 1:  # one new position sees every cached one: no mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=dropout_p)
        else:  # bottom-right aligned causal mask: query i sits at position start + i
            mask = torch.ones(Tk, Tk, dtype=torch.bool, device=x.device).tril()[start:, :]  # (T, Tk)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, Tk)
            att = att.masked_fill(~mask, float("-inf"))
            att = F.dropout(F.softmax(att, dim=-1), p=dropout_p, training=self.training)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The 4x feed-forward block: GELU (GPT-2's tanh approximation) or ReLU."""

    def __init__(self, config: TorchGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU(approximate="tanh") if config.activation == "gelu" else nn.ReLU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """A transformer block; pre-norm: x + attn(ln(x)), then x + mlp(ln(x)); post-norm: ln(x + attn(x)), ..."""

    def __init__(self, config: TorchGPTConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: TorchKVCache | None = None, layer: int = 0) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), kv_cache, layer)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, kv_cache, layer))
        return self.ln_2(x + self.mlp(x))


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed position encodings (Vaswani et al.), float64 (P, dim): sin on even channels, cos on odd ones."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class TorchKVCache:
    """Keys and values of the positions processed so far, every layer, in preallocated (L, B, nh, block, hs) buffers."""

    def __init__(self, config: TorchGPTConfig, batch_size: int, dtype: torch.dtype, device) -> None:
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions cached; TorchGPT.forward advances it after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, nh, T, hs) of `layer`; return every cached position's (B, nh, length + T, hs) (views)."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class TorchGPT(nn.Module):
    """nanoGPT's GPT with GPT-2's parameter names at the top level (wte, wpe, h.N..., ln_f, lm_head)."""

    def __init__(self, config: TorchGPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # float64 whatever the model's dtype (cast in forward), so a float64 model gets the exact table
            self.register_buffer("pos_table", sinusoidal_positions(config.block_size, config.n_embd), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        if config.norm == "pre":  # post-norm blocks already end in a LayerNorm
            self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.wte.weight = self.lm_head.weight  # named "wte.weight" (registered first)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: TorchKVCache | None = None):
        """Args: idx (B, T) int64, targets (B, T) int64 (-1: ignored) or None; kv_cache holding the earlier
        positions (idx then holds only the new ones). Returns: logits (B, T, V), loss."""
        B, T = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        if self.config.pos_encoding == "learned":
            pos = self.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))  # (T, C)
        else:
            pos = self.pos_table[start : start + T].to(self.wte.weight.dtype)  # (T, C)
        x = self.drop(self.wte(idx) + pos)  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length += T
        if self.config.norm == "pre":
            x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate_greedy(self, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = False) -> torch.Tensor:
        """Append the most likely token max_new_tokens times (as tinygrad_gpt's `generate(temperature=0)`).

        Without a cache (the default, the plain reference) the cropped context is recomputed for every token.
        With use_cache=True the prompt fills a TorchKVCache and each later token costs one position's work
        while the sequence fits in block_size; past it the cropped context is recomputed, as without.
        """
        cache = None
        for _ in range(max_new_tokens):
            n = idx.size(1)
            if not use_cache or n > self.config.block_size:
                logits, _ = self(idx[:, -self.config.block_size :])  # (B, T, V)
            elif cache is None:
                cache = TorchKVCache(self.config, idx.size(0), self.wte.weight.dtype, idx.device)
                logits, _ = self(idx, kv_cache=cache)
            else:
                logits, _ = self(idx[:, -1:], kv_cache=cache)  # (B, 1, V)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # (B, T + 1)
        return idx

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple, device_type: str, eps: float = 1e-8
    ) -> torch.optim.AdamW:
        """nanoGPT's AdamW: decay 2-D tensors (matmul weights, embeddings), not biases or LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]  # the tied weight appears once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device_type == "cuda" else {}  # nanoGPT: fused only on CUDA
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **extra)

    @torch.no_grad()
    def load_gpt2_state_dict(self, state_dict: dict) -> None:
        """Copy every parameter from GPT-2's layout (tinygrad_gpt's names, Linear weights (in, out)) into this model."""
        own = dict(self.named_parameters())
        if set(state_dict) != set(own):
            missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
            raise KeyError(f"state dict does not match: missing {missing}, unexpected {unexpected}")
        for name, array in state_dict.items():
            value = torch.as_tensor(array)
            if name.endswith(LINEAR_WEIGHTS):
                value = value.t()
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not match {tuple(own[name].shape)}")
            own[name].copy_(value)

    def gpt2_arrays(self, grad: bool = False) -> dict:
        """Parameters (or, with grad, their gradients) as numpy arrays in GPT-2's layout, tinygrad_gpt's names."""
        out = {}
        for name, p in self.named_parameters():
            value = (p.grad if grad else p).detach().cpu()
            out[name] = (value.t() if name.endswith(LINEAR_WEIGHTS) else value).numpy()
        return out
