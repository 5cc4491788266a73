"""Deadlines of rewards.math: adversarial inputs, threads, kills, start-up, the reward executor."""

import subprocess
import sys
import threading
import time

import pytest

from jaxrl_lrm.rewards import math_pool
from jaxrl_lrm.rewards.executor import RewardExecutor
from jaxrl_lrm.rewards.math import accuracy_reward, verify, warmup

SLACK_S = 0.5  # the contract: every call returns within timeout_s + 0.5 s
# Wrong (the gold has + 1) and seconds of SymPy expand() to find out.
SLOW = ("\\boxed{(x+y+z+w)^{80}}", "\\frac{(2x+2y+2z+2w)^{80}}{2^{80}} + 1")

ADVERSARIAL = [
    "\\boxed{" * 3_000,
    "\\boxed{" * 6_000,
    "\\boxed{(x+1)^{100000}}",
    "\\boxed{9^{9^{9^9}}}",
    "\\boxed{100000!}",
    "\\boxed{2^{10^{100}}}",
    "\\boxed{" + "(" * 400 + "x" + ")" * 400 + "}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "y" * 2_000_000 + "\\boxed{x}",
    "Answer: " + "1+" * 100_000 + "1",
    "\\boxed{" * 60_000 + "z" * 500_000,  # too long for the host: extracted in the pool
    SLOW[0],
]


@pytest.fixture(scope="module", autouse=True)
def _pool():
    warmup()


@pytest.mark.parametrize("lenient", [False, True], ids=["strict", "lenient"])
@pytest.mark.parametrize("response", ADVERSARIAL, ids=lambda r: f"{r[:14]}..{len(r)}")
def test_adversarial_answers_are_false_and_bounded(response, lenient):
    timeout = 1.0
    t = time.monotonic()
    assert verify(response, SLOW[1], timeout_s=timeout, lenient=lenient) is False
    assert time.monotonic() - t < timeout + SLACK_S


def test_timeout_holds_in_threads():
    warmup(6)  # one worker per thread (more concurrent calls than workers wait for one)
    timeout, results, times = 1.0, [], []

    def call(i):
        t = time.monotonic()
        results.append(verify(SLOW[0], SLOW[1] + " " * i, timeout_s=timeout))
        times.append(time.monotonic() - t)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [False] * 6
    assert max(times) < timeout + SLACK_S
    warmup(math_pool.default_size())


def test_pool_after_kills_never_scores_right_answers_wrong():
    for round_ in range(3):
        for i in range(4):  # each overrun kills its worker
            assert not verify(SLOW[0], SLOW[1] + " " * (10 * round_ + i), timeout_s=0.3)
        # distinct answers that only Math-Verify decides (no cache; the fast path reads `\\pm n`
        # as a set only against a set)
        ns = [k + 20 * round_ for k in range(2, 14)]
        got = [verify(f"\\boxed{{\\pm {n}}}", f"{n}, -{n}", timeout_s=10.0) for n in ns]
        assert got == [True] * 12, (round_, got)


def test_slow_neighbour_does_not_cost_others_their_scores():
    comps = [SLOW[0], "\\boxed{5 \\leq x}", "\\boxed{\\pm 3}", "\\boxed{x \\geq 4}"] * 2
    golds = [SLOW[1], "x \\geq 5", "3, -3", "x > 4"] * 2
    t = time.monotonic()
    assert accuracy_reward(["p"] * 8, comps, answer=golds) == [0.0, 1.0, 1.0, 0.0] * 2
    # two rounds of slow calls at most (one per thread), each within its own deadline
    assert time.monotonic() - t < 2 * (2.0 + SLACK_S)


def test_inside_reward_executor():
    comps = [SLOW[0], "\\boxed{5 \\leq x}", "\\boxed{\\pm 3}", "\\boxed{4}"]
    golds = [SLOW[1], "x \\geq 5", "3, -3", "5"]
    with RewardExecutor(
        [("math", accuracy_reward, 1.0)], num_workers=1, timeout_s=60.0, chunk_size=4
    ) as ex:
        ex.score(["p"], ["\\boxed{\\pm 1}"], {"answer": ["1, -1"]})  # starts its math pool
        t = time.monotonic()
        _, per_fn, stats = ex.score(["p"] * 4, comps, {"answer": golds})
        elapsed = time.monotonic() - t
    assert list(per_fn["math"]) == [0.0, 1.0, 1.0, 0.0] and stats.get("timeouts/math", 0) == 0
    assert elapsed < 2.0 + SLACK_S + 1.0  # one 2 s overrun, plus the executor's own overhead


FRESH = """
from jaxrl_lrm.rewards.math import verify
print(verify("... so $\\\\boxed{\\\\frac{\\\\sqrt{3}}{2}}$", "\\\\frac{\\\\sqrt3}{2}"),
      verify("... so $\\\\boxed{5 \\\\leq x}$", "x \\\\geq 5", timeout_s=0.5))  # needs the pool
"""


@pytest.mark.parametrize("attempt", range(2))
def test_fresh_process_start_up_is_not_charged(attempt):
    out = subprocess.run(
        [sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_killed_zygote_is_restarted():
    pool = math_pool.get_pool()
    pool.zygote.proc.kill()
    pool.zygote.proc.wait()
    assert not verify(SLOW[0], SLOW[1] + "  ", timeout_s=0.3)  # the kill needs a new fork
    assert verify("\\boxed{\\pm 5}", "5, -5", timeout_s=10.0)  # decided in the pool
