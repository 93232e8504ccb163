"""The command line with BPE tokenizers and Hugging Face GPT-2 directories, end to end.

`train --tokenizer bpe`, resume, `sample --init_from`, `export` read back by transformers, fine-tuning a
tiny random GPT-2 directory written here by transformers, `val_bpb` against an independent computation,
and the bad inputs of issue 13 (one line, exit 2, nothing in out_dir touched). Tiny models keep each
run to a second or two; the transformers tests skip with a stated reason where it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_cli import GPT2, TINY, TRAIN_ERROR, losses, one_error_line, run, snapshot

from tinygrad_gpt import BPETokenizer, CharTokenizer, backend, data, export, load_tokenizer, no_grad, sample, train
from tinygrad_gpt.model import GPT

HAS_HF = all(importlib.util.find_spec(m) is not None for m in ("transformers", "torch", "tokenizers"))
requires_hf = pytest.mark.skipif(not HAS_HF, reason="needs transformers, tokenizers and torch (pip install '.[test]')")
CORPUS = "Hello world, this is a tiny corpus for testing the model. Ünïcödé too: naïve café, 東京.\n" * 60
BPE = f"{TINY} --tokenizer bpe --vocab_size 300"  # the default run's architecture (not exportable)
SAMPLE_ERROR = "python -m tinygrad_gpt.sample: error:"
EXPORT_ERROR = "python -m tinygrad_gpt.export: error:"
HF_ARCH = dict(n_layer=1, n_head=2, n_embd=16, n_positions=32)


def val_text(text: str) -> str:
    """The validation split's text: the last 10% of the characters, whatever the tokenizer."""
    return text[len(text) - int(len(text) * 0.1) :]


