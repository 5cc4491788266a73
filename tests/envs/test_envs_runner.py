"""The tool runner: a hanging, crashing, flooding, raising or allocating tool each ends in a
result that says so, within the timeout, and the runner keeps working afterwards."""

import time

import pytest
import toy_tools

from jaxrl_lrm.envs.runner import ToolRunner


@pytest.fixture(scope="module")
def runner():
    with ToolRunner(num_workers=2, timeout_s=2.0, max_chars=1000, memory_mb=1024) as r:
        yield r


def test_ok_and_error(runner):
    ok = runner.call(toy_tools.echo, {"text": "hi"})
    assert (ok.status, ok.text, ok.truncated) == ("ok", "hi", False)
    err = runner.call(toy_tools.raise_error, {})
    assert err.status == "error" and err.text == "KeyError: 'no such key'"
    ex = runner.call(toy_tools.exit_call, {})
    assert ex.status == "error" and ex.text.startswith("SystemExit")
    bad = runner.call(toy_tools.echo, {"wrong": 1})
    assert bad.status == "error" and "unexpected keyword argument" in bad.text


@pytest.mark.parametrize("fn", [toy_tools.hang, toy_tools.spin])
def test_hanging_tool_is_cut_off_at_the_timeout(runner, fn):
    before = runner.call(toy_tools.pid, {}).text
    start = time.monotonic()
    res = runner.call(fn, {})
    took = time.monotonic() - start
    assert res.status == "timeout" and "did not finish within 2 s" in res.text
    assert 2.0 <= took < 4.0
    after = [runner.call(toy_tools.echo, {"text": str(i)}).text for i in range(3)]
    assert after == ["0", "1", "2"]  # a fresh worker took the killed one's place
    assert before.isdigit()


def test_crashing_tool_is_reported_and_replaced(runner):
    res = runner.call(toy_tools.crash, {})
    assert res.status == "crashed" and "exit code 3" in res.text
    assert runner.call(toy_tools.echo, {"text": "still here"}).text == "still here"


def test_flooding_tool_is_cut_to_the_cap(runner):
    res = runner.call(toy_tools.flood, {})
    assert res.status == "ok" and res.truncated and res.text == "y" * 1000
    big = runner.call(toy_tools.allocate, {})
    assert big.status == "error" and big.text.startswith("MemoryError")


def test_calls_run_in_parallel_and_keep_their_order(runner):
    start = time.monotonic()
    res = runner.run([(toy_tools.hang, {"seconds": 0.5}), (toy_tools.hang, {"seconds": 0.5})])
    assert [r.text for r in res] == ["woke up", "woke up"]
    assert time.monotonic() - start < 0.95
    out = runner.run([(toy_tools.echo, {"text": str(i)}) for i in range(7)])
    assert [r.text for r in out] == [str(i) for i in range(7)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="timeout_s=0"):
        ToolRunner(timeout_s=0)
    with pytest.raises(ValueError, match="num_workers=0"):
        ToolRunner(num_workers=0)
    with pytest.raises(ValueError, match="start_method='fork'"):
        ToolRunner(start_method="fork")
