"""BPETokenizer against independent references: Hugging Face `tokenizers` (its trainer and its encoder),
`tiktoken` (an Encoding built from our ranks), `regex` (the pre-tokenizer pattern) and transformers'
GPT2TokenizerFast (reading our files). Each reference test skips with a reason where the library is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_gpt import BPETokenizer, CharTokenizer, load_tokenizer
from tinygrad_gpt.data import pydoc_text
from tinygrad_gpt.tokenizers import EOT, GPT2_PATTERN, bytes_to_unicode, pretokenize

ROOT = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 700
# unicode of several kinds, whitespace runs, digits, contractions and the special token
SAMPLE = (
    "Hello wörld! naïve café Ünïcödé ß ÆØÅ. 東京タワー 日本語のテキスト 한국어 Ελληνικά русский עברית العربية\n"
    "emoji 😀👍🏽 👨‍👩‍👧 flags 🇫🇷 combining e\u0301 a\u0308 n\u0303; numerals x²½Ⅻ ³⁄₄ ١٢٣ ٤٥ 12345 3.14159 1,000,000\n"
    "\t\tindented\n\n\n   three spaces   then tabs\t\t\tend  \r\n trailing   \n"
    "I'm sure they'll say we've done it; she's here, you're right, he'd go. DON'T 'tis '' '\n"
    "<|endoftext|>a new document<|endoftext|><|endoftext|>  \x1c\x1d\x1e\x1f separators "
    "\xa0nbsp \u3000ideographic\u2028"
)
TRAIN_TEXT = pydoc_text()[:150_000] + SAMPLE * 20

needs = {name: importlib.util.find_spec(name) is not None
         for name in ("tokenizers", "tiktoken", "transformers", "regex")}


def requires(name: str):
    return pytest.mark.skipif(not needs[name], reason=f"{name} not installed (pip install 'tinygrad_gpt[test]')")


@pytest.fixture(scope="module")
def ours() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, VOCAB_SIZE)


@pytest.fixture(scope="module")
def hf_trained(tmp_path_factory):
    """Hugging Face's ByteLevelBPETokenizer trained on the same text, and the directory of its saved files."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([TRAIN_TEXT.replace(EOT, "")], vocab_size=VOCAB_SIZE, min_frequency=1,
                            special_tokens=[EOT], show_progress=False)
    path = tmp_path_factory.mktemp("hf_bpe")
    tok.save_model(str(path))
    return tok, path


def texts():
    """The texts every reference comparison runs on."""
    long_word = "".join(c for c in TRAIN_TEXT[:8000] if c.isalpha())  # one long chunk: the heap path of encode
    return [SAMPLE, TRAIN_TEXT[:20_000], "", " ", "  ", "\n", "a", EOT, EOT + EOT, "x" * 300, "'s'S 'LL'll",
            long_word, "東京タワー日本語のテキスト" * 40]


# ---------------------------------------------------------------- training and encoding vs references


@requires("tokenizers")
def test_trained_merges_equal_hugging_face_trainer(ours, hf_trained):
    _, path = hf_trained
    theirs = BPETokenizer.from_pretrained(path)
    ours_merges = [(ours.token_bytes[a], ours.token_bytes[b]) for a, b, _ in ours.merges]
    assert [(theirs.token_bytes[a], theirs.token_bytes[b]) for a, b, _ in theirs.merges] == ours_merges
    assert ours.vocab_size == theirs.vocab_size == VOCAB_SIZE
    assert ours.eot_id == VOCAB_SIZE - 1 and ours.decode([ours.eot_id]) == EOT


@requires("tokenizers")
def test_ids_equal_hugging_face_tokenizers(hf_trained):
    tok, path = hf_trained
    ours_loaded = BPETokenizer.from_pretrained(path)
    for text in texts():
        assert ours_loaded.encode(text) == tok.encode(text).ids, repr(text[:60])
        assert ours_loaded.decode(tok.encode(text).ids) == text


