"""Reward combination and shaping: weighted sums, length and repetition terms.

Every shaping term is a factory returning a reward function with the TRL/Tunix signature
`fn(prompts, completions, **columns) -> list[float]`. Length-based terms read completion token
lengths from the column `completion_lengths` (one int per completion; the trainer passes it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from jaxrl_lrm.rewards.math import _text

__all__ = [
    "CombinedReward",
    "combine",
    "cosine_length_reward",
    "length_penalty",
    "repetition_penalty",
    "soft_overlong_punishment",
]

RewardFn = Callable[..., list[float]]
LENGTHS = "completion_lengths"


def _name(fn) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _checked(values, n: int, who: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != n:
        raise ValueError(f"reward function {who!r} returned {len(values)} values, expected {n}")
    return values


class CombinedReward:
    """A weighted sum of reward functions: `total_i = sum_k w_k * r_k(i)`.

    Calling it returns the totals (usable anywhere a reward function is); `score` also returns
    each function's unweighted rewards, keyed by function name, and `metrics` their means.
    """

    def __init__(self, fns: Sequence[tuple[RewardFn, float]], name: str | None = None):
        self.fns = list(fns)
        self.names: list[str] = []
        for fn, _ in self.fns:
            base, k = _name(fn), 2
            n = base
            while n in self.names:
                n, k = f"{base}_{k}", k + 1
            self.names.append(n)
        self.__name__ = name or "+".join(self.names)

    def score(self, prompts, completions, **columns) -> tuple[list[float], dict[str, list[float]]]:
        """`(total, per_fn)`: weighted totals and each function's own rewards by name."""
        per_fn = {}
        total = [0.0] * len(completions)
        for (fn, w), n in zip(self.fns, self.names):
            r = _checked(fn(prompts, completions, **columns), len(completions), n)
            per_fn[n] = r
            total = [t + w * x for t, x in zip(total, r)]
        return total, per_fn

    def __call__(self, prompts, completions, **columns) -> list[float]:
        return self.score(prompts, completions, **columns)[0]

    @staticmethod
    def metrics(per_fn: dict[str, list[float]]) -> dict[str, float]:
        """`{"rewards/<name>/mean": mean}` for the `per_fn` of `score` (0.0 for an empty batch)."""
        return {f"rewards/{n}/mean": (sum(r) / len(r) if r else 0.0) for n, r in per_fn.items()}


def combine(fns: Sequence[tuple[RewardFn, float]], name: str | None = None) -> CombinedReward:
    """Combines `[(fn, weight), ...]` into one reward: `sum_k weight_k * fn_k(...)`.

    Args:
        fns: non-empty list of `(reward_fn, weight)` with finite weights.
        name: the `__name__` of the result (default: the function names joined by `+`).

    Returns:
        A `CombinedReward`: `combined(prompts, completions, **cols) -> list[float]` and
        `combined.score(...) -> (total, {name: rewards})`.

    Raises:
        ValueError: if `fns` is empty, an entry is not `(callable, finite number)`.
    """
    fns = list(fns)
    if not fns:
        raise ValueError("combine needs at least one (fn, weight) pair, got an empty list")
    for pair in fns:
        ok = isinstance(pair, tuple | list) and len(pair) == 2 and callable(pair[0])
        if not ok or isinstance(pair[1], bool) or not isinstance(pair[1], int | float):
            raise ValueError(f"expected (reward_fn, weight) pairs, got {pair!r}")
        if not math.isfinite(pair[1]):
            raise ValueError(f"weight must be finite, got {pair[1]!r} for {_name(pair[0])}")
    return CombinedReward([(f, float(w)) for f, w in fns], name)


def _lengths(columns: dict, n: int) -> list[int]:
    lengths = columns.get(LENGTHS)
    if lengths is None or len(lengths) != n:
        got = "missing" if lengths is None else f"{len(lengths)} entries"
        raise ValueError(
            f"column {LENGTHS!r} must hold one token length per completion ({n}), got {got}"
        )
    return [int(x) for x in lengths]


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def length_penalty(*, max_len: int, coef: float = 1.0) -> RewardFn:
    """Linear length penalty `r = -coef * min(L, max_len) / max_len` (`L` = token length)."""
    _positive("max_len", max_len)

    def length_penalty_reward(prompts, completions, **columns) -> list[float]:
        return [-coef * min(n, max_len) / max_len for n in _lengths(columns, len(completions))]

    return length_penalty_reward


