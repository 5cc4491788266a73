"""Code rewards: run the completion's code against unit tests in the sandbox.

`execute` and `ExecResult` live in `rewards/sandbox.py` and are re-exported here; assert tests
are judged by `rewards/code_harness.py`, outside the program's process.
"""

import ast
import json
import re
from collections.abc import Sequence

from jaxrl_lrm.rewards.code_harness import run_assert_test
from jaxrl_lrm.rewards.sandbox import ExecResult, SandboxUnavailable, execute

__all__ = [
    "ExecResult",
    "SandboxUnavailable",
    "execute",
    "extract_code",
    "parse_tests",
    "unit_test_reward",
]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """Returns the body of the last fenced (```) code block of `completion`, or None.

    Any language tag is accepted (```python, ```py, ``` with none); an unclosed final fence does
    not count as a block.
    """
    blocks = _FENCE.findall(completion)
    if not blocks:
        return None
    body = blocks[-1][1]
    return body if body.strip() else None


def parse_tests(tests) -> tuple[str, list]:
    """Normalises a `tests` entry to `("assert", [snippets])` or `("io", [(stdin, stdout)])`.

    Accepted formats (a JSON string of either of the last three is decoded first):
      * a string of Python source: each top-level `assert` statement is one test; every other
        top-level statement (imports, helper definitions) is set-up run before each test;
      * a list of strings: each string is one test (usually a single `assert` statement);
      * a list of `{"input": str, "output": str}` dicts: stdin/stdout cases;
      * a dict `{"inputs": [str, ...], "outputs": [str, ...]}` (APPS / TACO layout): the same.

    Raises:
      ValueError: on any other shape, an empty test list, or unparsable assert source.
    """
    if isinstance(tests, str) and tests.lstrip()[:1] in ("[", "{"):
        try:
            tests = json.loads(tests)
        except ValueError:
            pass  # Python source that happens to start with a bracket
    if isinstance(tests, str):
        try:
            tree = ast.parse(tests)
        except SyntaxError as e:
            raise ValueError(
                f"tests: assert source does not parse ({e.msg}): {tests[:80]!r}"
            ) from e
        setup = [
            ast.get_source_segment(tests, n) for n in tree.body if not isinstance(n, ast.Assert)
        ]
        asserts = [ast.get_source_segment(tests, n) for n in tree.body if isinstance(n, ast.Assert)]
        if not asserts:
            raise ValueError(f"tests: no top-level assert statement in {tests[:80]!r}")
        prefix = "\n".join(setup)
        return "assert", [f"{prefix}\n{a}" if prefix else a for a in asserts]
    if isinstance(tests, dict) and set(tests) >= {"inputs", "outputs"}:
        ins, outs = tests["inputs"], tests["outputs"]
        if len(ins) != len(outs):
            raise ValueError(f"tests: {len(ins)} inputs but {len(outs)} outputs")
        tests = [{"input": i, "output": o} for i, o in zip(ins, outs)]
    if isinstance(tests, Sequence) and not isinstance(tests, str | bytes) and len(tests) > 0:
        if all(isinstance(t, str) for t in tests):
            return "assert", list(tests)
        if all(isinstance(t, dict) and {"input", "output"} <= set(t) for t in tests):
            return "io", [(_as_text(t["input"]), _as_text(t["output"])) for t in tests]
    raise ValueError(
        "tests must be assert source (str), a non-empty list of assert strings, a list of "
        f'{{"input","output"}} dicts or {{"inputs","outputs"}}; got {str(tests)[:80]!r}'
    )


def _as_text(x) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def _same_output(got: str, want: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip("\n").splitlines()).rstrip()
    return norm(got) == norm(want)


def unit_test_reward(
    prompts: list[str],
    completions: list[str],
    tests: list,
    *,
    timeout_s: float = 2.0,
    memory_mb: int = 512,
    **_,
) -> list[float]:
    """Fraction of `tests` passed by the last fenced code block of each completion.

    Each test is a separate sandboxed run (so one test's crash or state cannot affect another),
    and the verdict never rests on the program's exit status or its own objects: for an assert
    test the program's code runs contained and the test (which the program never sees) runs in
    this process, calling the program's functions through a channel and comparing the plain
    values they return with strict types (`code_harness.run_assert_test`), all within
    `timeout_s`; for a stdin/stdout case, the program is `code`, fed the input, and passes iff it
    exits 0 and its stdout equals the expected output up to trailing whitespace on each line and
    trailing blank lines. A completion with no fenced code block scores 0. See `parse_tests` for
    the accepted formats of a `tests` entry.

    Args:
      prompts: unused, for the common signature.
      completions: model outputs.
      tests: one entry per completion, in any format `parse_tests` accepts.
      timeout_s: wall-clock limit per run.
      memory_mb: address-space limit per run.

    Returns:
      One reward in [0, 1] per completion.

    Raises:
      ValueError: if `tests` does not have one entry per completion, or an entry is malformed.
      SandboxUnavailable: if the kernel lacks a feature the sandbox needs.
    """
    if len(tests) != len(completions):
        raise ValueError(f"tests has {len(tests)} entries for {len(completions)} completions")
    rewards = []
    for completion, entry in zip(completions, tests):
        kind, cases = parse_tests(entry)
        code = extract_code(completion)
        if code is None:
            rewards.append(0.0)
            continue
        passed = 0
        for case in cases:
            if kind == "assert":
                passed += run_assert_test(code, case, timeout_s=timeout_s, memory_mb=memory_mb)
            else:
                r = execute(code, stdin=case[0], timeout_s=timeout_s, memory_mb=memory_mb)
                passed += r.status == "ok" and _same_output(r.stdout, case[1])
        rewards.append(passed / len(cases))
    return rewards
