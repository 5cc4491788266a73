"""The built-in `calculator` tool: exact arithmetic over rationals, no `eval`.

The expression is parsed with `ast.parse(mode="eval")` and walked node by node; only number
literals, `+ - * / // % **`, unary `+ -`, parentheses and the functions in `_FUNCTIONS` are
accepted, everything else (names, attributes, calls of anything else, strings, comprehensions)
is an error naming the construct. Numbers are `fractions.Fraction`, so `0.1 + 0.2` is exactly
`3/10`; the result is printed as an integer, a terminating decimal, or `p/q`. Sizes are
bounded (`MAX_DIGITS` digits in any intermediate value, `MAX_EXPONENT` for `**`, `MAX_CHARS`
of input), so an expression cannot make the tool run for long or exhaust memory.
"""

from __future__ import annotations

import ast
import math
import operator
from fractions import Fraction

MAX_CHARS = 1000
MAX_DIGITS = 400
MAX_EXPONENT = 1000


class CalculatorError(ValueError):
    """The expression is not one the calculator accepts; the message says why."""


def _check_size(x: Fraction) -> Fraction:
    digits = max(len(str(abs(x.numerator))), len(str(x.denominator)))
    if digits > MAX_DIGITS:
        raise CalculatorError(f"a value has more than {MAX_DIGITS} digits")
    return x


def _power(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1:
        raise CalculatorError(f"only integer exponents are supported, got {b}")
    if abs(b) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {b} is larger than {MAX_EXPONENT}")
    if a == 0 and b < 0:
        raise CalculatorError("zero to a negative power")
    bits = abs(a.numerator).bit_length() + a.denominator.bit_length()
    if bits * abs(int(b)) > MAX_DIGITS * 4:  # 4 bits per digit bounds the result's size
        raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")
    return a ** int(b)


def _divide(op):
    def run(a: Fraction, b: Fraction) -> Fraction:
        if b == 0:
            raise CalculatorError("division by zero")
        return Fraction(op(a, b))

    return run


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide(operator.truediv),
    ast.FloorDiv: _divide(operator.floordiv),
    ast.Mod: _divide(operator.mod),
    ast.Pow: _power,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _sqrt(x: Fraction) -> Fraction:
    if x < 0:
        raise CalculatorError(f"sqrt of a negative number ({x})")
    num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
    if num * num != x.numerator or den * den != x.denominator:
        raise CalculatorError(f"sqrt({x}) is not rational")
    return Fraction(num, den)


_FUNCTIONS = {
    "abs": (1, abs),
    "min": (None, min),
    "max": (None, max),
    "sqrt": (1, _sqrt),
    "round": (1, lambda x: Fraction(round(x))),
    "floor": (1, lambda x: Fraction(math.floor(x))),
    "ceil": (1, lambda x: Fraction(math.ceil(x))),
}


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"unsupported literal {node.value!r}; expected a number")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise CalculatorError("a number literal is out of the floating-point range")
        return _check_size(Fraction(str(node.value)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _check_size(_BINARY[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        arity, fn = _FUNCTIONS.get(node.func.id, (0, None))
        if fn is not None and node.args and (arity is None or len(node.args) == arity):
            return _check_size(Fraction(fn(*[_eval(a) for a in node.args])))
        raise CalculatorError(
            f"unsupported call {ast.unparse(node)!r}; functions: {sorted(_FUNCTIONS)}"
        )
    raise CalculatorError(f"unsupported expression {ast.unparse(node)!r}")


def format_number(x: Fraction) -> str:
    """An integer as is, a terminating decimal in decimal notation, anything else as `p/q`."""
    if x.denominator == 1:
        return str(x.numerator)
    den, twos, fives = x.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{x.numerator}/{x.denominator}"
    places = max(twos, fives)
    scaled = abs(x.numerator) * 10**places // x.denominator
    text = str(scaled).rjust(places + 1, "0")
    return ("-" if x < 0 else "") + f"{text[:-places]}.{text[-places:]}".rstrip("0")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression.

    Raises:
      CalculatorError: for anything but arithmetic on numbers (the message names it).
    """
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression has {len(expression)} characters; at most {MAX_CHARS}")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        return _eval(ast.parse(text, mode="eval"))
    except SyntaxError as e:
        raise CalculatorError(f"cannot parse {expression!r}: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise CalculatorError("the expression is nested too deeply") from None


def calculator(expression: str) -> str:
    """The tool: the value of `expression` as text (see `format_number`)."""
    return format_number(evaluate(expression))
