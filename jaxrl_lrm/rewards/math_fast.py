"""Linear-time answer extraction and the in-process fast path of math answer checking.

Pure standard library (no SymPy, no Math-Verify, no JAX). Everything here is linear in the
length of its input: `extract_answer` matches braces with one stack pass instead of rescanning
the text for every `\\boxed{`, so thousands of unclosed `\\boxed{` cost one pass. The fast
path (`fast_compare`) only answers when it is sure (equal strings after light normalisation,
exact numbers, multiple-choice letters); everything else goes to Math-Verify in the pool.
"""

from __future__ import annotations

import re
from fractions import Fraction

from jaxrl_lrm.rewards.math_numeric import values

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"[{}]")
_TOKEN_RE = re.compile(r"[^\s$]+")
_BARE_MAX_CHARS = 64
BARE_BLOCK_CHARS = 1000
_BARE_WORDS = frozenset(
    "sqrt infty infinity frac dfrac tfrac text cdot times and pmatrix bmatrix matrix begin end "
    "left right circ percent percentage pct leq geq neq le ge cup cap emptyset pi theta alpha beta "
    "mathrm mbox mathbf sin cos tan log ln exp".split()
)
_CHOICE_GOLD_RE = re.compile(r"\(?([A-E])\)?")
_CHOICE_RE = re.compile(r"\(?([A-E])\)?(?:[.:)]?\s.*)?|\(([A-E])\).*")
_NUM_RE = re.compile(r"[+-]?(?:(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:e[+-]?\d{1,3})?")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{(\d+)\}\{(\d+)\}|([+-]?\d+)/(\d+)")
_UNIT_WORDS = (
    "cm m km mm kg g mg l ml s min h hr hrs sec hours hour minutes minute seconds second days day "
    "weeks years months inches inch in ft feet foot yards miles mile meters meter metres mph "
    "dollars dollar cents cent units unit degrees degree pounds lbs liters people students"
).split()
_UNIT_RE = re.compile(
    r"(?:\\(?:text|mbox|mathrm)\{\s*[A-Za-z ]*\}|(?<=\d)(?:" + "|".join(_UNIT_WORDS) + r"))"
    r"(?:\^\{?[23]\}?)?$"
)
# `\pm 5`, `\mp \frac{3}{4}`: read as the set `\{5, -5\}` (Math-Verify's reading) when the other
# side is a set; only unsigned plain numbers (`\pm 1,000` and `\pm 1e3` are not sets there)
_PM_RE = re.compile(r"\\(?:pm|mp)(?![A-Za-z])\s*((?:0|[1-9]\d*)(?:\.\d+)?|\\frac\{\d+\}\{\d+\})")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad|~|\s+")
_MAX_NUMBER_CHARS = 40
EXACT_REL_GAP = 1e-5  # numbers this far apart are unequal under Math-Verify's rounding
SAME_REL_GAP = 1e-10  # expressions this close at every sample point are the same


def matching_braces(text: str) -> dict[int, int]:
    """`{open index: close index}` for every balanced `{...}` in `text` (one stack pass)."""
    partner, stack = {}, []
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            partner[stack.pop()] = m.start()
    return partner


