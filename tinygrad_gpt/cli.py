"""Command-line flags generated from a config dataclass (nanoGPT's configurator idea, without `exec`).

Every field of the dataclass becomes a flag `--name` (`--name value` or `--name=value`), typed by the
field's annotation and documented by its `help` metadata. `--config FILE` reads the same keys from a
TOML or JSON file; flags given on the command line override it. Unknown flags, unknown keys and
ill-typed values are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2."""


def option(default, help: str, choices: tuple | None = None):
    """A dataclass field with a help text (and optional choices) for the generated flag."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def one_line(message) -> str:
    return " ".join(str(message).split())


def report_error(prog: str, message) -> int:
    """Print `prog: error: message` as one line on stderr; return the exit status 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


# ---------------------------------------------------------------- value types


def _parse_bool(text: str) -> bool:
    if text.lower() not in _BOOL_WORDS:
        raise ValueError(text)
    return _BOOL_WORDS[text.lower()]


_parse_bool.__name__ = "bool"  # argparse names the type in its message: "invalid bool value: 'x'"


def _field_type(tp) -> tuple[type, bool]:
    """(base type, whether None is allowed) of an annotation like `int`, `float | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return tp, False


def _converter(base: type, optional: bool):
    parse = _parse_bool if base is bool else base

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return parse(text)

    convert.__name__ = base.__name__ + (" or None" if optional else "")
    return convert


def _check_value(key: str, value, base: type, optional: bool, source: str):
    """A value read from a config file, checked against the field's type (ints are fine for floats)."""
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise UsageError(f"{source}: {key} must be {base.__name__}, got {value!r}")


# ---------------------------------------------------------------- parser


def build_parser(config_cls, prog: str, description: str, epilog: str | None = None) -> ArgumentParser:
    """An argparse parser with one `--field` flag per dataclass field, plus `--config FILE`.

    Flags default to argparse.SUPPRESS, so the parsed namespace holds only the flags given.
    """
    parser = ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML or JSON file with the same keys; flags override",
    )
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        base, optional = _field_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        extra = {"nargs": "?", "const": True} if base is bool else {}  # `--bias` alone means True
        parser.add_argument(
            f"--{f.name}",
            type=_converter(base, optional),
            default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"),
            metavar=base.__name__.upper() if not f.metadata.get("choices") else None,
            help=f"{f.metadata.get('help', '')} (default: {default!r})",
            **extra,
        )
    return parser


def load_config_file(path: str, config_cls) -> dict:
    """The keys of a TOML or JSON config file, checked against the dataclass's fields and types."""
    path_obj = Path(path)
    try:
        raw = path_obj.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path_obj.suffix.lower() == ".json":
            values = json.loads(raw.decode("utf-8"))
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise UsageError(
                    f"{path}: reading TOML needs Python 3.11+ (tomllib); write the same keys as a .json file"
                ) from None
            values = tomllib.loads(raw.decode("utf-8"))
    except UsageError:
        raise
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "JSON" if path_obj.suffix.lower() == ".json" else "TOML"
        raise UsageError(f"config file {path} is not valid {kind}: {e}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a table/object of keys")
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"{path}: unknown key {key!r}")
        values[key] = _check_value(key, value, *_field_type(hints[key]), source=str(path))
        choices = fields[key].metadata.get("choices")
        if choices and values[key] not in choices:
            raise UsageError(f"{path}: {key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return values


def parse_args(config_cls, argv, prog: str, description: str, epilog: str | None = None) -> tuple[dict, set]:
    """Defaults, then the config file, then the flags.

    Args:
        config_cls: the dataclass whose fields are the flags.
        argv: the arguments (without the program name); None means sys.argv[1:].
    Returns:
        (values for every field, the set of keys given in the file or as flags).
    Raises:
        SystemExit(2) for unknown flags and ill-typed values (after one line on stderr), SystemExit(0)
        after --help; UsageError for a bad config file.
    """
    namespace = vars(build_parser(config_cls, prog, description, epilog).parse_args(argv))
    config_path = namespace.pop("config", None)
    given = load_config_file(config_path, config_cls) if config_path else {}
    given.update(namespace)
    values = {f.name: f.default for f in dataclasses.fields(config_cls)}
    values.update(given)
    return values, set(given)
