"""Corpora, the character tokenizer, token files, seeded batches and the checked download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygrad_gpt import data
from tinygrad_gpt.data import BatchSampler, CharTokenizer, DataError

# ---------------------------------------------------------------- tokenizer


@given(st.text(min_size=0, max_size=200))
def test_encode_decode_round_trip_exactly(text):
    tokenizer = CharTokenizer.from_text(text + "a")
    ids = tokenizer.encode(text)
    assert ids.shape == (len(text),)
    assert tokenizer.decode(ids) == text
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) < tokenizer.vocab_size


def test_vocabulary_is_sorted_and_ids_follow_it():
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.chars == sorted(set("hello world"))
    assert list(tokenizer.encode("dehlorw ")) == [1, 2, 3, 4, 5, 6, 7, 0]


def test_unknown_characters_are_named():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'x'.*'é'|'é'.*'x'"):
        tokenizer.encode("abxé")
    assert tokenizer.unknown_chars("abxé") == ["x", "é"]


def test_extended_vocabulary_keeps_the_old_ids():
    old = CharTokenizer.from_text("hello")
    new = old.extended("help me!")
    assert new.chars[: old.vocab_size] == old.chars
    assert set(new.chars) == set("hello") | set("help me!")
    np.testing.assert_array_equal(new.encode("hello"), old.encode("hello"))
    assert new.decode(new.encode("help me!")) == "help me!"


def test_huge_vocabularies_use_uint32():
    small = CharTokenizer.from_text("abc")
    huge = CharTokenizer([chr(c) for c in range(0xE000, 0xE000 + 70_000)])  # past 65,536, no surrogates
    assert small.dtype == np.uint16 and huge.dtype == np.uint32
    text = chr(0xE000 + 69_999) + chr(0xE000)
    assert list(huge.encode(text)) == [69_999, 0] and huge.decode(huge.encode(text)) == text


# ---------------------------------------------------------------- corpora and token files


def test_default_corpus_is_pythons_documentation():
    from pydoc_data.topics import topics

    corpus = data.load_corpus("pydoc")
    assert 400_000 < len(corpus.text) < 600_000
    assert all(topic.strip() in corpus.text for topic in topics.values())
    assert data.load_corpus("pydoc").text == corpus.text  # same text (and order) every time


def test_token_files_hold_the_text_split_90_10(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000)) + "é\n"
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    tokenizer, splits = data.build_dataset(data.load_corpus(str(tmp_path / "in.txt")), tmp_path / "out", 8)
    assert splits["train"].dtype == np.uint16 and isinstance(splits["train"], np.memmap)
    n_val = int(len(text) * 0.1)
    assert len(splits["val"]) == n_val and len(splits["train"]) == len(text) - n_val
    assert tokenizer.decode(np.concatenate([splits["train"], splits["val"]])) == text
    assert (tmp_path / "out" / "train.bin").stat().st_size == 2 * (len(text) - n_val)


def test_a_directory_is_its_txt_files_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("second " * 30)
    (tmp_path / "a.txt").write_text("first " * 30)
    (tmp_path / "c.md").write_text("ignored")
    corpus = data.load_corpus(str(tmp_path))
    assert "".join(corpus.chunks()) == "first " * 30 + "\n" + "second " * 30


def test_text_larger_than_a_chunk_streams_correctly(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK", 7)  # many chunks, some splitting a multi-byte character
    text = "ünïcödé text, " * 20
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    tokenizer, splits = data.build_dataset(data.load_corpus(str(tmp_path / "in.txt")), tmp_path, 4)
    assert tokenizer.decode(np.concatenate([splits["train"], splits["val"]])) == text


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"good text \xff\xfe bad", r"not UTF-8 text \(invalid byte at offset 10\)"),
        (b"short", "too short"),
    ],
)
def test_unusable_text_is_a_clear_data_error(tmp_path, content, message):
    (tmp_path / "in.txt").write_bytes(content)
    with pytest.raises(DataError, match=message):
        data.build_dataset(data.load_corpus(str(tmp_path / "in.txt")), tmp_path / "out", block_size=8)
    assert not (tmp_path / "out" / "train.bin").exists()


def test_missing_paths_and_empty_directories_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="no .txt files"):
        data.load_corpus(str(tmp_path))


def test_text_outside_a_given_vocabulary_is_refused_unless_extending(tmp_path):
    (tmp_path / "in.txt").write_text("abcabc!" * 20)
    corpus = data.load_corpus(str(tmp_path / "in.txt"))
    with pytest.raises(DataError, match="'!'"):
        data.build_dataset(corpus, tmp_path, 4, CharTokenizer.from_text("abc"))
    tokenizer, _ = data.build_dataset(corpus, tmp_path, 4, CharTokenizer.from_text("abc"), allow_new_chars=True)
    assert tokenizer.chars == ["a", "b", "c", "!"]


# ---------------------------------------------------------------- batches


def test_batches_are_shifted_windows_and_reproducible():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = BatchSampler(tokens, batch_size=5, block_size=8, seed=3).next_batch()
    assert x.shape == y.shape == (5, 8) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # targets are the next tokens
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous windows
    x2, _ = BatchSampler(tokens, 5, 8, seed=3).next_batch()
    x3, _ = BatchSampler(tokens, 5, 8, seed=4).next_batch()
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, x3)


def test_every_window_can_be_drawn_and_none_runs_past_the_end():
    tokens = np.arange(12, dtype=np.uint16)
    sampler = BatchSampler(tokens, batch_size=64, block_size=4, seed=0)
    starts = np.concatenate([sampler.next_batch()[0][:, 0] for _ in range(10)])
    assert set(starts.tolist()) == set(range(12 - 4))  # the last window's target is the last token


def test_sampler_state_restores_the_same_future_batches():
    tokens = np.arange(1000, dtype=np.uint16)
    a = BatchSampler(tokens, 4, 8, seed=[1, 2])
    a.next_batch()
    state = a.get_state()
    expected = [a.next_batch()[0] for _ in range(3)]
    b = BatchSampler(tokens, 4, 8, seed=99)
    b.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(b.next_batch()[0], e)


# ---------------------------------------------------------------- download


class _Server:
    """A local HTTP server on 127.0.0.1 serving one directory, counting requests."""

    def __init__(self, directory):
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "www").mkdir()
    s = _Server(tmp_path / "www")
    yield s
    s.close()


TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


def test_shakespeare_downloads_once_checks_sha256_and_caches(tmp_path, server, monkeypatch):
    (tmp_path / "www" / "input.txt").write_bytes(TEXT)
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(TEXT).hexdigest())
    monkeypatch.setenv("TINYGRAD_GPT_SHAKESPEARE_URL", f"{server.url}/input.txt")
    cache = tmp_path / "cache"
    corpus = data.load_corpus("shakespeare", cache_dir=cache)
    assert "".join(corpus.chunks()).encode() == TEXT
    assert (cache / data.SHAKESPEARE_FILE).read_bytes() == TEXT
    data.load_corpus("shakespeare", cache_dir=cache)
    assert server.requests == 1  # the second use reads the cache
    (cache / data.SHAKESPEARE_FILE).write_bytes(b"tampered")  # a damaged cache is downloaded again
    data.load_corpus("shakespeare", cache_dir=cache)
    assert server.requests == 2 and (cache / data.SHAKESPEARE_FILE).read_bytes() == TEXT


def test_corrupted_download_is_refused_and_not_cached(tmp_path, server, monkeypatch):
    (tmp_path / "www" / "input.txt").write_bytes(TEXT[:-5] + b"XXXXX")
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(TEXT).hexdigest())
    monkeypatch.setenv("TINYGRAD_GPT_SHAKESPEARE_URL", f"{server.url}/input.txt")
    with pytest.raises(DataError, match="corrupted"):
        data.load_corpus("shakespeare", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TINYGRAD_GPT_SHAKESPEARE_URL", f"http://127.0.0.1:{port}/input.txt")
    with pytest.raises(DataError, match="if offline, copy the file by hand to .*tinyshakespeare.txt.*--data PATH"):
        data.load_corpus("shakespeare", cache_dir=tmp_path / "cache")


def test_cache_dir_is_overridable_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "c"))
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TINYGRAD_GPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "tinygrad_gpt"
