"""BPE training time and encoding speed: tinygrad_gpt's BPETokenizer beside Hugging Face `tokenizers` and `tiktoken`.

In one run, on the same text and vocabulary size: training time (ours vs `tokenizers`'
ByteLevelBPETokenizer; tiktoken cannot train), and encoding speed in MB/s of UTF-8 text (ours with
a cold chunk cache and a warm one, `tokenizers`, and a `tiktoken.Encoding` built from our trained
ranks, since GPT-2's own ranks are not downloadable here). Medians of --repeats runs; ratios are
ours / theirs for times and theirs / ours for speeds (above 1: they are faster). It also checks
that the three give the same ids. `tokenizers` and `tiktoken` are optional: a missing one is a
row of "n/a".

    python benchmarks/bench_tokenizer.py --data ../shared/data/tinyshakespeare.txt --vocab_size 4096
    python benchmarks/bench_tokenizer.py --tiny        # seconds, for CI
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_gpt.data import pydoc_text  # noqa: E402
from tinygrad_gpt.tokenizers import EOT, GPT2_PATTERN, BPETokenizer  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, the last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def ours(text: str, vocab_size: int, repeats: int) -> dict:
    train_s, tok = timed(lambda: BPETokenizer.train(text, vocab_size), repeats)
    cold_s, ids = timed(lambda: BPETokenizer(tok.token_bytes, tok.merges, tok.eot_id).encode(text), repeats)
    warm_s, _ = timed(lambda: tok.encode(text), repeats)
    return {"train": train_s, "encode": cold_s, "encode_warm": warm_s, "ids": ids, "tokenizer": tok}


def hf_tokenizers(text: str, vocab_size: int, repeats: int, reference: BPETokenizer) -> dict | None:
    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError:
        return None

    def train():
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator([text], vocab_size=vocab_size, min_frequency=1, special_tokens=[EOT],
                                show_progress=False)
        return tok

    train_s, tok = timed(train, repeats)
    encode_s, encoding = timed(lambda: tok.encode(text), repeats)
    with tempfile.TemporaryDirectory() as tmp:  # their ids -> ours via their files, to compare token by token
        tok.save_model(tmp)
        theirs = BPETokenizer.from_pretrained(tmp)
    same_merges = [(theirs.token_bytes[a], theirs.token_bytes[b]) for a, b, _ in theirs.merges] == [
        (reference.token_bytes[a], reference.token_bytes[b]) for a, b, _ in reference.merges
    ]
    same_ids = theirs.decode_bytes(encoding.ids) == text.encode() and theirs.encode(text) == encoding.ids
    return {"train": train_s, "encode": encode_s, "same": same_merges and same_ids}


def tiktoken_encoding(text: str, repeats: int, reference: BPETokenizer, ids: list) -> dict | None:
    try:
        import tiktoken
    except ImportError:
        return None
    ranks = {tb: i for i, tb in enumerate(reference.token_bytes) if i != reference.eot_id}
    enc = tiktoken.Encoding("ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={EOT: reference.eot_id})
    encode_s, theirs = timed(lambda: enc.encode(text, allowed_special="all"), repeats)
    return {"train": None, "encode": encode_s, "same": theirs == ids}


def row(name: str, r: dict | None, base: dict, mb: float, key: str = "encode") -> list[str]:
    if r is None:
        return [name, "n/a (not installed)", "", "", "", ""]
    train = f"{r['train']:.2f}" if r.get("train") is not None else "-"
    train_ratio = f"{base['train'] / r['train']:.2f}" if r.get("train") is not None else "-"
    same = "yes" if r.get("same", True) else "NO"
    return [name, train, train_ratio, f"{mb / r[key]:.2f}", f"{base['encode'] / r[key]:.2f}", same]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a UTF-8 text file (default: Python's docs, pydoc_data.topics)")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the median is shown)")
    parser.add_argument("--tiny", action="store_true", help="50 kB of text, vocab 512, one run (for CI)")
    args = parser.parse_args(argv)
    text = Path(args.data).read_text(encoding="utf-8") if args.data else pydoc_text()
    if args.tiny:
        text, args.vocab_size, args.repeats = text[:50_000], 512, 1
    mb = len(text.encode("utf-8")) / 1e6
    base = ours(text, args.vocab_size, args.repeats)
    hf = hf_tokenizers(text, args.vocab_size, args.repeats, base["tokenizer"])
    tt = tiktoken_encoding(text, args.repeats, base["tokenizer"], base["ids"])
    print(f"{args.data or 'pydoc_data.topics'}: {mb:.2f} MB, vocab_size {args.vocab_size}, "
          f"median of {args.repeats}; {len(base['ids']):,} tokens ({len(base['ids']) / mb / 1e6:.3f} per byte)\n")
    columns = ["tokenizer", "train (s)", "ours / theirs (train time)", "encode (MB/s)",
               "theirs / ours (encode speed)", "same merges and ids"]
    rows = [row("tinygrad_gpt BPETokenizer (cold cache)", base, base, mb),
            row("tinygrad_gpt BPETokenizer (warm cache)", {**base, "train": None}, base, mb, "encode_warm"),
            row("tokenizers ByteLevelBPETokenizer", hf, base, mb), row("tiktoken (our ranks)", tt, base, mb)]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
