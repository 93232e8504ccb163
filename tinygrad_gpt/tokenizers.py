"""Byte-level BPE, GPT-2's tokenizer: train one on your text, or read GPT-2's `vocab.json` + `merges.txt`.

Text is cut into chunks by GPT-2's pre-tokenizer pattern (`GPT2_PATTERN`: contractions, runs of letters,
of digits, of other symbols, each with an optional leading space, and whitespace), each chunk's UTF-8
bytes start as 256 one-byte tokens, and the learned merges join adjacent pairs, lowest rank first,
until none applies. `<|endoftext|>` is one special token. The files use GPT-2's byte-to-unicode table
(`bytes_to_unicode`), so Hugging Face's `GPT2TokenizerFast` reads what `save_pretrained` writes, and
GPT-2's own files load with `from_pretrained`.

The pattern needs the Unicode classes \\p{L} (letters) and \\p{N} (numbers), which Python's `re` lacks.
They are built once, on first use (about 0.1 s), from `unicodedata` (categories L* and N*), and `\\s`
is Unicode's White_Space property (what `regex`, tiktoken and Hugging Face `tokenizers` use; Python's
own `\\s` also matches the separators U+001C..U+001F). So the only dependency stays the standard
library, and chunks equal those of tiktoken and `tokenizers` except for characters assigned after
this Python's Unicode version (`unicodedata.unidata_version`; each of those libraries carries its own).

Text that is not valid Unicode (a `str` holding a lone surrogate, which UTF-8 cannot encode) is
encoded with each lone surrogate replaced by U+FFFD, as tiktoken does; every other text round-trips
exactly: `decode(encode(text)) == text`. `decode` of an arbitrary id sequence may cut a character's
bytes apart; those bytes decode to U+FFFD (`errors="replace"`, as tiktoken and Hugging Face do), and
`decode_bytes` gives the raw bytes.

References: GPT-2's encoder.py (Radford et al. 2019), Sennrich et al. 2016 (BPE), Karpathy's minbpe.
"""

from __future__ import annotations

import functools
import heapq
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MERGES_HEADER = "#version: 0.2"
# Unicode's White_Space property (PropList.txt; unchanged since Unicode 6.3)
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]  # fmt: skip
_CACHE_LIMIT = 200_000  # chunks remembered by encode (their ids), cleared when full
_LONG_CHUNK = 64  # bytes above which a chunk is merged with a heap (the simple loop is quadratic)


# ---------------------------------------------------------------- tables


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte -> a printable character (printable bytes map to themselves).

    The 188 printable Latin-1 bytes keep their character; the other 68 (controls, space, ...) become
    U+0100 onwards, in byte order. Token strings in vocab.json and merges.txt are written in these.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def _byte_order() -> list[int]:
    """Bytes in GPT-2's id order (ids 0..255): sorted by their table character."""
    table = bytes_to_unicode()
    return sorted(range(256), key=lambda b: table[b])


def _class_of(predicate) -> str:
    """A `re` character-class body (ranges, no brackets) of the code points where predicate(category) holds."""
    parts, start = [], None
    for code in range(0x110001):
        inside = code < 0x110000 and predicate(unicodedata.category(chr(code)))
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            parts.append((start, code - 1))
            start = None
    return _ranges(parts)


def _ranges(pairs) -> str:
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in pairs)


