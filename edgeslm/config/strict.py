"""Strict conversion of parsed TOML tables into frozen dataclasses.

``parse(cls, table, where)`` checks every key against the dataclass fields: an unknown key, a
missing required key or a value of the wrong type raises :class:`ConfigError` naming the file and
the dotted key. Supported field types: str, int, float, bool, Literal[...], tuple[T, ...],
Optional[T], nested dataclasses and dict[str, T].
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import tomllib

from ..errors import ConfigError

T = TypeVar("T")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def parse(cls: type[T], table: Any, where: str, key: str = "") -> T:
    """Build ``cls`` from ``table``; ``where`` is the file name used in errors."""
    return _convert(cls, table, where, key)


def convert(tp: Any, value: Any, where: str, key: str = "") -> Any:
    """Check and convert one value against a type annotation (same rules as the files)."""
    return _convert(tp, value, where, key)


def _label(where: str, key: str) -> str:
    return f"{where}: key '{key}'" if key else where


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, collections.abc.Mapping):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(non_none[0], value, where, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{_label(where, key)} is {value!r}, expected {_type_name(tp)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ConfigError(f"{_label(where, key)} must be {_type_name(tp)}, got {type(value).__name__}")
        return tuple(_convert(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{_label(where, key)} must be a table")
        return types.MappingProxyType(
            {k: _convert(args[1], v, where, f"{key}.{k}" if key else k) for k, v in value.items()}
        )
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_label(where, key)} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_label(where, key)} must be an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{_label(where, key)} must be {_type_name(tp)}, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r}")  # a programming error, not user input


def _dataclass(cls: Any, value: Any, where: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{_label(where, key)} must be a table, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    toml_names = {name: name for name in fields}
    kwargs: dict[str, Any] = {}
    for raw_key, raw_value in value.items():
        dotted = f"{key}.{raw_key}" if key else raw_key
        if raw_key not in toml_names:
            close = difflib.get_close_matches(raw_key, list(toml_names), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(toml_names))}"
            raise ConfigError(f"{where}: unknown key '{dotted}'", hint=hint)
        name = toml_names[raw_key]
        kwargs[name] = _convert(hints[name], raw_value, where, dotted)
    for f in fields.values():
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            dotted = f"{key}.{f.name}" if key else f.name
            raise ConfigError(f"{where}: missing required key '{dotted}'")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{_label(where, key)}: {exc}") from exc


def to_plain(obj: Any) -> Any:
    """A JSON-ready copy of a (nested) dataclass value."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (dict, types.MappingProxyType)):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
