"""String side of math answer checking: normalisation, structure, numbers, LaTeX -> SymPy text.

Pure standard library (no SymPy, no JAX) so that the cheap checks in `rewards.math` run
in-process and the SymPy worker (`rewards.math_sympy`) shares exactly the same rules.

The LaTeX converter is deliberately small: it covers the subset that final answers use
(`\\frac`, `\\sqrt`, powers, `\\pi`, `\\infty`, trig/log, `\\binom`, implicit products, mixed
numbers) and returns `None` for anything else, so an unknown construct is "not equal" rather than
a guess. Its output only ever contains the characters and identifiers in `SAFE_NAMES`, which is
what makes handing it to `sympy.parse_expr` (an `eval` underneath) safe.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # longer answers are compared as strings only
MAX_DEPTH = 24  # deeper bracket nesting is compared as strings only
MAX_INT_DIGITS = 60

FUNCTIONS = frozenset(
    "sqrt root sin cos tan cot sec csc asin acos atan sinh cosh tanh log exp Abs binomial "
    "factorial factorial2 floor ceiling".split()
)
CONSTANTS = frozenset({"pi", "E", "I", "oo"})
GREEK = frozenset(
    "alpha beta gamma delta epsilon zeta eta theta iota kappa mu nu xi rho sigma tau phi chi "
    "psi omega".split()
)
SAFE_NAMES = FUNCTIONS | CONSTANTS | GREEK | {"lamda"}
_PLAIN_WORDS = {"sqrt": "sqrt", "pi": "pi", "inf": "oo", "infinity": "oo", "oo": "oo",
                "ln": "log", "log": "log", "exp": "exp", "sin": "sin", "cos": "cos", "tan": "tan"}
_CMD = {
    "pi": " pi ", "infty": " oo ", "infinity": " oo ", "cdot": "*", "times": "*", "ast": "*",
    "div": "/", "ln": " log ", "log": " log ", "exp": " exp ", "lambda": " lamda ",
    "arcsin": " asin ", "arccos": " acos ", "arctan": " atan ", "circ": "", "degree": "",
    "%": "", "$": "", ",": "", ";": "", ":": "", "!": "", " ": "", "quad": "", "qquad": "",
    "left": "", "right": "", "displaystyle": "", "cdotp": "*", "varepsilon": " epsilon ",
    "varphi": " phi ", "vartheta": " theta ",
}
_CMD.update({f: f" {f} " for f in "sin cos tan cot sec csc sinh cosh tanh".split()})
_CMD.update({g: f" {g} " for g in GREEK})
_FUNC_CMDS = frozenset("sin cos tan cot sec csc sinh cosh tanh ln log exp arcsin arccos arctan".split())
_TEXT_CMDS = {"text", "textbf", "textit", "mathrm", "mathbf", "mathit", "mbox", "operatorname",
              "boldsymbol", "mathsf", "texttt"}
_FRAC = {"frac", "dfrac", "tfrac", "cfrac"}
_BINOM = {"binom", "dbinom", "tbinom"}
_UNITS = frozenset(
    "cm m km mm inch inches in ft feet foot yard yards yd mile miles meter meters metre metres "
    "centimeter centimeters kilometer kilometers unit units sq square cubic dollars dollar cents "
    "cent hours hour hr hrs minutes minute min mins seconds second sec s days day weeks week "
    "years year months month g kg gram grams kilograms mph pounds pound lb lbs liters liter "
    "litres ml mL l degrees degree students people apples percent points marbles cookies".split()
)
_CHOICE_RE = re.compile(r"^\(?([A-E])\)?(?:[.:)]?\s.*)?$|^\(([A-E])\).*$")
_MIXED_RE = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$|^(-?)(\d+)\s+(\d+)/(\d+)$")
_TEXT_RE = re.compile(r"\\(?:" + "|".join(sorted(_TEXT_CMDS)) + r")\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def normalize(s: str) -> str:
    """Canonical text of an answer: delimiters, spacing, units, degrees, %, currency removed."""
    s = s.strip()
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = s.replace("\\[", "").replace("\\]", "").replace("{,}", "")
    s = re.sub(r"\\(?:d|t|c)frac", r"\\frac", s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)\s*(?=[()\[\]|.]|\\[{}|])", "", s)
    s = re.sub(r"(?<!\\)\.(?=$)", "", s.replace("\\left.", "").replace("\\right.", ""))
    s = re.sub(r"(?<!\\)\\[,;:! ]|\\q?quad|~", " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\^\s*\\circ", "", s)
    s = re.sub(r"\\?%|\\percent", "", s)
    s = s.replace("\\emptyset", "\\{\\}").replace("\\varnothing", "\\{\\}")
    s = s.replace("\\dots", "\\cdots").replace("\\ldots", "\\cdots")
    # `\text{...}`: a unit after a value is dropped (with a following ^2/^3), otherwise unwrapped.
    while True:
        m = _TEXT_RE.search(s)
        if not m:
            break
        inner, before = m.group(1).strip(), s[: m.start()].strip()
        tail = s[m.end():]
        if before and re.fullmatch(r"[A-Za-z .]+", inner) and not re.search(r"[=,]\s*$", before):
            tail = re.sub(r"^\s*\^\s*\{?[23]\}?", "", tail)
            s = s[: m.start()] + tail
        else:
            s = s[: m.start()] + inner + tail
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[A-Za-z]\s*\\in\s*", "", s)
    # Plain unit words after a value ("18 dollars", "5 cm^2").
    while True:
        m = re.fullmatch(r"(.*?[\d})])\s+([A-Za-z]+)(?:\^\d)?", s)
        if not m or m.group(2) not in _UNITS:
            break
        s = m.group(1).strip()
    if _THOUSANDS_RE.match(s.replace(" ", "")):
        s = s.replace(",", "").replace(" ", "")
    if re.fullmatch(r"[+-]?\d{1,3}( \d{3})+(\.\d+)?", s):
        s = s.replace(" ", "")
    return re.sub(r"\s+", " ", s).strip()


def squash(s: str) -> str:
    """Normalised text without spaces, for exact string comparison."""
    return normalize(s).replace(" ", "")


def choice_letter(s: str) -> str | None:
    """The multiple-choice letter in `(B)`, `B`, `B)`, `\\text{(B)}`, `(B) 42`; else `None`."""
    m = _CHOICE_RE.match(normalize(s))
    return (m.group(1) or m.group(2)) if m else None


def to_number(s: str) -> tuple[Fraction, int | None] | None:
    """`(value, decimals)` for a plain number (int, decimal, a/b, \\frac{a}{b}, mixed, 1e3).

    `decimals` is the count of digits after the point for a decimal literal, else `None`.
    """
    s = re.sub(r"\s+", " ", s.strip())
    m = _MIXED_RE.match(s)
    if m:
        g = [x for x in m.groups() if x is not None]
        sign = -1 if g[0] == "-" else 1
        if int(g[3]) == 0:
            return None
        return sign * (int(g[1]) + Fraction(int(g[2]), int(g[3]))), None
    s = s.replace(" ", "")
    if len(s) > MAX_INT_DIGITS:
        return None
    m = re.fullmatch(r"([+-]?)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", s)
    if m:
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        return (None if den == 0 else ((-1 if m.group(1) == "-" else 1) * Fraction(num, den), None))
    m = re.fullmatch(r"([+-]?\d+)/(\d+)", s)
    if m:
        return None if int(m.group(2)) == 0 else (Fraction(int(m.group(1)), int(m.group(2))), None)
    m = re.fullmatch(r"[+-]?(\d*)\.(\d+)", s)
    if m:
        return Fraction(s), len(m.group(2))
    if re.fullmatch(r"[+-]?\d+", s):
        return Fraction(int(s)), None
    m = re.fullmatch(r"([+-]?\d+(?:\.(\d+))?)[eE]([+-]?\d{1,3})", s)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(3)), None
    return None


def _split_top(s: str, sep: str) -> list[str]:
    """Splits `s` on `sep` outside any (), [], {} or \\{\\} nesting."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and s.startswith(sep, i) and depth == 0:
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        if c == "\\":
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _depth_ok(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth > MAX_DEPTH:
            return False
    return True


def _enclosed(s: str, opener: str, closer: str) -> bool:
    """True iff `s` is `opener ... closer` with the opener matched by that very closer."""
    if not (s.startswith(opener) and s.endswith(closer)) or len(s) < len(opener) + len(closer):
        return False
    depth = 0
    for i, c in enumerate(s[: len(s) - len(closer)]):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i >= len(opener) - 1:
            return False
    return True


def structure(s: str):
    """Parses a normalised answer into a small tree of tuples.

    Nodes: `("expr", text)`, `("tuple", [...])`, `("set", [...])` (unordered, from `\\{...\\}`),
    `("list", [...])` (unordered, a bare comma list or `a \\pm b`), `("interval", lo, hi,
    lo_closed, hi_closed)`, `("union", [...])`, `("eq", lhs, rhs)`, `("matrix", [[...], ...])`.
    """
    s = s.strip()
    m = re.fullmatch(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", s, re.S)
    if m:
        rows = [r for r in _split_top(m.group(1), "\\\\") if r]
        return ("matrix", [[structure(c) for c in _split_top(r, "&")] for r in rows])
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("union", [structure(p) for p in parts])
    if _enclosed(s, "\\{", "\\}"):
        inner = s[2:-2].strip()
        return ("set", [structure(p) for p in _split_top(inner, ",")] if inner else [])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _enclosed(s, s[0], s[-1]):
        items = _split_top(s[1:-1], ",")
        if len(items) == 2 and (s[0], s[-1]) != ("(", ")") and all(items):
            return ("interval", structure(items[0]), structure(items[1]), s[0] == "[", s[-1] == "]")
        if len(items) >= 2:
            return ("tuple", [structure(p) for p in items])
    items = _split_top(s, ",")
    if len(items) >= 2 and all(items):
        return ("list", [structure(p) for p in items])
    sides = _split_top(s, "=")
    if len(sides) == 2 and all(sides):
        return ("eq", structure(sides[0]), structure(sides[1]))
    if s.count("\\pm") == 1:
        return ("list", [("expr", s.replace("\\pm", "+")), ("expr", s.replace("\\pm", "-"))])
    return ("expr", s)


def is_variable(node) -> bool:
    """True for an `("expr", ...)` that is one variable name such as `x`, `y_1` or `\\theta`."""
    return node[0] == "expr" and bool(
        re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?|\\[a-z]+", node[1].replace(" ", ""))
    )


def _arg(s: str, i: int) -> tuple[str, int]:
    """The next macro argument from `s[i:]`: a brace group's content or a single token."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("missing argument")
    if s[i] == "{":
        depth, j = 0, i
        while j < len(s):
            depth += (s[j] == "{") - (s[j] == "}")
            if depth == 0:
                return s[i + 1 : j], j + 1
            j += 1
        raise ValueError("unbalanced braces")
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def latex_to_sympy(s: str) -> str | None:
    """Converts a normalised LaTeX/plain leaf to text for `parse_expr`; `None` if unsupported."""
    if len(s) > MAX_ANSWER_CHARS or not _depth_ok(s):
        return None
    m = _MIXED_RE.match(s.strip())
    if m:
        g = [x for x in m.groups() if x is not None]
        s = f"{g[0]}({g[1]}+{g[2]}/{g[3]})"
    try:
        out = _convert(s)
    except (ValueError, RecursionError):
        return None
    out = re.sub(r"\s+", " ", out).strip()
    if not out or not is_safe(out):
        return None
    return out


def _convert(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", s[i:])
            name, i = m.group(1), i + m.end()
            if name in _FRAC or name in _BINOM:
                a, i = _arg(s, i)
                b, i = _arg(s, i)
                fn = "binomial" if name in _BINOM else ""
                sep = "," if fn else ")/("
                out.append(f" {fn}(({_convert(a)}){sep}({_convert(b)})) ")
            elif name == "sqrt":
                n = None
                if i < len(s) and s[i] == "[":
                    j = s.index("]", i)
                    n, i = s[i + 1 : j], j + 1
                a, i = _arg(s, i)
                a = _convert(a)
                out.append(f" sqrt({a}) " if n is None else f" root({a},({_convert(n)})) ")
            elif name in _TEXT_CMDS:
                a, i = _arg(s, i)
                out.append(f" {_convert(a)} ")
            elif name in _FUNC_CMDS and i < len(s) and s[i] not in "({^_":
                a, i = _arg(s, i)  # `\sin x` -> sin(x): one token as the argument
                out.append(f"{_CMD[name]}({_convert(a)})")
            elif name in _CMD:
                out.append(_CMD[name])
            else:
                raise ValueError(f"unsupported LaTeX command \\{name}")
        elif c == "^":
            a, i = _arg(s, i + 1)
            out.append(f"**({_convert(a)})")
        elif c == "_":
            a, i = _arg(s, i + 1)
            if not (out and re.search(r"[A-Za-z]$", out[-1].rstrip()) and re.fullmatch(r"\w+", a)):
                raise ValueError("unsupported subscript")
            out[-1] = out[-1].rstrip()
            out.append(f"_{a} ")
        elif c in "{}":
            out.append("(" if c == "{" else ")")
            i += 1
        elif c.isalpha():
            m = re.match(r"[A-Za-z]+", s[i:])
            word, i = m.group(0), i + m.end()
            if word in _PLAIN_WORDS:
                out.append(f" {_PLAIN_WORDS[word]} ")
            else:  # single letters; `e` and `i` are the constants, as in answers they nearly are
                out.append("".join({"e": " E ", "i": " I "}.get(ch, f" {ch} ") for ch in word))
        else:
            out.append(c)
            i += 1
    return "".join(out)


_SAFE_CHARS = re.compile(r"[0-9A-Za-z_+\-*/().,! ]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_safe(text: str) -> bool:
    """True iff `text` uses only arithmetic characters and whitelisted or one-letter names."""
    if not _SAFE_CHARS.fullmatch(text) or "__" in text:
        return False
    for name in _IDENT.findall(text):
        if name not in SAFE_NAMES and not re.fullmatch(r"[A-Za-z](_[A-Za-z0-9]+)?", name):
            return False
    return not re.search(r"[A-Za-z_)]\s*\.", text)