@requires("tiktoken")
def test_ids_equal_tiktoken_with_our_ranks(ours):
    import tiktoken

    ranks = {tb: i for i, tb in enumerate(ours.token_bytes) if i != ours.eot_id}
    enc = tiktoken.Encoding("ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: ours.eot_id})
    for text in texts():
        assert ours.encode(text) == enc.encode(text, allowed_special="all"), repr(text[:60])
        assert ours.encode(text, special=False) == enc.encode_ordinary(text), repr(text[:60])
    assert ours.encode("a\ud800b") == enc.encode("a\ud800b")  # lone surrogate -> U+FFFD in both


@requires("transformers")
def test_save_pretrained_read_by_gpt2_tokenizer_fast(ours, tmp_path):
    from transformers import GPT2TokenizerFast

    ours.save_pretrained(tmp_path)
    theirs = GPT2TokenizerFast.from_pretrained(tmp_path)
    assert len(theirs) == ours.vocab_size and theirs.eos_token_id == ours.eot_id
    for text in texts():
        assert theirs(text)["input_ids"] == ours.encode(text), repr(text[:60])
        assert theirs.decode(ours.encode(text)) == text


def test_save_and_load_round_trip(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    loaded = BPETokenizer.from_pretrained(tmp_path)
    assert loaded.token_bytes == ours.token_bytes and loaded.merges == ours.merges and loaded.eot_id == ours.eot_id
    assert loaded.encode(SAMPLE) == ours.encode(SAMPLE)
    assert isinstance(load_tokenizer(tmp_path), BPETokenizer)


# ---------------------------------------------------------------- the pre-tokenizer


@st.composite
def assigned_text(draw):
    """Text of characters this Python's Unicode version has assigned (newer ones may differ from `regex`)."""
    chars = st.characters(blacklist_categories=("Cs", "Cn"))
    pieces = st.one_of(st.text(chars, max_size=8), st.sampled_from([" ", "  ", "\n", "\t", "'s", "'ll", "12", "²"]))
    return "".join(draw(st.lists(pieces, max_size=12)))


@requires("regex")
@settings(max_examples=200, deadline=None)
@given(assigned_text())
def test_pretokenizer_equals_regex_module(text):
    import regex

    assert pretokenize(text) == regex.findall(GPT2_PATTERN, text)


@requires("regex")
def test_pretokenizer_equals_regex_module_on_sample():
    import regex

    assert pretokenize(SAMPLE) == regex.findall(GPT2_PATTERN, SAMPLE)
    assert pretokenize("x²½Ⅻ 42") == ["x", "²½Ⅻ", " 42"]  # \p{N} holds No and Nl, not only digits


# ---------------------------------------------------------------- round trips and streaming


@settings(max_examples=200, deadline=None)
@given(st.text(), st.booleans())
def test_round_trip_any_text(ours, text, special):
    assert ours.decode(ours.encode(text, special=special)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["ab", " c", "<|end", "oftext|>", EOT, "  ", "\n", "é", "12", "'s", "x"]), max_size=12),
       st.lists(st.integers(0, 40), max_size=4))
def test_encode_chunks_equals_encode(ours, words, cuts):
    text = "".join(words)
    cuts = sorted(min(c, len(text)) for c in cuts)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert [i for ids in ours.encode_chunks(pieces) for i in ids] == ours.encode(text)
    assert [i for ids in ours.encode_chunks(pieces, special=False) for i in ids] == ours.encode(text, special=False)


def test_lone_surrogate_becomes_replacement_character(ours):
    assert ours.encode("a\ud800b") == ours.encode("a\ufffdb")


def test_decode_of_a_cut_character_replaces_it(ours):
    first_byte = ours.token_bytes.index("😀".encode()[:1])
    assert ours.decode_bytes([first_byte]) == b"\xf0" and ours.decode([first_byte]) == "\ufffd"
    assert ours.decode_bytes(ours.encode("😀")) == "😀".encode()


def test_gpt2_byte_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert table[ord("a")] == "a" and all(unicodedata.category(c)[0] != "C" for c in table.values())


# ---------------------------------------------------------------- bad input


def test_train_needs_a_vocabulary_above_the_bytes():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 257"):
        BPETokenizer.train("abc", 256)
    with pytest.raises(TypeError, match="text must be a str"):
        BPETokenizer.train(b"abc", 300)


def test_small_text_gives_a_smaller_vocabulary():
    tok = BPETokenizer.train("abab", 1000)
    assert tok.vocab_size == 256 + 2 + 1 and tok.decode(tok.encode("abab")) == "abab"


def test_decode_rejects_ids_out_of_range(ours):
    with pytest.raises(ValueError, match=r"token ids must be integers in \[0, 700\)"):
        ours.decode([1, 700])
    with pytest.raises(ValueError, match="token ids"):
        ours.decode([-1])


def test_missing_files_name_the_file(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(ValueError, match=r"merges\.txt is missing"):
        BPETokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(ValueError, match=r"vocab\.json is missing"):
        BPETokenizer.from_pretrained(tmp_path)


def test_merges_that_disagree_with_the_vocabulary_name_file_and_token(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    merges = tmp_path / "merges.txt"
    merges.write_text(merges.read_text(encoding="utf-8") + "z Ġ\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt line \d+ .*needs token 'zĠ', which vocab\.json lacks"):
        BPETokenizer.from_pretrained(tmp_path)
    merges.write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt line 2: expected two tokens"):
        BPETokenizer.from_pretrained(tmp_path)


def test_vocabulary_without_every_byte_is_refused(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json lacks 254 of the 256 single-byte tokens"):
        BPETokenizer.from_pretrained(tmp_path)


def test_char_tokenizer_is_exported():
    tok = CharTokenizer.from_text("hello")
    assert tok.decode(tok.encode("hello")) == "hello"


# ---------------------------------------------------------------- the benchmark keeps working


def test_benchmark_runs_tiny():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tokenizer.py"), "--tiny"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| tinygrad_gpt")]
    assert len(rows) == 2 and "NO" not in proc.stdout
