"""Reading configs: YAML and dotted overrides into the typed sections, and back to YAML.

Unknown keys, ill-typed values, YAML syntax errors and malformed overrides are all reported as
`ConfigError`s naming the key (or the file and line) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxrl_lrm.config.keys import ConfigError
from jaxrl_lrm.config.sections import RewardSpec
from jaxrl_lrm.config.training import Config


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _value(value: Any, tp: Any, key: str) -> Any:
    wants_float = tp is float or float in typing.get_args(tp)
    if wants_float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif wants_float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it is
        try:
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(value, tp):
        raise ConfigError(f"{key}={value!r}: expected a value of type {tp}")
    return value


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}={raw!r}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; allowed here: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        elif typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is RewardSpec:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{key}={value!r}: expected a list of reward specs")
            kwargs[name] = tuple(
                _build(RewardSpec, {"fn": v} if isinstance(v, str) else v, f"{key}[{i}]")
                for i, v in enumerate(value)
            )
        else:
            kwargs[name] = _value(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a list entry's own checks name it `key[]`; give its index
        generic = re.sub(r"\[\d+\]$", "[]", prefix)
        if generic != prefix and str(e).startswith(generic + "."):
            raise ConfigError(prefix + str(e)[len(generic) :]) from None
        raise
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _parse_scalar(item: str, text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies `key.path=value` strings (values parsed as YAML) to a raw config dict."""
    raw = _deepcopy(raw)
    for item in overrides:
        path, eq, text = item.partition("=")
        parts = path.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        node = raw
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty YAML section
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(item, text)
    return raw


def _deepcopy(x):
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def from_dict(raw: dict) -> Config:
    return _build(Config, raw or {}, "")


def read_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML file; a missing file or a syntax error is a
    `ConfigError` naming the file (and the line and column)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{str(path)!r}: expected a YAML mapping at the top level")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config (or the defaults when `path` is None) and applies overrides."""
    raw = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(raw, list(overrides or [])))


def to_dict(config: Config) -> dict:
    def conv(x):
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        return x

    return conv(config)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(config))


def differences(old: Config, new: Config) -> list[str]:
    """`key: old -> new` for every dotted key whose resolved value differs."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    a, b = flat(to_dict(old)), flat(to_dict(new))
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
