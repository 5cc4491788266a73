"""Step splitting and step -> token reward alignment, against hand-computed positions."""

import numpy as np
import pytest

from jaxrl_lrm.rewards.dense import split_steps, step_token_rewards


def _char_offsets(text):
    """One 'token' per whitespace-separated word (a stand-in for a tokenizer's offset mapping)."""
    import re

    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


TEXT = "Step 1: add 2.\n\nStep 2: double it.\nStep 3: answer 8"


def test_split_modes():
    spans = split_steps(TEXT, mode="blank_line")
    assert [TEXT[s:e] for s, e in spans] == [
        "Step 1: add 2.",
        "Step 2: double it.\nStep 3: answer 8",
    ]
    spans = split_steps(TEXT, mode="newline")
    assert [TEXT[s:e] for s, e in spans] == [
        "Step 1: add 2.",
        "Step 2: double it.",
        "Step 3: answer 8",
    ]
    text = "Plan first.\nstep 1) a\nmore a\n  Step 2: b"
    spans = split_steps(text, mode="step_marker")
    assert [text[s:e] for s, e in spans] == ["Plan first.", "step 1) a\nmore a", "Step 2: b"]
    with pytest.raises(ValueError, match="unknown split mode 'x'"):
        split_steps(TEXT, mode="x")


def test_step_token_rewards_on_last_token_of_each_step():
    offsets = _char_offsets(TEXT)
    # words: Step 1: add 2. | Step 2: double it. | Step 3: answer 8  -> 4 + 4 + 4 tokens
    got = step_token_rewards(TEXT, offsets, [0.5, -1.0, 2.0], mode="newline")
    want = np.zeros(12, np.float32)
    want[[3, 7, 11]] = [0.5, -1.0, 2.0]
    np.testing.assert_array_equal(got, want)
    got = step_token_rewards(TEXT, offsets, [1.0, 3.0], mode="blank_line")
    want = np.zeros(12, np.float32)
    want[[3, 11]] = [1.0, 3.0]
    np.testing.assert_array_equal(got, want)


def test_tokens_spanning_steps_and_special_tokens():
    text = "ab\ncd"
    # token 1 covers "b\nc" (crosses the step boundary), token 3 is a special token (0, 0).
    offsets = [(0, 1), (1, 4), (4, 5), (0, 0)]
    got = step_token_rewards(text, offsets, [1.0, 10.0], mode="newline")
    np.testing.assert_array_equal(got, [0.0, 1.0, 10.0, 0.0])
    got = step_token_rewards(text, [(0, 1), (1, 5), (0, 0)], [1.0, 10.0], mode="newline")
    np.testing.assert_array_equal(got, [0.0, 11.0, 0.0])  # both steps end on token 1


def test_bad_inputs():
    offsets = _char_offsets(TEXT)
    with pytest.raises(ValueError, match="2 step_scores for 3 steps"):
        step_token_rewards(TEXT, offsets, [1.0, 2.0], mode="newline")
    with pytest.raises(ValueError, match="token_offsets"):
        step_token_rewards(TEXT, [(3, 1)], [1.0, 2.0])
    with pytest.raises(ValueError, match="overlaps no token"):
        step_token_rewards(TEXT, offsets[:4], [1.0, 2.0])
