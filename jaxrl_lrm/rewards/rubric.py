"""The LLM judge's host half: the rubric template and the rule that reads a score from a reply.

`scorers.judge.LLMJudge` fills a rubric with `format_rubric`, generates the judge's reply on
the accelerator, and parses it here with `parse_score`:

- the score is the number in the *last* match, by position, of either `Score: N` (any case;
  `**Score:** N`, `score = N` too) or `<score>N</score>`; N is an integer or decimal, and a
  number run into letters (`1e5`, `7a`) does not count;
- it is clamped to the judge's `scale` `(low, high)` (default 0..10) and normalised to
  `(N - low) / (high - low)` in [0, 1];
- a reply with no such match gives None.

Plain Python, no JAX: usable in reward workers and in tests without an accelerator.
"""

from __future__ import annotations

import re
import string

DEFAULT_TEMPLATE = (
    "You are a strict grader. Rate the response to the question below for correctness and "
    "quality on a scale from {low} to {high}.\n\n"
    "Question:\n{prompt}\n\n"
    "{reference_section}"
    "Response:\n{completion}\n\n"
    'Explain briefly, then end with a line of the form "Score: N" where N is a number from '
    "{low} to {high}.\n"
)
REFERENCE_SECTION = "Reference answer:\n{reference}\n\n"
TEMPLATE_FIELDS = ("prompt", "completion", "reference", "reference_section", "low", "high")

_NUMBER = r"(?>[-+]?\d+(?:\.\d+)?)(?!\w)"  # atomic: "8.5x" must not match as "8"
_SCORE_PATTERNS = (
    re.compile(r"(?i)\bscore\b\**\s*[:=]\s*\**\s*(" + _NUMBER + ")"),
    re.compile(r"(?i)<score>\s*(" + _NUMBER + r")\s*</score>"),
)


def parse_score(text: str, *, scale: tuple[float, float] = (0.0, 10.0)) -> float | None:
    """The judge's score in [0, 1], or None when `text` holds none (see the module rule)."""
    low, high = scale
    matches = [m for pattern in _SCORE_PATTERNS for m in pattern.finditer(text)]
    if not matches:
        return None
    raw = float(max(matches, key=lambda m: m.start()).group(1))
    return (min(max(raw, low), high) - low) / (high - low)


def template_fields(template: str) -> set[str]:
    """The `str.format` field names `template` uses.

    Raises:
      ValueError: `template` is not a valid format string.
    """
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"template={template!r} is not a valid format string: {e}") from None


def check_template(template: str) -> str:
    """`template` itself, after checking it uses only `TEMPLATE_FIELDS`."""
    unknown = template_fields(template) - set(TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(
            f"template uses unknown field(s) {sorted(unknown)}: expected some "
            f"of {list(TEMPLATE_FIELDS)}"
        )
    return template


def format_rubric(
    template: str,
    prompt: str,
    completion: str,
    reference=None,
    *,
    scale: tuple[float, float] = (0.0, 10.0),
) -> str:
    """One row's rubric: `template` filled with the row and the scale's bounds.

    `{reference}` is `str(reference)` (empty for None) and `{reference_section}` is
    `REFERENCE_SECTION` filled with it (empty for None); whole-number bounds print as integers.
    """
    ref = "" if reference is None else str(reference)
    section = "" if reference is None else REFERENCE_SECTION.format(reference=ref)
    low, high = (int(x) if float(x).is_integer() else x for x in scale)
    return template.format(
        prompt=prompt,
        completion=completion,
        reference=ref,
        reference_section=section,
        low=low,
        high=high,
    )
