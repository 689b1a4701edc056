"""Strict reading of small TOML files: every key known, every value of its type, one-line errors."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import TEXT_LIMIT, read_input


@dataclass(frozen=True)
class Field:
    """One key of a table: its type, whether it must be present, and what it means (for errors)."""

    type: type | tuple[type, ...]
    required: bool = False
    what: str = ""


def load_toml(path: Path) -> dict[str, Any]:
    """Parse `path`, turning a syntax error into a one-line refusal that names the file."""
    data = read_input(path, "TOML file", TEXT_LIMIT, "no such file")
    try:
        return tomllib.loads(data.decode())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None


def check_table(path: Path, where: str, table: Any, fields: Mapping[str, Field]) -> dict[str, Any]:
    """Refuse unknown keys, missing required keys and values of the wrong type."""
    label = f"{path}: [{where}]" if where else f"{path}:"
    if not isinstance(table, dict):
        raise ConfigError(f"{label} must be a table")
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{label} unknown key {key!r}; known keys: {known}")
    for key, field in fields.items():
        if key not in table:
            if field.required:
                raise ConfigError(f"{label} missing key {key!r} ({field.what})")
            continue
        value = table[key]
        # bool is an int in Python; a flag written as 1 or a count written as true is a mistake.
        wrong_bool = isinstance(value, bool) != (field.type is bool)
        if not isinstance(value, field.type) or wrong_bool:
            raise ConfigError(f"{label} key {key!r} must be {_type_name(field.type)} ({field.what}), "
                              f"not {type(value).__name__}")
    return dict(table)


def check_string_list(path: Path, where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{path}: [{where}] key {key!r} must be a list of strings")
    return list(value)


def check_string_map(path: Path, where: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise ConfigError(f"{path}: [{where}] key {key!r} must be a table of strings")
    return dict(value)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(item, item.__name__) for item in kind)
    return names.get(kind, kind.__name__)
