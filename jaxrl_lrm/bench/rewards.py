"""Reward throughput: `python -m jaxrl_lrm.bench rewards [--quick]`.

Reports `math_per_s_per_core` (sequential `verify` calls per second on a realistic mix of
distinct answers, one call in flight at a time so at most one core is busy), `math_agreement`
(how often `verify` agrees with plain Math-Verify on the hand-labelled set in
`tests/fixtures/math_cases.jsonl`, with each one's accuracy against the hand labels), the
adversarial rate and the worst wall time of any call against its timeout, `sandbox_per_s`
(sequential one-line programs through `rewards.code.execute` once its zygote is up; `None` when
that module is missing), `sandbox_start_s` (the first call: the zygote's start plus one run),
and two figures that do not fall when other jobs share the cores: `math_per_cpu_s` (answers per
CPU second of this process and the pool) and `sandbox_cpu_ms` (CPU per run, the zygote's
processes included). The summary ends with the load average at the end of the run.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import time
from collections import defaultdict

from jaxrl_lrm.rewards.math import extract_answer, verify, warmup
from jaxrl_lrm.rewards.math_fast import fast_compare


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and every live descendant (the math pool, the
    sandbox zygote), each with the children it has reaped (Linux `/proc`); unlike wall time it
    does not grow when other jobs share the cores."""
    stat = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it just exited
        stat[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    children = defaultdict(list)
    for pid, (ppid, _) in stat.items():
        children[ppid].append(pid)
    ticks, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        ticks += stat.get(pid, (0, 0))[1]
        todo += children[pid]
    return ticks / os.sysconf("SC_CLK_TCK")


def _realistic(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """Distinct (response, gold) pairs shaped like MATH/GSM8K answers, ~70% correct.

    Per 20: 10 integers (separators, units), 3 fractions, 2 decimals, 1 tuple, 2 radicals,
    1 polynomial and 1 set or interval union; a fifth of the sets are written `\\pm k`. Wrong
    interval unions are left to Math-Verify (0.6% of all pairs go to the pool; 1.25% before the
    fast path read `\\pm k` as a set).
    """
    pairs = []
    for i in range(n):
        k = rng.randrange(1, 10_000)
        v = k if rng.random() < 0.7 else k + 1  # the prediction's value: right or wrong
        kind = i % 20
        if kind < 10:  # integers, sometimes with separators or units
            gold, pred = str(k), (f"{v:,}" if kind % 3 == 0 else f"{v}\\text{{ cm}}")
        elif kind < 13:
            gold, pred = f"\\frac{{{k}}}{{{k + 1}}}", f"\\dfrac{{{v}}}{{{k + 1}}}"
        elif kind < 15:
            gold, pred = f"{k / 8:.3f}", f"{v / 8:.3f}"
        elif kind < 16:
            gold, pred = f"({k}, {k + 2})", f"\\left( {v}, {k + 2} \\right)"
        elif kind < 18:
            gold, pred = f"\\frac{{\\sqrt{{{k}}}}}{{2}}", f"\\frac{{1}}{{2}}\\sqrt{{{v}}}"
        elif kind < 19:
            gold, pred = f"{k}x + 1", f"1 + {v}x"
        elif i % 40 < 20:
            gold = f"\\{{{k}, -{k}\\}}"
            pred = f"\\{{-{v}, {v}\\}}" if rng.random() < 0.8 else f"\\pm {v}"
        else:
            gold, pred = (
                f"(-\\infty, {k}) \\cup ({k}, \\infty)",
                f"({v}, \\infty) \\cup (-\\infty, {v})",
            )
        pairs.append((f"We compute step by step... so the answer is $\\boxed{{{pred}}}$.", gold))
    return pairs


ADVERSARIAL = [
    "\\boxed{" * 3_000,
    "\\boxed{" * 6_000,
    "\\boxed{(x+1)^{100000}}",
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{100000!}",
    "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",
    "z" * 2_000_000 + "\\boxed{1}",
    "\\boxed{(x+y+z+w)^{80}}",
]
CASES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "math_cases.jsonl"


def _plain_math_verify(response: str, gold: str) -> bool:
    """Math-Verify on its own (its default extraction and signal timeouts, main thread)."""
    import math_verify as mv

    if not any(d in gold for d in ("$", "\\boxed", "\\(", "\\[")):
        gold = gold.split("####")[-1].strip() if "####" in gold else gold
        gold = f"${gold}$"
    try:
        return bool(mv.verify(mv.parse(gold), mv.parse(response)))
    except Exception:  # noqa: BLE001 - Math-Verify may raise on odd input
        return False


def _math_agreement() -> dict:
    """`verify` and plain Math-Verify on the hand-labelled set: agreement and accuracies."""
    if not CASES.exists():
        return {"math_agreement": None}
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    ours = [verify(r["response"], r["gold"], timeout_s=5.0) for r in rows]
    lenient = [verify(r["response"], r["gold"], timeout_s=5.0, lenient=True) for r in rows]
    try:
        ref = [_plain_math_verify(r["response"], r["gold"]) for r in rows]
    except ImportError:
        ref = None
    n = len(rows)
    frac = lambda xs, ys: round(sum(x == y for x, y in zip(xs, ys)) / n, 4)
    return {
        "math_agreement": None if ref is None else frac(ours, ref),
        "math_label_accuracy": frac(ours, [r["label"] for r in rows]),
        "math_label_accuracy_lenient": frac(lenient, [r["label_lenient"] for r in rows]),
        "math_verify_label_accuracy": None
        if ref is None
        else frac(ref, [r["label"] for r in rows]),
        "math_cases": n,
    }


def _math(quick: bool) -> dict:
    """The math half of the summary: throughput, agreement, adversarial wall times."""
    rng = random.Random(0)
    n = 400 if quick else 4000
    warmup()
    pairs = _realistic(n, rng)
    fast = [fast_compare(extract_answer(r), g) is not None for r, g in pairs]
    times, cpu = [], tree_cpu_s()
    for r, g in pairs:
        t = time.perf_counter()
        verify(r, g)
        times.append(time.perf_counter() - t)
    cpu = tree_cpu_s() - cpu
    correct = sum(verify(r, g) for r, g in pairs)  # cached now: only counts
    math_rate = n / sum(times)
    pool_s = [t for t, f in zip(times, fast) if not f]
    agreement = _math_agreement()

    timeout, worst, adv = 2.0, 0.0, ADVERSARIAL * (1 if quick else 3)
    start = time.perf_counter()
    for r in adv:
        t = time.perf_counter()
        verify(r, "\\frac{(2x+2y+2z+2w)^{80}}{2^{80}} + 1", timeout_s=timeout)
        worst = max(worst, time.perf_counter() - t)
    adv_rate = len(adv) / (time.perf_counter() - start)
    return {
        "math_per_s_per_core": round(math_rate, 1),
        "math_per_cpu_s": round(n / cpu, 1) if cpu > 0 else None,
        "math_fast_path_per_s": round(
            sum(fast) / max(1e-9, sum(t for t, f in zip(times, fast) if f)), 1
        ),
        "math_pool_fraction": round(len(pool_s) / n, 4),
        "math_pool_ms": round(1000 * sum(pool_s) / len(pool_s), 1) if pool_s else None,
        "math_true_fraction": round(correct / n, 3),
        **agreement,
        "adversarial_per_s": round(adv_rate, 2),
        "adversarial_max_wall_s": round(worst, 3),
        "adversarial_timeout_s": timeout,
    }


def _sandbox(n: int) -> dict:
    """`sandbox_start_s` (the first `execute`: the zygote's start and one run) and
    `sandbox_per_s` (the next `n` runs, one at a time); both `None` without the module."""
    try:
        from jaxrl_lrm.rewards.code import execute
    except Exception:  # noqa: BLE001 - the module is optional here
        return {"sandbox_per_s": None, "sandbox_cpu_ms": None, "sandbox_start_s": None}
    start = time.perf_counter()
    execute("print(0)")
    first = time.perf_counter() - start
    start, cpu = time.perf_counter(), tree_cpu_s()
    for i in range(n):
        out = execute(f"print(sum(range({i + 10})))")
        if out.stdout != f"{sum(range(i + 10))}\n":
            raise RuntimeError(f"sandboxed run {i} gave {out!r}; expected its sum printed")
    rate = n / (time.perf_counter() - start)
    time.sleep(0.1)  # the last run's supervisor reaped by the zygote
    cpu_ms = 1000 * (tree_cpu_s() - cpu) / n
    return {
        "sandbox_per_s": round(rate, 2),
        "sandbox_cpu_ms": round(cpu_ms, 2),
        "sandbox_start_s": round(first, 3),
    }


def run(quick: bool, extra_args: list[str] | None = None) -> dict:
    """Runs the benchmark; returns `{"summary": {...}, ...}` and prints a small table."""
    math = _math(quick)
    load = [round(x, 2) for x in os.getloadavg()]
    summary = {**math, **_sandbox(20 if quick else 100), "loadavg_1_5_15": load}
    print(f"{'metric':<28}{'value':>12}")
    for k, v in summary.items():
        print(f"{k:<28}{v!s:>12}")
    return {
        "summary": summary,
        "n_realistic": 400 if quick else 4000,
        "n_adversarial": len(ADVERSARIAL) * (1 if quick else 3),
        "n_sandbox": 20 if quick else 100,
    }
