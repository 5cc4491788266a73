"""Floating-point evaluation of simple LaTeX answers: the fast path's symbolic check.

`values(latex)` evaluates an answer built only from numbers, one-letter variables, `\\pi`,
`+ - * /`, `\\cdot`, `\\times`, implicit products, `^`, `\\frac`, `\\sqrt` / `\\sqrt[n]` of
variable-free arguments and parentheses, at `POINTS` fixed variable assignments. Anything
else (functions, `e`, `i`, sets, relations, mixed numbers such as `3\\frac12`, a radical or
fractional power of a variable, complex intermediate values, overflow) gives `None`, and
Math-Verify decides. Pure standard library; linear in the input and bounded by
`MAX_CHARS`, so it is safe to run on the host.
"""

from __future__ import annotations

import math
import re

MAX_CHARS = 200
POINTS = (
    {"base": 0.7310585786, "step": 0.2718281828},
    {"base": 1.6180339887, "step": 0.5772156649},
    {"base": 2.2360679775, "step": 0.1414213562},
)
_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|\\[A-Za-z]+|[A-Za-z]|[-+*/^(){}\[\]]|\s+")
_VARS = frozenset("abcdfghjklmnopqrstuvwxyz")  # no `e` and `i`: constants or variables?
_MUL_CMDS = frozenset({"\\cdot", "\\times"})
_ATOM_START = frozenset({"(", "{", "\\pi", "\\frac", "\\sqrt"})


class _Bail(Exception):
    pass


class _Parser:
    """Recursive descent over tokens into a tree of tuples (evaluated by `_eval`)."""

    def __init__(self, tokens: list[str]) -> None:
        self.t, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _Bail
        self.i += 1
        return tok

    def expr(self):
        node = self.term()
        while self.peek() in ("+", "-"):
            node = (self.take(), node, self.term())
        return node

    def term(self):
        node = self.factor()
        while True:
            tok = self.peek()
            if tok in ("*", "/") or tok in _MUL_CMDS:
                self.take()
                node = ("/" if tok == "/" else "*", node, self.factor())
            elif tok is not None and (tok in _ATOM_START or tok[0].isalnum()):
                if node[0] == "num" and tok == "\\frac":
                    raise _Bail  # `3\frac12` is a mixed number, not a product
                node = ("*", node, self.power())
            else:
                return node

    def factor(self):
        if self.peek() in ("-", "+"):
            sign = self.take()
            node = self.factor()
            return ("neg", node) if sign == "-" else node
        return self.power()

    def power(self):
        node = self.atom()
        if self.peek() == "^":
            self.take()
            exp = self.group() if self.peek() in ("{", "(") else self.single()
            node = ("^", node, exp)
        return node

    def group(self):
        close = {"{": "}", "(": ")", "[": "]"}[self.take()]
        node = self.expr()
        self.take(close)
        return node

    def single(self):
        """`\\frac12`-style one-character argument, or a braced group."""
        tok = self.peek()
        if tok in ("{", "("):
            return self.group()
        if tok is not None and tok.isdigit():
            self.take()
            return ("num", float(tok)) if len(tok) == 1 else self._split(tok)
        if tok in _VARS:
            return ("var", self.take())
        raise _Bail

    def _split(self, tok: str):
        # `\frac12` tokenises as "12": the first digit is this argument, the rest stays.
        self.t[self.i - 1 : self.i] = [tok[0], tok[1:]]
        return ("num", float(tok[0]))

    def atom(self):
        tok = self.peek()
        if tok is None:
            raise _Bail
        if tok in ("(", "{"):
            return self.group()
        self.take()
        if tok[0].isdigit():
            if len(tok) > 16:
                raise _Bail
            return ("num", float(tok))
        if tok in _VARS:
            return ("var", tok)
        if tok == "\\pi":
            return ("num", math.pi)
        if tok == "\\frac":
            return ("/", self.single(), self.single())
        if tok == "\\sqrt":
            index = self.group() if self.peek() == "[" else ("num", 2.0)
            return ("root", self.single(), index)
        raise _Bail


def _has_var(node) -> bool:
    return node[0] == "var" or any(isinstance(c, tuple) and _has_var(c) for c in node[1:])


def _eval(node, env: dict[str, float]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        return env[node[1]]
    if kind == "neg":
        return -_eval(node[1], env)
    if kind == "root":
        if _has_var(node[1]) or _has_var(node[2]):
            raise _Bail  # sqrt(x^2) = |x|: not decidable from positive sample points
        x, n = _eval(node[1], env), _eval(node[2], env)
        if x < 0 or n <= 0:
            raise _Bail
        return x ** (1.0 / n)
    a, b = _eval(node[1], env), _eval(node[2], env)
    if kind == "+":
        return a + b
    if kind == "-":
        return a - b
    if kind == "*":
        return a * b
    if kind == "/":
        if b == 0:
            raise _Bail
        return a / b
    if _has_var(node[2]) or (_has_var(node[1]) and b != int(b)) or abs(b) > 64:
        raise _Bail
    v = a**b
    if isinstance(v, complex):
        raise _Bail
    return v


def values(latex: str) -> tuple[float, ...] | None:
    """The answer's value at each of `POINTS` (variables `a..z` bar `e`, `i`), or `None`.

    `latex` is lightly normalised (`\\left`/`\\right` and `$` removed, `\\dfrac` as `\\frac`).
    """
    if len(latex) > MAX_CHARS:
        return None
    tokens = _TOKEN_RE.findall(latex)
    if "".join(tokens) != latex:
        return None  # characters the tokenizer does not know (",", "=", "\\", ...)
    tokens = [t for t in tokens if not t.isspace()]
    try:
        parser = _Parser(tokens)
        tree = parser.expr()
        if parser.peek() is not None:
            return None
        out = []
        for p in POINTS:  # a variable's value depends on its name only: x and y differ
            env = {n: p["base"] + (ord(n) - 97) * p["step"] for n in _VARS}
            v = _eval(tree, env)
            if not math.isfinite(v):
                return None
            out.append(v)
        return tuple(out)
    except (_Bail, RecursionError, OverflowError, ValueError, ZeroDivisionError):
        return None