def _box_at(text: str, start: int, partner: dict[int, int]) -> str | None:
    """Content after `\\boxed` ending at `start`: a balanced `{...}` group or `\\boxed 5`."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        j = partner.get(i)
        return None if j is None else text[i + 1 : j].strip()
    if i > start:  # `\boxed 5`: the token up to whitespace or `$`
        m = _TOKEN_RE.match(text, i)
        return m.group(0) if m else None
    return None


def _partners_from(text: str, start: int) -> dict[int, int]:
    """`matching_braces` of `text[start:]`, indexed in `text`."""
    return {k + start: v + start for k, v in matching_braces(text[start:]).items()}


def boxed_content(text: str, start: int) -> str | None:
    """Content of the `\\boxed` whose name ends at `text[start]` (None if unbalanced)."""
    return _box_at(text, start, _partners_from(text, start))


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


def extract_answer(text: str) -> str | None:
    """Final answer in `text`, in linear time.

    Returns the content of the last balanced `\\boxed{...}` or `\\fbox{...}` (nested braces
    handled, also `\\boxed 5`); else of the last `<answer>...</answer>`; else what follows the
    last `####` (GSM8K, thousands separators removed); else `None`. Non-strings give `None`.
    """
    if not isinstance(text, str):
        return None
    boxes = [m.end() for m in _BOX_RE.finditer(text)]
    if boxes:
        partner = _partners_from(text, boxes[0])
        for end in reversed(boxes):
            content = _box_at(text, end, partner)
            if content is not None:
                return content
    start = text.rfind("<answer>")
    if start >= 0:
        stop = text.find("</answer>", start)
        if stop >= 0:
            return text[start + len("<answer>") : stop].strip()
    return extract_gsm8k_answer(text)


def _one_math_env(s: str) -> bool:
    """`s` is exactly one `$...$`, `$$...$$`, `\\[...\\]` or `\\(...\\)` block."""
    for o, c in (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(o) and s.endswith(c) and len(s) > len(o) + len(c):
            inner = s[len(o) : -len(c)]
            return o not in inner and c not in inner and (o != "$" or "$" not in inner)
    return False


def bare_answer(text: str) -> str | None:
    """`text` itself when it is an answer rather than prose, else None.

    A bare answer is one line of at most 64 characters without prose words (`"42"`,
    `"x = 5"`, `"\\frac{1}{2}"`), or a single math block (`$...$`, `$$...$$`, `\\[...\\]`,
    `\\(...\\)`) of at most `BARE_BLOCK_CHARS` characters with nothing around it but a period.
    """
    s = text.strip()
    if not s:
        return None
    block = s[:-1].rstrip() if s.endswith(".") else s
    if len(block) <= BARE_BLOCK_CHARS and _one_math_env(block):
        return block
    if len(s) > _BARE_MAX_CHARS or "\n" in s:
        return None
    for word in re.findall(r"(?<![\\A-Za-z])[A-Za-z]{3,}", s):
        if word.lower() not in _BARE_WORDS:
            return None
    return s


def _light(s: str) -> str:
    """Delimiters, `\\left`/`\\right`, `\\dfrac`, spacing commands as spaces; no value change."""
    s = s.strip().replace("\\$", "").replace("$", "").replace("{,}", ",")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _SPACING_RE.sub(" ", s).strip()
    return s[:-1].rstrip() if s.endswith(".") and not s.endswith("\\.") else s


def _norm(s: str) -> str:
    """`_light` without spaces: the form compared as a string."""
    return _light(s).replace(" ", "")


def _number(s: str) -> tuple[Fraction, bool] | None:
    """`(value, exact)` of a plain number (`-1,234.5`, `\\frac{3}{4}`, `3/4`); else None."""
    if len(s) > _MAX_NUMBER_CHARS:
        return None
    if _NUM_RE.fullmatch(s):
        return Fraction(s.replace(",", "")), "." not in s and "e" not in s
    m = _FRAC_RE.fullmatch(s)
    if m is None:
        return None
    if m.group(2) is not None:
        sign, num, den = m.group(1), int(m.group(2)), int(m.group(3))
        num = -num if sign == "-" else num
    else:
        num, den = int(m.group(4)), int(m.group(5))
    return (Fraction(num, den), True) if den else None


def _readings(s: str, value: Fraction) -> list[Fraction]:
    """`value`, and the decimal-comma reading of a number with exactly one comma."""
    if s.count(",") == 1 and "." not in s and _NUM_RE.fullmatch(s.replace(",", ".")):
        return [value, Fraction(s.replace(",", "."))]
    return [value]


def choice_letter(s: str) -> str | None:
    """The multiple-choice letter in `(B)`, `B`, `B)`, `\\text{(B)}`, `(B) 42`; else `None`."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", s.strip().strip("$"))
    m = _CHOICE_RE.fullmatch(s.strip())
    return (m.group(1) or m.group(2)) if m else None


