"""Generate text from a trained checkpoint: `python -m tinygrad_gpt.sample --out_dir out --prompt "def "`.

`--init_from DIR` samples from a Hugging Face GPT-2 directory (GPT-2's own files on disk, or an
export) or a checkpoint directory instead. Prints each prompt followed by its continuation.
`--prompt FILE:path` reads the prompt from a file; `--interactive` reads one prompt per line from
stdin until an empty line or end of input.
Generation uses the model's key/value cache, so each new token costs one position's work.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from tinygrad_gpt import backend
from tinygrad_gpt.checkpoint import find_checkpoint, has_checkpoint, load_checkpoint
from tinygrad_gpt.cli import UsageError, build_config, option, parse_args, read_limited, report_error
from tinygrad_gpt.data import CharTokenizer, Tokenizer, encode_ids, format_chars
from tinygrad_gpt.model import GPT, GPTConfig, check_sampling
from tinygrad_gpt.monitor import silence_stdout
from tinygrad_gpt.pretrained import HF_CONFIG, check_vocab, checkpoint_tokenizer, load_pretrained, load_tokenizer
from tinygrad_gpt.tokenizers import EOT, BPETokenizer
from tinygrad_gpt.validate import PROMPT_FILE_LIMIT, check_memory, check_meta, check_weights, sampling_memory

PROG = "python -m tinygrad_gpt.sample"
SEPARATOR = "---------------"


@dataclass
class SampleConfig:
    """Settings of `python -m tinygrad_gpt.sample`; each field is a flag."""

    out_dir: str = option("out", "a training run's out_dir, or a checkpoint directory")
    init_from: str = option("", "a Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json, "
                            "merges.txt) or a checkpoint directory / out_dir; instead of --out_dir")
    checkpoint: str = option("best", "which checkpoint of an out_dir to load", choices=("best", "latest"))
    prompt: str = option("", "text to continue, or FILE:path to read it from a file ('': <|endoftext|> for "
                         "a BPE model; a newline, or a character the model knows, for a character model)")
    num_samples: int = option(1, "number of samples per prompt")
    max_new_tokens: int = option(500, "tokens generated per sample (characters for a character model)")
    temperature: float = option(0.8, "1.0 samples as trained, lower is more conservative, 0 is greedy")
    top_k: int | None = option(200, "sample among the k most likely tokens only (0 or none: all)")
    top_p: float = option(1.0, "sample among the most likely tokens holding this probability mass (1.0: all)")
    seed: int | None = option(1337, "random seed (none: a different sample each time)")
    interactive: bool = option(False, "read prompts from stdin, one per line; an empty line or EOF quits")

    def __post_init__(self):
        if self.num_samples < 1:
            raise UsageError(f"--num_samples must be >= 1, got {self.num_samples}")
        check_sampling(self.temperature, self.top_k, self.top_p, self.max_new_tokens, label="--{}")


def default_prompt(tokenizer: Tokenizer) -> str:
    """<|endoftext|> for a BPE (GPT-2 starts a document after it); for characters a newline when the
    vocabulary has one (the start of a line), else its first character."""
    if isinstance(tokenizer, BPETokenizer):
        return EOT
    return "\n" if "\n" in tokenizer.chars else tokenizer.chars[0]


def encode_prompt(tokenizer: Tokenizer, prompt: str):
    """The prompt's ids (T,), or a UsageError naming the characters a character model never saw."""
    unknown = tokenizer.unknown_chars(prompt) if isinstance(tokenizer, CharTokenizer) else []
    if unknown:
        raise UsageError(f"the prompt has characters not in the model's vocabulary: {format_chars(unknown)}")
    return encode_ids(tokenizer, prompt or default_prompt(tokenizer))


def sample_texts(
    model: GPT, tokenizer: Tokenizer, prompt: str, num_samples: int, max_new_tokens: int,
    temperature: float = 0.8, top_k: int | None = 200, top_p: float | None = None, seed: int | None = None,
) -> list[str]:  # fmt: skip
    """Continue `prompt` num_samples times, in one batch (sampling arguments as GPT.generate's).

    Returns:
        num_samples strings, each the prompt followed by the text of max_new_tokens generated tokens
        (an empty prompt stands for `default_prompt`, which is not repeated).
    """
    ids = encode_prompt(tokenizer, prompt)
    idx = ids[None, :].repeat(num_samples, axis=0)  # (num_samples, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return [prompt + tokenizer.decode(backend.to_numpy(row)[len(ids) :]) for row in out]


