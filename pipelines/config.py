"""The one config loader of every ``dpm`` command: a YAML file plus dotted ``KEY=VALUE`` overrides.

Precedence, lowest first: the dataclasses' defaults, ``--config FILE.yaml``, the command's
named flags (``--mode``, ``--epochs``, ...), then the positional dotted overrides
(``labeling.memory.lr=5e-4``, values read as YAML). A command builds its frozen dataclass
configs from the merged tree with ``build_dataclass``, which rejects unknown keys and leaves
the value checks to each dataclass's ``__post_init__``.

This module imports no torch (nor anything that does): a typo in a config fails in
milliseconds, before a model is loaded or a cluster is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from dpm_worker.errors import ConfigError

OVERRIDE_METAVAR = "KEY=VALUE"


def add_config_arguments(
    parser: argparse.ArgumentParser, sections: Mapping[str, str], example: str
) -> None:
    """Add ``--config FILE`` and the positional ``KEY=VALUE`` overrides, same for every command.

    Args:
        parser: the command's parser.
        sections: top-level config keys -> what they hold (listed in ``--help``).
        example: one override shown in ``--help``, e.g. ``labeling.memory.lr=5e-4``.
    """
    listing = "; ".join(f"{name}: {text}" for name, text in sections.items())
    parser.add_argument("--config", help=f"YAML file with any of these top-level keys ({listing})")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar=OVERRIDE_METAVAR,
        help="dotted overrides applied after --config and the flags, value read as YAML, "
        f"e.g. {example}",
    )


def merge_tree(
    path: str | None, flags: Mapping[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """The YAML file, then the named flags (None = not given), then the dotted overrides."""
    tree = read_yaml(path) if path else {}
    for dotted, value in flags.items():
        if value is not None:
            set_dotted(tree, dotted, value)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    return tree


def check_sections(tree: Mapping[str, Any], known: Sequence[str], where: str = "config") -> None:
    """Reject top-level keys a command does not read (naming the ones it does)."""
    unknown = sorted(set(tree) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown {where} section(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping)."""
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def build_dataclass(cls: type, data: Mapping[str, Any] | None, where: str = "") -> Any:
    """Build a (nested) frozen dataclass from a mapping, rejecting unknown keys.

    Nested dataclass fields are built from nested mappings; lists become tuples where the
    field is a tuple. Values are validated by the dataclasses' own ``__post_init__``.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid {where.rstrip('.') or cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} must not be null")
    for option in options:
        if (
            isinstance(option, type)
            and dataclasses.is_dataclass(option)
            and isinstance(value, Mapping)
        ):
            return build_dataclass(option, value, where + ".")
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            # YAML 1.1 reads "1e-3" in a file as a string; a number written that way is meant.
            try:
                return float(value)
            except ValueError:
                pass
        if option in (int, str, bool) and type(value) is option:
            return value
    if any(
        isinstance(o, type) and dataclasses.is_dataclass(o) and isinstance(value, o)
        for o in options
    ):
        return value
    raise ConfigError(f"{where} has the wrong type: {value!r} is not {hint}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b']['c'] = value`` for ``dotted='a.b.c'`` (creating levels)."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"bad override key {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (``1e-3``, ``[0.9, 0.99]``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    # YAML 1.1 reads "1e-3" as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.strip(), value
