"""Reward throughput: `python -m jaxrl_lrm.bench rewards [--quick]`.

Reports `math_per_s_per_core` (sequential `verify` calls per second on a realistic mix of
distinct answers, one call in flight at a time so at most one core is busy), the adversarial
rate and the worst wall time of any call against its timeout, and `sandbox_per_s` (small
programs through `rewards.code.execute`, `None` when that module is missing).
"""

from __future__ import annotations

import random
import time

from jaxrl_lrm.rewards.math import verify, warmup


def _realistic(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """Distinct (response, gold) pairs shaped like MATH/GSM8K answers, ~70% correct."""
    pairs = []
    for i in range(n):
        k, right = rng.randrange(1, 10_000), rng.random() < 0.7
        kind = i % 20
        if kind < 10:  # integers, sometimes with separators or units
            gold, pred = str(k), (f"{k:,}" if kind % 3 == 0 else f"{k}\\text{{ cm}}")
        elif kind < 13:
            gold, pred = f"\\frac{{{k}}}{{{k + 1}}}", f"\\dfrac{{{k}}}{{{k + 1}}}"
        elif kind < 15:
            gold, pred = f"{k / 8:.3f}", f"{k / 8:.3f}"
        elif kind < 16:
            gold, pred = f"({k}, {k + 2})", f"\\left( {k}, {k + 2} \\right)"
        elif kind < 18:
            gold, pred = f"\\frac{{\\sqrt{{{k}}}}}{{2}}", f"\\frac{{1}}{{2}}\\sqrt{{{k}}}"
        else:
            gold, pred = f"{k}x + 1", f"1 + {k}x"
        if not right:
            pred = pred.replace(str(k), str(k + 1), 1)
        pairs.append((f"We compute step by step... so the answer is $\\boxed{{{pred}}}$.", gold))
    return pairs


ADVERSARIAL = [
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{100000!}",
    "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",
    "z" * 2_000_000 + "\\boxed{1}",
    "\\boxed{(x+y+z+w)^{40}}",
]


def _sandbox_rate(n: int) -> float | None:
    try:
        from jaxrl_lrm.rewards.code import execute
    except Exception:  # noqa: BLE001 - the module is optional here
        return None
    start = time.perf_counter()
    for i in range(n):
        execute(f"print(sum(range({i + 10})))")
    return n / (time.perf_counter() - start)


def run(quick: bool, extra_args: list[str] | None = None) -> dict:
    """Runs the benchmark; returns `{"summary": {...}, ...}` and prints a small table."""
    rng = random.Random(0)
    n = 400 if quick else 4000
    warmup()
    time.sleep(2.0)  # workers import SymPy
    pairs = _realistic(n, rng)
    start = time.perf_counter()
    correct = sum(verify(r, g) for r, g in pairs)
    math_rate = n / (time.perf_counter() - start)

    timeout, worst, adv = 1.0, 0.0, ADVERSARIAL * (1 if quick else 3)
    start = time.perf_counter()
    for r in adv:
        t = time.perf_counter()
        verify(r, "\\frac{(2x+2y+2z+2w)^{40}}{2^{40}}", timeout_s=timeout)
        worst = max(worst, time.perf_counter() - t)
    adv_rate = len(adv) / (time.perf_counter() - start)
    sandbox = _sandbox_rate(5 if quick else 20)
    summary = {
        "math_per_s_per_core": round(math_rate, 1),
        "math_true_fraction": round(correct / n, 3),
        "adversarial_per_s": round(adv_rate, 2),
        "adversarial_max_wall_s": round(worst, 3),
        "adversarial_timeout_s": timeout,
        "sandbox_per_s": None if sandbox is None else round(sandbox, 2),
    }
    print(f"{'metric':<28}{'value':>12}")
    for k, v in summary.items():
        print(f"{k:<28}{v!s:>12}")
    return {"summary": summary, "n_realistic": n, "n_adversarial": len(adv)}