def load_model(out_dir: str, which: str, config: SampleConfig | None = None, given: set = frozenset()
               ) -> tuple[GPT, Tokenizer, Path]:
    """The model and tokenizer of a checkpoint (out_dir/ckpt_<which>, or out_dir itself), in eval mode.

    meta.json is checked before the weights are read, the weights (sizes, finite values) and the
    memory sampling needs before the model is built.

    Returns:
        (model, tokenizer, checkpoint path)
    """
    other = "latest" if which == "best" else "best"
    path = find_checkpoint(out_dir, prefer=(f"ckpt_{which}", f"ckpt_{other}"))
    ckpt = load_checkpoint(path, with_optimizer=False, check_meta=check_meta)
    model_config = GPTConfig(**ckpt.meta["model_config"])
    check_weights(ckpt, model_config)
    if config is not None:
        check_memory(config, given, lambda c: sampling_memory(model_config, c.num_samples))
    tokenizer = checkpoint_tokenizer(ckpt)
    check_vocab(tokenizer, model_config, ckpt.path / "meta.json")
    model = GPT(model_config)
    model.load_state_dict(ckpt.model_state)
    model.eval()
    return model, tokenizer, ckpt.path


def load_any(init_from: str, which: str, config: SampleConfig | None = None, given: set = frozenset()
             ) -> tuple[GPT, Tokenizer, Path]:
    """The model (eval mode) and tokenizer of a Hugging Face GPT-2 directory, a checkpoint directory, or an
    out_dir (its ckpt_<which>)."""
    path = Path(init_from)
    if not (path / HF_CONFIG).is_file() and has_checkpoint(path):
        return load_model(init_from, which, config, given)
    model, tokenizer = load_pretrained(path), load_tokenizer(path)
    check_vocab(tokenizer, model.config, path)
    return model, tokenizer, path


def read_prompt(prompt: str) -> str:
    """The prompt text: `prompt` itself, or the content of the file after 'FILE:' (at most 1 MiB)."""
    if not prompt.startswith("FILE:"):
        return prompt
    path = Path(prompt[len("FILE:") :]).expanduser()
    if not path.exists():
        raise UsageError(f"prompt file {path} does not exist")
    try:
        return read_limited(path, PROMPT_FILE_LIMIT, "prompt file").decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"prompt file {path} is not UTF-8 text") from None


def print_samples(texts: list[str]) -> None:
    for text in texts:
        print(text)
        print(SEPARATOR, flush=True)


def read_line() -> str | None:
    """One prompt from stdin without its newline ('' or None at the end): at most 1 MiB, like a prompt file."""
    if sys.stdin.isatty():
        try:
            return input("prompt> ")
        except EOFError:
            return None
    line = sys.stdin.readline(PROMPT_FILE_LIMIT + 1)  # not input(): a line from /dev/zero never ends
    if len(line) > PROMPT_FILE_LIMIT:
        raise UsageError(f"a line on stdin is longer than the limit of {PROMPT_FILE_LIMIT:,} characters")
    return line.removesuffix("\n")


def interactive(config: SampleConfig, model: GPT, tokenizer: Tokenizer) -> None:
    """Prompt loop on stdin: each line is continued; an empty line or EOF quits."""
    while True:
        line = read_line()
        if not line:
            break
        try:
            texts = sample_texts(model, tokenizer, line, config.num_samples, config.max_new_tokens,
                                 config.temperature, config.top_k, config.top_p, config.seed)  # fmt: skip
        except UsageError as e:  # an unknown character: say so and ask again
            print(f"{PROG}: {e}", file=sys.stderr, flush=True)
            continue
        print_samples(texts)


def main(argv=None) -> int:
    """Parse flags, load the checkpoint and print samples; returns the exit status (2 for bad input).

    A closed stdout (`... | head`) ends it quietly with status 0, as it does other Unix tools.
    """
    try:
        values, given = parse_args(SampleConfig, argv, PROG, __doc__.split("\n\n")[0])
        config = build_config(SampleConfig, values)
        if config.seed is None:
            config.seed = secrets.randbits(32)  # a fresh sample each run
        prompt = read_prompt(config.prompt)
        if config.init_from and "out_dir" in given:
            raise UsageError(f"--init_from {config.init_from} and --out_dir {config.out_dir} name two models; give one")
        if config.init_from:
            model, tokenizer, path = load_any(config.init_from, config.checkpoint, config, given)
        else:
            model, tokenizer, path = load_model(config.out_dir, config.checkpoint, config, given)
        if not config.interactive:
            encode_prompt(tokenizer, prompt)  # unknown characters are reported before anything else
        print(f"loaded {path} ({model.num_parameters():,} parameters)", file=sys.stderr, flush=True)
        if config.interactive:
            interactive(config, model, tokenizer)
            return 0
        texts = sample_texts(model, tokenizer, prompt, config.num_samples, config.max_new_tokens,
                             config.temperature, config.top_k, config.top_p, config.seed)  # fmt: skip
        print_samples(texts)
    except SystemExit as e:
        return e.code or 0
    except BrokenPipeError:
        silence_stdout()
        return 0
    except (UsageError, ValueError, OSError) as e:
        return report_error(PROG, e)
    except MemoryError:
        report_error(PROG, "out of memory; try a smaller --num_samples")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
