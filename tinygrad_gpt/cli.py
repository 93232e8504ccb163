"""Command-line flags generated from a config dataclass (nanoGPT's configurator idea, without `exec`).

Every field of the dataclass becomes a flag `--name` (`--name value` or `--name=value`), typed by the
field's annotation and documented by its `help` metadata. A field declared with `section(...)` holds
another dataclass (TrainConfig's `model: GPTConfig`): each of that one's fields becomes a flag too, so
the flags stay flat (`--n_layer`, not `--model.n_layer`) and are written once, where the field is.
`--config FILE` reads the same keys from a TOML or JSON file; flags given on the command line override
it. Unknown flags, unknown keys and ill-typed values are one line on stderr and exit status 2.

    values, given = parse_args(TrainConfig, argv, prog, description)  # flat: flag name -> value
    config = build_config(TrainConfig, values)                         # typed, sections filled in
    flatten_config(config) == values                                   # and back (e.g. for a checkpoint)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path

CONFIG_FILE_LIMIT = 1 << 20  # bytes of a --config file
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2."""


def option(default, help: str, choices: tuple | None = None, command_line_only: bool = False):
    """A dataclass field with a help text (and optional choices) for the generated flag.

    command_line_only: the value is about this command (a path, an action), so a resumed run takes it
    from the command line (or the default), never from the checkpoint it resumes.
    """
    metadata = {"help": help, "choices": choices, "command_line_only": command_line_only}
    return dataclasses.field(default=default, metadata=metadata)


def section(default_factory, help: str, skip: tuple = ()):
    """A dataclass field holding another dataclass whose fields become flags (except those in `skip`).

    Args:
        default_factory: makes the default instance; its field values are the flags' defaults.
        help: the title of the flags' group in --help.
        skip: fields that are not flags (they keep the default instance's value).
    """
    return dataclasses.field(default_factory=default_factory, metadata={"help": help, "skip": skip, "section": True})


@dataclasses.dataclass(frozen=True)
class Flag:
    """One generated flag: a field of the config dataclass, or of one of its sections."""

    name: str
    base: type  # int, float, bool or str
    optional: bool  # None allowed (`--name none`)
    default: object
    help: str
    choices: tuple | None
    section: str | None  # the field of the config that holds it, or None for the config's own fields
    command_line_only: bool = False  # see option()


def flags_of(config_cls) -> list[Flag]:
    """Every flag of a config dataclass, in field order, sections expanded in place."""
    flags = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if not f.metadata.get("section"):
            flags.append(_flag(config_cls, f, default, None))
            continue
        for sub in dataclasses.fields(default):
            if sub.name not in f.metadata["skip"]:
                flags.append(_flag(type(default), sub, getattr(default, sub.name), f.name))
    names = [flag.name for flag in flags]
    if len(set(names)) != len(names):
        raise TypeError(f"{config_cls.__name__}: a flag name occurs twice among {names}")
    return flags


def _flag(owner, f: dataclasses.Field, default, section: str | None) -> Flag:
    base, optional = _field_type(typing.get_type_hints(owner)[f.name])
    meta = f.metadata
    return Flag(f.name, base, optional, default, meta.get("help", ""), meta.get("choices"), section,
                meta.get("command_line_only", False))  # fmt: skip


