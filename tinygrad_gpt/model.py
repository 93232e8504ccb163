"""A GPT language model (GPT-2's architecture by default) built from tinygrad_gpt.nn.

Parameter names and shapes equal those of Hugging Face GPT-2's `model.safetensors` (wte, wpe,
h.{i}.ln_1, h.{i}.attn.c_attn, ...; Linear weights stored (in, out)), so a GPT-2 checkpoint loads
one to one. The config also offers the variants tutorials teach: ReLU instead of GELU, GPT-1's
post-LayerNorm blocks, fixed sinusoidal position encodings and an untied LM head; and the modern
recipe of the NanoGPT speedrun: rotary embeddings, RMSNorm, QK-norm, ReLU^2, tanh logit soft-capping
and a zero-initialised untied head (train its hidden matrices with optim.Muon: `optimizer_groups`).

References: nanoGPT's model.py (Karpathy), GPT-2 (Radford et al. 2019), GPT-1 (Radford et al. 2018),
modded-nanogpt (Keller Jordan et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from tinygrad_gpt import backend
from tinygrad_gpt.nn import GELU, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, ReLU, ReLU2, RMSNorm
from tinygrad_gpt.nn import functional as F
from tinygrad_gpt.tensor import Tensor, is_grad_enabled, no_grad

_PRESETS = {  # GPT-2's four sizes; all use vocab_size=50257 and block_size=1024
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


def _field(default, help: str, choices: tuple | None = None):
    """A GPTConfig field whose `help` (and `choices`) also make the training CLI's flag of the same name."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class GPTConfig:
    """Sizes and architectural choices of a GPT; the defaults are GPT-2 small's."""

    # GPT-2's BPE vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
    vocab_size: int = _field(50257, "number of token ids (training takes it from the data's tokenizer)")
    block_size: int = _field(1024, "context length: the most positions (tokens) the model sees at once")
    n_layer: int = _field(12, "transformer blocks")
    n_head: int = _field(12, "attention heads per block (head size: n_embd // n_head)")
    n_embd: int = _field(768, "embedding width, the residual stream's (divisible by n_head)")
    # 0.0 for pretraining, ~0.1 to fine-tune; a setting of training, so not part of architecture()
    dropout: float = _field(0.0, "dropout rate in [0, 1); try 0.1 or 0.2 when fine-tuning on little text")
    # True as GPT-2; False is a bit better and faster
    bias: bool = _field(True, "biases in Linear and LayerNorm layers")
    # GPT-2's GELU is the tanh approximation
    activation: str = _field(
        "gelu", "MLP nonlinearity (relu2: relu(x)^2, the speedrun's)", choices=("gelu", "relu", "relu2")
    )
    norm: str = _field(
        "pre", "LayerNorm before each sublayer, plus ln_f (GPT-2), or after each residual add (GPT-1)", ("pre", "post")
    )
    # 'sinusoidal': the fixed encodings of Vaswani et al.; 'rope': rotary q and k in every layer (no wpe)
    pos_encoding: str = _field(
        "learned", "position encoding (rope needs an even head size)", choices=("learned", "sinusoidal", "rope")
    )
    tie_weights: bool = _field(True, "share the token embedding wte with the output layer (GPT-2)")
    layer_norm_epsilon: float = _field(
        1e-5, "added to the variance in every LayerNorm / RMSNorm, qk_norm's included (GPT-2's value)"
    )
    # the modern recipe's options (modded-nanogpt's speedrun); their defaults keep GPT-2
    norm_type: str = _field(
        "layernorm", "ln_1, ln_2, ln_f: LayerNorm (GPT-2) or RMSNorm (gain only)", choices=("layernorm", "rmsnorm")
    )
    qk_norm: bool = _field(False, "RMSNorm of each head's q and k before RoPE and attention")
    rope_base: float = _field(10000.0, "base of the rotary frequencies (pos_encoding rope)")
    logit_softcap: float | None = _field(None, "logits = cap * tanh(logits / cap), e.g. 30 (None: off)")
    zero_init_head: bool = _field(False, "start the untied LM head at zero (needs --tie_weights false)")

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout!r}")
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value not in choices:
                raise ValueError(f"GPTConfig: {f.name} must be one of {choices}, got {value!r}")
        for name in ("bias", "tie_weights", "qk_norm", "zero_init_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig: {name} must be True or False, got {getattr(self, name)!r}")
        self._check_modern_options()

    def _check_modern_options(self) -> None:
        for name in ("layer_norm_epsilon", "rope_base"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"GPTConfig: {name} must be a positive number, got {value!r}")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < math.inf):
            raise ValueError(f"GPTConfig: logit_softcap must be a positive number or None, got {cap!r}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"GPTConfig: pos_encoding='rope' needs an even head size, got n_embd // n_head = "
                             f"{self.n_embd // self.n_head}")
        if self.zero_init_head and self.tie_weights:
            raise ValueError("GPTConfig: zero_init_head=True needs tie_weights=False (a zero wte would be useless)")

    def architecture(self) -> dict:
        """Every field but dropout: what a trained model's weights are made for, so resuming and fine-tuning keep it."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dropout"}

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """GPT-2's sizes: 'gpt2' (124M), 'gpt2-medium', 'gpt2-large' or 'gpt2-xl'; keyword overrides apply on top."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(_PRESETS)}")
        return cls(**{"vocab_size": 50257, "block_size": 1024, **_PRESETS[name], **overrides})


