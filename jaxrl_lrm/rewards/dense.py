"""Dense (process) rewards: split a completion into steps and place step scores on tokens.

Extension point for a process reward model (PRM): a scorer is any function
`(prompt, steps: list[str]) -> list[float]` giving one score per step; feed its output to
`step_token_rewards`. None ships yet because no PRM exists in the project; the splitting and
alignment below are what such a scorer plugs into.

Token-level reward functions (what the RL trainer turns into dense rewards): a reward callable
with the attribute `token_level = True` (see `TokenLevelReward`) is called like any reward
function, `fn(prompts, completions, **columns)`, but returns, per completion, a list of
`(char_end, reward)` pairs: `reward` is placed at character position `char_end` of the
completion text, i.e. on the policy token that holds character `char_end - 1`
(`char_rewards_to_tokens`). A process reward model gives each step's score at the step's end
character (`step_end_rewards`; `model_based.PRMScorer.as_token_level()`). The trainer calls
such functions in-process (not in the reward executor's pool), weights them, and adds them to
the token rewards of REINFORCE++ / GAE, or sums them per row into the scalar reward of the
group estimators (`algorithms.advantages(..., token_rewards_BT=...)`).
"""

import bisect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

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
    completion: str, token_offsets, step_scores, *, mode: str = "blank_line"
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


# ----------------------------------------------------------------------------- token-level


@runtime_checkable
class TokenLevelReward(Protocol):
    """A reward function whose rewards sit at character positions of the completion.

    `token_level` is `True`; a call returns one list of `(char_end, reward)` pairs per
    completion, `1 <= char_end <= len(completion)` (an empty list: no dense reward). Pairs
    that land on the same token add.
    """

    token_level: bool

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> list[list[tuple[int, float]]]: ...


def is_token_level(fn: Callable) -> bool:
    """Whether `fn` is a token-level reward function: it, or the function it wraps (`.fn` of
    the trainer's bound-arguments wrapper, `.func` of a `functools.partial`), has
    `token_level = True`."""
    for _ in range(8):  # a few wrapper layers at most
        if getattr(fn, "token_level", False) is True:
            return True
        fn = getattr(fn, "fn", None) or getattr(fn, "func", None)
        if fn is None:
            return False
    return False


def step_end_rewards(
    completion: str, step_scores, mode: str = "blank_line"
) -> list[tuple[int, float]]:
    """`(char_end, score)` per step of `split_steps(completion, mode=mode)`: each step's score at
    its last character, the token-level face of a step scorer.

    Raises:
      ValueError: if the number of scores differs from the number of steps.
    """
    spans = split_steps(completion, mode=mode)
    scores = np.asarray(step_scores, np.float32).reshape(-1)
    if scores.size != len(spans):
        raise ValueError(f"got {scores.size} step_scores for {len(spans)} steps ({mode=})")
    return [(end, float(s)) for (_, end), s in zip(spans, scores)]


def prefix_char_lengths(tokenizer, ids: Sequence[int]) -> Callable[[int], int]:
    """`L(k)`: characters of `tokenizer.decode(ids[:k])`, decoded lazily and memoised.

    A prefix that ends part-way through a multi-byte character decodes to trailing U+FFFD
    replacement characters; those are not counted (except for the whole sequence, `k =
    len(ids)`), so a character belongs to the token that completes it and `L` never decreases.
    """
    memo: dict[int, int] = {0: 0}
    n = len(ids)

    def length(k: int) -> int:
        if k not in memo:
            text = tokenizer.decode(list(ids[:k]))
            memo[k] = len(text) if k == n else len(text.rstrip("\ufffd"))
        return memo[k]

    return length


def char_rewards_to_tokens(tokenizer, ids: Sequence[int], pairs) -> np.ndarray:
    """Places `(char_end, reward)` pairs on the tokens of a completion.

    `r[k] += reward` for the first token k with `L(k + 1) >= char_end`, `L` the decoded
    prefix lengths (`prefix_char_lengths`): the token that contains character `char_end - 1`
    of `tokenizer.decode(ids)`. A token that adds no characters (a special token, the first
    bytes of a split character) never receives a reward. Found by bisection: about
    `log2(len(ids))` prefix decodes per pair.

    Args:
      tokenizer: has `decode(ids) -> str`, the one that made `completion`.
      ids: the completion's token ids (no padding).
      pairs: `(char_end, reward)` with `1 <= char_end <= len(decode(ids))`, reward finite.

    Returns:
      float32 array [len(ids)].

    Raises:
      ValueError: on a malformed pair, a `char_end` outside the text, or a non-finite reward.
    """
    n = len(ids)
    length = prefix_char_lengths(tokenizer, ids)
    out = np.zeros(n, np.float32)
    lengths = _LazySeq(length, n + 1)
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(
                f"token-level reward entry {pair!r}: expected a (char_end, reward) pair"
            )
        end, reward = pair
        if isinstance(end, bool) or not isinstance(end, int | np.integer):
            raise ValueError(f"char_end={end!r}: expected an integer character position")
        if not isinstance(reward, int | float | np.number) or not math.isfinite(reward):
            raise ValueError(f"reward={reward!r} at char_end={end}: expected a finite number")
        total = length(n)
        if not 1 <= end <= total:
            raise ValueError(
                f"char_end={end}: expected 1 <= char_end <= {total} (the "
                "completion's length in characters)"
            )
        k = bisect.bisect_left(lengths, int(end), lo=1)
        out[k - 1] += np.float32(reward)
    return out


class _LazySeq(Sequence):
    """`f(0), ..., f(n - 1)` evaluated on access (for `bisect` over decoded prefix lengths)."""

    def __init__(self, f: Callable[[int], int], n: int):
        self.f, self.n = f, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            raise TypeError("_LazySeq does not slice")
        return self.f(i)
