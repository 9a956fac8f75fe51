"""Typed configs: the dataclass is the schema, YAML files carry values, `key=value` overrides win.

Every config in genops is a (possibly nested) dataclass whose fields carry a one-line docstring as
a comment. `load_config` fills one from a YAML file and command-line overrides, and fails loudly
on a key the dataclass does not have, naming the key and the keys it does have.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass."""


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Build `cls` from `base` values, then the YAML file at `path` (values only), then `key=value` overrides.

    Dotted keys reach into nested dataclasses: `train.lr=1e-4`. Override values are parsed as YAML
    scalars, so `steps=10`, `use_ema=false` and `betas=[0.9,0.99]` all do what they say.
    """
    values = merge_values(dict(base or {}), load_values(path)) if path is not None else dict(base or {})
    apply_overrides(values, overrides)
    return from_dict(cls, values, where=str(path) if path else "overrides")


def load_values(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def merge_values(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into `base` (nested mappings merge, everything else is replaced)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_values(base[key], value)
        else:
            base[key] = value
    return base


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key=value` overrides (dotted keys, YAML-parsed values) to a values mapping in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(values, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return values


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a plain mapping, checking keys and coercing types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)} for {cls.__name__}; valid keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory
        if isinstance(value, Mapping) and default is not dataclasses.MISSING and dataclasses.is_dataclass(hints[name]):
            # A section given in part keeps the rest of the owner's default, not the section class's:
            # `data: {datasets: [...]}` must not reset a recipe's `data.train_split="holdout"` to the class default.
            value = _deep_merge(to_dict(default()), value)
        kwargs[name] = _coerce(hints[name], value, f"{where}:{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-safe dict of a config dataclass (paths become strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a config, for logging as run parameters."""
    out: dict[str, Any] = {}
    for key, value in (to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
    node[parts[-1]] = value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        items = [_coerce(item_hint, v, where) if item_hint is not Ellipsis else v for v in value]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        value_hint = args[1] if len(args) == 2 else Any
        return {k: _coerce(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value