def fast_compare(pred: str, gold: str) -> bool | None:
    """True/False when decidable without SymPy, else None (ask Math-Verify).

    True for equal normalised strings, equal numbers (a trailing unit on the prediction
    allowed) and simple expressions with the same value at every sample point
    (`math_numeric`), and tuples, sets and interval unions whose members are; False for a
    wrong multiple-choice letter, two numbers or two simple expressions that differ by more
    than `EXACT_REL_GAP` relatively, and tuples or sets with a member that is.
    """
    g = _CHOICE_GOLD_RE.fullmatch(gold.strip())
    if g is not None:
        return choice_letter(pred) == g.group(1)
    p, q = _norm(pred), _norm(gold)
    if not p or not q:
        return False
    if p == q:
        return True
    lp, lq = _light(pred), _light(gold)
    for compare in (_sequence_compare, _collection_compare):
        r = compare(lp, lq)
        if r is not None:
            return r
    if ", " in pred or ", " in gold:  # `32, 349` is a list, not a thousands separator
        return None
    np_, nq = _number(_UNIT_RE.sub("", p) or p), _number(q)
    if np_ is not None and nq is not None:
        if np_[0] == nq[0]:
            return True
        far = lambda x, y: abs(x - y) > EXACT_REL_GAP * max(1, abs(x), abs(y))  # 6 decimals
        # `1,222` is a thousand and more, or (decimal comma) a little over one: both must differ
        xs, ys = _readings(p, np_[0]), _readings(q, nq[0])
        return False if all(far(x, y) for x in xs for y in ys) else None
    return _numeric_compare(_light(pred), _light(gold))


def _split_top(s: str) -> list[str]:
    """`s` split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    return parts + [s[start:]]


def _one_group(s: str) -> bool:
    """The bracket opening `s` closes at its last character (`(1, 2)`, not `(1, 2), (3, 4)`)."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _sequence_compare(p: str, q: str) -> bool | None:
    """Tuples/intervals `(a, b)`, `[a, b)` with the same brackets: element by element."""
    if len(p) < 2 or len(q) < 2 or (p[0], p[-1]) != (q[0], q[-1]) or p[0] not in "([":
        return None
    if p[-1] not in ")]" or not (_one_group(p) and _one_group(q)):
        return None
    xs, ys = _split_top(p[1:-1]), _split_top(q[1:-1])
    if len(xs) < 2 and len(ys) < 2:
        return None  # `(5)` is a parenthesised number
    if len(xs) != len(ys):
        return False
    results = [fast_compare(x, y) for x, y in zip(xs, ys)]
    if False in results:
        return False
    return None if None in results else True


def _members(s: str) -> tuple[list[str], bool] | None:
    """`(members, is_set)` of a set `\\{a, b\\}`, of `\\pm a` (the set `\\{a, -a\\}`) or of a
    union `A \\cup B`; else None."""
    m = _PM_RE.fullmatch(s)
    if m is not None:
        return [m.group(1), "-" + m.group(1)], True
    parts = [x.strip() for x in re.split(r"\\cup(?![A-Za-z])", s)]
    if len(parts) > 1:
        return parts, False
    if s.startswith("\\{") and s.endswith("\\}") and "\\{" not in s[2:-2] and "\\}" not in s[2:-2]:
        return [x.strip() for x in _split_top(s[2:-2])], True
    return None


def _collection_compare(p: str, q: str) -> bool | None:
    """Sets and interval unions, member by member in any order.

    True when every member of each side equals one of the other side; for sets, False when
    some member equals none of the other side's (a union's parts may be cut differently).
    """
    a, b = _members(p), _members(q)
    if a is None or b is None or a[1] != b[1] or max(len(a[0]), len(b[0])) > 16:
        return None
    table = [[fast_compare(x, y) for y in b[0]] for x in a[0]]
    cols = list(zip(*table))
    if all(True in row for row in table) and all(True in col for col in cols):
        return True
    if a[1] and any(all(v is False for v in line) for line in table + cols):
        return False
    return None


def _numeric_compare(p: str, q: str) -> bool | None:
    """Equal/unequal values of two simple expressions at the sample points (`math_numeric`)."""
    infinities = {"\\infty": 1, "+\\infty": 1, "-\\infty": -1}
    ip, iq = infinities.get(p.replace(" ", "")), infinities.get(q.replace(" ", ""))
    if ip is not None or iq is not None:  # an infinity equals only the same infinity
        other = values(q if ip is not None else p)
        return ip == iq if ip is not None and iq is not None else (False if other else None)
    vp, vq = values(p), values(q)
    if vp is None or vq is None:
        return None
    gaps = [abs(a - b) / max(1.0, abs(a), abs(b)) for a, b in zip(vp, vq)]
    if max(gaps) <= SAME_REL_GAP:
        return True
    if max(gaps) > EXACT_REL_GAP and vp[0] != vq[0]:
        return False
    return None
