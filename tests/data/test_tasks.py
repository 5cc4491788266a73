"""Procedural tasks: determinism, gold answers against independent references, verifiers."""

import re
import sys
from collections import Counter

import pytest

from jaxrl_lrm.data import tasks
from jaxrl_lrm.data.tasks import (
    ArithmeticConfig,
    CountdownConfig,
    LinearConfig,
    check_countdown,
    get_task,
)


def _ref_eval(expr: str):
    """Independent reference for trusted generated strings (the verifier itself never evals)."""
    return eval(expr, {"__builtins__": {}}, {})  # noqa: S307


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_deterministic_by_seed_and_gold_scores_one(name):
    task = get_task(name)
    rows = task.generate(20, 7)
    assert rows == task.generate(20, 7) and rows != task.generate(20, 8)
    assert all({"prompt", "answer"} <= set(r) for r in rows)
    cols = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    gold = [f"<think>x</think> <answer>{r['answer']}</answer>" for r in rows]
    assert task.reward([r["prompt"] for r in rows], gold, **cols) == [1.0] * 20
    wrong = [f"\\boxed{{{r['answer']}1}}" for r in rows]  # n -> 10n ± 1
    assert task.reward([r["prompt"] for r in rows], wrong, **cols) == [0.0] * 20


def test_arithmetic_gold_matches_reference_and_knobs():
    for cfg in [ArithmeticConfig(), ArithmeticConfig(num_terms=6, max_value=99, parentheses=True)]:
        for row in tasks.generate_arithmetic(50, 1, cfg):
            assert int(row["answer"]) == _ref_eval(row["expression"])
            assert len(re.findall(r"[-+*]", row["expression"])) == cfg.num_terms - 1
            assert all(1 <= int(v) <= cfg.max_value for v in re.findall(r"\d+", row["expression"]))
    only_add = tasks.generate_arithmetic(20, 0, ArithmeticConfig(ops=("+",)))
    assert all(set(re.findall(r"[-+*]", r["expression"])) == {"+"} for r in only_add)


def test_arithmetic_reward_parsing():
    comps = [
        r"\boxed{-6}",
        "<answer> -6 </answer>",
        r"\boxed{-6.0}",
        r"\boxed{6}",
        "-6",
        r"\boxed{}",
    ]
    got = tasks.arithmetic_reward(["p"] * 6, comps, answer=["-6"] * 6)
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="answer has 1 entries for 2"):
        tasks.arithmetic_reward(["p"] * 2, ["a", "b"], answer=["1"])


def test_linear_gold_solves_equation():
    for row in tasks.generate_linear(50, 3, LinearConfig(max_coef=5, max_solution=4)):
        a, b, c, d = map(int, re.findall(r"-?\d+", row["equation"].replace("- ", "-")))
        x = int(row["answer"])
        assert a * x + b == c * x + d and a != c and abs(x) <= 4
    comps = [r"\boxed{x = 2}", r"\boxed{\frac{4}{2}}", "<answer>4/2</answer>", r"\boxed{3}"]
    assert tasks.linear_reward(["p"] * 4, comps, answer=["2"] * 4) == [1.0, 1.0, 1.0, 0.0]


def test_countdown_gold_uses_given_numbers():
    cfg = CountdownConfig(num_numbers=5, max_number=12, max_target=500)
    for row in tasks.generate_countdown(50, 5, cfg):
        used = [int(v) for v in re.findall(r"\d+", row["answer"])]
        assert Counter(used) == Counter(row["numbers"]) and len(used) == 5
        assert _ref_eval(row["answer"]) == row["target"] and 1 <= row["target"] <= 500


@pytest.mark.parametrize(
    "expr,ok",
    [
        ("(25 - 5) * 4 / 2", True),  # = 40
        ("25 + 5 + 4 + 2 + 4", False),  # 4 used twice
        ("((25 - 5) * 4) / 2 = 40", True),
        ("25 * 2 - 10", False),  # 10 not given
        ("40", False),
        ("__import__('os').system('true')", False),
        ("25 ** 2", False),
        ("(25 - 5) * 4 // 2", False),
        ("-5 + 45", False),
        ("25 / (5 - 5)", False),
        ("2.0 * 20", False),
        ("(" * 300 + "40" + ")" * 300, False),
        ("", False),
    ],
)
def test_check_countdown_whitelist(expr, ok):
    assert check_countdown(expr, [25, 5, 4, 2], 40) is ok


def test_countdown_reward_extraction():
    comps = [
        "<answer>(25 - 5) * 4 / 2</answer>",
        r"\boxed{25 + 5 + 4 + 2}",  # = 36
        "(25 - 5) * 4 / 2",  # no tags
    ]
    got = tasks.countdown_reward(["p"] * 3, comps, numbers=[[25, 5, 4, 2]] * 3, target=[40, 36, 40])
    assert got == [1.0, 1.0, 0.0]


def test_registry_and_config_validation():
    with pytest.raises(ValueError, match=r"unknown task 'sudoku'; known tasks: \['arithmetic'"):
        get_task("sudoku")
    with pytest.raises(ValueError, match="num_terms"):
        ArithmeticConfig(num_terms=1)
    with pytest.raises(ValueError, match="ops"):
        ArithmeticConfig(ops=("/",))
    with pytest.raises(ValueError, match="num_numbers"):
        CountdownConfig(num_numbers=1)
    with pytest.raises(ValueError, match="max_coef"):
        LinearConfig(max_coef=1)


def test_reasoning_gym_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxrl_lrm\[reasoning-gym\]'"):
        tasks.generate_reasoning_gym("leg_counting", 2, 0)


def test_reasoning_gym_adapter_roundtrip():
    pytest.importorskip("reasoning_gym")
    rows = tasks.generate_reasoning_gym("leg_counting", 4, 0)
    cols = {k: [r[k] for r in rows] for k in ("rg_task", "rg_entry")}
    gold = [f"<answer>{r['answer']}</answer>" for r in rows]
    assert tasks.reasoning_gym_reward([r["prompt"] for r in rows], gold, **cols) == [1.0] * 4
    assert tasks.reasoning_gym_reward(["p"] * 4, ["none"] * 4, **cols) == [0.0] * 4
