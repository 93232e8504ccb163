"""GPT.from_pretrained / save_pretrained against transformers' GPT2LMHeadModel, checkpoint directories, bad input.

The reference is a small random GPT2LMHeadModel built and saved by transformers in the test (no
download): our logits must equal its logits and our greedy generation its greedy generation; what
we write must load back into transformers with the same logits.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import BPETokenizer, CharTokenizer, backend, load_tokenizer, no_grad
from tinygrad_gpt.checkpoint import save_checkpoint
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.pretrained import _write_safetensors

ROOT = Path(__file__).resolve().parents[1]
HAS_HF = all(importlib.util.find_spec(m) is not None for m in ("transformers", "torch"))
requires_hf = pytest.mark.skipif(not HAS_HF, reason="needs transformers and torch (pip install '.[test]' torch)")
SMALL = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=64)
IDX = np.random.default_rng(0).integers(0, 97, size=(2, 20))


def hf_model(**overrides):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(**{**SMALL, "bos_token_id": 96, "eos_token_id": 96, **overrides})
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make biases and LayerNorm parameters non-trivial, so a missed one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, idx=IDX) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(idx)).logits.numpy()


def our_logits(model: GPT, idx=IDX) -> np.ndarray:
    with no_grad():
        return backend.to_numpy(model(idx)[0].data)


def assert_same_logits(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = hf_model()
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return model, path


def hf_state(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- Hugging Face -> ours


@requires_hf
def test_logits_and_greedy_generation_equal_transformers(hf_dir):
    import torch

    reference, path = hf_dir
    model = GPT.from_pretrained(path)
    assert model.config.block_size == 64 and model.config.vocab_size == 97 and not model.training
    assert_same_logits(our_logits(model), hf_logits(reference))
    prompt = IDX[:, :5]
    ours = model.generate(prompt, 30, temperature=0)
    theirs = reference.generate(torch.tensor(prompt), max_new_tokens=30, do_sample=False, pad_token_id=96)
    np.testing.assert_array_equal(backend.to_numpy(ours), theirs.numpy())


@requires_hf
def test_keys_without_prefix_with_buffers_and_equal_lm_head(hf_dir, tmp_path):
    reference, path = hf_dir
    state = {k.removeprefix("transformer."): v for k, v in hf_state(reference).items()}
    state["lm_head.weight"] = state["wte.weight"].copy()  # tied, but written out
    for i in range(SMALL["n_layer"]):  # the causal-mask buffers older transformers save
        state[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), dtype=np.float32))
        state[f"h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    _write_safetensors(tmp_path / "model.safetensors", state)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    model = GPT.from_pretrained(tmp_path)
    assert model.config.tie_weights
    assert_same_logits(our_logits(model), hf_logits(reference))


@requires_hf
def test_untied_head_loads_untied(tmp_path):
    reference = hf_model(tie_word_embeddings=False)
    reference.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    assert not model.config.tie_weights
    assert_same_logits(our_logits(model), hf_logits(reference))


@requires_hf
def test_layer_norm_epsilon_and_relu_come_from_the_config(tmp_path):
    reference = hf_model(layer_norm_epsilon=1e-2, activation_function="relu")
    reference.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    assert model.config.layer_norm_epsilon == 1e-2 and model.config.activation == "relu"
    assert_same_logits(our_logits(model), hf_logits(reference))


# ---------------------------------------------------------------- ours -> Hugging Face


@requires_hf
@pytest.mark.parametrize("options", [{}, {"tie_weights": False, "activation": "relu", "layer_norm_epsilon": 1e-3}])
def test_save_pretrained_loads_in_transformers_with_same_logits(tmp_path, options):
    from transformers import GPT2LMHeadModel

    model = GPT(GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=2, n_embd=32, **options)).eval()
    model.save_pretrained(tmp_path)
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert_same_logits(our_logits(model), hf_logits(theirs))
    again = GPT.from_pretrained(tmp_path)  # and back
    assert dataclasses.asdict(again.config) == dataclasses.asdict(model.config)
    np.testing.assert_array_equal(our_logits(again), our_logits(model))


@pytest.mark.parametrize("option", [{"norm": "post"}, {"pos_encoding": "sinusoidal"}, {"bias": False}])
def test_save_pretrained_refuses_what_gpt2_cannot_express(tmp_path, option):
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8, **option))
    key = next(iter(option))
    with pytest.raises(ValueError, match=f"Hugging Face GPT-2 has no {key}="):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


@requires_hf
def test_save_pretrained_with_bpe_tokenizer(tmp_path):
    from transformers import GPT2TokenizerFast

    tok = BPETokenizer.train("hello world, hello there! " * 50, 300)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    model.save_pretrained(tmp_path, tokenizer=tok)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == tok.eot_id == tok.vocab_size - 1
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.encode("hello there") == tok.encode("hello there")
    assert GPT2TokenizerFast.from_pretrained(tmp_path)("hello there")["input_ids"] == tok.encode("hello there")


def test_save_pretrained_with_char_tokenizer(tmp_path):
    tok = CharTokenizer.from_text("abc\n")
    GPT(GPTConfig(vocab_size=4, block_size=8, n_layer=1, n_head=1, n_embd=8)).save_pretrained(tmp_path, tok)
    assert load_tokenizer(tmp_path).chars == tok.chars


# ---------------------------------------------------------------- checkpoint directories


def write_checkpoint(out_dir: Path, model: GPT, chars: str) -> Path:
    """A checkpoint as tinygrad_gpt.train writes it (model_config and vocab in meta.json)."""
    meta = {"model_config": dataclasses.asdict(model.config), "vocab": list(chars), "iter_num": 0}
    return save_checkpoint(out_dir / "ckpt_best", model.state_dict(), None, meta)


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_directory_loads(tmp_path, tie):
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=tie)).eval()
    ckpt = write_checkpoint(tmp_path, model, "abcd\n")
    idx = np.array([[0, 1, 2, 3]])
    for path in (tmp_path, ckpt):  # the out_dir or the checkpoint itself
        loaded = GPT.from_pretrained(path)
        np.testing.assert_array_equal(our_logits(loaded, idx), our_logits(model, idx))
        tok = load_tokenizer(path)
        assert isinstance(tok, CharTokenizer) and tok.chars == list("abcd\n")


@pytest.mark.parametrize("where", ["ckpt", "out_dir"])
def test_checkpoint_with_bpe_files_gives_a_bpe_tokenizer(tmp_path, where):
    tok = BPETokenizer.train("some text, some more text " * 20, 270)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    meta = {"model_config": dataclasses.asdict(model.config), "tokenizer": "bpe"}
    ckpt = save_checkpoint(tmp_path / "ckpt_latest", model.state_dict(), None, meta)
    tok.save_pretrained(ckpt if where == "ckpt" else tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.merges == tok.merges
    (ckpt / "vocab.json").unlink(missing_ok=True)
    (tmp_path / "vocab.json").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"vocab\.json is missing"):
        load_tokenizer(tmp_path)


def test_checkpoint_written_by_train_cli_loads(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello there, tiny corpus. " * 400, encoding="utf-8")
    args = ["--data", str(data), "--out_dir", str(tmp_path / "out"), "--max_iters", "2", "--eval_interval", "2",
            "--eval_iters", "1", "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16",
            "--batch_size", "2", "--max_new_tokens", "0", "--plot", "False"]
    proc = subprocess.run([sys.executable, "-m", "tinygrad_gpt.train", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, tok = GPT.from_pretrained(tmp_path / "out"), load_tokenizer(tmp_path / "out")
    assert model.config.n_embd == 16 and tok.decode(tok.encode("hello")) == "hello"


# ---------------------------------------------------------------- bad input


def small_hf_dir(path: Path, **config_overrides) -> Path:
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    model.save_pretrained(path)
    if config_overrides:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **config_overrides}))
    return path


def test_missing_weights_file_is_named(tmp_path):
    (small_hf_dir(tmp_path) / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors is missing"):
        GPT.from_pretrained(tmp_path)


def test_directory_without_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"neither a Hugging Face GPT-2 model \(config\.json"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        GPT.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_other_architecture_is_refused(tmp_path):
    small_hf_dir(tmp_path, model_type="llama")
    with pytest.raises(ValueError, match=r"config\.json: model_type is 'llama'; only 'gpt2'"):
        GPT.from_pretrained(tmp_path)


def test_unsupported_activation_is_refused(tmp_path):
    small_hf_dir(tmp_path, activation_function="silu")
    with pytest.raises(ValueError, match=r"config\.json: activation_function 'silu' is not supported"):
        GPT.from_pretrained(tmp_path)


def test_shapes_that_disagree_with_the_config_name_file_and_key(tmp_path):
    small_hf_dir(tmp_path, n_positions=16)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'transformer\.wpe\.weight' has shape \(8, 8\)"):
        GPT.from_pretrained(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    path = small_hf_dir(tmp_path)
    from tinygrad_gpt.safetensors import load_file

    state = load_file(path / "model.safetensors")
    state.pop("transformer.ln_f.bias")
    _write_safetensors(path / "model.safetensors", state)
    with pytest.raises(ValueError, match=r"model\.safetensors: no tensor for parameter 'ln_f\.bias'"):
        GPT.from_pretrained(path)
    state["transformer.ln_f.bias"] = np.zeros(8, np.float32)
    state["transformer.h.0.attn.q_proj.weight"] = np.zeros((8, 8), np.float32)
    _write_safetensors(path / "model.safetensors", state)
    with pytest.raises(ValueError, match=r"unexpected tensor 'transformer\.h\.0\.attn\.q_proj\.weight'"):
        GPT.from_pretrained(path)


def test_truncated_weights_are_refused(tmp_path):
    path = small_hf_dir(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        GPT.from_pretrained(path)


# ---------------------------------------------------------------- memory


@pytest.mark.skipif(backend.BACKEND == "cupy", reason="measures host memory of the numpy backend (on cupy the "
                    "weights live on the device, and go through one host buffer per tensor)")
def test_loading_holds_about_one_copy_of_the_weights():
    """Peak RSS above the imports stays near the weights' bytes (a 2-layer, 256-wide model with vocab 50257)."""
    code = (
        "import sys; sys.argv = ['bench_load', '--n_layer', '2', '--n_embd', '256', '--n_head', '4']; "
        "sys.path.insert(0, 'benchmarks'); import bench_load; sys.exit(bench_load.main())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| from_pretrained"))
    above_imports = float(row.strip("|").split("|")[-1])
    assert above_imports <= 1.2, proc.stdout
