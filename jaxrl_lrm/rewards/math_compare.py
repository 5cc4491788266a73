"""Structural comparison of parsed answers with a pluggable leaf comparison (pure stdlib).

`compare_nodes` walks two trees from `math_latex.structure` and answers `True`, `False` or
`None` (undecided). In-process it runs with `cheap_leaf` (string and exact-number checks); the
SymPy worker runs the same walk with a leaf comparison that falls back to SymPy.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache

from jaxrl_lrm.rewards.math_latex import (
    MAX_ANSWER_CHARS,
    is_variable,
    squash,
    structure,
    to_number,
)

Leaf = Callable[[str, str], "bool | None"]
EqLeaf = Callable[[str, str, str, str], "bool | None"]
FLOAT_REL_TOL = 1e-6


@lru_cache(maxsize=8192)
def parse(normalized: str):
    """Cached `structure` of a normalised answer (golds repeat across a group)."""
    return structure(normalized)


def numbers_equal(x: Fraction, dx: int | None, y: Fraction, dy: int | None) -> bool:
    """Exact for rationals; rounding-aware when exactly one side is a decimal literal.

    Two exact values (integers, fractions) must be equal. Two decimals are compared with a
    relative tolerance of `FLOAT_REL_TOL`. A decimal with `d >= 2` digits after the point
    equals an exact value `v` that it cannot represent when `|v - x| <= 0.5 * 10**-d`
    (`0.33` == `1/3`, `0.67` == `2/3`).
    """
    if x == y:
        return True
    if dx is None and dy is None:
        return False
    if dx is not None and dy is not None:
        return abs(x - y) <= FLOAT_REL_TOL * max(abs(x), abs(y))
    (dec, d), exact = ((x, dx), y) if dx is not None else ((y, dy), x)
    if d < 2 or (exact * 10**d).denominator == 1:
        return abs(x - y) <= FLOAT_REL_TOL * max(abs(x), abs(y))
    return abs(exact - dec) <= Fraction(1, 2 * 10**d)


def cheap_leaf(a: str, b: str) -> bool | None:
    """String equality, then exact/rounded number comparison; `None` when neither applies."""
    if squash(a) == squash(b):
        return True
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False
    na, nb = to_number(a), to_number(b)
    if na is not None and nb is not None:
        return numbers_equal(na[0], na[1], nb[0], nb[1])
    return None


def _all(results) -> bool | None:
    """Three-valued AND: False wins, then None, else True."""
    results = list(results)
    if any(r is False for r in results):
        return False
    return None if any(r is None for r in results) else True


def _unordered(xs: list, ys: list, cmp) -> bool | None:
    if len(xs) != len(ys):
        return False
    unused, undecided = list(range(len(ys))), False
    for x in xs:
        for j in unused:
            r = cmp(x, ys[j])
            if r:
                unused.remove(j)
                break
            undecided |= r is None
        else:
            return None if undecided else False
    return True


def _canon(n):
    """Unwraps one-element unions/sets/lists; a 2-tuple becomes an open interval."""
    if n[0] in ("union", "set", "list") and len(n[1]) == 1:
        return _canon(n[1][0])
    return n


def compare_nodes(a, b, leaf: Leaf, eq_leaf: EqLeaf | None = None) -> bool | None:
    """Compares two `structure` trees; `a` is the prediction, `b` the gold."""
    a, b = _canon(a), _canon(b)
    rec = lambda x, y: compare_nodes(x, y, leaf, eq_leaf)
    if a[0] == "eq" and b[0] != "eq" and is_variable(a[1]):
        return rec(a[2], b)  # `x = 5` against `5`
    if b[0] == "eq" and a[0] != "eq" and is_variable(b[1]):
        return rec(a, b[2])
    if a[0] == "tuple" and b[0] == "interval" and len(a[1]) == 2:
        a = ("interval", a[1][0], a[1][1], False, False)
    if b[0] == "tuple" and a[0] == "interval" and len(b[1]) == 2:
        b = ("interval", b[1][0], b[1][1], False, False)
    kinds = {a[0], b[0]}
    if kinds <= {"set", "list"} or kinds == {"union"}:
        return _unordered(a[1], b[1], rec)
    if kinds <= {"tuple", "list"}:
        return len(a[1]) == len(b[1]) and _all(rec(x, y) for x, y in zip(a[1], b[1]))
    if a[0] != b[0]:
        return False
    if a[0] == "expr":
        return leaf(a[1], b[1])
    if a[0] == "interval":
        if a[3:] != b[3:]:
            return False
        return _all([rec(a[1], b[1]), rec(a[2], b[2])])
    if a[0] == "matrix":
        if [len(r) for r in a[1]] != [len(r) for r in b[1]]:
            return False
        return _all(rec(x, y) for ra, rb in zip(a[1], b[1]) for x, y in zip(ra, rb))
    if a[0] == "eq":
        same = _all([rec(a[1], b[1]), rec(a[2], b[2])])
        if same:
            return True
        swapped = _all([rec(a[1], b[2]), rec(a[2], b[1])])
        if swapped:
            return True
        if eq_leaf is None or not all(n[0] == "expr" for n in (a[1], a[2], b[1], b[2])):
            return None if None in (same, swapped) else False
        return eq_leaf(a[1][1], a[2][1], b[1][1], b[2][1])
    return False
