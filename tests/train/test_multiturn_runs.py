"""Multi-turn RL through the real trainer (`env.*`) on a tiny model and a tiny environment
(`toy_envs:make_count_env`): a step runs and logs the episode metrics, observation tokens
move nothing in the update, 2x2x2 mesh equals 1 device, and a run resumes exactly."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
import toy_envs

from jaxrl_lrm import checkpoint, episodes, sharding, train
from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.models.model import Model
from jaxrl_lrm.train import multiturn, rl_stage
from jaxrl_lrm.train.batch import Rewards, RolloutBatch
from jaxrl_lrm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
REVERSE = ROOT / "tests" / "fixtures" / "pairs" / "reverse.jsonl"
ONE_DEVICE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
_TIMING = ("time/", "tokens_per_s", "reward_time", "compile/", "episodes/tool_seconds")
ENV = [
    "data.source=jsonl",
    f"data.path={REVERSE}",
    "data.answer_field=completion",
    "data.template=plain",
    "data.max_prompt_len=10",
    "data.eval_size=8",
    "rewards.functions=[]",
    "env.name=toy_envs:make_count_env",
    "env.stop='e'",
    "env.max_tool_output_tokens=4",
    "sampling.max_new_tokens=80",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "seed=3",
]


def config(*overrides, mesh=ONE_DEVICE):
    return load_config(SMOKE, [*mesh, *ENV, *overrides])


def numeric(record):
    return {k: v for k, v in record.items() if not k.startswith(_TIMING)}


def test_multiturn_step_runs_and_logs_episode_metrics(tmp_path):
    h = train.run_rl(config("train.steps=1"), run_dir=tmp_path, quiet=True).history[0]
    for k in ("turns", "tool_calls", "tool_errors", "tool_seconds", "observation_share"):
        assert np.isfinite(h[f"episodes/{k}"]), k
    assert h["episodes/turns"] > 1.0 and h["episodes/observation_share"] > 0.0, h
    assert h["mismatch/max_abs_logp"] < 1e-5  # the episode sampler's log-probs are the trainer's


def test_observation_tokens_move_nothing_in_the_update():
    """Through the run's own `score` and `update` programs: values at observation positions
    (sampler, old and reference log-probs, dense rewards) changed at random give the very same
    new parameters; without the loss mask (observations trained on) they differ."""
    s = rl_stage.build(config("algorithm.beta=0.04", "train.ppo_epochs=2"))
    rows = [s.train_rows[i] for i in range(4)]
    _, ids, mask = s.text.encode(rows, s.group_size)
    draws = dict(multiturn.draws(s.config), eos_id=1, pad_id=0)
    rep = [r for r in rows for _ in range(s.group_size)]
    ep = s.env.sample(_model(s), rep, ids, mask,
                      jax.random.key(0), T=80, draws=draws)  # fmt: skip
    obs = ep.observation.astype(bool)
    assert obs.any()
    rollout_np, dense = episodes.to_rollout(ep, ids, mask)

    def new_params(rollout_np, dense, noise):
        rollout_np = dataclasses.replace(
            rollout_np, sampler_logp_BT=np.where(obs, noise, rollout_np.sampler_logp_BT)
        )
        rollout = sharding.shard_batch(rollout_np, s.mesh)
        scored = s.programs.score(s.state, s.ref_params, rollout)
        scored = jax.tree.map(lambda x: x + np.where(obs, noise, 0.0).astype(np.float32), scored)
        d = np.where(obs, noise, dense).astype(np.float32)
        rewards = sharding.shard_batch(
            Rewards(rewards_B=np.zeros(len(d), np.float32), dense_BT=d), s.mesh
        )
        state = jax.tree.map(lambda x: x.copy(), s.state)  # the update donates its state
        new, _ = s.programs.update(
            state, RolloutBatch(rollout=rollout, scored=scored, rewards=rewards)
        )
        return jax.device_get(new.params)

    rng = np.random.default_rng(0)
    a = new_params(rollout_np, dense, 0.0)
    b = new_params(rollout_np, dense, rng.normal(size=obs.shape).astype(np.float32))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    attended = dataclasses.replace(rollout_np, loss_mask_BT=np.asarray(rollout_np.attn_BL[:, -80:]))
    c = new_params(attended, dense, 0.0)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def _model(s):
    return Model(config=s.model_config, params=s.state.params)


@pytest.mark.slow
def test_multiturn_sharded_matches_single_device(tmp_path):
    one = train.run_rl(config("train.steps=1"), run_dir=tmp_path / "one", quiet=True).history
    mesh8 = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    eight = train.run_rl(config("train.steps=1", mesh=mesh8), run_dir=tmp_path / "e", quiet=True)
    assert jax.tree.leaves(eight.params)[0].sharding.mesh.devices.size == 8
    assert one[0]["episodes/observation_share"] > 0
    for k, v in numeric(one[0]).items():
        assert eight.history[0][k] == pytest.approx(v, rel=2e-3, abs=2e-4), k


@pytest.mark.slow
def test_multiturn_exact_resume(tmp_path):
    cfg = config("train.steps=2", "train.checkpoint_every=1")
    straight = train.run_rl(cfg, run_dir=tmp_path / "a").history
    train.run_rl(cfg, run_dir=tmp_path / "b", max_steps_this_run=1)
    train.run_rl(cfg, run_dir=tmp_path / "b")
    resumed = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2]
    for a, b in zip(straight, resumed):
        assert numeric(a) == numeric(b)
    assert checkpoint.Checkpointer(tmp_path / "b" / "checkpoints").all_steps()[-1] == 2


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["env.name=null", "env.max_turns=3"], "env.max_turns"),
        (["env.max_turns=3"], "env.max_turns=3: expected unset with the user environment"),
        (["train.max_staleness=1", "algorithm.decoupled=true"], "train.max_staleness"),
        (["algorithm.name=dapo"], "algorithm.name='dapo'"),
        (["sampling.top_k=5"], "sampling.logprob_mode"),
        (["stage=sft"], "stage='sft'"),
    ],
)
def test_env_keys_that_would_be_ignored_are_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config(*overrides)


@pytest.mark.slow
def test_evaluation_runs_the_episodes():
    """Greedy accuracy through the environment equals the share of greedy episodes whose
    reward, recomputed by replaying a fresh episode on the decoded turns, is >= 0.5; maj@k <=
    pass@k."""
    s = rl_stage.build(config("env.name=toy_envs:make_parity_env", "eval.k=2"))
    rows = s.eval_subset(8)
    metrics, samples = rl_stage.evaluate(s, s.state.params, rows)
    _, ids, mask = s.text.encode(rows, 1)
    d = dict(multiturn.draws(s.config, 0.0), eos_id=1, pad_id=0)
    ep = s.env.sample(_model(s), rows, ids, mask, jax.random.key(1), T=80, draws=d)
    want = []
    for b, segs in enumerate(ep.segments):
        replay = toy_envs.ParityEpisode()
        turns = [ep.tokens[b, i:j] for kind, i, j in segs if kind == "sampled"]
        total = sum(replay.step(s.text.tokenizer.decode(list(t))).reward for t in turns)
        want.append(total >= 0.5)
    assert metrics["eval/accuracy"] == pytest.approx(np.mean(want))
    assert 0.0 <= metrics["eval/maj@2"] <= metrics["eval/pass@2"] <= 1.0
    assert len(samples) == len(rows)
