"""Every `algorithm.name` on the smoke setup, a one-step golden value per algorithm, PPO's value
model learning, and DAPO's dynamic sampling."""

import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import algorithms, train
from jaxrl_lrm.config import ALGORITHMS, AlgorithmSection, load_config
from jaxrl_lrm.train import dapo
from jaxrl_lrm.train.host import Scores

ROOT = Path(__file__).resolve().parents[2]
# rloo's entry changed when its preset became the paper's (k1 KL in the reward, REINFORCE on the
# sequence: agg seq-mean-token-sum instead of token-mean, so loss and gradient scale with the
# completion length); cispo and reinforce_pp_baseline are new. Two more changed with the RL-core
# rebuild: dapo (dynamic sampling keeps groups by task-reward correctness, 0 < #correct < G, not
# by total reward with the overlong term; filler groups leave every denominator) and ppo
# (`grad_norm` is now the policy's; the value model's is `value/grad_norm`, where before it
# overwrote the policy's). The others are unchanged.
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "algorithms_step1.json"
BASE = [
    "mesh.data=1",
    "mesh.fsdp=1",
    "mesh.tensor=1",
    "train.eval_every=0",
    "rewards.functions=[{fn: 'toy_rewards:ones_fraction'}]",
    "train.lr=0.003",
]
_GOLDEN_KEYS = (
    "loss/total",
    "loss/policy",
    "grad_norm",
    "reward/mean",
    "entropy/mean",
    "clip/frac",
    "kl/mean",
    "value/loss",
)


def run(tmp_path, *overrides):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", BASE + list(overrides))
    return train.run_rl(cfg, run_dir=tmp_path, quiet=True).history


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_algorithm_runs_and_matches_its_golden_step(tmp_path, name):
    # beta 0.04 (what smoke.yaml set for every algorithm when these goldens were made) wherever
    # the algorithm takes a beta; DAPO has no KL term and refuses one.
    beta = ["algorithm.beta=0.04"] if "beta" in algorithms.REGISTRY[name].keys else []
    history = run(tmp_path, f"algorithm.name={name}", "train.steps=3", *beta)
    assert [h["step"] for h in history] == [1, 2, 3]
    for h in history:
        bad = {k: v for k, v in h.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
    got = {k: history[0][k] for k in _GOLDEN_KEYS if k in history[0]}
    assert got["grad_norm"] > 0.0  # the toy reward gives the update something to do
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("JAXRL_UPDATE_GOLDEN"):
        golden[name] = got
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True))
    want = golden[name]
    assert set(want) == set(got)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, k)


def test_algorithms_differ_where_their_losses_differ():
    """The specs pick the published choices (a typo here silently changes an algorithm)."""
    from jaxrl_lrm.config import AlgorithmSection

    spec = {n: algorithms.resolve(AlgorithmSection(name=n)) for n in ALGORITHMS}
    assert spec["grpo"].std_normalize and not spec["dr_grpo"].std_normalize
    assert spec["cispo"].loss == "cispo" and spec["gspo"].loss == "clip"
    assert spec["reinforce_pp_baseline"].advantage == "reinforce_pp_baseline"
    assert spec["dr_grpo"].agg == "seq-mean-token-sum-norm"
    assert (spec["dapo"].clip_low, spec["dapo"].clip_high, spec["dapo"].beta) == (0.2, 0.28, 0.0)
    assert spec["dapo"].dynamic_sampling and spec["dapo"].overlong_penalty
    assert spec["gspo"].ratio == "sequence" and spec["gspo"].clip_low == 3e-4
    assert spec["rloo"].advantage == "rloo"
    assert spec["reinforce_pp"].kl_in_reward and spec["ppo"].uses_value
    # explicit settings win over the defaults
    assert algorithms.resolve(AlgorithmSection(name="dapo", clip_high=0.3)).clip_high == 0.3


def test_ppo_value_loss_falls(tmp_path):
    """A constant reward of 1: GAE returns are fixed targets, which the value model fits."""
    history = run(
        tmp_path,
        "algorithm.name=ppo",
        "train.steps=10",
        "algorithm.value_lr=0.003",
        "algorithm.beta=0.0",
        "rewards.functions=[{fn: 'toy_rewards:constant_one'}]",
    )
    losses = [h["value/loss"] for h in history]
    assert losses[-1] < 0.4 * losses[0], losses
    assert history[-1]["value/mean"] > 0.3  # values moved from 0 towards the returns


