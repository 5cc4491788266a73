"""SymPy side of answer checking; runs inside the worker processes of `math_pool`.

`python -m jaxrl_lrm.rewards.math_sympy` serves requests on stdin/stdout: one JSON line
`[prediction, gold]` (both already normalised) in, one line `1` or `0` out. Importing this
module does not import SymPy; `compare_full` does, on first use.

SymPy only ever sees text produced by `math_latex.latex_to_sympy` and checked by
`math_latex.is_safe` (arithmetic characters, one-letter symbols, whitelisted names), parsed
with a global namespace holding only those names; the parse is unevaluated and the tree is
size-checked (`too_big`) before anything is evaluated, so `9^{9^{9^9}}` or `100000!` are
rejected without being computed. The parent's kill-on-timeout is the backstop.
"""

from __future__ import annotations

import json
import math
import os
import sys
from functools import lru_cache

from jaxrl_lrm.rewards.math_compare import cheap_leaf, compare_nodes, parse
from jaxrl_lrm.rewards.math_latex import SAFE_NAMES, is_safe, latex_to_sympy, to_number

MAX_DIGITS = 5000  # numeric subterms bigger than 10**MAX_DIGITS are not evaluated
MAX_OPS = 300
WORKER_MEMORY_BYTES = 2 << 30
FLOAT_TOL = 1e-6
_POINTS = (-0.731, 1.379, 2.913)
_ENV: dict = {}


def _env() -> dict:
    """Lazily imports SymPy and builds the parser namespace."""
    if not _ENV:
        import sympy
        from sympy.parsing import sympy_parser as sp

        names = {n: getattr(sympy, n) for n in SAFE_NAMES if hasattr(sympy, n)}
        names.update(lamda=sympy.Symbol("lamda"), E=sympy.E, I=sympy.I, oo=sympy.oo, pi=sympy.pi)
        for n in ("Integer", "Float", "Rational", "Symbol", "Function", "factorial", "factorial2",
                  "Add", "Mul", "Pow"):
            names[n] = getattr(sympy, n)
        names["__builtins__"] = {}  # the parsed code may only reach the names above
        _ENV.update(
            sympy=sympy,
            globals=names,
            transformations=sp.standard_transformations
            + (sp.implicit_multiplication, sp.implicit_application, sp.convert_xor),
            parse=sp.parse_expr,
        )
    return _ENV


def _log10_size(e) -> float:
    """A rough upper bound on `log10 |value|` of a subtree (a symbol counts as 10)."""
    sympy = _env()["sympy"]
    if e.is_Rational:
        return max(abs(int(e.p)).bit_length(), int(e.q).bit_length()) * 0.30103
    if isinstance(e, sympy.Pow):
        b = max(_log10_size(e.base), 0.30103)
        if e.exp.is_Rational and abs(e.exp.p) < 10**7:
            return b * abs(float(e.exp))
        x = _log10_size(e.exp)
        return math.inf if x > 7 else b * 10**x
    if isinstance(e, (sympy.factorial, sympy.factorial2)):
        n = _log10_size(e.args[0])
        return math.inf if n > 7 else 10**n * max(n, 1.0)
    if isinstance(e, sympy.binomial):
        return sum(10 ** min(_log10_size(a), 8.0) for a in e.args)
    if not e.args:
        return 1.0
    return sum(_log10_size(a) for a in e.args)


def _nodes(e) -> int:
    """Number of nodes in the tree, counted up to `MAX_OPS + 1`."""
    count, stack = 0, [e]
    while stack and count <= MAX_OPS:
        node = stack.pop()
        count += 1
        stack.extend(node.args)
    return count


def too_big(e) -> bool:
    """True when evaluating `e` could produce a number with more than `MAX_DIGITS` digits."""
    try:
        return _nodes(e) > MAX_OPS or _log10_size(e) > MAX_DIGITS
    except (RecursionError, ValueError, OverflowError, TypeError):
        return True