# ---------------------------------------------------------------- blocks


class CausalSelfAttention(Module):
    """Multi-head self-attention where each position sees itself and the positions before it."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v projection
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        hs = config.n_embd // config.n_head
        self.q_norm = RMSNorm(hs, eps=config.layer_norm_epsilon) if config.qk_norm else None
        self.k_norm = RMSNorm(hs, eps=config.layer_norm_epsilon) if config.qk_norm else None
        self.rope_cos = self.rope_sin = None
        if config.pos_encoding == "rope":  # buffers (moved and cast by Module.to), not parameters
            cos, sin = F.rotary_tables(config.block_size, hs, config.rope_base)  # (block_size, hs / 2)
            self.rope_cos, self.rope_sin = Tensor(cos), Tensor(sin)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """(B, T, C) -> (B, T, C); with a cache, x holds only the new positions."""
        qkv = self._qk_norm_rotary(self.c_attn(x), kv_cache.length if kv_cache is not None else 0)  # (B, T, 3C)
        if kv_cache is None:  # training and full-context inference: one fused Function, no head copies
            y = F.causal_self_attention(qkv, self.n_head)  # (B, T, 3C) -> (B, T, C)
        else:  # new positions over the cached ones: one Function that also appends to the cache
            y = F.cached_self_attention(qkv, self.n_head, kv_cache.k[layer], kv_cache.v[layer], kv_cache.length)
        return self.resid_dropout(self.c_proj(y))

    def _qk_norm_rotary(self, qkv: Tensor, start: int) -> Tensor:
        """QK-norm and RoPE of the q and k heads in qkv (B, T, 3C) at positions start.. (GPT-2: qkv itself)."""
        if self.q_norm is None and self.rope_cos is None:
            return qkv
        cos = sin = None
        if self.rope_cos is not None:
            end = start + qkv.shape[1]
            cos, sin = self.rope_cos.data[start:end], self.rope_sin.data[start:end]  # (T, hs / 2)
        q_weight, k_weight = (self.q_norm.weight, self.k_norm.weight) if self.q_norm is not None else (None, None)
        eps = self.q_norm.eps if self.q_norm is not None else 0.0
        return F.qk_norm_rotary(qkv, self.n_head, q_weight, k_weight, cos=cos, sin=sin, eps=eps)


class MLP(Module):
    """Position-wise feed-forward network: expand 4x, nonlinearity, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = {"gelu": GELU, "relu": ReLU, "relu2": ReLU2}[config.activation]()
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)"""
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(Module):
    """One transformer block: attention then MLP, each in a residual branch with a LayerNorm."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """(B, T, C) -> (B, T, C)"""
        if self.pre_norm:  # GPT-2: normalise the branch input, keep the residual stream unnormalised
            x = x + self.attn(self.ln_1(x), kv_cache, layer)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, kv_cache, layer))  # GPT-1: normalise after each residual add
        return self.ln_2(x + self.mlp(x))


class KVCache:
    """Keys and values of the positions processed so far, for every layer, in preallocated buffers."""

    def __init__(self, config: GPTConfig, batch_size: int, dtype, device: str):
        xp = backend.xp_for(device)
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)  # (L, B, nh, block_size, hs)
        self.k, self.v = xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype)
        self.length = 0  # positions cached; GPT.forward advances it after all layers ran


# ---------------------------------------------------------------- the model


class GPT(Module):
    """A decoder-only transformer language model with GPT-2's parameter names."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)  # token embeddings (and the tied LM head)
        if config.pos_encoding == "learned":
            self.wpe = Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.pos_table = sinusoidal_positions(config.block_size, config.n_embd)  # a buffer, not a parameter
        self.drop = Dropout(config.dropout)
        self.h = ModuleList(Block(config) for _ in range(config.n_layer))
        if config.norm == "pre":  # post-norm blocks already end in a LayerNorm (GPT-1 has no ln_f)
            self.ln_f = _norm(config)
        if not config.tie_weights:
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer), zero biases."""
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)  # each block adds two residual branches
        for name, module in self.named_modules():
            if isinstance(module, (Linear, Embedding)):
                std = proj_std if name.endswith("c_proj") else 0.02
                w = module.weight
                w.data[...] = backend.randn(w.shape, w.dtype, w.device) * std
            if isinstance(module, Linear) and module.bias is not None:
                module.bias.data[...] = 0.0
        if self.config.zero_init_head:
            self.lm_head.weight.data[...] = 0.0
        # LayerNorms and RMSNorms keep their ones / zeros

    @property
    def device(self) -> str:
        return self.wte.weight.device

    @classmethod
    def from_pretrained(cls, path, device: str | None = None, dtype=None) -> GPT:
        """A model, in eval mode, from a Hugging Face GPT-2 directory or a checkpoint written by tinygrad_gpt.train.

        See `tinygrad_gpt.pretrained.load_pretrained` (which this calls) for what each directory holds.
        """
        from tinygrad_gpt.pretrained import load_pretrained

        return load_pretrained(path, device=device, dtype=dtype)

    def save_pretrained(self, path, tokenizer=None) -> None:
        """Write a Hugging Face GPT-2 directory (config.json, model.safetensors, and the tokenizer's files).

        See `tinygrad_gpt.pretrained.save_pretrained` (which this calls).
        """
        from tinygrad_gpt.pretrained import save_pretrained

        save_pretrained(self, path, tokenizer)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """Next-token logits for every position, and the mean cross-entropy when targets are given.

        Args:
            idx: integer token ids (B, T), a numpy/cupy array or Tensor, T <= block_size.
            targets: integer ids (B, T) of the next tokens (-1 is ignored), or None.
            kv_cache: a KVCache holding the earlier positions (inference only, under no_grad).
        Returns:
            (logits (B, T, vocab_size), loss scalar Tensor or None)
        """
        logits = self.lm_logits(self.hidden_states(idx, kv_cache))  # (B, T, vocab_size)
        loss = F.cross_entropy(logits, targets) if targets is not None else None
        return logits, loss

    def hidden_states(self, idx, kv_cache: KVCache | None = None) -> Tensor:
        """The final residual stream (after ln_f): token ids (B, T) -> (B, T, C)."""
        idx = _token_array(idx, self.device)
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None and is_grad_enabled():
            raise RuntimeError("a KVCache holds no graph: use it under no_grad()")
        if start + T > self.config.block_size:
            cached = f" after {start} cached positions" if start else ""
            raise ValueError(f"sequence length {T}{cached} is longer than block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos_encoding != "rope":  # RoPE rotates q and k in every attention layer instead
            x = x + self._positions(start, T)  # (B, T, C) + (T, C)
        x = self.drop(x)
        for i, block in enumerate(self.h):
            x = block(x, kv_cache, i)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.length += T
        return self.ln_f(x) if self.config.norm == "pre" else x

    def lm_logits(self, x: Tensor) -> Tensor:
        """The LM head: (B, T, C) -> (B, T, vocab_size)."""
        head = self.wte.weight.T if self.config.tie_weights else self.lm_head.weight  # (C, vocab_size)
        logits = F.linear(x, head)
        if self.config.logit_softcap is not None:
            logits = F.softcap(logits, self.config.logit_softcap)  # cap * tanh(logits / cap)
        return logits

    def _positions(self, start: int, T: int) -> Tensor:
        """Position vectors of positions start .. start + T - 1: (T, C)."""
        if self.config.pos_encoding == "learned":
            xp = backend.xp_for(self.device)
            return self.wpe(xp.arange(start, start + T))  # (T, C)
        return self.pos_table[start : start + T]  # (T, C)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """nanoGPT's two optimizer groups: matrices (>= 2-D) decay; biases and LayerNorm weights do not.

        Returns:
            [{'params': [...], 'weight_decay': weight_decay}, {'params': [...], 'weight_decay': 0.0}],
            for tinygrad_gpt.optim.AdamW.
        """
        params = self.parameters()
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    def optimizer_groups(self) -> tuple[list[dict], list[dict]]:
        """The speedrun's split: Muon for the blocks' hidden matrices, AdamW for everything else.

        Every parameter is in exactly one group; empty groups are left out. Each group has a "name",
        so a caller can give each its own learning rate (`group["lr"] = lrs[group["name"]]`).
        Returns:
            (muon_groups, adamw_groups):
            muon_groups for tinygrad_gpt.optim.Muon: "qkv" (every attn.c_attn.weight, muon_blocks=3:
            q, k and v orthogonalised as three square matrices) and "hidden" (attn.c_proj, mlp.c_fc,
            mlp.c_proj weights);
            adamw_groups for AdamW, without weight decay: "embeddings" (wte, and wpe when learned;
            wte is also the head when tied), "head" (lm_head.weight when untied) and "scalars"
            (norm gains, biases).
        """
        kinds: dict[str, list] = {"qkv": [], "hidden": [], "embeddings": [], "head": [], "scalars": []}
        for name, p in self.named_parameters():
            if p.ndim < 2:
                kind = "scalars"
            elif name.startswith("h."):
                kind = "qkv" if name.endswith("attn.c_attn.weight") else "hidden"
            else:
                kind = "head" if name == "lm_head.weight" else "embeddings"
            kinds[kind].append(p)
        muon = [{"name": "qkv", "params": kinds["qkv"], "muon_blocks": 3},
                {"name": "hidden", "params": kinds["hidden"]}]
        adamw = [{"name": kind, "params": kinds[kind], "weight_decay": 0.0}
                 for kind in ("embeddings", "head", "scalars")]
        return [g for g in muon if g["params"]], [g for g in adamw if g["params"]]

    def extra_repr(self) -> str:
        return f"{self.num_parameters():,} parameters"

    @no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, use_cache: bool = True):
        """Extend each sequence in idx by sampling one token at a time.

        While the sequence fits in block_size, a KVCache makes each new token cost one position's
        work. Past block_size the context is cropped to the last block_size tokens, which shifts
        every position, so from then on each step recomputes the cropped context in full (as
        without a cache). The output equals `use_cache=False`'s. Call `model.eval()` first when
        the model has dropout.

        Args:
            idx: integer token ids (B, T) with T >= 1, array or Tensor; or (T,) for one sequence
                (what a tokenizer's encode returns), which gives a (T + max_new_tokens,) result.
            max_new_tokens: number of tokens to append.
            temperature: divides the logits; 0 picks the most likely token (greedy).
            top_k: sample only among the k most likely tokens (None or 0: all tokens, as Hugging Face).
            top_p: sample only among the most likely tokens whose probabilities sum to top_p (nucleus).
            seed: seeds a generator for this call; None draws from the library's (`manual_seed`).
            use_cache: False recomputes the whole context for every token (for checking the cache).
        Returns:
            numpy int64 array (B, T + max_new_tokens), or (T + max_new_tokens,) for a 1-D idx.
        """
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        tokens = _token_array(idx, self.device, allow_1d=True).astype("int64")
        if tokens.ndim == 1:  # one sequence: a batch of one, returned as it came
            return self.generate(tokens[None, :], max_new_tokens, temperature, top_k, top_p, seed, use_cache)[0]
        if tokens.shape[1] < 1:
            raise ValueError(f"generate: idx needs at least one token per row, got shape {tuple(tokens.shape)}")
        xp = backend.get_array_module(tokens)
        sampler = _Sampler(temperature, top_k, top_p, seed, self.device)
        block_size, cache = self.config.block_size, None
        for _ in range(max_new_tokens):
            n = tokens.shape[1]
            if not use_cache or n > block_size:  # cropping shifts every position: recompute in full
                x = self.hidden_states(tokens[:, -block_size:])
            elif cache is None:  # first step: fill the cache with the whole prompt
                cache = KVCache(self.config, tokens.shape[0], self.wte.weight.dtype, self.device)
                x = self.hidden_states(tokens, cache)
            else:  # one new position, attending over the cached ones
                x = self.hidden_states(tokens[:, -1:], cache)
            logits = self.lm_logits(x[:, -1:, :])  # (B, 1, vocab_size): only the last position is needed
            next_token = sampler(logits.data[:, 0, :])  # (B,)
            tokens = xp.concatenate([tokens, next_token[:, None]], axis=1)  # (B, n + 1)
        return backend.to_numpy(tokens)


# ---------------------------------------------------------------- helpers


def _norm(config: GPTConfig) -> Module:
    """The normalisation layer of ln_1, ln_2 and ln_f."""
    if config.norm_type == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


def sinusoidal_positions(n_positions: int, dim: int) -> Tensor:
    """Fixed position encodings (Vaswani et al. 2017): sin on even channels, cos on odd ones.

    Returns:
        a Tensor (n_positions, dim) in the default float dtype, without gradient.
    """
    xp = backend.xp_for(backend.DEFAULT_DEVICE)
    position = xp.arange(n_positions, dtype="float64")[:, None]  # (P, 1)
    freq = xp.exp(xp.arange(0, dim, 2, dtype="float64") * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = xp.zeros((n_positions, dim), dtype="float64")
    table[:, 0::2] = xp.sin(position * freq)
    table[:, 1::2] = xp.cos(position * freq[: dim // 2])
    return Tensor(table)  # float64 once at build time, then cast to the default dtype


def _token_array(idx, device: str, allow_1d: bool = False):
    """Token ids as a 2-D (or, when allowed, 1-D) integer array on `device`, or a clear error."""
    data = backend.asarray(idx.data if isinstance(idx, Tensor) else idx, device=device)
    if data.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {data.dtype}")
    if data.ndim != 2 and not (allow_1d and data.ndim == 1):
        shapes = "(B, T) or (T,)" if allow_1d else "(B, T)"
        raise ValueError(f"token ids must have shape {shapes}, got shape {tuple(data.shape)}")
    return data


def check_sampling(temperature, top_k, top_p, max_new_tokens, label: str = "generate: {}") -> None:
    """Raise ValueError unless these are valid arguments of `GPT.generate` (the sample CLI checks its flags here too).

    Args:
        label: how the message names an argument; '{}' stands for its name ('--{}' for the CLI's flags).
    """
    checks = [  # (name, value, whether it is valid, what a valid value is)
        ("temperature", temperature, temperature >= 0, "must be >= 0"),  # False for NaN
        ("top_k", top_k, top_k is None or (isinstance(top_k, int) and top_k >= 0),
         "must be a non-negative integer (0: no limit) or None"),
        ("top_p", top_p, top_p is None or 0.0 < top_p <= 1.0, "must be in (0, 1] or None"),
        ("max_new_tokens", max_new_tokens, isinstance(max_new_tokens, int) and max_new_tokens >= 0,
         "must be a non-negative integer"),
    ]  # fmt: skip
    for name, value, ok, requirement in checks:
        if not ok:
            raise ValueError(f"{label.format(name)} {requirement}, got {value!r}")


class _Sampler:
    """Picks the next token from last-position logits: greedy, or sampled after temperature / top-k / top-p."""

    def __init__(self, temperature: float, top_k, top_p, seed, device: str):
        self.temperature, self.top_k, self.top_p, self.device = temperature, top_k, top_p, device
        # a per-call generator when seeded, so the library's own stream is left untouched
        self.rng = backend.host_generator(seed) if seed is not None else None

    def __call__(self, logits):
        """logits (B, V) raw array -> next token ids (B,) int64."""
        xp = backend.get_array_module(logits)
        if self.temperature == 0:
            return logits.argmax(axis=-1).astype("int64")
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:  # None or 0: no top-k filtering
            kth = xp.partition(logits, -self.top_k, axis=-1)[:, -self.top_k][:, None]  # (B, 1)
            logits = xp.where(logits < kth, -xp.inf, logits)
        probs = xp.exp(logits - logits.max(axis=-1, keepdims=True))  # (B, V)
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.top_p is not None and self.top_p < 1.0:
            probs = _nucleus(probs, self.top_p)
        u = self._uniform(probs.shape[0], probs.dtype)  # (B, 1)
        cdf = xp.cumsum(probs, axis=-1)  # (B, V)
        # inverse CDF: the first token whose cumulative probability exceeds u * total
        return (cdf > u * cdf[:, -1:]).argmax(axis=-1).astype("int64")

    def _uniform(self, n: int, dtype):
        if self.rng is None:
            return backend.rand((n, 1), dtype, self.device)
        return backend.asarray(self.rng.random((n, 1)), dtype=dtype, device=self.device)


def _nucleus(probs, top_p: float):
    """Zero all but the most likely tokens whose probabilities first reach top_p (the top one always stays)."""
    xp = backend.get_array_module(probs)
    sorted_probs = -xp.sort(-probs, axis=-1)  # (B, V) most likely first
    before = xp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the strictly more likely tokens
    n_keep = (before < top_p).sum(axis=-1, keepdims=True)  # (B, 1), at least 1
    threshold = xp.take_along_axis(sorted_probs, n_keep - 1, axis=-1)  # (B, 1) smallest kept probability
    probs = xp.where(probs >= threshold, probs, 0.0).astype(probs.dtype)  # ties with it stay too
    return probs / probs.sum(axis=-1, keepdims=True)
