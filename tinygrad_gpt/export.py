"""Write a Hugging Face GPT-2 directory from a checkpoint: `python -m tinygrad_gpt.export CKPT_DIR HF_DIR`.

CKPT_DIR is a checkpoint directory of `tinygrad_gpt.train` or its out_dir (ckpt_best, else
ckpt_latest; `--checkpoint latest` picks the other). HF_DIR receives what
`transformers.GPT2LMHeadModel.from_pretrained(HF_DIR)` loads with the same logits:

    config.json, model.safetensors                          always
    vocab.json, merges.txt, tokenizer_config.json           a BPE run: GPT2TokenizerFast reads them
    tinygrad_gpt_chars.json                                 a character run: its characters, which only
                                                            tinygrad_gpt.load_tokenizer reads (transformers
                                                            has no character tokenizer of this kind)

A non-empty HF_DIR is refused unless `--overwrite` is given; then the files above are replaced and
the tokenizer files of another export (tokenizer.json, special_tokens_map.json, ...) are removed, so
the directory cannot mix two tokenizers. A checkpoint directory or out_dir is never written into.
Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygrad_gpt.checkpoint import CHECKPOINT_NAMES, find_checkpoint, has_checkpoint, is_checkpoint
from tinygrad_gpt.cli import ArgumentParser, UsageError, report_error
from tinygrad_gpt.data import CharTokenizer, Tokenizer
from tinygrad_gpt.pretrained import (
    CHARS,
    check_vocab,
    checkpoint_dir,
    hf_config_from_gpt,
    load_pretrained,
    load_tokenizer,
)

PROG = "python -m tinygrad_gpt.export"
EXAMPLES = """examples:
  python -m tinygrad_gpt.train --config configs/gpt2.toml --tokenizer bpe --out_dir out-bpe   # GPT-2's layout
  python -m tinygrad_gpt.export out-bpe my-gpt2            # out-bpe/ckpt_best -> my-gpt2/
  python -m tinygrad_gpt.export out/ckpt_latest my-gpt2 --overwrite
then, in Python:  transformers.GPT2LMHeadModel.from_pretrained("my-gpt2")
                  transformers.GPT2TokenizerFast.from_pretrained("my-gpt2")   (BPE runs)
"""
# files an earlier export or a downloaded GPT-2 may hold that would disagree with the new model or tokenizer
STALE = ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
         "added_tokens.json", "generation_config.json", CHARS)  # fmt: skip


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("ckpt_dir", metavar="CKPT_DIR", help="a checkpoint directory, or a training run's out_dir")
    parser.add_argument("hf_dir", metavar="HF_DIR", help="the Hugging Face directory to write (created if needed)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="which checkpoint of an out_dir to export (default: best)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace the model in a non-empty HF_DIR")
    return parser


def source_checkpoint(path: Path, which: str) -> Path:
    """The checkpoint directory to export: path itself, or out_dir/ckpt_<which> (else the other one)."""
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory (give a checkpoint directory or a training run's out_dir)")
    if not (is_checkpoint(path) or has_checkpoint(path)):
        raise UsageError(f"{path} holds no checkpoint of tinygrad_gpt.train (looked for meta.json, "
                         f"{' and '.join(CHECKPOINT_NAMES)})")  # fmt: skip
    other = "latest" if which == "best" else "best"
    return checkpoint_dir(find_checkpoint(path, prefer=(f"ckpt_{which}", f"ckpt_{other}")))


def check_target(hf_dir: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, a checkpoint or out_dir, or (without --overwrite) a non-empty directory."""
    if hf_dir.exists() and not hf_dir.is_dir():
        raise UsageError(f"{hf_dir} exists and is not a directory")
    if is_checkpoint(hf_dir) or has_checkpoint(hf_dir):
        raise UsageError(f"{hf_dir} holds a checkpoint of tinygrad_gpt.train; export into another directory")
    if hf_dir.is_dir() and any(hf_dir.iterdir()) and not overwrite:
        raise UsageError(f"{hf_dir} is not empty; pass --overwrite to replace the model in it, or pick another HF_DIR")


def export(ckpt_dir, hf_dir, which: str = "best", overwrite: bool = False) -> tuple[list[str], Tokenizer]:
    """Write the Hugging Face GPT-2 directory `hf_dir` from a checkpoint.

    Returns:
        (the names of the files in hf_dir, the tokenizer written).
    Raises:
        UsageError or ValueError, one line each: a missing or damaged checkpoint, a model GPT-2 cannot
        express (post-norm, rotary positions, RMSNorm, no biases, ...: the default run's architecture), or a
        target that may not be written.
        Everything is checked before the first file is written.
    """
    ckpt_dir, hf_dir = Path(ckpt_dir), Path(hf_dir)
    source = source_checkpoint(ckpt_dir, which)
    check_target(hf_dir, overwrite)
    model, tokenizer = load_pretrained(source), load_tokenizer(source)
    check_vocab(tokenizer, model.config, source)
    try:
        hf_config_from_gpt(model.config)  # raises for what GPT-2 cannot express
    except ValueError as e:  # e.g. the default run's speedrun architecture
        raise ValueError(f"{source}: {e} (python -m tinygrad_gpt.train --config configs/gpt2.toml trains "
                         "GPT-2's layout)") from None
    for name in STALE if hf_dir.is_dir() else ():
        (hf_dir / name).unlink(missing_ok=True)
    model.save_pretrained(hf_dir, tokenizer=tokenizer)
    return sorted(p.name for p in hf_dir.iterdir() if p.is_file()), tokenizer


def main(argv=None) -> int:
    """Parse the arguments and export; returns the exit status (2 for bad input)."""
    try:
        args = build_parser().parse_args(argv)
        written, tokenizer = export(args.ckpt_dir, args.hf_dir, args.checkpoint, args.overwrite)
    except SystemExit as e:  # argparse: --help, or a bad argument already reported
        return e.code or 0
    except (UsageError, ValueError, OSError) as e:
        return report_error(PROG, e)
    print(f"exported {args.ckpt_dir} to {args.hf_dir}: {', '.join(written)}")
    if isinstance(tokenizer, CharTokenizer):
        print(f"note: a character-level model: {CHARS} holds its characters, which transformers cannot read "
              f"(GPT2LMHeadModel loads the weights; encode text with tinygrad_gpt.load_tokenizer({args.hf_dir!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
