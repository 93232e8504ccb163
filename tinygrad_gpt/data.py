"""Training text: the corpora, a character tokenizer, token files on disk and seeded batches.

- `load_corpus("pydoc")` is the default: the text of Python's own documentation, which every Python
  install carries in `pydoc_data.topics` (about 465 kB), so training works offline out of the box.
- `load_corpus("shakespeare")` downloads Tiny Shakespeare once into a cache directory and checks its sha256.
- `load_corpus(path)` reads a UTF-8 text file, or every .txt file in a directory (sorted by name).

`build_dataset` settles the tokenizer (the text's characters, a byte-level BPE trained on the training
split with `bpe_vocab_size`, or a checkpoint's) and `prepare_tokens` streams the text into `train.bin`
(the first 90% of its characters) and `val.bin` (the last 10%, the same text whatever the tokenizer),
uint16 (uint32 for vocabularies over 65,536 tokens), read back as memory maps so that large corpora
need not fit in RAM. This is a host-only module: it reads and writes files with NumPy.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygrad_gpt.tokenizers import BPETokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
DEFAULT_CORPUS = "pydoc"
NAMED_CORPORA = ("pydoc", "shakespeare")
VAL_FRACTION = 0.1
DATA_LIMIT = 16 << 30  # bytes of training text (its tokens go to memory-mapped files, not RAM)
_CHUNK = 1 << 20  # characters (or bytes) read at a time


class DataError(ValueError):
    """The training text cannot be used: missing, empty, not UTF-8, too short or not downloadable."""


# ---------------------------------------------------------------- corpora


@dataclass
class Corpus:
    """A training text: a name for messages, and either in-memory text or files read in chunks."""

    name: str
    text: str | None = None
    files: list = field(default_factory=list)

    def chunks(self) -> Iterator[str]:
        """The text, piece by piece (each file's pieces in turn, files separated by a newline)."""
        if self.text is not None:
            for start in range(0, len(self.text), _CHUNK):
                yield self.text[start : start + _CHUNK]
            return
        for i, path in enumerate(self.files):
            if i > 0:
                yield "\n"
            yield from _read_utf8(path)


def _read_utf8(path: Path) -> Iterator[str]:
    """Decode a file as UTF-8 in chunks; a bad byte is a DataError naming the file and offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(_CHUNK)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {offset + e.start})") from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def pydoc_text() -> str:
    """The default corpus: Python's documentation topics from the standard library, in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def default_cache_dir() -> Path:
    """$TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else ~/.cache/tinygrad_gpt."""
    if os.environ.get("TINYGRAD_GPT_CACHE"):
        return Path(os.environ["TINYGRAD_GPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinygrad_gpt"


def load_corpus(spec: str, cache_dir=None) -> Corpus:
    """The corpus named by `spec`.

    Args:
        spec: "pydoc" (default corpus), "shakespeare" (downloaded once), a text file, or a
            directory of .txt files.
        cache_dir: where downloads are kept (default `default_cache_dir()`).
    Raises:
        DataError: the path does not exist, a directory has no .txt files, or a download failed.
    """
    if spec in ("", DEFAULT_CORPUS):
        return Corpus("pydoc_data.topics (Python's documentation)", text=pydoc_text())
    if spec == "shakespeare":
        path = fetch_shakespeare(cache_dir)
        return Corpus(f"Tiny Shakespeare ({path})", files=[path])
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise DataError(f"data directory {path} has no .txt files")
        _check_size(files, f"data directory {path}")
        return Corpus(f"{path} ({len(files)} .txt files)", files=files)
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist (use a text file, a directory of .txt files, 'pydoc' or 'shakespeare')"
        )
    if not path.is_file():
        raise DataError(f"data path {path} is not a regular file or directory")
    _check_size([path], f"data file {path}")
    return Corpus(str(path), files=[path])


def _check_size(files: list, what: str) -> None:
    total = sum(p.stat().st_size for p in files)
    if total > DATA_LIMIT:
        raise DataError(f"{what} holds {total:,} bytes, more than the limit of {DATA_LIMIT:,} bytes (16 GiB)")


# ---------------------------------------------------------------- download


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch_shakespeare(cache_dir=None) -> Path:
    """Tiny Shakespeare's path in the cache, downloading and checking it on first use.

    The URL can be changed with $TINYGRAD_GPT_SHAKESPEARE_URL (a mirror, or the tests' local server).
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = cache_dir / SHAKESPEARE_FILE
    if path.is_file() and sha256_of(path) == SHAKESPEARE_SHA256:
        return path
    url = os.environ.get("TINYGRAD_GPT_SHAKESPEARE_URL") or SHAKESPEARE_URL
    download(url, path, SHAKESPEARE_SHA256)
    return path


def download(url: str, path, sha256: str, timeout: float = 30.0) -> None:
    """Download `url` to `path` if its sha256 matches; nothing is left at `path` otherwise.

    Raises:
        DataError: unreachable URL (with what to do offline) or a wrong checksum.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            for block in iter(lambda: response.read(1 << 16), b""):
                h.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != sha256:
            raise DataError(
                f"download from {url} is corrupted (sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...); "
                "nothing was cached, try again"
            )
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # HTTPException: a cut-short body
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"cannot download {url} ({reason}); if offline, copy the file by hand to {path} "
            "or train on a local file with --data PATH"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- tokenizer


class CharTokenizer:
    """Characters <-> integer ids; the vocabulary is the set of characters of the training text."""

    def __init__(self, chars):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or not all(isinstance(c, str) and len(c) == 1 for c in self.chars):
            raise ValueError("a character vocabulary must be distinct single characters")
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._order = np.argsort(codes, kind="stable")  # sorted position -> id
        self._sorted_codes = codes[self._order]
        self._codes = codes.astype(np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def dtype(self):
        """The smallest unsigned dtype that holds every id: uint16, or uint32 for huge vocabularies."""
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def unknown_chars(self, text: str) -> list:
        """The distinct characters of `text` not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def extended(self, text_chars) -> CharTokenizer:
        """This vocabulary with the new characters among `text_chars` appended (ids of old ones unchanged)."""
        return CharTokenizer(self.chars + sorted(set(text_chars) - set(self.chars)))

    def encode(self, text: str) -> np.ndarray:
        """Args: text. Returns: int64 ids (len(text),). Raises ValueError naming unknown characters."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
        pos = np.searchsorted(self._sorted_codes, codes).clip(0, max(self.vocab_size - 1, 0))
        if self.vocab_size == 0 or not np.array_equal(self._sorted_codes[pos], codes):
            raise ValueError(f"characters not in the vocabulary: {format_chars(self.unknown_chars(text))}")
        return self._order[pos]

    def decode(self, ids) -> str:
        """Args: ids, an integer array or list (n,). Returns: the text."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


Tokenizer = CharTokenizer | BPETokenizer  # what a run's text is encoded with


def format_chars(chars, limit: int = 20) -> str:
    """A readable list of characters for error messages: 'é', '\\t', ... (at most `limit`)."""
    shown = ", ".join(repr(c) for c in list(chars)[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


# ---------------------------------------------------------------- token files


def scan_corpus(corpus: Corpus) -> tuple[int, set]:
    """(number of characters, set of characters) of a corpus, in one streaming pass."""
    n, chars = 0, set()
    for chunk in corpus.chunks():
        n += len(chunk)
        chars.update(chunk)
    return n, chars


def split_chunks(corpus: Corpus, start: int, stop: int) -> Iterator[str]:
    """The corpus's characters [start, stop), in chunks (one streaming pass)."""
    pos = 0
    for chunk in corpus.chunks():
        lo, hi = max(start - pos, 0), min(stop - pos, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        pos += len(chunk)
        if pos >= stop:
            return


def encode_stream(tokenizer: Tokenizer, chunks: Iterable[str]) -> Iterator[np.ndarray]:
    """Token ids (arrays of `tokenizer.dtype`) of a text given in chunks, as if it were encoded whole.

    A BPE merges across the chunks' boundaries (`BPETokenizer.encode_chunks`); characters never do.
    """
    if isinstance(tokenizer, BPETokenizer):
        for ids in tokenizer.encode_chunks(chunks):
            yield np.asarray(ids, dtype=tokenizer.dtype)
    else:
        for chunk in chunks:
            yield tokenizer.encode(chunk).astype(tokenizer.dtype)


def _too_short(corpus: Corpus, n: int, block_size: int, unit: str) -> DataError:
    need = int(np.ceil((block_size + 1) / VAL_FRACTION))
    return DataError(
        f"{corpus.name} has {n} {unit}, too short for block_size {block_size}: the 10% validation split needs "
        f"at least {block_size + 1} (a text of {need}+ {unit}), or use a smaller --block_size"
    )


def prepare_tokens(corpus: Corpus, out_dir, tokenizer: Tokenizer, n_chars: int, min_split: int) -> dict:
    """Encode `corpus` into out_dir/train.bin (its first 90% of characters) and out_dir/val.bin (the last 10%).

    The validation text is the same characters whatever the tokenizer, so bits per byte compare.

    Args:
        corpus: the text.
        tokenizer: a CharTokenizer covering every character of the corpus, or a BPETokenizer.
        n_chars: the corpus length (from `scan_corpus`).
        min_split: the fewest tokens each split needs (block_size + 1).
    Returns:
        {"train": memmap, "val": memmap} of dtype `tokenizer.dtype`.
    Raises:
        DataError: when a split would be shorter than `min_split` (nothing is written then).
    """
    n_val = int(n_chars * VAL_FRACTION)
    n_train = n_chars - n_val
    if n_val < min_split:  # a character is at least one token
        raise _too_short(corpus, n_chars, min_split - 1, "characters")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.bin", "val": out_dir / "val.bin"}
    tmps = {k: p.with_name(f".{p.name}.{os.getpid()}.tmp") for k, p in paths.items()}  # ranks may write at once
    ranges = {"train": (0, n_train), "val": (n_train, n_chars)}
    try:
        for split, (start, stop) in ranges.items():
            with open(tmps[split], "wb") as f:
                for ids in encode_stream(tokenizer, split_chunks(corpus, start, stop)):
                    f.write(ids.tobytes())
        n_val_tokens = tmps["val"].stat().st_size // np.dtype(tokenizer.dtype).itemsize
        if n_val_tokens < min_split:  # a BPE packs several characters into a token
            raise _too_short(corpus, n_chars, min_split - 1, f"characters ({n_val_tokens} BPE tokens of validation)")
        for k in paths:
            os.replace(tmps[k], paths[k])
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return {k: np.memmap(p, dtype=tokenizer.dtype, mode="r") for k, p in paths.items()}


def train_bpe(corpus: Corpus, n_chars: int, vocab_size: int) -> BPETokenizer:
    """A BPETokenizer of `vocab_size` tokens learned from the corpus's training split (its first 90% of characters).

    The text runs out of pairs to merge before a large vocabulary is full: the tokenizer is smaller then.
    """
    n_train = n_chars - int(n_chars * VAL_FRACTION)
    return BPETokenizer.train("".join(split_chunks(corpus, 0, n_train)), vocab_size)


def text_bytes(tokenizer: Tokenizer, tokens: np.ndarray) -> int:
    """The UTF-8 bytes of the text that `tokens` stand for (len(decode_bytes(tokens)) for a BPE), without decoding.

    Streams through the tokens, so a memory-mapped split of any length stays out of memory.
    """
    if isinstance(tokenizer, BPETokenizer):
        lengths = [len(b) for b in tokenizer.token_bytes]
    else:
        lengths = [len(c.encode("utf-8", "surrogatepass")) for c in tokenizer.chars]
    lengths = np.array(lengths, dtype=np.int64)
    return int(sum(lengths[tokens[i : i + _CHUNK]].sum() for i in range(0, len(tokens), _CHUNK)))


def encode_ids(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """The ids of `text` as a host int64 array (T,), whichever the tokenizer."""
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """'bpe' or 'char': what a checkpoint's meta.json records."""
    return "bpe" if isinstance(tokenizer, BPETokenizer) else "char"


def build_dataset(
    corpus: Corpus, out_dir, block_size: int, tokenizer: Tokenizer | None = None, allow_new_chars: bool = False,
    bpe_vocab_size: int | None = None,
) -> tuple[Tokenizer, dict]:  # fmt: skip
    """Check a corpus, settle its tokenizer and write its token files.

    Args:
        corpus: the text.
        out_dir: where train.bin and val.bin go.
        block_size: the context length; each split needs block_size + 1 tokens.
        tokenizer: an existing tokenizer (a checkpoint's), or None to make one from the text.
        allow_new_chars: with a CharTokenizer, append characters it lacks (fine-tuning) instead of failing.
        bpe_vocab_size: without a tokenizer, train a BPE of this many tokens on the training split
            instead of taking the text's characters.
    Returns:
        (tokenizer, {"train": memmap, "val": memmap}).
    Raises:
        DataError: empty text, characters outside the given vocabulary, or too short for block_size.
    """
    n_chars, chars = scan_corpus(corpus)
    if n_chars == 0:
        raise DataError(f"{corpus.name} is empty")
    if tokenizer is None and bpe_vocab_size is not None:
        if int(n_chars * VAL_FRACTION) < block_size + 1:  # before the (slower) training
            raise _too_short(corpus, n_chars, block_size, "characters")
        tokenizer = train_bpe(corpus, n_chars, bpe_vocab_size)
    elif tokenizer is None:
        tokenizer = CharTokenizer(sorted(chars))
    elif isinstance(tokenizer, CharTokenizer) and (unknown := sorted(chars - set(tokenizer.chars))):
        if not allow_new_chars:
            raise DataError(f"{corpus.name} has characters not in the checkpoint's vocabulary: {format_chars(unknown)}")
        tokenizer = tokenizer.extended(chars)
    return tokenizer, prepare_tokens(corpus, out_dir, tokenizer, n_chars, block_size + 1)


def load_token_files(out_dir, tokenizer: CharTokenizer) -> dict:
    """The token files a run wrote into out_dir (train.bin, val.bin), checked against the vocabulary.

    Returns:
        {"train": memmap, "val": memmap} of dtype `tokenizer.dtype`.
    Raises:
        DataError: a file is missing, not a whole number of tokens, or holds an id outside the vocabulary.
    """
    splits, itemsize = {}, np.dtype(tokenizer.dtype).itemsize
    for split in ("train", "val"):
        path = Path(out_dir) / f"{split}.bin"
        if not path.is_file():
            raise DataError(f"{path} is missing")
        size = path.stat().st_size
        if size == 0 or size % itemsize:
            raise DataError(f"{path} has {size} bytes, not a whole number of {itemsize}-byte tokens")
        tokens = np.memmap(path, dtype=tokenizer.dtype, mode="r")
        if int(tokens.max()) >= tokenizer.vocab_size:
            raise DataError(
                f"{path} holds token id {int(tokens.max())}, outside the checkpoint's vocabulary of "
                f"{tokenizer.vocab_size} characters (it belongs to another run)"
            )
        splits[split] = tokens
    return splits


# ---------------------------------------------------------------- batches


class BatchSampler:
    """Random (B, T) windows of a token array, drawn by its own seeded generator (saved for exact resume)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed):
        if len(tokens) < block_size + 1:
            raise DataError(f"{len(tokens)} tokens are too few for block_size {block_size}")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.rng = np.random.default_rng(seed)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns: inputs x (B, T) and targets y (B, T), int64, y shifted one position after x."""
        T = self.block_size
        starts = self.rng.integers(0, len(self.tokens) - T, size=self.batch_size)
        windows = np.asarray(self.tokens[starts[:, None] + np.arange(T + 1)], dtype=np.int64)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def get_state(self) -> dict:
        """The generator's state, JSON-friendly."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def fixed_windows(tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int) -> list:
    """The same evaluation batches every time: n_batches * batch_size windows evenly spaced over `tokens`.

    No generator is involved, so every evaluation of a run (and of any run with these sizes on this
    text, whatever its seed or framework) sees the same windows.

    Returns:
        A list of n_batches (x, y) pairs of int64 arrays (batch_size, block_size), y shifted one after x.
    """
    T, count = block_size, n_batches * batch_size
    if len(tokens) < T + 1:
        raise DataError(f"{len(tokens)} tokens are too few for block_size {block_size}")
    starts = np.linspace(0, len(tokens) - T - 1, count).round().astype(np.int64)  # (count,)
    windows = np.asarray(tokens[starts[:, None] + np.arange(T + 1)], dtype=np.int64)  # (count, T + 1)
    windows = windows.reshape(n_batches, batch_size, T + 1)
    return [(w[:, :-1], w[:, 1:]) for w in windows]