@functools.cache
def pretokenizer() -> re.Pattern:
    """GPT2_PATTERN compiled for Python's `re`, with \\p{L}, \\p{N} and \\s spelled out (built once)."""
    letters = _class_of(lambda cat: cat[0] == "L")
    numbers = _class_of(lambda cat: cat[0] == "N")
    space = _ranges(_WHITE_SPACE)
    pattern = (
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+"""
        rf"""|[{space}]+(?![^{space}])|[{space}]+"""
    )
    return re.compile(pattern)


def pretokenize(text: str) -> list[str]:
    """The chunks GPT-2's pattern cuts `text` into (merges never cross them); they concatenate to `text`."""
    return pretokenizer().findall(text)


# ---------------------------------------------------------------- training


def _pair_counts(words: list[list[int]], freqs: list[int]) -> tuple[dict, dict]:
    """(pair -> count weighted by word frequency, pair -> set of indices of the words holding it)."""
    counts, where = {}, {}
    for i, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(i)
    return counts, where


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    """word with every (a, b), left to right without overlaps, replaced by new."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _apply_merge(words, freqs, counts, where, pair, new) -> set:
    """Merge `pair` into `new` in every word holding it, updating counts and where; returns the pairs that grew."""
    a, b = pair
    grown = set()
    for i in where.pop(pair):
        word, freq = words[i], freqs[i]
        merged = _merge_word(word, a, b, new)
        if len(merged) == len(word):  # a stale index: an earlier merge already took this word's pair
            continue
        for p in zip(word, word[1:]):
            counts[p] -= freq
        for p in zip(merged, merged[1:]):
            counts[p] = counts.get(p, 0) + freq
            if new in p:
                where.setdefault(p, set()).add(i)
                grown.add(p)
        words[i] = merged
    counts.pop(pair, None)
    return grown


def _learn_merges(words, freqs, n_tokens: int, token_bytes: list[bytes]) -> list[tuple[int, int, int]]:
    """Greedy BPE: merge the most frequent pair (ties: the smallest ids) until `token_bytes` holds n_tokens.

    A max-heap of (count, pair) is updated lazily: an entry whose count is stale is pushed back with the
    current count when it reaches the top. A merge whose bytes equal an existing token reuses its id
    (as Hugging Face's trainer does), so ids stay one per byte string.

    Returns:
        [(a, b, new_id), ...] in merge order; token_bytes is extended in place.
    """
    counts, where = _pair_counts(words, freqs)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    index = {tb: i for i, tb in enumerate(token_bytes)}
    merges = []
    while len(token_bytes) < n_tokens and heap:
        neg, a, b = heapq.heappop(heap)
        count = counts.get((a, b), 0)
        if count != -neg:  # stale: push back with today's count (counts of old pairs only fall)
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue
        merged_bytes = token_bytes[a] + token_bytes[b]
        new = index.get(merged_bytes)
        if new is None:
            new = index[merged_bytes] = len(token_bytes)
            token_bytes.append(merged_bytes)
        merges.append((a, b, new))
        for p in _apply_merge(words, freqs, counts, where, (a, b), new):
            heapq.heappush(heap, (-counts[p], *p))
    return merges


# ---------------------------------------------------------------- the tokenizer


class BPETokenizer:
    """GPT-2's byte-level BPE: text <-> integer ids, with the special token <|endoftext|>."""

    def __init__(self, token_bytes: list[bytes], merges: list[tuple[int, int, int]], eot_id: int):
        """Build from raw tables (use `train` or `from_pretrained` instead).

        Args:
            token_bytes: id -> the token's bytes, for every id but eot_id (whose entry is ignored);
                the 256 single bytes must all be present.
            merges: (a, b, new_id) in rank order: adjacent a, b become new_id.
            eot_id: the id of <|endoftext|>.
        """
        self.token_bytes = list(token_bytes)
        self.merges = [tuple(m) for m in merges]
        self.eot_id = eot_id
        if not 0 <= eot_id < len(self.token_bytes):
            raise ValueError(f"BPETokenizer: eot_id {eot_id} is not an id of the {len(self.token_bytes)} tokens")
        byte_ids = {tb[0]: i for i, tb in enumerate(self.token_bytes) if len(tb) == 1 and i != eot_id}
        if len(byte_ids) != 256:
            raise ValueError(f"BPETokenizer: the vocabulary holds {len(byte_ids)} of the 256 single-byte tokens")
        self._byte_ids = [byte_ids[b] for b in range(256)]
        self._ranks = {(a, b): rank for rank, (a, b, _) in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    eot_token = EOT

    # ------------------------------------------------------------ building

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn a vocabulary of `vocab_size` tokens from `text` (a classmethod).

        Ids 0..255 are the single bytes in GPT-2's order, merges follow from 256 in the order learned,
        and <|endoftext|> is the last id (vocab_size - 1), as in GPT-2. Occurrences of <|endoftext|>
        in `text` separate documents and are not learned from. When `text` runs out of pairs first,
        the vocabulary is smaller (see `vocab_size`).

        Args:
            text: the training text.
            vocab_size: the number of tokens wanted, at least 257 (256 bytes + <|endoftext|>).
        Returns:
            a BPETokenizer.
        """
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 257:
            raise ValueError(f"BPETokenizer.train: vocab_size must be an integer >= 257 (256 bytes + {EOT}), "
                             f"got {vocab_size!r}")
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.train: text must be a str, got {type(text).__name__}")
        chunks = Counter()
        for document in text.split(EOT):
            chunks.update(pretokenize(document))
        order = _byte_order()
        byte_ids = {b: i for i, b in enumerate(order)}
        words = [[byte_ids[b] for b in _utf8(chunk)] for chunk in chunks]
        freqs = list(chunks.values())
        token_bytes = [bytes([b]) for b in order]
        merges = _learn_merges(words, freqs, vocab_size - 1, token_bytes)
        return cls(token_bytes + [EOT.encode()], merges, eot_id=len(token_bytes))

    @classmethod
    def from_pretrained(cls, path) -> BPETokenizer:
        """Read `vocab.json` + `merges.txt` (GPT-2's files, or `save_pretrained`'s, or Hugging Face's) from a directory.

        Raises:
            ValueError naming the file and the token or line when they are missing or disagree.
        """
        return cls(*read_vocab_merges(Path(path)))

    def save_pretrained(self, path) -> None:
        """Write vocab.json, merges.txt and tokenizer_config.json into directory `path` (created if needed).

        Hugging Face's `GPT2TokenizerFast.from_pretrained(path)` reads them and gives the same ids.
        """
        write_vocab_merges(self, Path(path))

    # ------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Number of ids (merges + 256 bytes + <|endoftext|>); ids are 0 .. vocab_size - 1."""
        return len(self.token_bytes)

    @property
    def dtype(self):
        """The smallest unsigned dtype that holds every id: uint16, or uint32 for vocabularies over 65,536."""
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, eot_id={self.eot_id})"

    # ------------------------------------------------------------ encoding

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Text -> token ids.

        Args:
            text: any str (lone surrogates become U+FFFD, see the module docstring).
            special: when True, "<|endoftext|>" in the text is the special token eot_id (as Hugging
                Face's GPT2TokenizerFast does); when False it is ordinary text (tiktoken's encode_ordinary).
        Returns:
            list of int ids.
        """
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.encode: text must be a str, got {type(text).__name__}")
        if not special or EOT not in text:
            return self._encode_ordinary(text)
        ids = []
        for i, document in enumerate(text.split(EOT)):
            if i:
                ids.append(self.eot_id)
            ids += self._encode_ordinary(document)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._encode_pieces(pretokenizer().findall(text))

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        ids, cache = [], self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for piece in pieces:
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = cache[piece] = self._bpe(_utf8(piece))
            ids += piece_ids
        return ids

    def _bpe(self, data: bytes) -> list[int]:
        """One chunk's bytes -> ids: apply the lowest-ranked merge present until none is."""
        ids = [self._byte_ids[b] for b in data]
        if len(ids) > _LONG_CHUNK:
            return self._bpe_long(ids)
        ranks, never = self._ranks, len(self.merges)
        while len(ids) > 1:
            rank = min(ranks.get(pair, never) for pair in zip(ids, ids[1:]))
            if rank == never:
                break
            a, b, new = self.merges[rank]
            ids = _merge_word(ids, a, b, new)
        return ids

    def _bpe_long(self, ids: list[int]) -> list[int]:
        """`_bpe` in O(n log n) for long chunks (text without spaces, such as Chinese): the symbols in a
        linked list, candidate merges in a heap of (rank, position), stale entries skipped when popped."""
        n, ranks = len(ids), self._ranks
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap = [(ranks[pair], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in ranks]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] < 0 or j >= n or ranks.get((ids[i], ids[j])) != rank:
                continue  # i was merged away, or its pair changed since this entry was pushed
            ids[i], ids[j] = self.merges[rank][2], -1  # -1 marks a symbol merged into its left neighbour
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            for left in (prv[i], i):  # the two pairs the new symbol is part of
                if left >= 0 and nxt[left] < n and (r := ranks.get((ids[left], ids[nxt[left]]))) is not None:
                    heapq.heappush(heap, (r, left))
        return [t for t in ids if t >= 0]

    def encode_chunks(self, texts: Iterable[str], special: bool = True) -> Iterator[list[int]]:
        """Encode a text given in pieces (e.g. a file read 1 MB at a time) exactly as the whole text.

        A piece may end inside a word or inside "<|endoftext|>": its unfinished end is carried over
        to the next piece. Yields lists of ids whose concatenation equals `encode("".join(texts))`.
        """
        carry = ""
        for piece in texts:
            text = carry + piece
            hold = _eot_start_len(text) if special else 0  # a trailing beginning of "<|endoftext|>"
            head, carry = text[: len(text) - hold], text[len(text) - hold :]
            ids = []
            if special and EOT in head:
                done, _, head = head.rpartition(EOT)
                ids = self.encode(done, special) + [self.eot_id]
            chunks = pretokenizer().findall(head)
            if chunks:  # the last chunk may grow with the next piece
                carry = chunks.pop() + carry
            yield ids + self._encode_pieces(chunks)
        if carry:
            yield self.encode(carry, special)

    # ------------------------------------------------------------ decoding

    def decode_bytes(self, ids) -> bytes:
        """Token ids (list or integer array) -> the raw bytes they stand for."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)] if not isinstance(ids, list) else ids
        token_bytes, n = self.token_bytes, len(self.token_bytes)
        try:
            if any(i < 0 for i in ids):
                raise IndexError
            return b"".join([token_bytes[i] for i in ids])
        except (IndexError, TypeError):
            bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= i < n]
            raise ValueError(f"token ids must be integers in [0, {n}), got {bad[:5]}") from None

    def decode(self, ids) -> str:
        """Token ids -> text; bytes that are not valid UTF-8 (a character cut apart) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: replaced by U+FFFD, as tiktoken does
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def _eot_start_len(text: str) -> int:
    """Length of the longest proper beginning of "<|endoftext|>" that `text` ends with (0 if none)."""
    for k in range(min(len(EOT) - 1, len(text)), 0, -1):
        if text.endswith(EOT[:k]):
            return k
    return 0


# ---------------------------------------------------------------- GPT-2's files


def token_string(data: bytes) -> str:
    """A token's bytes as written in vocab.json / merges.txt (GPT-2's byte-to-unicode characters)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def read_json_object(path: Path, missing_hint: str = "") -> dict:
    """The JSON object in `path`, or ValueError naming the file: missing, unreadable, or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing{missing_hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return value


def _read_json_vocab(path: Path) -> dict:
    vocab = read_json_object(path, " (a BPE tokenizer needs vocab.json and merges.txt)")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise ValueError(f"{path} must be a JSON object mapping token strings to integer ids")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{path}: the ids must be 0 .. {len(vocab) - 1}, each once")
    return vocab


def read_vocab_merges(path: Path) -> tuple[list[bytes], list[tuple[int, int, int]], int]:
    """(token_bytes, merges, eot_id) from path/vocab.json and path/merges.txt; see BPETokenizer.from_pretrained.

    <|endoftext|> keeps its id when vocab.json has it, else it gets the next id (as Hugging Face adds it).
    """
    vocab_path, merges_path = path / "vocab.json", path / "merges.txt"
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (a BPE tokenizer directory holds vocab.json and merges.txt)")
    vocab = _read_json_vocab(vocab_path)
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    token_bytes = [b""] * len(vocab)
    for token, i in vocab.items():
        if token == EOT:
            token_bytes[i] = EOT.encode()
        elif all(c in decoder for c in token) and token:
            token_bytes[i] = bytes(decoder[c] for c in token)
        else:
            raise ValueError(f"{vocab_path}: token {token!r} (id {i}) is not written in GPT-2's byte-level characters")
    missing = set(range(256)) - {tb[0] for i, tb in enumerate(token_bytes) if len(tb) == 1}
    if missing:
        raise ValueError(f"{vocab_path} lacks {len(missing)} of the 256 single-byte tokens, e.g. "
                         f"{token_string(bytes([min(missing)]))!r}")
    eot_id = vocab.get(EOT, len(vocab))
    if eot_id == len(vocab):
        token_bytes.append(EOT.encode())
    return token_bytes, _read_merges(merges_path, vocab), eot_id


def _read_merges(path: Path, vocab: dict) -> list[tuple[int, int, int]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise ValueError(f"{path} is missing (a BPE tokenizer needs vocab.json and merges.txt)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path} line {number}: expected two tokens separated by one space, got {line!r}")
        for token in (*parts, parts[0] + parts[1]):
            if token not in vocab:
                raise ValueError(f"{path} line {number} ({line!r}) needs token {token!r}, which vocab.json lacks")
        merges.append((vocab[parts[0]], vocab[parts[1]], vocab[parts[0] + parts[1]]))
    return merges


def tokenizer_files(tokenizer: BPETokenizer) -> dict[str, bytes]:
    """The contents of tokenizer's vocab.json, merges.txt and tokenizer_config.json, by file name."""
    vocab = {EOT if i == tokenizer.eot_id else token_string(tb): i for i, tb in enumerate(tokenizer.token_bytes)}
    lines = [MERGES_HEADER] + [f"{token_string(tokenizer.token_bytes[a])} {token_string(tokenizer.token_bytes[b])}"
                               for a, b, _ in tokenizer.merges]
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
              "add_prefix_space": False, "errors": "replace"}
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "\n".join(lines) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=1),
    }
    return {name: text.encode("utf-8") for name, text in files.items()}


def write_vocab_merges(tokenizer: BPETokenizer, path: Path) -> None:
    """Write tokenizer's vocab.json, merges.txt and tokenizer_config.json into directory `path`."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in tokenizer_files(tokenizer).items():
        (path / name).write_bytes(data)
