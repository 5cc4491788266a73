"""Tests of rewards.math: extraction, a labelled equivalence table, timeouts under threads."""

import threading
import time

import pytest

from jaxrl_lrm.rewards.math import (
    accuracy_reward,
    extract_answer,
    extract_gsm8k_answer,
    verify,
    warmup,
)


@pytest.fixture(scope="module", autouse=True)
def _pool():
    warmup()
    time.sleep(2.0)  # let the workers import SymPy before timed tests


# (response answer, gold, expected). The response side is boxed by the test.
CASES = [
    # integers, thousands separators, signs
    ("42", "42", True), ("42", "43", False), ("1,000", "1000", True), ("1{,}000", "1000", True),
    ("1\\,000", "1000", True), ("-7", "-7", True), ("-7", "7", False), ("+5", "5", True),
    ("1,234,567", "1234567", True), ("12,34", "1234", False),
    # decimals, fractions, floats with tolerance / rounding
    ("0.5", "\\frac{1}{2}", True), ("\\dfrac{1}{2}", "0.5", True), ("\\tfrac{3}{4}", "0.75", True),
    ("\\frac12", "1/2", True), ("2/4", "\\frac{1}{2}", True), ("0.33", "\\frac{1}{3}", True),
    ("0.3", "\\frac{1}{3}", False), ("0.667", "\\frac{2}{3}", True), ("1.5", "1.54", False),
    ("3.0", "3", True), ("2.50", "2.5", True), ("1e3", "1000", True), ("0.1", "0.2", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False), ("3.14", "\\pi", True), ("3.1", "\\pi", False),
    ("3.14159", "\\pi", True), ("1.4142", "\\sqrt{2}", True), ("1.5", "\\sqrt{2}", False),
    # mixed numbers
    ("3\\frac{1}{2}", "\\frac{7}{2}", True), ("3 1/2", "3.5", True), ("-2\\frac{1}{4}", "-2.25", True),
    ("3\\frac{1}{2}", "\\frac{3}{2}", False),
    # units, text, degrees, percent, currency
    ("10\\text{ cm}", "10", True), ("10 \\text{cm}^2", "10", True), ("18 dollars", "18", True),
    ("30^\\circ", "30", True), ("30^{\\circ}", "30", True), ("45°", "45", True), ("50\\%", "50", True),
    ("\\$5.00", "5", True), ("\\$5", "6", False), ("\\text{5 apples}", "5", True),
    ("12\\text{ inches}", "13", False),
    # multiple choice
    ("\\text{(B)}", "B", True), ("(B)", "B", True), ("B", "(B)", True), ("C", "B", False),
    ("\\textbf{(D)}", "D", True), ("(A) 42", "A", True), ("(A) 42", "B", False),
    # x = 5 versus 5
    ("x = 5", "5", True), ("x=5", "x = 5", True), ("y = 3", "4", False), ("5", "x=5", True),
    # radicals, powers, constants
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True), ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True), ("\\sqrt{8}", "3", False), ("\\sqrt[3]{27}", "3", True),
    ("2^{10}", "1024", True), ("2^{10}", "1000", False), ("e^{i\\pi}", "-1", True),
    ("\\ln(e^2)", "2", True), ("\\binom{5}{2}", "10", True), ("5!", "120", True),
    ("\\pi r^2", "r^2\\pi", True), ("2\\pi", "\\pi", False), ("\\left(\\frac{1}{2}\\right)^2", "\\frac14", True),
    ("sqrt(2)/2", "\\frac{\\sqrt{2}}{2}", True), ("\\infty", "\\infty", True), ("\\infty", "-\\infty", False),
    # symbolic expressions
    ("2x+1", "1+2x", True), ("x^2-1", "(x-1)(x+1)", True), ("x^2+1", "(x+1)^2", False),
    ("\\frac{x}{2}", "0.5x", True), ("\\sqrt{x^2}", "x", False), ("2\\sin x\\cos x", "\\sin(2x)", True),
    ("\\sin^2 x + \\cos^2 x", "2", False), ("x_1 + x_2", "x_2 + x_1", True), ("a+b", "a-b", False),
    ("\\frac{a}{b}", "a b^{-1}", True), ("3x", "3y", False),
    # equations
    ("y = 2x + 1", "2x - y + 1 = 0", True), ("y=2x+1", "y=2x", False), ("2y = 4x + 2", "y = 2x + 1", True),
    ("x^2 + y^2 = 1", "y^2 + x^2 = 1", True), ("x^2 + y^2 = 1", "x^2 + y^2 = 2", False),
    # sets, unordered lists, +-
    ("\\{1, 2\\}", "\\{2, 1\\}", True), ("\\{1, 2\\}", "\\{1, 3\\}", False), ("1, 2, 3", "3, 1, 2", True),
    ("1, 2", "1, 2, 3", False), ("1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2", True),
    ("\\{\\frac12, 3\\}", "\\{3, 0.5\\}", True), ("\\emptyset", "\\{\\}", True), ("x \\in \\{1,2\\}", "\\{1,2\\}", True),
    ("\\{5\\}", "5", True),
    # tuples, ordered
    ("(1, 2)", "(1, 2)", True), ("(1, 2)", "(2, 1)", False), ("(\\frac12, -3)", "(0.5, -3)", True),
    ("(1, 2, 3)", "(1, 2)", False), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", True),
    # intervals
    ("[1, 2)", "[1,2)", True), ("[1, 2)", "[1, 2]", False), ("(1, 2]", "(1, 2]", True),
    ("(-\\infty, 3]", "(-\\infty, 3]", True), ("(-\\infty, 3)", "(-\\infty, 3]", False),
    ("(-\\infty, 2] \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2]", True),
    ("(-\\infty, 2] \\cup (3, \\infty)", "(-\\infty, 2] \\cup [3, \\infty)", False),
    ("[\\frac12, 1]", "[0.5, 1]", True),
    # matrices
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", False),
    ("\\begin{pmatrix}\\frac12\\\\ 2\\end{pmatrix}", "\\begin{pmatrix}0.5\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # things that are not answers
    ("", "5", False), ("\\unknowncommand{5}", "5", False), ("5", "", False),
    ("x", "y", False), ("\\frac{1}{2}", "\\frac{1}{3}", False), ("-\\frac12", "\\frac12", False),
    ("10^{-3}", "0.01", False), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5}", False), ("1000", "1,001", False),
]


