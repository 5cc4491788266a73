"""A reward function's contract: one finite number per completion, or the run stops; raising,
`sys.exit` and a dying worker are counted (never end the trainer). No JAX is imported here: the
pool's workers import this module."""

import os
import sys

import numpy as np
import pytest

from jaxrl_lrm.rewards.executor import RewardExecutor, RewardFunctionError

COMPLETIONS = ["a", "bb", "ccc", "dddd"]


def one_value(prompts, completions, **_):
    return [1.0]  # per sample this is right, for a batch it is not


def string_values(prompts, completions, **_):
    return ["0.5"] * len(completions)


def none_value(prompts, completions, **_):
    return [None if c == "ccc" else 1.0 for c in completions]


def nan_value(prompts, completions, **_):
    return [float("nan") if c == "bb" else 1.0 for c in completions]


def not_a_list(prompts, completions, **_):
    return 1.0


def numpy_values(prompts, completions, **_):
    return np.array([len(c) for c in completions], np.int64) > 1


def exits_zero(prompts, completions, **_):
    sys.exit(0)


def exits_on_ccc(prompts, completions, **_):
    if "ccc" in completions:
        sys.exit(0)
    return [float(len(c)) for c in completions]


def kills_its_worker(prompts, completions, **_):
    os._exit(3)


def score(fn, num_workers=0):
    with RewardExecutor([("f", fn, 1.0)], num_workers=num_workers, chunk_size=4) as ex:
        total, per_fn, stats = ex.score(["p"] * 4, COMPLETIONS, {})
        return total, stats, ex.tracebacks


@pytest.mark.parametrize(
    "fn, message",
    [
        (one_value, r"'f' returned 1 values for 4 completions: \[1.0\]"),
        (string_values, r"'f' returned '0.5' for sample 0 .*expected a number, not str"),
        (none_value, r"'f' returned None for sample 2 \(completion 'ccc'\).*not NoneType"),
        (nan_value, r"'f' returned nan for sample 1 \(completion 'bb'\).*finite number"),
        (not_a_list, r"'f' returned 1.0; expected a list of 4 numbers"),
    ],
)
def test_broken_contract_stops_with_the_bad_value(fn, message):
    with pytest.raises(RewardFunctionError, match=message):
        score(fn)


def test_broken_contract_in_a_worker_process():
    with pytest.raises(RewardFunctionError, match="returned 1 values for 4 completions"):
        score(one_value, num_workers=1)


def test_numpy_numbers_and_bools_are_numbers():
    total, stats, _ = score(numpy_values)
    np.testing.assert_array_equal(total, [0, 1, 1, 1])
    assert stats["errors/f"] == 0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_sys_exit_is_an_error_not_the_end(num_workers):
    fns = [("some", exits_on_ccc, 1.0), ("all", exits_zero, 1.0)]
    with RewardExecutor(fns, num_workers=num_workers, chunk_size=4) as ex:
        _, per_fn, stats = ex.score(["p"] * 4, COMPLETIONS, {})
        tracebacks = ex.tracebacks
    np.testing.assert_array_equal(per_fn["some"], [1, 2, 0, 4])  # retried sample by sample
    assert stats["errors/some"] == 1 and "SystemExit" in tracebacks["some"]
    assert stats["errors/all"] == 4 and not per_fn["all"].any()


def test_a_dying_worker_counts_as_errors():
    total, stats, tracebacks = score(kills_its_worker, num_workers=1)
    assert stats["errors/f"] == 4 and stats["timeouts/f"] == 0 and not total.any()
    assert "worker process scoring this call died" in tracebacks["f"]
