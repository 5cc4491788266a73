"""Asynchronous rollouts (`train.max_staleness`): version stamps, the staleness bound, the
refusal without a correction, K = 1's first step equal to the synchronous one, and exact
resume with a batch in flight."""

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrl_lrm import algorithms, sharding, train
from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.data.iterator import PromptIterator
from jaxrl_lrm.train import async_rl, rl_stage
from jaxrl_lrm.train.batch import Prompts
from jaxrl_lrm.train.host import Scores

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
BASE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "train.eval_every=0"]
TOY = "rewards.functions=[{fn: 'toy_rewards:ones_fraction'}]"  # nonzero advantages
_SKIP = ("time/", "tokens_per_s", "compile/", "async/")


def smoke(*over):
    return load_config(SMOKE, BASE + list(over))


def test_async_without_a_correction_is_refused():
    with pytest.raises(ConfigError, match=r"train.max_staleness=1.*algorithm.decoupled=true"):
        smoke("train.max_staleness=1")
    with pytest.raises(ConfigError, match="dynamic sampling"):
        smoke("train.max_staleness=1", "algorithm.name=dapo", "algorithm.decoupled=true")
    with pytest.raises(ConfigError, match="train.max_staleness"):
        smoke("train.max_staleness=-1", "algorithm.decoupled=true")
    spec = algorithms.resolve(smoke().algorithm)
    with pytest.raises(ValueError, match="decoupled"):
        async_rl.check_correction(spec, 1)
    async_rl.check_correction(spec, 0)  # synchronous: nothing to correct
    smoke("train.max_staleness=1", "algorithm.decoupled=true")
    smoke("train.max_staleness=1", "algorithm.tis_max=2.0")  # TIS is the capped weight


def test_version_stamps_and_first_step_equal_to_synchronous(tmp_path):
    """K = 1: step 0 trains on a batch of version 0 (staleness 0), every later step on the
    batch sampled one version earlier, while the previous update ran (staleness 1), never
    more; the histogram counts them. Step 0 is bitwise the synchronous run's (same prompts,
    same sampling key, same programs); step 1 is not (its batch is stale)."""
    over = ["train.steps=3", TOY, "algorithm.decoupled=true", "train.lr=0.01"]
    sync = train.run_rl(smoke(*over), run_dir=tmp_path / "sync", quiet=True).history
    asyn = train.run_rl(
        smoke(*over, "train.max_staleness=1"), run_dir=tmp_path / "async", quiet=True
    ).history
    assert [h["async/version"] for h in asyn] == [0.0, 0.0, 1.0]
    assert [h["async/staleness"] for h in asyn] == [0.0, 1.0, 1.0]
    assert asyn[-1]["async/staleness_hist/0"] == 1.0
    assert asyn[-1]["async/staleness_hist/1"] == 2.0
    assert all(h["async/dropped"] == 0.0 for h in asyn)
    assert all(0.0 <= h["time/device_idle_frac"] <= 1.0 for h in asyn)
    assert not any(k.startswith("async/") for k in sync[0])
    first = {k: v for k, v in asyn[0].items() if not k.startswith(_SKIP)}
    assert first == {k: v for k, v in sync[0].items() if not k.startswith(_SKIP)}
    # the stale batch: the proximal policy (one update later) differs from the behaviour one
    assert asyn[1]["mismatch/max_abs_logp"] > 1e-4 > sync[1]["mismatch/max_abs_logp"]


def test_a_batch_older_than_k_versions_is_never_trained_on():
    """The guard: a batch in flight more than K versions behind is dropped and resampled with
    the current policy (made stale by hand here: the pipeline itself keeps one in flight)."""
    s = rl_stage.build(smoke("algorithm.decoupled=true", "train.max_staleness=1"))
    rows = [s.train_rows[i] for i in range(s.config.train.prompts_per_step)]
    _, ids, mask = s.text.encode(rows, s.group_size)
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)

    def score(tokens, m):
        n = len(tokens)
        return Scores(np.ones(n, np.float32), None, {}, {}, [""] * n)

    stepper = async_rl.AsyncRollouts(
        s.programs,
        s.spec,
        lambda: (prompts, score),
        data=PromptIterator(s.train_rows, 1, seed=0),
        max_staleness=1,
        steps=2,
        mesh=s.mesh,
        T=s.config.sampling.max_new_tokens,
    )
    state, out = stepper(s.state, s.ref_params, 0)
    assert out.metrics["async/staleness"] == 0.0 and stepper.pending.version == 0
    stepper.pending.version -= 2  # now 2 versions behind the policy (K = 1)
    state, out = stepper(state, s.ref_params, 1)
    assert out.metrics["async/dropped"] == 1.0
    assert out.metrics["async/staleness"] == 0.0 and out.metrics["async/version"] == 1.0
    assert stepper.pending is None  # step 1 is the last: nothing sampled past the run
    assert int(np.asarray(state.step)) == 2


def _numeric(h: dict) -> dict:
    return {k: v for k, v in h.items() if not k.startswith(("time/", "tokens_per_s", "compile/"))}


def test_resume_with_a_batch_in_flight_is_exact(tmp_path):
    """K = 1: 3 steps straight == 1 step, a restart, 2 more. The step-1 checkpoint holds the
    batch version 0 sampled for step 2; the resumed step 2 trains on it (staleness 1, not a
    fresh batch), so metrics (staleness histogram included) and parameters are bitwise the
    uninterrupted run's."""
    over = ["train.steps=3", "train.checkpoint_every=1", TOY, "algorithm.decoupled=true"]
    cfg = smoke(*over, "train.lr=0.01", "train.max_staleness=1")
    straight = train.run_rl(cfg, run_dir=tmp_path / "a", quiet=True)
    train.run_rl(cfg, run_dir=tmp_path / "b", quiet=True, max_steps_this_run=1)
    resumed = train.run_rl(cfg, run_dir=tmp_path / "b", quiet=True)
    assert [h["step"] for h in resumed.history] == [2, 3]
    assert [h["async/staleness"] for h in resumed.history] == [1.0, 1.0]
    assert resumed.history[-1]["async/staleness_hist/0"] == 1.0
    assert resumed.history[-1]["async/staleness_hist/1"] == 2.0
    for a, b in zip(straight.history[1:], resumed.history):
        assert _numeric(a) == _numeric(b)
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