@lru_cache(maxsize=4096)
def to_sympy(text: str):
    """SymPy expression for a normalised leaf, or `None` if it cannot be parsed safely."""
    conv = latex_to_sympy(text)
    if conv is None or not is_safe(conv):
        return None
    env = _env()
    # Without powers, factorials or binomials nothing can explode: parse evaluated in one pass.
    risky = "**" in conv or "!" in conv or "binomial" in conv or "factorial" in conv
    try:
        e = env["parse"](
            conv, local_dict={}, global_dict=dict(env["globals"]),
            transformations=env["transformations"], evaluate=not risky,
        )
        if not isinstance(e, env["sympy"].Basic) or too_big(e):
            return None
        return e.doit() if risky else e
    except Exception:  # noqa: BLE001 - any parse/evaluation failure means "not comparable"
        return None


def _num(e) -> complex | None:
    try:
        v = complex(e.evalf(30))
    except Exception:  # noqa: BLE001
        return None
    return None if (math.isnan(v.real) or math.isnan(v.imag)) else v


def _close(u: complex, v: complex, rel: float) -> bool:
    return abs(u - v) <= rel * max(1.0, abs(u), abs(v))


def _expr_equal(a: str, b: str, ea, eb) -> bool:
    sympy = _env()["sympy"]
    if ea == eb:
        return True
    if any(isinstance(e, sympy.Tuple | sympy.MatrixBase | sympy.Set) for e in (ea, eb)):
        return False
    diff = ea - eb
    symbols = sorted(diff.free_symbols, key=str)
    if not symbols:
        va, vb = _num(ea), _num(eb)
        if va is None or vb is None:
            return bool(sympy.simplify(diff) == 0)
        if not all(map(math.isfinite, (va.real, va.imag, vb.real, vb.imag))):
            return False  # unequal infinities (equal ones were caught by `ea == eb`)
        na, nb = to_number(a), to_number(b)
        dec = [n[1] for n in (na, nb) if n is not None and n[1] is not None]
        if len(dec) == 1 and dec[0] >= 2 and (na is None or nb is None):
            return abs(va - vb) <= 0.5 * 10 ** -dec[0] * (1 + 1e-12)
        floats = ea.has(sympy.Float) or eb.has(sympy.Float)
        return _close(va, vb, FLOAT_TOL if floats else 1e-12)
    for k, p in enumerate(_POINTS):
        sub = {s: p + 0.1 * i + 0.01 * k for i, s in enumerate(symbols)}
        va, vb = _num(ea.subs(sub)), _num(eb.subs(sub))
        if va is not None and vb is not None and not _close(va, vb, 1e-8):
            return False
    return bool(sympy.expand(diff) == 0 or sympy.simplify(diff) == 0)



def sympy_leaf(a: str, b: str) -> bool:
    """Leaf comparison: cheap checks, then SymPy numeric/symbolic equality."""
    r = cheap_leaf(a, b)
    if r is not None:
        return r
    ea, eb = to_sympy(a), to_sympy(b)
    if ea is None or eb is None:
        return False
    try:
        return _expr_equal(a, b, ea, eb)
    except Exception:  # noqa: BLE001
        return False


def sympy_eq_leaf(l1: str, r1: str, l2: str, r2: str) -> bool:
    """`l1 = r1` and `l2 = r2` are the same equation: `(l1 - r1) / (l2 - r2)` is a nonzero constant."""
    sympy = _env()["sympy"]
    es = [to_sympy(t) for t in (l1, r1, l2, r2)]
    if any(e is None for e in es):
        return False
    try:
        d1, d2 = es[0] - es[1], es[2] - es[3]
        if d2 == 0 or d1 == 0:
            return False
        ratio = sympy.simplify(d1 / d2)
        return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
    except Exception:  # noqa: BLE001
        return False


def compare_full(pred: str, gold: str) -> bool:
    """Full comparison of two normalised answers (structure + SymPy). Never raises."""
    try:
        return bool(compare_nodes(parse(pred), parse(gold), sympy_leaf, sympy_eq_leaf))
    except Exception:  # noqa: BLE001
        return False


def serve() -> None:
    """Request loop of a worker process (stdin/stdout JSON lines)."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing else may write on the protocol channel
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    _env()
    out.write("ready\n")
    for line in sys.stdin:
        try:
            pred, gold = json.loads(line)
            ok = compare_full(str(pred), str(gold))
        except Exception:  # noqa: BLE001
            ok = False
        out.write("1\n" if ok else "0\n")


if __name__ == "__main__":
    sys.setrecursionlimit(3000)
    serve()
