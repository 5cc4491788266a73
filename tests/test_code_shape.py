"""The package's shape rules: no function longer than 80 lines, no module past 400 lines
(../shared/STYLE.md), checked over the source so they cannot drift."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxrl_lrm"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 420  # "files under ~400 lines"


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_exceeds_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in _functions(tree):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{fn.lineno} {fn.name} ({n})")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_no_module_exceeds_its_budget():
    big = [
        f"{p.relative_to(PACKAGE.parent)} ({n})"
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, "modules over the line budget:\n" + "\n".join(big)
