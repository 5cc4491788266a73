"""Rewards that need no gold answer: majority vote (TTRL) and confidence.

Columns the trainer passes (one entry per completion, like every column):
  * `group_size`: int, the number G of completions sampled per prompt; the batch is laid out as
    contiguous groups, rows `[g*G, (g+1)*G)` belonging to prompt g. Every row holds the same G.
  * `token_logprobs`: list of floats, the sampler's log-probability of each generated token of
    that completion (the chosen token only; padding excluded).
"""

import collections
import math
import re

import numpy as np

_WS = re.compile(r"\s+")


def _local_extract(text: str) -> str | None:
    """Last `\\boxed{...}` / `\\fbox{...}` (nested braces), else last `<answer>...</answer>`."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    tags = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return tags[-1].strip() if tags else None


def extract_final_answer(text: str) -> str | None:
    """`rewards.math.extract_answer` when that module is present, else an equivalent local rule."""
    try:
        from jaxrl_lrm.rewards.math import extract_answer
    except ImportError:
        return _local_extract(text)
    return extract_answer(text)


def normalize_answer(answer: str) -> str:
    """Canonical string for voting: whitespace and `$` removed, a trailing period dropped."""
    return _WS.sub("", answer).replace("$", "").rstrip(".")


def _group_size(group_size, n: int) -> int:
    sizes = {int(g) for g in group_size}
    if len(group_size) != n or len(sizes) != 1:
        raise ValueError(f"group_size must be one equal int per completion, got {group_size}")
    g = sizes.pop()
    if g < 1 or n % g:
        raise ValueError(f"group_size {g} must be >= 1 and divide the batch of {n}")
    return g


def majority_vote_reward(
    prompts: list[str], completions: list[str], group_size, **_
) -> list[float]:
    """TTRL (Zuo et al. 2025): agreement with the group's majority answer.

    Within each group (contiguous rows `[g*G, (g+1)*G)`), answers are extracted
    (`extract_final_answer`) and normalised (`normalize_answer`); the most frequent one is the
    pseudo-label. Ties go to the answer that appears first in the group. Reward 1.0 for a
    completion whose answer equals the pseudo-label, 0.0 otherwise and when it has no answer
    (a group with no answers at all scores 0 everywhere).

    Raises:
      ValueError: if `group_size` is not one equal int per row dividing the batch.
    """
    n = len(completions)
    g = _group_size(group_size, n)
    answers = [extract_final_answer(c) for c in completions]
    answers = [None if a is None else normalize_answer(a) for a in answers]
    rewards = [0.0] * n
    for start in range(0, n, g):
        group = answers[start : start + g]
        counts = collections.Counter(a for a in group if a is not None)
        if not counts:
            continue
        best = max(counts.values())
        label = next(a for a in group if a is not None and counts[a] == best)
        for i, a in enumerate(group):
            rewards[start + i] = float(a == label)
    return rewards


def confidence_reward(
    prompts: list[str], completions: list[str], token_logprobs, **_
) -> list[float]:
    """Confidence from the chosen tokens' log-probs: `exp(mean_t log p(y_t))`, in (0, 1].

    This is the geometric-mean token probability (the inverse perplexity) of the completion.
    The self-certainty of Kang et al. 2025 needs each step's full distribution, which the
    sampler does not return; `self_certainty` computes it where those are available. An empty
    completion scores 0.

    Raises:
      ValueError: if `token_logprobs` does not have one list per completion, or holds a positive
        or non-finite log-prob.
    """
    if len(token_logprobs) != len(completions):
        raise ValueError(
            f"token_logprobs has {len(token_logprobs)} entries for {len(completions)} completions"
        )
    rewards = []
    for lp in token_logprobs:
        lp = np.asarray(lp, np.float64)
        if lp.size and (not np.all(np.isfinite(lp)) or lp.max() > 1e-6):
            raise ValueError(f"token_logprobs must be finite and <= 0, got {lp.tolist()[:8]}")
        rewards.append(float(math.exp(lp.mean())) if lp.size else 0.0)
    return rewards


def self_certainty(logprobs_TxV: np.ndarray, mask_T: np.ndarray | None = None) -> float:
    """Self-certainty (Kang et al. 2025), `KL(U || p)` averaged over tokens.

    `SC = -1/(n V) * sum_t sum_v log(V * p_t(v))` over the n unmasked positions, where
    `logprobs_TxV` holds the full log-softmax at each generated position.
    """
    lp = np.asarray(logprobs_TxV, np.float64)
    if lp.ndim != 2:
        raise ValueError(f"logprobs_TxV must be [T, V], got shape {lp.shape}")
    mask = np.ones(lp.shape[0]) if mask_T is None else np.asarray(mask_T, np.float64)
    v = lp.shape[1]
    per_token = -(np.log(v) + lp).mean(axis=1)
    n = mask.sum()
    return float((per_token * mask).sum() / n) if n else 0.0
