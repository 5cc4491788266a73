"""Multi-turn episodes in the update's terms: observation tokens get exactly zero gradient
(policy loss, KL and entropy, every algorithm) and zero advantage; turn rewards land on the
last token of their turn (REINFORCE++ returns against a NumPy loop that skips observations;
outcome estimators see the per-row sum); the episode metrics."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import algorithms, losses
from jaxrl_lrm.config import AlgorithmSection
from jaxrl_lrm.episodes import Episodes, episode_metrics, to_rollout

T = 12
# row: (segments, turn rewards {token index: reward})
ROWS = [
    ([("sampled", 0, 4), ("observation", 4, 7), ("sampled", 7, 10)], {3: 0.5, 9: 1.0}),
    (
        [
            ("sampled", 0, 2),
            ("observation", 2, 8),
            ("sampled", 8, 9),
            ("observation", 9, 11),
            ("sampled", 11, 12),
        ],
        {1: -0.25, 8: 0.0, 11: 2.0},
    ),  # fmt: skip
    ([("sampled", 0, 6)], {5: 1.0}),
    ([("sampled", 0, 3), ("observation", 3, 5), ("sampled", 5, 8)], {2: -1.0, 7: 0.5}),
]


def _episodes() -> Episodes:
    B = len(ROWS)
    rng = np.random.default_rng(0)
    masks = {k: np.zeros((B, T), np.int32) for k in ("sampled", "observation")}
    rewards = np.zeros((B, T), np.float32)
    for b, (segs, rew) in enumerate(ROWS):
        for kind, s, e in segs:
            masks[kind][b, s:e] = 1
        for i, r in rew.items():
            rewards[b, i] = r
    lengths = np.array([segs[-1][2] for segs, _ in ROWS], np.int32)
    live = np.arange(T)[None] < lengths[:, None]
    return Episodes(
        tokens=np.where(live, rng.integers(3, 50, (B, T)), 0).astype(np.int32),
        sampled=masks["sampled"],
        observation=masks["observation"],
        logprobs=np.where(masks["sampled"] == 1, -rng.random((B, T)), 0).astype(np.float32),
        turn_rewards=rewards,
        lengths=lengths,
        turns=np.array([2, 3, 1, 2]),
        tool_calls=np.array([1, 2, 0, 1]),
        tool_errors=np.array([0, 1, 0, 0]),
        tool_seconds=np.array([0.5, 1.0, 0.0, 0.25]),
        segments=[segs for segs, _ in ROWS],
    )


def test_rollout_masks_and_metrics():
    ep = _episodes()
    prompt = np.ones((4, 3), np.int32)
    rollout, dense = to_rollout(ep, prompt, prompt)
    np.testing.assert_array_equal(rollout.completion_mask_BT, ep.sampled)
    attn = rollout.attn_BL[:, 3:]
    np.testing.assert_array_equal(attn, ep.sampled + ep.observation)  # observations attended
    np.testing.assert_array_equal(dense, ep.turn_rewards)
    m = episode_metrics(ep)
    assert m["episodes/turns"] == 2.0 and m["episodes/tool_calls"] == 1.0
    assert m["episodes/tool_errors"] == 0.25 and m["episodes/tool_seconds"] == 0.4375
    assert m["episodes/observation_share"] == pytest.approx(13 / 36)


@pytest.mark.parametrize("name", algorithms.NAMES)
def test_observation_tokens_get_exactly_zero_gradient(name):
    ep = _episodes()
    rollout, dense = to_rollout(ep, np.ones((4, 1), np.int32), np.ones((4, 1), np.int32))
    mask = jnp.asarray(rollout.completion_mask_BT, jnp.float32)
    spec = algorithms.resolve(AlgorithmSection(name=name, group_size=2))
    spec = dataclasses.replace(spec, entropy_coef=0.01)
    rng = np.random.default_rng(1)
    rand = lambda: jnp.asarray(rng.normal(size=(4, T)), jnp.float32)
    ref, old, values = rand(), rand(), rand()
    adv = algorithms.advantages(
        spec,
        jnp.asarray([1.0, 0.0, 0.5, 3.0]),  # no group with equal totals
        mask,
        kl_BT=old - ref,
        values_BT=values,
        token_rewards_BT=jnp.asarray(dense),
    ).adv_BT
    obs = ep.observation == 1
    assert np.all(np.asarray(adv)[obs] == 0.0)

    def loss(logp, ent):
        return algorithms.objective(
            spec,
            logp,
            ent,
            old_logp_BT=old,
            ref_logp_BT=ref if spec.beta > 0 else None,
            sampler_logp_BT=jnp.asarray(rollout.sampler_logp_BT),
            adv_BT=adv,
            mask_BT=mask,
            max_len=T,
        )[0]

    g_logp, g_ent = jax.grad(loss, argnums=(0, 1))(
        old + 0.01 * rand(), jnp.abs(rand())
    )  # inside clip
    for g in (np.asarray(g_logp), np.asarray(g_ent)):
        assert np.all(g[obs] == 0.0) and np.all(g[ep.sampled == 0] == 0.0)
        assert np.count_nonzero(g[ep.sampled == 1]) > 0.5 * ep.sampled.sum()


def _returns_reference(r_BT, mask_BT, gamma):
    """Returns-to-go by a loop that jumps over unmasked (observation) positions."""
    out = np.zeros_like(r_BT)
    for b in range(r_BT.shape[0]):
        g = 0.0
        for t in reversed(range(r_BT.shape[1])):
            if mask_BT[b, t]:
                g = r_BT[b, t] + gamma * g
                out[b, t] = g
    return out


def test_turn_rewards_reach_the_last_token_of_their_turn():
    ep = _episodes()
    rollout, dense = to_rollout(ep, np.ones((4, 1), np.int32), np.ones((4, 1), np.int32))
    mask = rollout.completion_mask_BT
    for b, (segs, rew) in enumerate(ROWS):
        ends = {e - 1 for kind, _, e in segs if kind == "sampled"}
        assert set(np.flatnonzero(dense[b])) == {i for i in rew if rew[i]} and set(rew) == ends
    outcome = np.array([1.0, 0.0, 0.5, 2.0], np.float32)
    spec = algorithms.resolve(AlgorithmSection(name="reinforce_pp", group_size=2))
    r = np.asarray(
        algorithms.estimators._token_rewards(spec, outcome, mask, None, 0.0, jnp.asarray(dense))
    )
    last = [max(np.flatnonzero(mask[b])) for b in range(4)]
    want = dense.copy()
    want[np.arange(4), last] += outcome  # the outcome on the last sampled token
    np.testing.assert_allclose(r, want, atol=0)
    got = np.asarray(losses.reinforce_pp_returns(jnp.asarray(r), jnp.asarray(mask), 0.9))
    np.testing.assert_allclose(got, _returns_reference(want, mask, 0.9), rtol=1e-6, atol=1e-6)
    grpo = algorithms.resolve(AlgorithmSection(name="grpo", group_size=2))
    per_row = np.asarray(
        algorithms.estimators._outcome_rewards(grpo, outcome, mask, None, 0.0, jnp.asarray(dense))
    )
    np.testing.assert_allclose(per_row, outcome + dense.sum(1), atol=1e-6)
