"""Reward functions that fail on the user's path: a run whose function keeps failing stops with
its traceback and keeps its checkpoints; `sys.exit` inside a reward never ends training
silently."""

from pathlib import Path

import pytest

from jaxrl_lrm import checkpoint, train
from jaxrl_lrm.config import load_config
from jaxrl_lrm.rewards.executor import RewardFunctionError
from jaxrl_lrm.train.host import RewardGuard
from jaxrl_lrm.train.logging import read_metrics

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
ONE_DEVICE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]


def test_guard_stops_after_max_bad_steps_in_a_row():
    guard = RewardGuard(max_error_frac=0.5, max_bad_steps=3)
    bad = {"errors/f": 3.0, "timeouts/f": 0.0, "errors/g": 0.0}
    half = {"errors/f": 1.0, "timeouts/f": 1.0}  # exactly the fraction: not more than it
    for stats in (bad, bad, half, bad, bad):
        guard.check(stats, 4, {"f": "Traceback: boom"})
    assert guard.streaks == {"f": 2, "g": 0}
    with pytest.raises(RewardFunctionError) as e:
        guard.check({"errors/f": 1.0, "timeouts/f": 2.0}, 4, {"f": "Traceback: boom"})
    msg = str(e.value)
    assert "'f' failed on 3 of 4 samples (1 errors, 2 timeouts)" in msg
    assert "3 scored batches in a row (rewards.max_bad_steps=3)" in msg
    assert msg.endswith("Traceback: boom")


@pytest.mark.parametrize(
    "fn, raised, every, kept",
    [
        ("always_raises", "this reward function is broken on purpose", 1, [1]),
        ("exits_zero", "SystemExit", 0, []),  # step 1 was still pending: logged all the same
    ],
)
def test_a_failing_reward_stops_the_run_and_keeps_its_checkpoints(
    tmp_path, fn, raised, every, kept
):
    cfg = load_config(
        SMOKE,
        ONE_DEVICE
        + [
            "train.steps=4",
            f"train.checkpoint_every={every}",
            "train.eval_every=0",
            f"rewards.functions=[{{fn: 'toy_rewards:{fn}'}}]",
            "rewards.max_bad_steps=2",
        ],
    )
    with pytest.raises(RewardFunctionError, match=f"(?s)'{fn}' failed on 16 of 16.*{raised}"):
        train.run_rl(cfg, run_dir=tmp_path)
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == kept
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
