"""Majority vote, confidence and self-certainty against hand-computed values."""

import math

import numpy as np
import pytest

from jaxrl_lrm.rewards.unsupervised import (
    confidence_reward,
    extract_final_answer,
    majority_vote_reward,
    self_certainty,
)


def test_extract_final_answer():
    assert extract_final_answer(r"so \boxed{\frac{1}{2}} or \boxed{3}") == "3"
    assert extract_final_answer(r"x \boxed{\frac{a}{b}}") == r"\frac{a}{b}"
    assert extract_final_answer("<answer> 7 </answer> then <answer>8</answer>") == "8"
    assert extract_final_answer("nothing") is None


def test_majority_vote_groups_ties_and_missing():
    comps = [
        # group 0: "4" x2 (one with spaces / $), "5" x1, none x1 -> label "4"
        r"\boxed{4}",
        r"\boxed{ $4$ }",
        r"\boxed{5}",
        "no answer",
        # group 1: tie 7 vs 9 (2 each) -> first seen ("9") wins
        "<answer>9</answer>",
        r"\boxed{7}",
        r"\boxed{7}",
        r"\boxed{9}",
        # group 2: nobody answers
        "a",
        "b",
        "c",
        "d",
    ]
    got = majority_vote_reward(["p"] * 12, comps, group_size=[4] * 12)
    assert got == [1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("gs", [[3] * 4, [2, 2, 2, 3], [2] * 3])
def test_majority_vote_bad_group_size(gs):
    with pytest.raises(ValueError, match="group_size"):
        majority_vote_reward(["p"] * 4, ["x"] * 4, group_size=gs)


def test_confidence_is_geometric_mean_probability():
    lps = [[math.log(0.5), math.log(0.125)], [0.0, 0.0, 0.0], []]
    got = confidence_reward(["p"] * 3, ["a", "b", ""], token_logprobs=lps)
    assert got == pytest.approx([math.sqrt(0.5 * 0.125), 1.0, 0.0])
    with pytest.raises(ValueError, match="token_logprobs"):
        confidence_reward(["p"], ["a"], token_logprobs=[[0.5]])
    with pytest.raises(ValueError, match="token_logprobs"):
        confidence_reward(["p"], ["a"], token_logprobs=[])


def test_self_certainty_matches_kl_from_uniform():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7))
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    mask = np.array([1, 1, 0, 1, 0])
    p = np.exp(lp)
    u = np.full(7, 1 / 7)
    kl = np.array([(u * np.log(u / p[t])).sum() for t in range(5)])
    assert self_certainty(lp, mask) == pytest.approx(kl[mask == 1].mean())
    assert self_certainty(np.full((2, 4), np.log(0.25))) == pytest.approx(0.0)