def test_table_is_large_and_balanced():
    assert len(CASES) >= 100
    assert sum(c[2] for c in CASES) >= 40 and sum(not c[2] for c in CASES) >= 40


@pytest.mark.parametrize(("pred", "gold", "expected"), CASES)
def test_verify_table(pred, gold, expected):
    response = f"Some reasoning... so the answer is $\\boxed{{{pred}}}$."
    assert verify(response, gold, timeout_s=10.0) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("\\fbox{7}", "7"),
        ("so \\boxed 5 done", "5"),
        ("<answer> 12 </answer> and <answer>13</answer>", "13"),
        ("<answer>1</answer> \\boxed{2}", "2"),
        ("\\boxed{unbalanced", None),
        ("no answer here", None),
        (None, None),
        ("\\boxedx{3}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_gsm8k_answer():
    assert extract_gsm8k_answer("She pays 5*2 = 10.\n#### 1,234") == "1234"
    assert extract_gsm8k_answer("#### $72") == "72"
    assert extract_gsm8k_answer("no marker") is None


def test_fallback_and_gold_forms():
    assert verify("42", "42") and verify("  x = 5 ", "5") and verify("$\\frac{1}{2}$", "0.5")
    assert not verify("The answer is 42", "42")  # prose without a box is not an answer
    assert not verify("I think\n42", "42")
    assert verify("\\boxed{18}", "Janet sells 16 - 3 - 4 = 9 eggs... #### 18")
    assert verify("\\boxed{3}", "Thus $\\boxed{3}$.") and verify("\\boxed{3}", 3)
    assert verify("\\boxed{0.5}", 0.5) and not verify("\\boxed{3}", None)


def test_never_raises_on_junk():
    for resp, gold in [(None, "1"), (3, "3"), ("\\boxed{1}", object()), ("\\boxed{" * 1000, "1"),
                       ("\\boxed{\\frac{1}{0}}", "1"), ("\\boxed{1/0}", "\\infty"),
                       ("\\boxed{__import__('os')}", "1"), ("\\boxed{().__class__}", "1")]:
        assert verify(resp, gold, timeout_s=2.0) is False


def test_bad_timeout_raises():
    with pytest.raises(ValueError, match="timeout_s"):
        verify("\\boxed{1}", "1", timeout_s=0)


ADVERSARIAL = [
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{100000!}",
    "\\boxed{2^{10^{100}}}",
    "\\boxed{" + "(" * 400 + "x" + ")" * 400 + "}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "y" * 2_000_000 + "\\boxed{x}",
    "\\boxed{(x+y+z+w)^{40}}",  # passes the size guards; expanding it takes seconds
]


@pytest.mark.parametrize("response", ADVERSARIAL)
def test_adversarial_answers_are_false_and_bounded(response):
    timeout = 1.0
    t = time.monotonic()
    assert verify(response, "\\frac{(2x+2y+2z+2w)^{40}}{2^{40}}", timeout_s=timeout) is False
    assert time.monotonic() - t < timeout + 1.5


def test_timeout_holds_in_threads():
    timeout, results, times = 1.0, [], []
    slow = ("\\boxed{(x+y+z+w)^{40}}", "\\frac{(2x+2y+2z+2w)^{40}}{2^{40}}")

    def call(i):
        t = time.monotonic()
        results.append(verify(slow[0], slow[1] + " " * i, timeout_s=timeout))
        times.append(time.monotonic() - t)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [False] * 6
    assert max(times) < timeout + 1.5
    time.sleep(2.0)  # replacements finish starting; the pool serves correct answers again
    assert verify("\\boxed{2x+7}", "7+2x", timeout_s=5.0)


def test_accuracy_reward():
    completions = ["\\boxed{4}", "<answer>5</answer>", [{"role": "assistant", "content": "\\boxed{6}"}]]
    assert accuracy_reward(["p"] * 3, completions, answer=["4", "4", "6"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="answer"):
        accuracy_reward(["p"], ["\\boxed{1}"], answer=["1", "2"])
