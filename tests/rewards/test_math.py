"""Tests of rewards.math: extraction, strict vs lenient, the hand-labelled set, the fast path."""

import json
import pathlib
import random
import time
from collections import Counter

import pytest

from jaxrl_lrm.rewards.math import (
    accuracy_reward,
    accuracy_reward_lenient,
    extract_answer,
    extract_gsm8k_answer,
    verify,
    warmup,
)
from jaxrl_lrm.rewards.math_fast import bare_answer, fast_compare
from jaxrl_lrm.rewards.math_worker import judge

CASES_PATH = pathlib.Path(__file__).parents[1] / "fixtures" / "math_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text().splitlines() if line.strip()]
# Measured: 334/342 strict and 334/342 lenient; the misses are listed in docs/rewards_math.md.
MIN_AGREEMENT = 0.95


@pytest.fixture(scope="module", autouse=True)
def _pool():
    warmup()


def test_labelled_set_shape():
    cats = Counter(c["category"] for c in CASES)
    assert len(CASES) >= 300 and len(cats) >= 15 and min(cats.values()) >= 10
    assert sum(c["label"] for c in CASES) >= 100 and sum(not c["label"] for c in CASES) >= 80
    assert all(set(c) == {"category", "response", "gold", "label", "label_lenient"} for c in CASES)


