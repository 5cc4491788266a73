"""RewardExecutor: raising, hanging, correct functions; order; weights; pool and in-process."""

import logging
import signal
import time

import numpy as np
import pytest

from jaxrl_lrm.rewards.executor import RewardExecutor


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def match_reward(prompts, completions, answer, **_):
    return [float(c == a) for c, a in zip(completions, answer)]


def raise_on_bad(prompts, completions, **_):
    if any(c == "bad" for c in completions):
        raise RuntimeError("cannot score 'bad'")
    return [1.0] * len(completions)


def hang_on_slow(prompts, completions, **_):
    if any(c == "slow" for c in completions):
        time.sleep(60)
    return [2.0] * len(completions)


def stuck_in_c(prompts, completions, **_):
    # SIGALRM blocked: like a call stuck in C code that never returns to the interpreter.
    if any(c == "stuck" for c in completions):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return [3.0] * len(completions)


def group_sum(prompts, completions, group_size, **_):
    g = group_size[0]
    out = []
    for s in range(0, len(completions), g):
        total = sum(len(c) for c in completions[s : s + g])
        out += [float(total)] * g
    return out


COMPLETIONS = ["a", "bad", "ccc", "slow", "dd", "eeeee", "f", "gg"]
ANSWERS = ["a", "x", "ccc", "y", "dd", "z", "f", "w"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_raising_hanging_and_correct_functions(num_workers, caplog):
    fns = [
        ("len", length_reward, 0.5),
        ("match", match_reward, 2.0),
        ("raises", raise_on_bad, 1.0),
        ("hangs", hang_on_slow, 1.0),
    ]
    with (
        caplog.at_level(logging.ERROR),
        RewardExecutor(fns, num_workers=num_workers, timeout_s=1.0, chunk_size=2) as ex,
    ):
        total, per_fn, stats = ex.score(["p"] * 8, COMPLETIONS, {"answer": ANSWERS})
        ex.score(["p"] * 8, COMPLETIONS, {"answer": ANSWERS})  # second failure: not re-logged
    lens = np.array([len(c) for c in COMPLETIONS], np.float32)
    match = np.array([c == a for c, a in zip(COMPLETIONS, ANSWERS)], np.float32)
    raises = np.array([c != "bad" for c in COMPLETIONS], np.float32)  # only "bad" itself is 0
    hangs = np.array([2, 2, 0, 0, 2, 2, 2, 2], np.float32)  # the chunk ["ccc", "slow"] timed out
    np.testing.assert_array_equal(per_fn["len"], lens)
    np.testing.assert_array_equal(per_fn["match"], match)
    np.testing.assert_array_equal(per_fn["raises"], raises)
    np.testing.assert_array_equal(per_fn["hangs"], hangs)
    np.testing.assert_allclose(total, 0.5 * lens + 2.0 * match + raises + hangs)
    assert stats["errors/raises"] == 1 and stats["timeouts/hangs"] == 2
    assert stats["errors/len"] == 0 and stats["timeouts/len"] == 0
    logged = [r for r in caplog.records if "'raises'" in r.getMessage()]
    assert len(logged) == 1 and "cannot score 'bad'" in logged[0].getMessage()


def test_stuck_worker_is_killed_and_pool_rebuilt():
    with RewardExecutor([("c", stuck_in_c, 1.0)], num_workers=1, timeout_s=0.5, chunk_size=1) as ex:
        t = time.monotonic()
        _, per_fn, stats = ex.score(["p", "p"], ["stuck", "fine"], {})
        assert time.monotonic() - t < 10
        assert stats["timeouts/c"] >= 1 and per_fn["c"][0] == 0
        total, per_fn, stats = ex.score(["p", "p"], ["ok", "fine"], {})  # a fresh pool works
        np.testing.assert_array_equal(total, [3.0, 3.0])
        assert stats["timeouts/c"] == 0


def test_order_preserved_and_submit_future():
    comps = [c * (i % 5 + 1) for i, c in enumerate("abcdefghijklmnopqrst")]
    with RewardExecutor([("len", length_reward, 1.0)], num_workers=2, chunk_size=3) as ex:
        fut = ex.submit(["p"] * len(comps), comps)
        total, per_fn, _ = fut.result(timeout=60)
    np.testing.assert_array_equal(total, [len(c) for c in comps])


def test_chunks_keep_whole_groups():
    comps = ["a", "bb", "ccc", "d", "ee", "f"]
    with RewardExecutor([("g", group_sum, 1.0)], chunk_size=2) as ex:
        total, _, _ = ex.score(["p"] * 6, comps, {"group_size": [3] * 6})
    np.testing.assert_array_equal(total, [6, 6, 6, 4, 4, 4])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unique names"):
        RewardExecutor([("a", length_reward, 1.0), ("a", length_reward, 1.0)])
    with pytest.raises(ValueError, match="weight"):
        RewardExecutor([("a", length_reward, float("nan"))])
    with pytest.raises(ValueError, match="start_method"):
        RewardExecutor([("a", length_reward, 1.0)], start_method="fork")
    with RewardExecutor([("a", length_reward, 1.0)]) as ex:
        with pytest.raises(ValueError, match="must have 2 rows"):
            ex.score(["p", "p"], ["a", "b"], {"answer": ["x"]})
        with pytest.raises(ValueError, match="groups of 4"):
            ex.score(["p"] * 6, ["a"] * 6, {"group_size": [4] * 6})
