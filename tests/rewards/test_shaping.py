"""Tests of rewards.shaping against hand-computed values."""

import math

import pytest

from jaxrl_lrm.rewards.shaping import (
    combine,
    cosine_length_reward,
    length_penalty,
    repetition_penalty,
    soft_overlong_punishment,
)


def ones(prompts, completions, **_):
    return [1.0] * len(completions)


def count_a(prompts, completions, **_):
    return [float(c.count("a")) for c in completions]


def test_combine_sums_weights_and_reports_per_fn():
    comb = combine([(ones, 0.5), (count_a, 2.0), (count_a, -1.0)], name="total")
    comps = ["a", "aaa", ""]
    assert comb(None, comps) == [0.5 + 2 - 1, 0.5 + 6 - 3, 0.5]
    total, per_fn = comb.score(None, comps)
    assert total == [1.5, 3.5, 0.5]
    assert per_fn == {"ones": [1, 1, 1], "count_a": [1, 3, 0], "count_a_2": [1, 3, 0]}
    assert comb.metrics(per_fn) == {
        "rewards/ones/mean": 1.0,
        "rewards/count_a/mean": 4 / 3,
        "rewards/count_a_2/mean": 4 / 3,
    }
    assert comb.__name__ == "total" and combine([(ones, 1)]).__name__ == "ones"


@pytest.mark.parametrize("bad", [[], [(ones,)], [(ones, math.nan)], [("x", 1.0)], [(ones, "1")]])
def test_combine_rejects_bad_pairs(bad):
    with pytest.raises(ValueError):
        combine(bad)


def test_combine_checks_lengths():
    with pytest.raises(ValueError, match="returned 1 values, expected 2"):
        combine([(lambda p, c, **_: [1.0], 1.0)])(None, ["a", "b"])


def test_length_penalty():
    fn = length_penalty(max_len=100, coef=0.5)
    assert fn(None, ["", "", ""], completion_lengths=[0, 50, 400]) == [0.0, -0.25, -0.5]
    with pytest.raises(ValueError, match="completion_lengths"):
        fn(None, ["a"])


def test_soft_overlong_punishment_dapo_formula():
    # L_max = 20, L_cache = 4: zero up to 16, linear to -1 at 20, -1 beyond.
    fn = soft_overlong_punishment(max_len=20, cache_len=4)
    got = fn(None, [""] * 6, completion_lengths=[10, 16, 17, 18, 20, 21])
    assert got == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="cache_len"):
        soft_overlong_punishment(max_len=4, cache_len=8)


def test_cosine_length_reward_hand_values():
    correct = lambda p, c, **_: [1.0 if x == "right" else 0.0 for x in c]
    fn = cosine_length_reward(max_len=100, correct_fn=correct)
    comps = ["right", "right", "right", "wrong", "wrong", "wrong", "right"]
    got = fn(None, comps, completion_lengths=[0, 50, 100 - 1, 0, 50, 25, 100])
    # CosFn(t) = b + (a - b)(1 + cos(pi t / T)) / 2; correct a=2, b=1; wrong a=-10, b=0.
    want = [
        2.0,
        1.5,
        1 + 0.5 * (1 + math.cos(math.pi * 0.99)),
        -10.0,
        -5.0,
        -10 * 0.5 * (1 + math.cos(math.pi / 4)),
        -10.0,
    ]
    assert got == pytest.approx(want, abs=1e-12)


def test_cosine_length_reward_default_uses_math_accuracy():
    fn = cosine_length_reward(max_len=10)
    got = fn(None, ["\\boxed{4}", "\\boxed{5}"], answer=["4", "4"], completion_lengths=[5, 5])
    assert got == pytest.approx([1.5, -5.0])


def test_repetition_penalty_hand_values():
    fn = repetition_penalty(ngram_size=2, max_penalty=-1.0)
    # "a b a b a b": 5 bigrams, 2 distinct -> (1 - 2/5) * -1 = -0.6
    # "a b c d": 3 bigrams, all distinct -> 0; "a": no bigram -> 0
    assert fn(None, ["a b a b a b", "a b c d", "a", "A b a B"]) == pytest.approx(
        [-0.6, 0.0, 0.0, -(1 - 2 / 3)]
    )
    with pytest.raises(ValueError, match="max_penalty"):
        repetition_penalty(max_penalty=0.5)