def test_dapo_keeps_groups_with_mixed_correctness_then_fills():
    """Groups count as mixed by their task reward (0 < #correct < G), not by shaping terms
    such as the overlong punishment; too few mixed groups are filled with uniform ones that
    the update keeps out of every denominator (keep = 0)."""

    def part(correct, overlong):
        c, o = np.asarray(correct, np.float32), np.asarray(overlong, np.float32)
        return Scores(
            total_N=c + o,
            dense_NT=None,
            per_fn={"f": c, dapo.OVERLONG: o},
            stats={"errors/f": 1.0},
            completions=[f"c{x}" for x in c],
        )

    weights = {"f": 1.0, dapo.OVERLONG: 1.0}
    # groups of 2; the overlong term varies inside the first group, correctness does not
    a = part([0, 0, 1, 0, 1, 1], [-0.5, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(dapo.mixed_groups(a, 2, weights), [False, True, False])
    b = part([1, 0, 0, 0, 0, 1], [0] * 6)
    mixed = np.concatenate([dapo.mixed_groups(p, 2, weights) for p in (a, b)])
    groups, keep = dapo.choose(mixed, 3)
    np.testing.assert_array_equal(groups, [1, 3, 5])  # in sampling order
    np.testing.assert_array_equal(keep, [1, 1, 1])
    # too few mixed groups: uniform ones fill the batch, marked keep = 0
    groups, keep = dapo.choose(dapo.mixed_groups(a, 2, weights), 3)
    np.testing.assert_array_equal(groups, [0, 1, 2])
    np.testing.assert_array_equal(keep, [0, 1, 0])


def test_dapo_filler_rows_do_not_dilute_the_update():
    """A row with keep = 0 contributes nothing: the update equals the one without it."""
    spec = algorithms.resolve(AlgorithmSection(name="dapo", group_size=2))
    rng = np.random.default_rng(0)
    logp = jnp.asarray(rng.normal(size=(4, 3)) * 0.1 - 1.0, jnp.float32)
    mask = jnp.ones((4, 3))
    adv = algorithms.advantages(spec, jnp.asarray([1.0, 0.0, 1.0, 1.0]), mask).adv_BT
    keep = jnp.asarray([1.0, 1.0, 0.0, 0.0])[:, None]

    def loss(lp, m, a):
        return algorithms.objective(
            spec,
            lp,
            jnp.zeros_like(lp),
            old_logp_BT=None,
            ref_logp_BT=None,
            sampler_logp_BT=lp,
            adv_BT=a,
            mask_BT=m,
            max_len=3,
        )[0]

    g_keep = jax.grad(loss)(logp, mask * keep, adv)
    g_two = jax.grad(loss)(logp[:2], mask[:2], adv[:2])
    np.testing.assert_allclose(g_keep[:2], g_two, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(g_keep[2:]).max()) == 0.0


def test_dapo_dynamic_sampling_stops_at_its_cap(tmp_path):
    """A reward that never varies: every round is spent, then the batch is padded."""
    history = run(
        tmp_path / "flat",
        "algorithm.name=dapo",
        "train.steps=1",
        "algorithm.max_gen_rounds=3",
        "rewards.functions=[{fn: task}]",
        "algorithm.overlong_cache=0",
    )  # 0 turns the (length-varying) overlong term off
    assert history[0]["dapo/gen_rounds"] == 3.0
    assert history[0]["dapo/mixed_group_frac"] == 0.0
    # about half the groups carry no signal: further rounds refill the batch with mixed groups,
    # stopping as soon as it is full (before the cap)
    history = run(
        tmp_path / "varied",
        "algorithm.name=dapo",
        "train.steps=2",
        "algorithm.max_gen_rounds=8",
        "algorithm.overlong_cache=0",
        "rewards.functions=[{fn: 'toy_rewards:ones_fraction_odd_prompts'}]",
    )
    for h in history:
        assert 2.0 <= h["dapo/gen_rounds"] < 8.0
        assert h["dapo/mixed_group_frac"] == 1.0
        assert h["groups/zero_variance_frac"] == 0.0
