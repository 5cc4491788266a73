"""Format rewards: `<think>...</think>` + answer structure and `<answer>` tags.

Signatures follow TRL/Tunix: `fn(prompts, completions, **columns) -> list[float]`.
"""

from __future__ import annotations

import re

from jaxrl_lrm.rewards.math import _boxed_content, _text

__all__ = ["think_format_reward", "answer_tag_reward"]

_THINK_RE = re.compile(r"\s*<think>(.*?)</think>(.*)", re.S)
_ANSWER_ONLY_RE = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.S)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _check(prompts, completions) -> list[str]:
    if prompts is not None and len(prompts) != len(completions):
        raise ValueError(
            f"prompts and completions must have the same length, got {len(prompts)} prompts "
            f"and {len(completions)} completions"
        )
    return [_text(c) for c in completions]


def _has_boxed(text: str) -> bool:
    return any(_boxed_content(text, m.end()) for m in _BOX_RE.finditer(text))


def _think_ok(text: str) -> bool:
    m = _THINK_RE.fullmatch(text)
    if not m or any(t in m.group(1) for t in _TAGS):
        return False
    rest = m.group(2)
    if "<think>" in rest or "</think>" in rest:
        return False
    if "<answer>" in rest or "</answer>" in rest:
        a = _ANSWER_ONLY_RE.fullmatch(rest)
        return bool(a and a.group(1).strip() and "<answer>" not in a.group(1))
    return _has_boxed(rest)


def think_format_reward(prompts: list, completions: list, **_) -> list[float]:
    """`1.0` iff a completion is a reasoning block followed by an answer, else `0.0`.

    Accepted exactly: optional whitespace, `<think>`, any text without further
    think/answer tags (may be empty), `</think>`, then either
    (a) optional whitespace, one `<answer>NON-EMPTY</answer>`, optional whitespace and nothing
    else; or (b) free text containing a non-empty, brace-balanced `\\boxed{...}`/`\\fbox{...}`
    (e.g. `The answer is $\\boxed{5}$.`) and no think/answer tags.

    Raises:
        ValueError: if `prompts` and `completions` differ in length.
    """
    return [float(_think_ok(t)) for t in _check(prompts, completions)]


def answer_tag_reward(prompts: list, completions: list, **_) -> list[float]:
    """`1.0` iff a completion ends with exactly one `<answer>NON-EMPTY</answer>`, else `0.0`.

    Text may precede the tag (reasoning); only whitespace may follow `</answer>`; the answer
    must be non-empty after stripping and neither tag may appear anywhere else.

    Raises:
        ValueError: if `prompts` and `completions` differ in length.
    """
    out = []
    for t in _check(prompts, completions):
        ok = t.count("<answer>") == 1 and t.count("</answer>") == 1
        if ok:
            start = t.index("<answer>")
            m = _ANSWER_ONLY_RE.fullmatch(t, start)
            ok = bool(m and m.group(1).strip())
        out.append(float(ok))
    return out
