"""Dense (process) rewards: split a completion into steps and place step scores on tokens.

Extension point for a process reward model (PRM): a scorer is any function
`(prompt, steps: list[str]) -> list[float]` giving one score per step; feed its output to
`step_token_rewards`. None ships yet because no PRM exists in the project; the splitting and
alignment below are what such a scorer plugs into.
"""

import re

import numpy as np

_SPLITTERS = {
    "blank_line": re.compile(r"\n[ \t]*\n"),
    "newline": re.compile(r"\n"),
    "step_marker": re.compile(r"(?im)^(?=[ \t]*step[ \t]*\d+[ \t]*[:.)])"),
}


def split_steps(completion: str, *, mode: str = "blank_line") -> list[tuple[int, int]]:
    """Splits `completion` into steps, returned as character spans `(start, end)`.

    Modes:
      * "blank_line": steps are separated by one or more blank lines;
      * "newline": every line is a step;
      * "step_marker": a step starts at each line beginning `Step k:` (or `Step k.` / `Step k)`,
        any case); text before the first marker is a step of its own.

    Spans are trimmed of surrounding whitespace; empty steps are dropped. Spans cover
    `completion[start:end]` exactly, so they map onto tokenizer offsets.

    Raises:
      ValueError: on an unknown `mode`.
    """
    if mode not in _SPLITTERS:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {sorted(_SPLITTERS)}")
    pattern = _SPLITTERS[mode]
    cuts = [0]
    for m in pattern.finditer(completion):
        cuts += [m.start(), m.end()]
    cuts.append(len(completion))
    spans = []
    for start, end in zip(cuts[::2], cuts[1::2]):
        piece = completion[start:end]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if start + lead < end - trail:
            spans.append((start + lead, end - trail))
    return spans


def step_token_rewards(
    completion: str,
    token_offsets,
    step_scores,
    *,
    mode: str = "blank_line",
) -> np.ndarray:
    """Token-level rewards: each step's score on the last token that overlaps that step.

    `r[t] = step_scores[k]` where t is the last token whose character span
    `[start_char, end_char)` intersects step k, and 0 elsewhere (if two steps end on the same
    token, their scores add). Tokens with an empty span (special tokens, `(0, 0)`) never carry
    a reward.

    Args:
      completion: the decoded completion text.
      token_offsets: `(start_char, end_char)` per completion token, as a tokenizer's offset
        mapping gives for `completion`.
      step_scores: one score per step of `split_steps(completion, mode=mode)`.
      mode: how to split, see `split_steps`.

    Returns:
      float32 array [T], T = len(token_offsets).

    Raises:
      ValueError: if the number of scores differs from the number of steps, an offset is
        malformed, or a step overlaps no token.
    """
    spans = split_steps(completion, mode=mode)
    scores = np.asarray(step_scores, np.float32).reshape(-1)
    if scores.size != len(spans):
        raise ValueError(f"got {scores.size} step_scores for {len(spans)} steps ({mode=})")
    offsets = np.asarray(token_offsets, np.int64).reshape(-1, 2)
    if np.any(offsets[:, 1] < offsets[:, 0]) or np.any(offsets < 0):
        raise ValueError(
            f"token_offsets must be (start, end) with 0 <= start <= end, got {offsets}"
        )
    rewards = np.zeros(len(offsets), np.float32)
    nonempty = offsets[:, 1] > offsets[:, 0]
    for (start, end), score in zip(spans, scores):
        hits = np.nonzero(nonempty & (offsets[:, 0] < end) & (offsets[:, 1] > start))[0]
        if hits.size == 0:
            raise ValueError(f"step at characters [{start}, {end}) overlaps no token")
        rewards[hits[-1]] += score
    return rewards
