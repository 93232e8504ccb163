"""Draw the docs' figures: a loss curve, the attention weights of a trained character-level GPT, an autograd graph.

    python docs/make_figures.py                                # trains ~1 minute on a CPU, writes docs/*.png
    python docs/make_figures.py --quick --out-dir /tmp/figs    # a few seconds (the test suite runs this)

It trains a small GPT on Python's documentation (`pydoc_data.topics`, part of every Python
install) with the loop of tutorial.md, records the training and validation loss, then draws
loss_curve.png and attention.png (the attention probabilities of every head of every block for
one prompt). Needs matplotlib (`pip install tinygrad_gpt[plot]`). It also draws micrograd_graph.png,
the graph of micrograd's neuron example (tutorial.md and autograd.md show it), when Graphviz's `dot`
is installed.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import tinygrad_gpt
from tinygrad_gpt import CharTokenizer, Tensor, draw_graph, no_grad
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, clip_grad_norm_, cosine_lr

DOCS = Path(__file__).resolve().parent
PROMPT = "if x < 0:\n    x = -x"  # short, with structure a character model can pick up


@dataclass
class RunSettings:
    """How much text, how big a model and how long to train."""

    n_chars: int  # characters of pydoc text to use (90% train, 10% validation)
    config: dict  # GPTConfig fields other than vocab_size
    max_iters: int
    batch_size: int
    eval_interval: int  # iterations between validation-loss estimates
    learning_rate: float = 5e-3
    eval_batches: int = 4


FULL = RunSettings(n_chars=300_000, config=dict(block_size=64, n_layer=2, n_head=4, n_embd=64),
                   max_iters=800, batch_size=32, eval_interval=50)
QUICK = RunSettings(n_chars=20_000, config=dict(block_size=24, n_layer=2, n_head=2, n_embd=16),
                    max_iters=20, batch_size=8, eval_interval=10, eval_batches=1)


@dataclass
class History:
    """Losses recorded during training."""

    train: list = field(default_factory=list)  # one per iteration
    val_iters: list = field(default_factory=list)
    val: list = field(default_factory=list)


def load_text(n_chars: int) -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))[:n_chars]


def train(settings: RunSettings, text: str, seed: int = 0) -> tuple[GPT, list, History]:
    """Train a character-level GPT on `text`.

    Returns:
        (model, the vocabulary as a list of characters, the loss history)
    """
    tinygrad_gpt.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = CharTokenizer.from_text(text)  # the sorted characters of the text, as tutorial.md
    chars = tokenizer.chars
    data = tokenizer.encode(text)
    n_train = int(0.9 * len(data))
    splits = {"train": data[:n_train], "val": data[n_train:]}
    config = GPTConfig(vocab_size=len(chars), **settings.config)
    model = GPT(config)
    T = config.block_size

    def get_batch(split: str) -> tuple:
        starts = rng.integers(0, len(splits[split]) - T - 1, settings.batch_size)
        x = np.stack([splits[split][s : s + T] for s in starts])  # (B, T)
        y = np.stack([splits[split][s + 1 : s + T + 1] for s in starts])  # (B, T)
        return x, y

    @no_grad()
    def val_loss() -> float:
        model.eval()
        losses = [model(*get_batch("val"))[1].item() for _ in range(settings.eval_batches)]
        model.train()
        return float(np.mean(losses))

    lr_max = settings.learning_rate
    optimizer = AdamW(model.param_groups(weight_decay=0.1), lr=lr_max, betas=(0.9, 0.99))
    history = History()
    for it in range(settings.max_iters):
        if it % settings.eval_interval == 0:
            history.val_iters.append(it)
            history.val.append(val_loss())
        lr = cosine_lr(it, lr_max, settings.max_iters // 10, settings.max_iters, lr_max / 10)
        for group in optimizer.param_groups:
            group["lr"] = lr
        _, loss = model(*get_batch("train"))
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.train.append(loss.item())
    history.val_iters.append(settings.max_iters)
    history.val.append(val_loss())
    return model, chars, history


@no_grad()
def attention_weights(model: GPT, idx, layer: int = 0) -> np.ndarray:
    """The attention probabilities of one block, recomputed from its weights as tutorial.md does.

    Args:
        idx: token ids (1, T).
    Returns:
        (n_head, T, T): row i holds how much position i attends to each position j <= i.
    """
    cfg = model.config
    T, hs = idx.shape[1], cfg.n_embd // cfg.n_head
    positions = model.wpe(np.arange(T)) if cfg.pos_encoding == "learned" else model.pos_table[:T]  # (T, C)
    x = model.wte(idx) + positions  # (1, T, C)
    for block in model.h[:layer]:
        x = block(x)
    block = model.h[layer]
    h = block.ln_1(x) if cfg.norm == "pre" else x
    q, k, _ = block.attn.c_attn(h).split(cfg.n_embd, axis=2)  # 3 x (1, T, C)
    q = q.reshape(1, T, cfg.n_head, hs).transpose(1, 2)  # (1, nh, T, hs)
    k = k.reshape(1, T, cfg.n_head, hs).transpose(1, 2)  # (1, nh, T, hs)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (1, nh, T, T)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    return att.masked_fill(future, float("-inf")).softmax(axis=-1).numpy()[0]  # (nh, T, T)


def plot_loss_curve(history: History, vocab_size: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    iters = np.arange(len(history.train))
    ax.plot(iters, history.train, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (each batch)")
    window = max(1, len(history.train) // 40)
    smooth = np.convolve(history.train, np.ones(window) / window, mode="valid")
    ax.plot(iters[window - 1 :], smooth, color="tab:blue", linewidth=1.8, label=f"train ({window}-step mean)")
    ax.plot(history.val_iters, history.val, "o-", color="tab:orange", markersize=3.5, label="validation")
    ax.axhline(math.log(vocab_size), color="gray", linestyle="--", linewidth=1)
    ax.text(len(iters), math.log(vocab_size) - 0.05, f"uniform guess: ln {vocab_size}", ha="right", va="top",
            color="gray", fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title("Training a character-level GPT on Python's documentation", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _label(ch: str) -> str:
    return {" ": "␣", "\n": "\\n", "\t": "\\t"}.get(ch, ch)


def plot_attention(weights: list, prompt: str, path: Path) -> None:
    """weights: one (n_head, T, T) array per layer; one panel per head, one row per layer."""
    import matplotlib.pyplot as plt

    n_layer, n_head = len(weights), weights[0].shape[0]
    fig, axes = plt.subplots(n_layer, n_head, figsize=(2.45 * n_head + 1.0, 2.7 * n_layer + 0.4), dpi=100,
                             squeeze=False, layout="constrained")
    labels = [_label(ch) for ch in prompt]
    ticks = np.arange(len(prompt))
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            image = ax.imshow(weights[layer][head], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"block {layer}, head {head}", fontsize=9)
            ax.set_xticks(ticks, labels, fontsize=8, family="monospace")
            ax.set_yticks(ticks, labels if head == 0 else [], fontsize=8, family="monospace")
            ax.tick_params(length=0, pad=1)
    fig.supxlabel("key position: the character attended to", fontsize=9)
    fig.supylabel("query position: the character attending", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.7, label="attention weight")
    fig.savefig(path)
    plt.close(fig)


def micrograd_graph(path: Path) -> str:
    """Draw micrograd's README neuron, relu(w1 x1 + w2 x2 + b), after backward, as the docs build it."""
    x1, x2 = Tensor(1.0, requires_grad=True), Tensor(-2.0, requires_grad=True)
    w1, w2 = Tensor(0.5, requires_grad=True), Tensor(-0.3, requires_grad=True)
    b = Tensor(0.2, requires_grad=True)
    x1w1, x2w2 = x1 * w1, x2 * w2
    s = x1w1 + x2w2
    n = s + b
    y = n.relu()
    for t in (x1w1, x2w2, s, n, y):  # intermediate tensors keep their gradient too, to show it
        t.retain_grad()
    y.backward(retain_graph=True)
    names = dict(x1=x1, x2=x2, w1=w1, w2=w2, b=b, x1w1=x1w1, x2w2=x2w2, s=s, n=n, y=y)
    return draw_graph(y, path, names=names)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run in seconds, for tests")
    parser.add_argument("--out-dir", type=Path, default=DOCS, help="where to write the PNGs (default: docs/)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    settings = QUICK if args.quick else FULL
    model, chars, history = train(settings, load_text(settings.n_chars))
    print(f"{model.num_parameters():,} parameters; validation loss {history.val[0]:.3f} -> {history.val[-1]:.3f}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_loss_curve(history, len(chars), args.out_dir / "loss_curve.png")
    stoi = {ch: i for i, ch in enumerate(chars)}
    prompt = "".join(ch for ch in PROMPT if ch in stoi)[: model.config.block_size]
    idx = np.array([[stoi[ch] for ch in prompt]])  # (1, T)
    weights = [attention_weights(model, idx, layer) for layer in range(model.config.n_layer)]
    plot_attention(weights, prompt, args.out_dir / "attention.png")
    names = ["loss_curve.png", "attention.png"]
    if shutil.which("dot"):
        micrograd_graph(args.out_dir / "micrograd_graph.png")
        names.append("micrograd_graph.png")
    else:
        print("Graphviz's dot is not installed: micrograd_graph.png not redrawn (apt-get install graphviz)")
    for name in names:
        path = args.out_dir / name
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")


if __name__ == "__main__":
    main()