@pytest.mark.parametrize("lenient", [False, True], ids=["strict", "lenient"])
def test_labelled_set_agreement(lenient):
    key = "label_lenient" if lenient else "label"
    wrong = [
        (c["category"], c["response"][-60:], c["gold"])
        for c in CASES
        if verify(c["response"], c["gold"], timeout_s=10.0, lenient=lenient) is not c[key]
    ]
    assert 1 - len(wrong) / len(CASES) >= MIN_AGREEMENT, wrong


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("\\fbox{7}", "7"),
        ("so \\boxed 5 done", "5"),
        ("<answer> 12 </answer> and <answer>13</answer>", "13"),
        ("<answer>1</answer> \\boxed{2}", "2"),
        ("\\boxed{2} then \\boxed{unbalanced", "2"),
        ("\\boxed{unbalanced", None),
        ("no answer here", None),
        (None, None),
        ("\\boxedx{3}", None),
        ("Janet has 3 + 4 = 7.\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("\\boxed{5} #### 6", "5"),
        ("<answer>8</answer>\n#### 9", "8"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extraction_is_linear_time():
    for n in (3_000, 6_000, 30_000):
        t = time.perf_counter()
        assert extract_answer("\\boxed{" * n) is None
        assert time.perf_counter() - t < 0.05 * n / 3_000 + 0.05
    t = time.perf_counter()
    assert extract_answer("\\boxed{" * 20_000 + "\\boxed{4}") == "4"
    assert time.perf_counter() - t < 0.5


def test_extract_gsm8k_answer():
    assert extract_gsm8k_answer("She pays 5*2 = 10.\n#### 1,234") == "1234"
    assert extract_gsm8k_answer("#### $72") == "72"
    assert extract_gsm8k_answer("no marker") is None


def test_gsm8k_both_sides():
    assert verify("#### 28", "#### 28")
    assert verify("So she has 28.\n#### 28", "Janet: 4 * 7 = 28\n#### 28")
    assert not verify("#### 27", "#### 28")


def test_strict_and_lenient():
    prose = "There are 12 ways to choose them."
    assert not verify(prose, "12") and verify(prose, "12", lenient=True)
    assert verify("The answer is 12.", "12")  # an "answer" anchor is explicit enough
    assert verify("Answer: \\[ \\frac{1}{2} \\]", "0.5") and verify(
        "Answer: $$x \\geq 5$$", "x >= 5"
    )
    assert not verify("I think\n42", "42") and verify("I think\n42", "42", lenient=True)
    comps = [prose, "\\boxed{12}", "no number"]
    assert accuracy_reward(["p"] * 3, comps, answer=["12"] * 3) == [0.0, 1.0, 0.0]
    assert accuracy_reward_lenient(["p"] * 3, comps, answer=["12"] * 3) == [1.0, 1.0, 0.0]


def test_fallback_and_gold_forms():
    assert verify("42", "42") and verify("  x = 5 ", "5") and verify("$\\frac{1}{2}$", "0.5")
    assert verify("\\boxed{18}", "Janet sells 16 - 3 - 4 = 9 eggs... #### 18")
    assert verify("\\boxed{3}", "Thus $\\boxed{3}$.") and verify("\\boxed{3}", 3)
    assert verify("\\boxed{0.5}", 0.5) and not verify("\\boxed{3}", None)
    assert verify("$\\boxed{1,2}$", "$\\boxed{1}\\boxed{2}$")  # several boxes are read together


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("42", "42", True),
        ("1,000", "1000", True),
        ("\\dfrac{1}{2}", "0.5", True),
        ("10\\text{ cm}", "10", True),
        ("18 dollars", "18", True),
        ("1e3", "1000", True),
        ("41", "42", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        ("(B)", "B", True),
        ("C", "(B)", False),
        ("2i", "2", None),
        ("0.33", "\\frac13", False),
        ("32, 349", "32349", None),
        ("", "1", False),
        # simple expressions: values at sample points (math_numeric)
        ("2x+1", "1+2x", True),
        ("x^2-1", "(x-1)(x+1)", True),
        ("\\pi r^2", "r^2\\pi", True),
        ("\\frac{\\sqrt{3}}{2}", "\\frac12\\sqrt3", True),
        ("x^23", "3x^2", True),
        ("3x", "3", False),
        ("3x", "3y", False),
        ("x^2+1", "(x+1)^2", False),
        ("3.14", "\\pi", False),
        ("\\sqrt{x^2}", "x", None),
        ("3\\frac12", "\\frac72", None),
        ("e^{i\\pi}", "-1", None),
        ("\\sin x", "x", None),
        ("2^{100}", "2^{100}", True),
        ("2^{100}", "2^{99}", None),
        # `\pm a` against a set is the set {a, -a}; Math-Verify decides everything else
        ("\\pm 5", "\\{5, -5\\}", True),
        ("\\{-5, 5\\}", "\\pm 5", True),
        ("\\pm 6", "\\{5, -5\\}", False),
        ("\\pm 5", "\\{5\\}", False),
        ("\\pm 0", "\\{0\\}", True),
        ("\\mp \\frac{3}{4}", "\\{-0.75, 0.75\\}", True),
        ("\\pm 2.50", "\\{-2.5, 2.5\\}", True),
        ("\\pm 1,000", "\\{1000, -1000\\}", None),  # Math-Verify: not equal
        ("\\pm 1e3", "\\{1000, -1000\\}", None),  # Math-Verify: not equal
        ("\\pm 5", "5", None),
        ("\\pm 3", "(-3, 3)", None),  # Math-Verify: equal
        ("-\\pm 5", "\\{5, -5\\}", None),
        ("\\pm 5.000001", "\\{5, -5\\}", None),
    ],
)
def test_fast_path(pred, gold, expected):
    assert fast_compare(pred, gold) is expected


def test_fast_path_pm_agrees_with_math_verify():
    """Every `\\pm`/set pair the fast path decides gets Math-Verify's verdict (run in-process)."""
    rng = random.Random(0)
    xs = ["0", "5", "2.5", "2.50", "0.5", "\\frac{3}{4}", "\\frac{4}{2}", "1000"]
    members = ["0", "-0", "5", "-5", "2.5", "-2.5", "\\frac12", "-\\frac12", "0.75"]
    members += ["-\\frac{3}{4}", "2", "-2", "1000", "-1000", "6", "\\sqrt2", "x", "1,000"]
    pairs = []
    for x in xs:
        op = rng.choice(["\\pm", "\\mp"]) + rng.choice([" ", ""])
        pairs += [(op + x, f"\\{{{x}, -{x}\\}}"), (op + x, f"\\{{-{x}, {x}, {x}\\}}")]
        pairs += [(op + x, f"\\pm {rng.choice(xs)}")]
        for _ in range(4):
            chosen = rng.sample(members, rng.choice([1, 2, 2, 3]))
            pairs.append((op + x, "\\{" + ", ".join(chosen) + "\\}"))
    pairs += [(b, a) for a, b in pairs]
    decided = [(a, b, fast_compare(a, b)) for a, b in pairs]
    decided = [(a, b, r) for a, b, r in decided if r is not None]
    assert len(decided) > 0.9 * len(pairs)
    assert {r for *_, r in decided} == {True, False}
    wrong = [(a, b, r) for a, b, r in decided if judge(None, a, b) is not r]
    assert wrong == []


def test_bare_answer():
    assert bare_answer("  x = 5 ") == "x = 5"
    assert bare_answer("$\\frac{1}{3} \\text{meters}$.") == "$\\frac{1}{3} \\text{meters}$"
    assert bare_answer("The answer is 42") is None and bare_answer("I think\n42") is None
    assert bare_answer("$1$ is less than $2$") is None and bare_answer("$1$ and $2$")


def test_never_raises_on_junk():
    for resp, gold in [
        (None, "1"),
        (3, "3"),
        ("\\boxed{1}", object()),
        ("\\boxed{" * 1000, "1"),
        ("\\boxed{\\frac{1}{0}}", "1"),
        ("\\boxed{1/0}", "\\infty"),
        ("\\boxed{__import__('os')}", "1"),
        ("\\boxed{().__class__}", "1"),
        ("\\boxed{1}", "\\frac{"),
        ("\x00\\boxed{\ud800}", "1"),
    ]:
        assert verify(resp, gold, timeout_s=2.0) is False


def test_bad_timeout_raises():
    with pytest.raises(ValueError, match="timeout_s"):
        verify("\\boxed{1}", "1", timeout_s=0)


def test_accuracy_reward():
    completions = [
        "\\boxed{4}",
        "<answer>5</answer>",
        [{"role": "assistant", "content": "\\boxed{6}"}],
    ]
    assert accuracy_reward(["p"] * 3, completions, answer=["4", "4", "6"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="answer"):
        accuracy_reward(["p"], ["\\boxed{1}"], answer=["1", "2"])