def soft_overlong_punishment(*, max_len: int, cache_len: int, coef: float = 1.0) -> RewardFn:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), times `coef`.

    With `L = |y|` the completion's token length, `L_max = max_len`, `L_cache = cache_len`:
    `R = 0` if `L <= L_max - L_cache`; `R = ((L_max - L_cache) - L) / L_cache` if
    `L_max - L_cache < L <= L_max`; `R = -1` if `L > L_max`.
    """
    _positive("max_len", max_len)
    _positive("cache_len", cache_len)
    if cache_len > max_len:
        raise ValueError(f"cache_len must be <= max_len ({max_len}), got {cache_len}")
    start = max_len - cache_len

    def soft_overlong_reward(prompts, completions, **columns) -> list[float]:
        out = []
        for n in _lengths(columns, len(completions)):
            r = 0.0 if n <= start else ((start - n) / cache_len if n <= max_len else -1.0)
            out.append(coef * r)
        return out

    return soft_overlong_reward


def cosine_length_reward(
    *,
    max_len: int,
    correct_fn: RewardFn | None = None,
    r_correct_0: float = 2.0,
    r_correct_L: float = 1.0,
    r_wrong_0: float = -10.0,
    r_wrong_L: float = 0.0,
    r_exceed: float = -10.0,
) -> RewardFn:
    """Cosine-scaled length reward (Yeo et al. 2025, "Demystifying Long CoT Reasoning").

    `CosFn(t, T, a, b) = b + 0.5 * (a - b) * (1 + cos(t * pi / T))` interpolates from `a` at
    `t = 0` to `b` at `t = T`. With `L` the token length and `T = max_len`:
    correct: `CosFn(L, T, r_correct_0, r_correct_L)` (short correct answers earn more);
    wrong: `CosFn(L, T, r_wrong_0, r_wrong_L)` (long wrong answers are punished less);
    `L >= T`: `r_exceed`. Correctness is `correct_fn(...) > 0.5`, by default
    `rewards.math.accuracy_reward` (needs the `answer` column). Defaults are the paper's.
    """
    _positive("max_len", max_len)
    if correct_fn is None:
        from jaxrl_lrm.rewards.math import accuracy_reward as correct_fn

    def cos_fn(t: float, a: float, b: float) -> float:
        return b + 0.5 * (a - b) * (1.0 + math.cos(t * math.pi / max_len))

    def cosine_length(prompts, completions, **columns) -> list[float]:
        lengths = _lengths(columns, len(completions))
        correct = _checked(
            correct_fn(prompts, completions, **columns), len(completions), "correct_fn"
        )
        out = []
        for n, c in zip(lengths, correct):
            if n >= max_len:
                out.append(float(r_exceed))
            elif c > 0.5:
                out.append(cos_fn(n, r_correct_0, r_correct_L))
            else:
                out.append(cos_fn(n, r_wrong_0, r_wrong_L))
        return out

    return cosine_length


def repetition_penalty(*, ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFn:
    """N-gram repetition penalty (Yeo et al. 2025; as in open-r1).

    Over the completion's whitespace-separated words: `r = (1 - U / N) * max_penalty`, with `N`
    the number of word n-grams and `U` the number of distinct ones; 0 when `N == 0` (fewer
    than `ngram_size` words). `max_penalty` must be <= 0.
    """
    if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"ngram_size must be a positive int, got {ngram_size!r}")
    if not max_penalty <= 0:
        raise ValueError(f"max_penalty must be <= 0, got {max_penalty!r}")

    def repetition_penalty_reward(prompts, completions, **_) -> list[float]:
        out = []
        for c in completions:
            words = _text(c).lower().split()
            grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
            out.append((1 - len(set(grams)) / len(grams)) * max_penalty if grams else 0.0)
        return out

    return repetition_penalty_reward
