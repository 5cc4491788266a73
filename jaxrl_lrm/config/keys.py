"""What every config key declares about itself: its meaning and, for numbers, its range.

Each section's docstring lists its keys in an `Attributes:` block, one Google-style entry per
field, `name (RANGE): meaning`. RANGE is given for every numeric key and only for those:
`> 0`, `>= 1`, chained `0 <= x < 1`, `any` (any finite number), or alternatives such as
`-1 or >= 1` (a bare number matches itself). `check_ranges` enforces it in each section's `__post_init__` (floats must
also be finite), and `docs/config.md` is generated from the same entries
(`jaxrl_lrm.config.reference`), so a key's documentation, its check and its page cannot drift.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
import types
import typing
from typing import Any, NamedTuple


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


def check(cond: bool, key: str, value: Any, expected: str) -> None:
    """Raises a `ConfigError` `key=value: expected ...` unless `cond`."""
    if not cond:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


class KeyDoc(NamedTuple):
    range: str | None  # the RANGE of `name (RANGE): meaning`, None when not given
    doc: str


_ENTRY = re.compile(r"^(\w+)(?: \((.+?)\))?: (.+)$")


@functools.cache
def key_docs(cls) -> dict[str, KeyDoc]:
    """`{field: KeyDoc}` from the `Attributes:` block of `cls`'s docstring."""
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    docs: dict[str, list] = {}
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            if docs:
                break
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        match = _ENTRY.match(line.strip()) if depth == indent else None
        if match:
            docs[match[1]] = [match[2], match[3]]
        elif docs and depth > indent:
            docs[next(reversed(docs))][1] += " " + line.strip()
        else:
            raise ValueError(f"{cls.__name__}: cannot read docstring line {line.strip()!r}")
    return {k: KeyDoc(r, d) for k, (r, d) in docs.items()}


_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_NUM = r"-?(?:\d+(?:\.\d*)?(?:e-?\d+)?|inf)"
_ONE_SIDED = re.compile(rf"^(<=?|>=?) ({_NUM})$")
_CHAINED = re.compile(rf"^({_NUM}) (<=?) x (<=?) ({_NUM})$")
_EXACT = re.compile(rf"^{_NUM}$")


@functools.cache
def _predicate(spec: str):
    """A function `value -> bool` for a RANGE such as `> 0`, `0 <= x < 1`, `-1 or >= 1`."""
    tests = []
    for part in spec.split(" or "):
        if part == "any":
            tests.append(lambda v: True)
        elif m := _ONE_SIDED.match(part):
            op, bound = _OPS[m[1]], float(m[2])
            tests.append(lambda v, op=op, b=bound: op(v, b))
        elif m := _CHAINED.match(part):
            lo, op1, op2, hi = float(m[1]), _OPS[m[2]], _OPS[m[3]], float(m[4])
            tests.append(lambda v, lo=lo, hi=hi, a=op1, b=op2: a(lo, v) and b(v, hi))
        elif _EXACT.match(part):
            tests.append(lambda v, n=float(part): v == n)
        else:
            raise ValueError(f"unreadable range {spec!r} (part {part!r})")
    return lambda v: any(t(v) for t in tests)


def numeric_kind(tp: Any) -> type | None:
    """`int` or `float` when the annotation `tp` is that number (optionally `| None`)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
    kinds = {a for a in (args or (tp,)) if a is not type(None)}
    return kinds.pop() if kinds in ({int}, {float}) else None


def check_ranges(section, prefix: str) -> None:
    """Raises a `ConfigError` naming the first numeric key of `section` out of its declared
    range (or not finite), e.g. `train.min_lr_ratio=-0.5: expected 0 <= x <= 1`."""
    docs, hints = key_docs(type(section)), typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, kind = getattr(section, f.name), numeric_kind(hints[f.name])
        if kind is None or value is None or isinstance(value, bool):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        spec = docs[f.name].range if f.name in docs else None
        if spec is None:  # a programming error: the drift test names it too
            raise TypeError(f"{type(section).__name__}.{f.name}: no range in its docstring")
        finite = "a finite number" + ("" if spec == "any" else f", {spec}")
        check(math.isfinite(value), key, value, finite)
        check(_predicate(spec)(value), key, value, spec)
