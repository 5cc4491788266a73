"""Held-out evaluation: pass@1 (greedy), pass@k and maj@k.

Host code: it takes a `generate(prompt_ids, temperature, n, rng) -> completions` callable
from the trainer and a correctness function, so it knows nothing of models or meshes.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021):
    `1 - C(n - c, k) / C(n, k)`."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer; ties go to the one seen first."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def evaluate(
    rows: list[dict],
    *,
    complete: Callable[[list[dict], float, int], list[str]],
    correct: Callable[[list[dict], list[str]], list[bool]],
    extract: Callable[[str], str | None] | None = None,
    k: int = 0,
    temperature: float = 1.0,
) -> tuple[dict, list[tuple[str, str, bool]]]:
    """Greedy accuracy, and pass@k / maj@k over k samples per prompt when k > 0.

    Args:
      rows: held-out rows (`prompt`, `answer`, ...).
      complete: `(rows, temperature, n) -> completions`, n completions per row, row-major.
      correct: `(rows, completions) -> [bool]` for one completion per row.
      extract: answer extractor for maj@k (required when k > 0).
      k: samples per prompt for pass@k and maj@k (0 skips them).
      temperature: sampling temperature for the k samples.

    Returns:
      `(metrics, samples)`: `eval/accuracy` (= greedy pass@1), `eval/pass@k`, `eval/maj@k`,
      `eval/response_chars`; samples are `(prompt, completion, correct)` of the greedy pass.
    """
    if not rows:
        return {}, []
    greedy = complete(rows, 0.0, 1)
    ok = correct(rows, greedy)
    metrics = {
        "eval/accuracy": float(np.mean(ok)),
        "eval/response_chars": float(np.mean([len(c) for c in greedy])),
    }
    if k > 0:
        if extract is None:
            raise ValueError("maj@k needs an answer extractor")
        samples = complete(rows, temperature, k)
        rep_rows = [r for r in rows for _ in range(k)]
        hits = np.asarray(correct(rep_rows, samples), bool).reshape(len(rows), k)
        metrics[f"eval/pass@{k}"] = float(np.mean([pass_at_k(k, int(h.sum()), k) for h in hits]))
        maj_rows, maj_completions = [], []
        for i, row in enumerate(rows):
            answer = majority_answer([extract(s) for s in samples[i * k : (i + 1) * k]])
            if answer is not None:
                maj_rows.append(row)
                maj_completions.append(
                    samples[
                        i * k + [extract(s) for s in samples[i * k : (i + 1) * k]].index(answer)
                    ]
                )
        maj_ok = correct(maj_rows, maj_completions) if maj_rows else []
        metrics[f"eval/maj@{k}"] = float(np.sum(maj_ok) / len(rows))
    return metrics, [(r["prompt"], c, bool(o)) for r, c, o in zip(rows, greedy, ok)]
