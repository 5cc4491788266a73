"""Tests of rewards.format against hand-labelled completions."""

import pytest

from jaxrl_lrm.rewards.format import answer_tag_reward, think_format_reward

THINK = [
    ("<think>step 1</think><answer>5</answer>", 1.0),
    ("  \n<think>\nreason\n</think>\n\n<answer> 5 </answer>\n", 1.0),
    ("<think></think><answer>x</answer>", 1.0),
    ("<think>r</think> The answer is $\\boxed{\\frac{1}{2}}$.", 1.0),
    ("<think>r</think>\\fbox{3}", 1.0),
    ("<think>r</think>", 0.0),
    ("<think>r</think> 5", 0.0),
    ("<think>r</think><answer>  </answer>", 0.0),
    ("<think>r</think><answer>5</answer> trailing", 0.0),
    ("<think>r</think>x<answer>5</answer>", 0.0),
    ("<answer>5</answer>", 0.0),
    ("prefix <think>r</think><answer>5</answer>", 0.0),
    ("<think>a<think>b</think><answer>5</answer>", 0.0),
    ("<think>r</think><think>s</think><answer>5</answer>", 0.0),
    ("<think>r</think>\\boxed{", 0.0),
    ("<think>r</think><answer>5</answer><answer>6</answer>", 0.0),
]


def test_think_format_reward():
    got = think_format_reward(["p"] * len(THINK), [c for c, _ in THINK])
    assert got == [e for _, e in THINK]


def test_answer_tag_reward():
    cases = [
        ("reasoning... <answer>42</answer>", 1.0),
        ("<answer>42</answer>\n", 1.0),
        ("<answer>42</answer> more", 0.0),
        ("<answer></answer>", 0.0),
        ("<answer>1</answer><answer>2</answer>", 0.0),
        ("no tags", 0.0),
        ("<answer>42", 0.0),
    ]
    assert answer_tag_reward(None, [c for c, _ in cases]) == [e for _, e in cases]


def test_chat_format_and_length_check():
    chat = [[{"role": "assistant", "content": "<think>r</think><answer>1</answer>"}]]
    assert think_format_reward(["p"], chat) == [1.0]
    with pytest.raises(ValueError, match="same length"):
        think_format_reward(["p", "q"], ["<think>r</think><answer>1</answer>"])
