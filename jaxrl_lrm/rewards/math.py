"""Verifiable math rewards: answer extraction and mathematical equivalence with a hard deadline.

`verify(response, gold)` extracts the final answer, normalises both sides (`math_latex`), and
compares them structurally (`math_compare`): first in-process with string and exact-number
checks only, which settles most real answers in microseconds; what is left (symbolic
expressions, equations) goes to a pool of SymPy worker processes (`math_pool`) that are killed
and replaced when a call overruns its `timeout_s`. Nothing here imports JAX.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from jaxrl_lrm.rewards import math_pool
from jaxrl_lrm.rewards.math_compare import cheap_leaf, compare_nodes, parse
from jaxrl_lrm.rewards.math_latex import MAX_ANSWER_CHARS, choice_letter, normalize, squash

__all__ = ["extract_answer", "extract_gsm8k_answer", "verify", "accuracy_reward", "warmup"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_BARE_MAX_CHARS = 64
_BARE_WORDS = {"sqrt", "infty", "infinity", "frac", "dfrac", "tfrac", "text", "cdot", "times"}
_CACHE_SIZE = 1 << 14
_cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
_cache_lock = threading.Lock()


def _boxed_content(text: str, start: int) -> str | None:
    """Content after `\\boxed` at `text[start:]`: a balanced `{...}` group or `\\boxed 5`."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            depth += (text[j] == "{") - (text[j] == "}")
            if depth == 0:
                return text[i + 1 : j].strip()
        return None
    if i > start:  # `\boxed 5`: the token up to whitespace or `$`
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    return None


def extract_answer(text: str) -> str | None:
    """Final answer in `text`.

    Returns the content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces handled,
    also `\\boxed 5`); else of the last `<answer>...</answer>`; else `None`. Non-strings give
    `None`.
    """
    if not isinstance(text, str):
        return None
    for m in reversed(list(_BOX_RE.finditer(text))):
        content = _boxed_content(text, m.end())
        if content is not None:
            return content
    start = text.rfind("<answer>")
    if start >= 0:
        m = _ANSWER_RE.match(text, start)
        if m:
            return m.group(1).strip()
    return None


def extract_gsm8k_answer(text: str) -> str | None:
    """The answer after the last `####` of a GSM8K solution (`"... #### 1,234"` -> `"1234"`)."""
    if not isinstance(text, str):
        return None
    i = text.rfind("####")
    if i < 0:
        return None
    line = text[i + 4 :].strip().split("\n", 1)[0].strip()
    line = re.sub(r"(?<=\d),(?=\d{3}\b)", "", line).replace("$", "").strip()
    return line or None


def _bare_answer(text: str) -> str | None:
    """`text` itself when it is a short one-line answer rather than prose."""
    s = text.strip().strip("$").strip()
    if not s or len(s) > _BARE_MAX_CHARS or "\n" in s:
        return None
    for word in re.findall(r"(?<![\\A-Za-z])[A-Za-z]{3,}", s):
        if word not in _BARE_WORDS:
            return None
    return s


def _gold_answer(gold) -> str | None:
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


def _cached(key: tuple[str, str]) -> bool | None:
    with _cache_lock:
        r = _cache.get(key)
        if r is not None:
            _cache.move_to_end(key)
        return r


def _store(key: tuple[str, str], value: bool) -> None:
    with _cache_lock:
        _cache[key] = value
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def verify(response: str, gold, *, timeout_s: float = 2.0) -> bool:
    """True iff the answer in `response` is mathematically equal to `gold`.

    The answer is `extract_answer(response)`; when that is `None` the whole response is used
    only if it is itself a bare answer (one line, at most 64 characters, no prose words:
    `"42"`, `"x = 5"`, `"\\frac{1}{2}"`), otherwise the result is False. `gold` is a bare
    answer (LaTeX or plain, or a number); a GSM8K solution (`#### 42`) or a text with
    `\\boxed{}` is reduced to its answer first. A gold multiple-choice letter (`B`, `(B)`) is
    compared by letter. See `docs/rewards_math.md` for what counts as equal.

    Never raises for any `response`/`gold`; returns within about `timeout_s` (SymPy work runs
    in worker processes that are killed on overrun; an overrun counts as not equal).

    Raises:
        ValueError: if `timeout_s` is not a positive finite number.
    """
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
        raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
    deadline = time.monotonic() + timeout_s
    try:
        ans = extract_answer(response)
        if ans is None and isinstance(response, str):
            ans = _bare_answer(response)
        gold_ans = _gold_answer(gold)
        if ans is None or gold_ans is None:
            return False
        p, g = normalize(ans), normalize(gold_ans)
        if not p or not g:
            return False
        if re.fullmatch(r"\(?[A-E]\)?", g):
            return choice_letter(p) == g.strip("()")
        if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
            return squash(p) == squash(g)
        r = compare_nodes(parse(p), parse(g), cheap_leaf)
        if r is not None:
            return r
        r = _cached((p, g))
        if r is None:
            r = math_pool.get_pool().compare(p, g, deadline)
            if r is None:
                return False
            _store((p, g), r)
        return r
    except Exception:  # noqa: BLE001 - the contract is "never raises"
        return False


def warmup(workers: int | None = None) -> None:
    """Starts the SymPy worker pool now (else the first symbolic comparison starts it)."""
    math_pool.get_pool(workers)


def _text(completion) -> str:
    """A completion as text: a string, or the last message of a chat-format list."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return completion if isinstance(completion, str) else ""


def accuracy_reward(prompts: list, completions: list, answer: list, **_) -> list[float]:
    """`1.0` where `verify(completion, answer)` holds, else `0.0`.

    Completions are strings or chat-format message lists (the last message's `content` is
    used). Completions are verified concurrently from a few threads so several SymPy workers
    are used at once.

    Raises:
        ValueError: if `answer` is not a list with one entry per completion.
    """
    if not isinstance(answer, list | tuple) or len(answer) != len(completions):
        got = len(answer) if isinstance(answer, list | tuple) else type(answer).__name__
        raise ValueError(
            f"answer must be a list with one gold answer per completion ({len(completions)}), "
            f"got {got}"
        )
    texts = [_text(c) for c in completions]
    if len(texts) <= 1:
        return [float(verify(t, a)) for t, a in zip(texts, answer)]
    with ThreadPoolExecutor(max_workers=math_pool.default_size()) as ex:
        return [float(v) for v in ex.map(verify, texts, answer)]
