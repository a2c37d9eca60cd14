"""Typed loading of YAML configs into frozen dataclasses.

Every field is checked against its type hint: unknown keys, wrong types and values outside a
``Literal`` fail with a :class:`~vlmrl.errors.ConfigError` naming the file, the dotted key and the
allowed values. Range checks live in each dataclass's ``__post_init__`` (raising ``ValueError``);
they are re-raised here with the file and key attached.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from vlmrl.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``--set a.b=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. agent.total_timesteps=1000), got {override!r}")
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section in {source}")
            node = child
        node[parts[-1]] = value
    return data


def build_dataclass(cls: type[T], data: Any, source: str, prefix: str = "") -> T:
    """Build ``cls`` from a nested dict, checking keys and types recursively."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}; allowed keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, source, f"{prefix}{name}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required key {prefix}{missing[0]}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: {where}: {error}") from error


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint) and hasattr(hint, "config_class_for"):
        return _build_registered(hint, value, source, key)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, source, f"{key}.")
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, source, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: {key}: {value!r} matches none of {hint}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{source}: {key} = {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__}")
        (item_hint, _ellipsis) = get_args(hint)
        return tuple(_convert(item_hint, item, source, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
        return types.MappingProxyType(dict(value))
    if hint is typing.Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported config type {hint}")


def _build_registered(base: type, value: Any, source: str, key: str) -> Any:
    """A section whose ``kind`` picks the config class from a registry (e.g. ``labeler``)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
    if "kind" not in value:
        raise ConfigError(f"{source}: missing required key {key}.kind")
    try:
        cls = base.config_class_for(value["kind"])
    except ConfigError as error:
        raise ConfigError(f"{source}: {key}.kind: {error}") from None
    return build_dataclass(cls, {k: v for k, v in value.items() if k != "kind"}, source, f"{key}.")


def to_plain(obj: Any) -> Any:
    """Dataclass (or nested value) -> plain dicts/lists, for YAML/JSON output.

    A registered config (one with a class-level ``kind``) is written with its ``kind`` first,
    so the output loads back into the same class."""
    if dataclasses.is_dataclass(obj):
        kind = getattr(type(obj), "kind", None) if hasattr(type(obj), "config_class_for") else None
        plain = {"kind": kind} if kind else {}
        plain.update({f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
        return plain
    if isinstance(obj, (dict, types.MappingProxyType)):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