def evals(out_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "val_loss" in r]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    """corpus.txt and out/, a tiny model with a 300-token BPE trained for 10 iterations (by a subprocess)."""
    root = tmp_path_factory.mktemp("bpe_run")
    (root / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    result = run("train", f"--data corpus.txt --out_dir out --max_iters 10 --learning_rate 0.01 {GPT2} {BPE}", root)
    assert result.returncode == 0, result.stderr
    (root / "stdout.txt").write_text(result.stdout)
    return root


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 directory written by transformers, with a BPE trained by Hugging Face `tokenizers`."""
    if not HAS_HF:
        pytest.skip("needs transformers, tokenizers and torch (pip install '.[test]')")
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("hf_gpt2")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([CORPUS], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)  # fmt: skip
    tok.save_model(str(path))
    torch.manual_seed(0)
    eot = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot, **HF_ARCH)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def copy_hf(hf_dir: Path, to: Path) -> Path:
    shutil.copytree(hf_dir, to)
    return to


# ---------------------------------------------------------------- train --tokenizer bpe


def test_bpe_run_keeps_its_tokenizer_in_every_checkpoint(bpe_run):
    out = bpe_run / "out"
    reference = BPETokenizer.train(CORPUS[: len(CORPUS) - int(len(CORPUS) * 0.1)], 300)  # the training split
    for name in ("ckpt_best", "ckpt_latest"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"vocab.json", "merges.txt", "meta.json", "model.safetensors"} <= files
        meta = json.loads((out / name / "meta.json").read_text())
        assert meta["tokenizer"] == "bpe" and "vocab" not in meta
        assert meta["train_config"]["tokenizer"] == "bpe" and meta["train_config"]["vocab_size"] == 300
        tok = load_tokenizer(out / name)
        assert isinstance(tok, BPETokenizer) and tok.merges == reference.merges
        assert meta["model_config"]["vocab_size"] == tok.vocab_size
    stdout = (bpe_run / "stdout.txt").read_text()
    assert f"vocabulary of {tok.vocab_size} BPE tokens" in stdout
    assert "---------- sample ----------" in stdout


def test_bpe_token_files_hold_the_two_splits_encoded_as_whole_texts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_CHUNK", 7)  # the text streams in pieces that cut words and characters apart
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 0 {BPE}"
    assert train.main(args.split()) == 0
    tok = load_tokenizer(tmp_path / "out")
    train_text, val = CORPUS[: len(CORPUS) - len(val_text(CORPUS))], val_text(CORPUS)
    for split, text in (("train", train_text), ("val", val)):
        tokens = np.fromfile(tmp_path / "out" / f"{split}.bin", dtype=np.uint16)
        assert tokens.tolist() == tok.encode(text), split  # as if encoded in one piece


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_val_bpb_is_the_validation_loss_in_bits_per_utf8_byte(tmp_path, tokenizer, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    flags = BPE if tokenizer == "bpe" else TINY
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 5 {flags}"
    assert train.main(args.split()) == 0
    stdout = capsys.readouterr().out
    n_tokens = len(np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16))
    n_bytes = len(val_text(CORPUS).encode("utf-8"))  # independent of the tokenizer: the text's own bytes
    tok = load_tokenizer(tmp_path / "out")
    decoded = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16).tolist()
    assert tok.decode(decoded) == val_text(CORPUS)  # both tokenizers split off the same validation text
    assert n_bytes > len(val_text(CORPUS))  # multi-byte characters: bytes, not characters
    rows = evals(tmp_path / "out")
    assert [r["iter"] for r in rows] == [0, 5]
    for r in rows:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] * n_tokens / (math.log(2) * n_bytes), rel=1e-12)
        assert f"val loss {r['val_loss']:.4f}, val bpb {r['val_bpb']:.4f}" in stdout


def test_bpe_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    common = f"--data {tmp_path / 'corpus.txt'} {BPE} --dropout 0.1 --lr_decay_iters 10 --warmup_iters 2"
    assert train.main(f"{common} --out_dir {tmp_path / 'a'} --max_iters 10".split()) == 0
    assert train.main(f"{common} --out_dir {tmp_path / 'b'} --max_iters 5".split()) == 0
    resumed = run("train", "--init_from resume --out_dir b --max_iters 10", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from iteration 5" in resumed.stdout and "BPE tokens" in resumed.stdout
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert [r["val_bpb"] for r in evals(tmp_path / "b")] == [r["val_bpb"] for r in evals(tmp_path / "a")]
    assert (tmp_path / "b" / "ckpt_latest" / "vocab.json").read_bytes() == (
        tmp_path / "a" / "ckpt_latest" / "vocab.json"
    ).read_bytes()


def test_fine_tuning_a_bpe_run_keeps_its_tokenizer_on_text_with_new_characters(bpe_run, tmp_path, capsys):
    new_text = "Ωmega and ψ: letters the tokenizer never merged, encoded as bytes. " * 40
    (tmp_path / "new.txt").write_text(new_text, encoding="utf-8")
    argv = ["--init_from", str(bpe_run / "out"), "--data", str(tmp_path / "new.txt"), "--out_dir", str(tmp_path / "ft"),
            "--max_iters", "3", *TINY.split()]  # fmt: skip
    assert train.main(argv) == 0
    assert "new characters" not in capsys.readouterr().out  # a byte-level BPE encodes any text
    for name in ("vocab.json", "merges.txt"):
        new, old = tmp_path / "ft" / "ckpt_latest" / name, bpe_run / "out" / "ckpt_latest" / name
        assert new.read_bytes() == old.read_bytes()
    tok = load_tokenizer(tmp_path / "ft")
    tokens = np.fromfile(tmp_path / "ft" / "val.bin", dtype=np.uint16).tolist()
    assert tok.decode(tokens) == val_text(new_text)


def test_a_char_run_records_its_tokenizer_and_vocabulary(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 0 {TINY}"
    assert train.main(args.split()) == 0
    meta = json.loads((tmp_path / "out" / "ckpt_latest" / "meta.json").read_text())
    assert meta["tokenizer"] == "char" and "".join(meta["vocab"]) == "".join(sorted(set(CORPUS)))
    assert not (tmp_path / "out" / "ckpt_latest" / "vocab.json").exists()


# ---------------------------------------------------------------- sample


@pytest.mark.parametrize("which", ["best", "latest"])
def test_sample_from_a_bpe_run_by_out_dir_and_by_init_from(bpe_run, which):
    args = f"--prompt Hello --max_new_tokens 12 --seed 1 --temperature 1 --checkpoint {which}"
    by_out_dir = run("sample", f"--out_dir out {args}", bpe_run)
    by_init_from = run("sample", f"--init_from out {args}", bpe_run)
    assert by_out_dir.returncode == 0 and by_init_from.returncode == 0, by_out_dir.stderr + by_init_from.stderr
    assert by_out_dir.stdout == by_init_from.stdout
    text = by_out_dir.stdout.split(sample.SEPARATOR)[0]
    assert text.startswith("Hello") and len(text) > len("Hello\n")


@requires_hf
def test_sample_from_a_hugging_face_directory_is_transformers_greedy_generation(hf_dir):
    import torch
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(hf_dir)
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = tok("Hello world", return_tensors="pt")["input_ids"]
    expected = tok.decode(model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0].tolist())
    result = run("sample", ["--init_from", str(hf_dir), "--prompt", "Hello world", "--temperature", "0",
                            "--max_new_tokens", "10"], hf_dir.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n" + sample.SEPARATOR + "\n"
    assert torch.equal(ids, torch.tensor([load_tokenizer(hf_dir).encode("Hello world")]))


# ---------------------------------------------------------------- export


def our_logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    with no_grad():
        return backend.to_numpy(model(idx)[0].data)


@requires_hf
def test_export_of_a_bpe_run_loads_in_transformers_with_the_same_logits_and_ids(bpe_run, tmp_path):
    import torch
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    result = run("export", f"out {tmp_path / 'hf'}", bpe_run)
    assert result.returncode == 0, result.stderr
    assert "vocab.json" in result.stdout and "note:" not in result.stdout
    ours = GPT.from_pretrained(bpe_run / "out")  # ckpt_best
    tok = load_tokenizer(bpe_run / "out")
    ids = np.array([tok.encode(CORPUS[:40])[:8]])  # block_size 8
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(our_logits(ours, ids), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    hf_tok = GPT2TokenizerFast.from_pretrained(tmp_path / "hf")
    assert hf_tok(CORPUS[:200])["input_ids"] == tok.encode(CORPUS[:200])


@requires_hf
def test_export_of_a_char_run_says_what_it_writes(tmp_path):
    from transformers import GPT2LMHeadModel

    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 2 {GPT2} {TINY}"
    assert train.main(args.split()) == 0
    result = run("export", "out/ckpt_latest hf", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tinygrad_gpt_chars.json" in result.stdout and "transformers cannot read" in result.stdout
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tinygrad_gpt_chars.json"]  # fmt: skip
    assert isinstance(load_tokenizer(tmp_path / "hf"), CharTokenizer)
    GPT2LMHeadModel.from_pretrained(tmp_path / "hf")  # the weights load


def test_export_refuses_bad_targets_and_sources_with_one_line(bpe_run, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    cases = {
        (str(bpe_run / "out"), str(tmp_path / "full")): "is not empty; pass --overwrite",
        (str(bpe_run / "out"), str(tmp_path / "file")): "is not a directory",
        (str(bpe_run / "out"), str(bpe_run / "out")): "holds a checkpoint",
        (str(tmp_path / "nope"), str(tmp_path / "new")): "is not a directory",
        (str(tmp_path / "full"), str(tmp_path / "new")): "holds no checkpoint",
    }
    before = snapshot(bpe_run / "out")
    for (src, dst), expected in cases.items():
        assert export.main([src, dst]) == 2
        assert expected in one_error_line(capsys.readouterr().err, EXPORT_ERROR), (src, dst)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()
    assert snapshot(bpe_run / "out") == before
    assert export.main(["--help"]) == 0 and "tinygrad_gpt_chars.json" in capsys.readouterr().out


def test_export_overwrite_replaces_the_model_and_drops_other_tokenizer_files(bpe_run, tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # e.g. left by a downloaded GPT-2
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    assert export.main([str(bpe_run / "out"), str(tmp_path / "hf"), "--overwrite", "--checkpoint", "latest"]) == 0
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert "tokenizer.json" not in names and {"notes.txt", "vocab.json", "model.safetensors"} <= names
    assert load_tokenizer(tmp_path / "hf").merges == load_tokenizer(bpe_run / "out").merges


def test_export_refuses_a_model_gpt2_cannot_express_before_writing(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 0 --norm post {GPT2} {TINY}"
    assert train.main(args.split()) == 0
    capsys.readouterr()
    assert export.main([str(tmp_path / "out"), str(tmp_path / "hf")]) == 2
    assert "norm='post'" in one_error_line(capsys.readouterr().err, EXPORT_ERROR)
    assert not (tmp_path / "hf").exists()


def test_export_of_a_default_run_names_what_gpt2_lacks_and_the_config_that_trains_gpt2(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    args = f"--data {tmp_path / 'corpus.txt'} --out_dir {tmp_path / 'out'} --max_iters 0 {TINY}"
    assert train.main(args.split()) == 0
    capsys.readouterr()
    assert export.main([str(tmp_path / "out"), str(tmp_path / "hf")]) == 2
    line = one_error_line(capsys.readouterr().err, EXPORT_ERROR)
    assert "Hugging Face GPT-2 has no" in line and "configs/gpt2.toml" in line
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------- fine-tuning a Hugging Face directory


@requires_hf
def test_fine_tune_a_hugging_face_directory_with_its_tokenizer_then_resume(hf_dir, tmp_path):
    from transformers import GPT2LMHeadModel

    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    common = "--data corpus.txt --out_dir ft --batch_size 2 --eval_iters 1 --log_interval 1 --plot false"
    result = run("train", f"--init_from {hf_dir} {common} --max_iters 0 --max_new_tokens 5", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "BPE tokens" in result.stdout
    meta = json.loads((tmp_path / "ft" / "ckpt_latest" / "meta.json").read_text())
    assert meta["tokenizer"] == "bpe" and meta["model_config"]["block_size"] == HF_ARCH["n_positions"]
    ours = GPT.from_pretrained(tmp_path / "ft" / "ckpt_latest")  # iteration 0: the directory's weights
    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    tok = load_tokenizer(tmp_path / "ft")
    ids = np.array([tok.encode(CORPUS[:30])])
    import torch

    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(our_logits(ours, ids), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert tok.merges == load_tokenizer(hf_dir).merges and tok.eot_id == load_tokenizer(hf_dir).eot_id
    resumed = run("train", f"--init_from resume {common} --max_iters 4 --max_new_tokens 0", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["iter"] for r in evals(tmp_path / "ft")] == [0, 4]
    assert load_tokenizer(tmp_path / "ft").merges == tok.merges


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing touched


def _break(path: Path, case: str) -> None:
    """Damage the copy of a Hugging Face directory at `path` as the case says."""
    config = json.loads((path / "config.json").read_text())
    if case == "missing model.safetensors":
        (path / "model.safetensors").unlink()
    elif case == "missing merges.txt":
        (path / "merges.txt").unlink()
    elif case == "another architecture":
        (path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    elif case == "shapes disagree with config":
        (path / "config.json").write_text(json.dumps({**config, "n_embd": 32}))
    elif case == "vocab and merges disagree":
        with open(path / "merges.txt", "a", encoding="utf-8") as f:
            f.write("zzqq xxyy\n")
    elif case == "config vocab_size disagrees with the weights":
        (path / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))


HF_BAD = {
    "missing model.safetensors": "model.safetensors is missing",
    "missing merges.txt": "merges.txt is missing",
    "another architecture": "model_type is 'llama'",
    "shapes disagree with config": "has shape",
    "vocab and merges disagree": "which vocab.json lacks",
    "config vocab_size disagrees with the weights": "has shape",
}


@requires_hf
@pytest.mark.parametrize("case", list(HF_BAD))
def test_a_bad_hugging_face_directory_is_one_line_for_train_and_sample(bpe_run, hf_dir, tmp_path, case, capsys):
    broken = copy_hf(hf_dir, tmp_path / "broken")
    _break(broken, case)
    out = bpe_run / "out"
    before = snapshot(out)
    argv = ["--data", str(bpe_run / "corpus.txt"), "--out_dir", str(out), "--overwrite", "--init_from", str(broken)]
    assert train.main(argv) == 2
    assert HF_BAD[case] in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert sample.main(["--init_from", str(broken)]) == 2
    assert HF_BAD[case] in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)
    assert snapshot(out) == before


@requires_hf
def test_a_tokenizer_with_more_tokens_than_the_model_is_refused(hf_dir, tmp_path, capsys):
    from tinygrad_gpt.pretrained import hf_checkpoint

    small = copy_hf(hf_dir, tmp_path / "small")
    model = GPT.from_pretrained(small)
    big = BPETokenizer.train(CORPUS * 2, 400)  # the weights stay; only the tokenizer grows past the model's ids
    assert big.vocab_size > model.config.vocab_size
    for name in ("vocab.json", "merges.txt"):
        (small / name).unlink()
    big.save_pretrained(small)
    with pytest.raises(ValueError, match=r"the tokenizer has \d+ tokens, but the model's vocab_size is 300"):
        hf_checkpoint(small)
    assert sample.main(["--init_from", str(small)]) == 2
    assert "the tokenizer has" in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)


@pytest.mark.parametrize(
    "args, expected",
    [
        ("--tokenizer bpe --vocab_size 256", "--vocab_size must be in 257..65536"),
        ("--tokenizer bpe --vocab_size 65537", "--vocab_size must be in 257..65536"),
        ("--tokenizer bpe --vocab_size abc", "invalid int or None value: 'abc'"),
        ("--vocab_size 500", "--vocab_size is for --tokenizer bpe"),
        ("--tokenizer word", "invalid choice: 'word'"),
        ("--init_from resume --tokenizer char", "conflicts with the bpe tokenizer"),
        ("--init_from resume --vocab_size 500", "--vocab_size 500 conflicts with the bpe tokenizer"),
        ("--init_from {out} --tokenizer char", "conflicts with the bpe tokenizer"),
        ("--init_from {out} --n_layer 2", "conflicts with the checkpoint's n_layer=1"),
        ("--init_from resume --out_dir {root}/no_vocab", "vocab.json is missing"),
    ],
)
def test_bad_tokenizer_flags_are_one_line_and_touch_nothing(bpe_run, args, expected, capsys):
    if not (bpe_run / "no_vocab").exists():
        shutil.copytree(bpe_run / "out", bpe_run / "no_vocab")
        (bpe_run / "no_vocab" / "ckpt_latest" / "vocab.json").unlink()
    args = args.format(out=bpe_run / "out", root=bpe_run)
    out = Path(args.split("--out_dir ")[1].split()[0]) if "--out_dir" in args else bpe_run / "out"
    before = snapshot(out)
    argv = ["--data", str(bpe_run / "corpus.txt"), *TINY.split(), "--out_dir", str(out), "--overwrite", *args.split()]
    assert train.main(argv) == 2
    assert expected in one_error_line(capsys.readouterr().err, TRAIN_ERROR)
    assert snapshot(out) == before


@requires_hf
def test_fine_tuning_flags_that_contradict_the_directory_are_one_line(hf_dir, tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    for args, expected in [("--n_embd 32", "conflicts with the checkpoint's n_embd=16"),
                           ("--block_size 8", "conflicts with the checkpoint's block_size=32"),
                           ("--tokenizer char", "conflicts with the bpe tokenizer"),
                           ("--vocab_size 1000", "--vocab_size 1000 conflicts")]:  # fmt: skip
        argv = ["--init_from", str(hf_dir), "--data", str(tmp_path / "corpus.txt"), "--out_dir", str(tmp_path / "o")]
        assert train.main(argv + args.split()) == 2
        assert expected in one_error_line(capsys.readouterr().err, TRAIN_ERROR), args
        assert not (tmp_path / "o").exists()


def test_sample_refuses_init_from_together_with_out_dir(bpe_run, capsys):
    assert sample.main(["--init_from", str(bpe_run / "out"), "--out_dir", str(bpe_run / "out")]) == 2
    assert "name two models" in one_error_line(capsys.readouterr().err, SAMPLE_ERROR)