def build_config(config_cls, values: dict):
    """An instance of the config dataclass from flat flag values; missing flags keep their defaults.

    Raises:
        UsageError: a key that is no flag. The dataclasses' own checks raise what they raise.
    """
    flags = {flag.name: flag for flag in flags_of(config_cls)}
    unknown = sorted(set(values) - set(flags))
    if unknown:
        raise UsageError(f"{config_cls.__name__}: unknown setting(s) {', '.join(unknown)}")
    own, sections = {}, {}
    for name, value in values.items():
        section = flags[name].section
        if section is None:
            own[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    factories = {f.name: f.default_factory for f in dataclasses.fields(config_cls)}
    for section, section_values in sections.items():
        own[section] = dataclasses.replace(factories[section](), **section_values)
    return config_cls(**own)


def flatten_config(config) -> dict:
    """The flat flag values of a config instance (the inverse of build_config)."""
    return {
        flag.name: getattr(getattr(config, flag.section) if flag.section else config, flag.name)
        for flag in flags_of(type(config))
    }


def format_bytes(n: float) -> str:
    """A size for messages: '512 bytes', '1.0 MiB', '7.3 TiB'."""
    if n >= 1 << 70:  # beyond any machine (and beyond float's range for some ints)
        return "over 1,000,000 PiB"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def read_limited(path, limit: int, what: str, error=UsageError) -> bytes:
    """The bytes of a file named by the user, or `error` when it is missing, unreadable or larger than `limit`.

    Reads at most limit + 1 bytes, so /dev/zero or a huge file costs no more than the limit.
    """
    chunks, size = [], 0
    try:
        with open(path, "rb") as f:
            while size <= limit:  # in pieces: read(limit + 1) would allocate the whole limit up front
                chunk = f.read(min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if size > limit:
        raise error(f"{what} {path} is larger than the limit of {format_bytes(limit)}")
    return b"".join(chunks)


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


def _parse_finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _converter(base: type, optional: bool):
    parse = {bool: _parse_bool, float: _parse_finite_float}.get(base, base)

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return parse(text)

    convert.__name__ = base.__name__ + (" or None" if optional else "")
    return convert


def check_value(key: str, value, base: type, optional: bool, source: str):
    """A value read from a file (config file, checkpoint), checked against the field's type; ints are fine for floats.

    An optional setting takes None as null in JSON and as "none" in a TOML file (which has no null), as on the
    command line (`--name none`).

    Raises:
        UsageError naming the source and the key: a wrong type, or a float that is NaN or infinite.
    """
    if optional and (value is None or isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise UsageError(f"{source}: {key} must be a finite number, got {value!r:.40}")
        return number
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise UsageError(f"{source}: {key} must be {base.__name__}, got {shown}")


# ---------------------------------------------------------------- parser


def build_parser(config_cls, prog: str, description: str, epilog: str | None = None) -> ArgumentParser:
    """An argparse parser with one `--name` flag per flag of the config (see flags_of), plus `--config FILE`.

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
    groups = {f.name: parser.add_argument_group(f.metadata["help"]) for f in dataclasses.fields(config_cls)
              if f.metadata.get("section")}  # fmt: skip
    for flag in flags_of(config_cls):
        extra = {"nargs": "?", "const": True} if flag.base is bool else {}  # `--bias` alone means True
        (groups[flag.section] if flag.section else parser).add_argument(
            f"--{flag.name}",
            type=_converter(flag.base, flag.optional),
            default=argparse.SUPPRESS,
            choices=flag.choices,
            metavar=flag.base.__name__.upper() if not flag.choices else None,
            help=f"{flag.help} (default: {flag.default!r})",
            **extra,
        )
    return parser


def load_config_file(path: str, config_cls) -> dict:
    """The keys of a TOML or JSON config file, checked against the dataclass's fields and types."""
    path_obj = Path(path)
    raw = read_limited(path, CONFIG_FILE_LIMIT, "config file")
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
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSON/TOMLDecodeError are ValueErrors
        kind = "JSON" if path_obj.suffix.lower() == ".json" else "TOML"
        raise UsageError(f"config file {path} is not valid {kind}: {e}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a table/object of keys")
    flags = {flag.name: flag for flag in flags_of(config_cls)}
    for key, value in values.items():
        if key not in flags:
            raise UsageError(f"{path}: unknown key {key!r}")
        flag = flags[key]
        values[key] = check_value(key, value, flag.base, flag.optional, source=str(path))
        if flag.choices and values[key] not in flag.choices:
            raise UsageError(f"{path}: {key} must be one of {', '.join(map(repr, flag.choices))}, got {value!r}")
    return values


def parse_args(config_cls, argv, prog: str, description: str, epilog: str | None = None) -> tuple[dict, set]:
    """Defaults, then the config file, then the flags.

    Args:
        config_cls: the dataclass whose fields (sections expanded) are the flags.
        argv: the arguments (without the program name); None means sys.argv[1:].
    Returns:
        (flat values of every flag, the set of flags given in the file or on the command line);
        `build_config(config_cls, values)` makes the typed config.
    Raises:
        SystemExit(2) for unknown flags and ill-typed values (after one line on stderr), SystemExit(0)
        after --help; UsageError for a bad config file.
    """
    namespace = vars(build_parser(config_cls, prog, description, epilog).parse_args(argv))
    config_path = namespace.pop("config", None)
    if not isinstance(config_path, (str, type(None))):  # argparse's `--config=--` gives a list
        raise UsageError(f"argument --config: expected a file name, got {config_path!r}")
    given = load_config_file(config_path, config_cls) if config_path else {}
    flags = {flag.name: flag for flag in flags_of(config_cls)}
    for key, value in namespace.items():  # argparse's own quirks (`--n_layer=--` gives []) end here too
        given[key] = check_value(key, value, flags[key].base, flags[key].optional, source="command line")
    values = {flag.name: flag.default for flag in flags_of(config_cls)}
    values.update(given)
    return values, set(given)
