"""Verifiable math rewards: answer extraction and Math-Verify equivalence with a hard deadline.

`verify(response, gold)` extracts the final answer (`math_fast.extract_answer`, linear time)
and first tries the in-process fast path (`math_fast.fast_compare`: equal strings, exact
numbers, multiple-choice letters), which settles most real answers in microseconds. What is
left goes to Math-Verify (Hugging Face's `math-verify`, on SymPy and `latex2sympy2_extended`)
in a pool of worker processes (`math_pool`) that are killed and replaced when a call overruns
its `timeout_s`; responses too long for the host's bounded work are extracted in the pool too.
Nothing here imports JAX, SymPy or Math-Verify.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from jaxrl_lrm.rewards import math_pool
from jaxrl_lrm.rewards.math_fast import (
    _BOX_RE,
    bare_answer,
    boxed_content,
    extract_answer,
    extract_gsm8k_answer,
    fast_compare,
)

__all__ = [
    "extract_answer",
    "extract_gsm8k_answer",
    "verify",
    "accuracy_reward",
    "accuracy_reward_lenient",
    "warmup",
]

HOST_MAX_CHARS = 200_000  # longer responses are extracted inside the pool (killable)
_CACHE_SIZE = 1 << 14
_cache: OrderedDict[tuple, bool] = OrderedDict()
_cache_lock = threading.Lock()
_boxed_content = boxed_content  # used by rewards.format


def _gold_answer(gold) -> str | None:
    """A gold answer as a bare string: numbers, GSM8K solutions and boxed texts reduced."""
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int | float):
        return repr(gold) if math.isfinite(gold) else None
    if not isinstance(gold, str):
        return None
    if "####" in gold:
        return extract_gsm8k_answer(gold)
    if _BOX_RE.search(gold) or "<answer>" in gold:
        return extract_answer(gold)
    return gold.strip() or None


def _cached(key: tuple) -> bool | None:
    with _cache_lock:
        r = _cache.get(key)
        if r is not None:
            _cache.move_to_end(key)
        return r


def _store(key: tuple, value: bool) -> None:
    with _cache_lock:
        _cache[key] = value
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def _judge(response: str, gold: str, gold_raw: str | None, timeout_s: float, lenient: bool) -> bool:
    """Fast path on the host, else Math-Verify in the pool."""
    ans, multi_box = None, response.count("\\boxed") > 1
    if len(response) <= HOST_MAX_CHARS:
        ans = extract_answer(response)
        short = ans if ans is not None else bare_answer(response)
        if short is not None:
            r = fast_compare(short, gold)
            if r or (r is False and not multi_box):  # several boxes may be read together
                return r
    payload = {
        "resp": response if ans is None or multi_box else None,
        "ans": ans,
        "gold": gold,
        "gold_raw": gold_raw,
        "lenient": lenient and ans is None,
    }
    key = tuple(payload.values())
    r = _cached(key)
    if r is None:
        r = math_pool.get_pool().compare(payload, timeout_s)
        if r is None:
            return False  # over time: not shown equal
        _store(key, r)
    return r


def verify(response: str, gold, *, timeout_s: float = 2.0, lenient: bool = False) -> bool:
    """True iff the answer in `response` is mathematically equal to `gold`.

    The answer is `extract_answer(response)` (last `\\boxed{}`/`\\fbox{}`, else last
    `<answer>...</answer>`, else GSM8K `#### N`); without one, the whole response when it is
    itself a bare answer (one line, at most 64 characters, no prose words: `"42"`,
    `"$x \\geq 5$"`), else an answer after an "answer" / "final answer is" anchor (Math-Verify's
    anchored extraction: `Answer: \\[ 5 \\]`). With `lenient=True` the last LaTeX expression or
    number anywhere also counts. `gold` is a bare answer (LaTeX or plain, or a number); a GSM8K
    solution or a text with `\\boxed{}` is reduced to its answer first. Equality is Math-Verify's
    (`docs/rewards_math.md`); a gold multiple-choice letter (`B`, `(B)`) is compared by letter.

    Never raises for any `response`/`gold`; returns within `timeout_s` + 0.5 s: Math-Verify runs
    in worker processes that are killed on overrun (an overrun counts as not equal). Waiting for
    a worker to finish starting (the pool's start-up, a replacement after a kill) is not charged.

    Raises:
        ValueError: if `timeout_s` is not a positive finite number.
    """
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
        raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
    try:
        gold_ans = _gold_answer(gold)
        if gold_ans is None or not isinstance(response, str) or not response.strip():
            return False
        gold_raw = gold if isinstance(gold, str) and gold.count("\\boxed") > 1 else None
        return _judge(response, gold_ans, gold_raw, timeout_s, lenient)
    except Exception:  # noqa: BLE001 - the contract is "never raises"
        return False


def warmup(workers: int | None = None) -> None:
    """Starts the Math-Verify worker pool now and waits until it is ready."""
    math_pool.get_pool(workers)


def _text(completion) -> str:
    """A completion as text: a string, or the last message of a chat-format list."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return completion if isinstance(completion, str) else ""


def _score(completions: list, answer: list, lenient: bool) -> list[float]:
    if not isinstance(answer, list | tuple) or len(answer) != len(completions):
        got = len(answer) if isinstance(answer, list | tuple) else type(answer).__name__
        raise ValueError(
            f"answer must be a list with one gold answer per completion ({len(completions)}), "
            f"got {got}"
        )
    texts = [_text(c) for c in completions]
    check = lambda t, a: float(verify(t, a, lenient=lenient))
    if len(texts) <= 1:
        return [check(t, a) for t, a in zip(texts, answer)]
    with ThreadPoolExecutor(max_workers=math_pool.default_size()) as ex:
        return list(ex.map(check, texts, answer))


def accuracy_reward(prompts: list, completions: list, answer: list, **_) -> list[float]:
    """`1.0` where `verify(completion, answer)` holds (strict extraction), else `0.0`.

    Completions are strings or chat-format message lists (the last message's `content` is
    used). Completions are verified concurrently from a few threads so several workers are used
    at once; each has its own deadline, so one slow sample never costs the others their scores.

    Raises:
        ValueError: if `answer` is not a list with one entry per completion.
    """
    return _score(completions, answer, lenient=False)


def accuracy_reward_lenient(prompts: list, completions: list, answer: list, **_) -> list[float]:
    """Like `accuracy_reward`, but a response without an explicit final answer is also scored
    by its last LaTeX expression or number (`verify(..., lenient=True)`)."""
    return _score(completions, answer, lenient=True)
