"""Every `AlgorithmSpec` field shows its effect on `advantages` or `objective`, against NumPy
references (or a change of value in the expected direction)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import algorithms, losses
from jaxrl_lrm.algorithms import AlgorithmSpec

B, T, G = 8, 5, 4


@pytest.fixture
def d():
    rng = np.random.default_rng(0)
    lengths = np.array([5, 3, 4, 1, 5, 2, 5, 4])
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    old = rng.normal(-1.5, 0.5, (B, T)).astype(np.float32)
    return dict(
        mask=mask,
        rewards=rng.normal(size=B).astype(np.float32),
        kl=rng.normal(0, 0.1, (B, T)).astype(np.float32),
        values=rng.normal(size=(B, T)).astype(np.float32),
        old=old,
        logp=(old + rng.normal(0, 0.3, (B, T))).astype(np.float32),
        ref=(old + rng.normal(0, 0.3, (B, T))).astype(np.float32),
        sampler=(old + rng.normal(0, 0.5, (B, T))).astype(np.float32),
        ent=rng.uniform(0, 3, (B, T)).astype(np.float32),
        adv=rng.normal(size=(B, T)).astype(np.float32),
    )


def spec(**kw):
    return AlgorithmSpec(name="test", group_size=G, **kw)


def adv(s, d, **kw):
    return algorithms.advantages(s, d["rewards"], d["mask"], **kw).adv_BT


def obj(s, d, **kw):
    args = dict(
        old_logp_BT=d["old"],
        ref_logp_BT=None,
        sampler_logp_BT=d["sampler"],
        adv_BT=d["adv"],
        mask_BT=d["mask"],
        max_len=T,
    )
    return algorithms.objective(s, d["logp"], d["ent"], **(args | kw))


def np_group(r, g, std=True):
    r = r.reshape(-1, g)
    c = r - r.mean(1, keepdims=True)
    return (c / (r.std(1, ddof=1, keepdims=True) + 1e-6) if std else c).reshape(-1)


def np_whiten(x, m):
    sel = x[m > 0]
    return np.where(m > 0, (x - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), 0.0)


def np_returns(r, m, gamma, values=None, lam=1.0):
    v = np.zeros_like(r) if values is None else values
    out = np.zeros_like(r)
    for b in range(r.shape[0]):
        a_next = v_next = 0.0
        for t in reversed(range(r.shape[1])):
            if m[b, t]:
                a_next = r[b, t] + gamma * v_next - v[b, t] + gamma * lam * a_next
                v_next = v[b, t]
                out[b, t] = a_next
    return out


def np_token_rewards(d, beta):
    r = -beta * d["kl"] * d["mask"]
    last = d["mask"].sum(1).astype(int) - 1
    r[np.arange(B), last] += d["rewards"]
    return r


# ------------------------------------------------------------------ advantages


def test_advantages_are_2d_masked_pytrees(d):
    for a in ("group", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"):
        out = algorithms.advantages(
            spec(advantage=a), d["rewards"], d["mask"], values_BT=d["values"]
        )
        assert out.adv_BT.shape == (B, T) and out.adv_BT.dtype == jnp.float32
        assert np.all(np.asarray(out.adv_BT)[d["mask"] == 0] == 0)
        assert (out.returns_BT is None) == (a != "gae")
        leaves, _ = jax.tree.flatten(out)
        assert len(leaves) == (2 if a == "gae" else 1)


def test_jit_with_the_spec_static(d):
    s = spec(advantage="reinforce_pp", kl_in_reward=True, beta=0.1)
    f = jax.jit(algorithms.advantages, static_argnums=0)
    np.testing.assert_allclose(
        f(s, d["rewards"], d["mask"], kl_BT=d["kl"]).adv_BT,
        adv(s, d, kl_BT=d["kl"]),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("std_normalize", [True, False])
@pytest.mark.parametrize("group_size", [2, 4])
def test_group_std_normalize_and_group_size(d, std_normalize, group_size):
    s = dataclasses.replace(spec(std_normalize=std_normalize), group_size=group_size)
    want = np_group(d["rewards"], group_size, std_normalize)[:, None] * d["mask"]
    np.testing.assert_allclose(adv(s, d), want, rtol=1e-5, atol=1e-6)


def test_rloo_with_kl_in_the_reward(d):
    beta = 0.3
    r = d["rewards"] - beta * (d["kl"] * d["mask"]).sum(1)
    g = r.reshape(-1, G)
    base = (g.sum(1, keepdims=True) - g) / (G - 1)
    want = (g - base).reshape(-1)[:, None] * d["mask"]
    s = spec(advantage="rloo", kl_in_reward=True, beta=beta)
    np.testing.assert_allclose(adv(s, d, kl_BT=d["kl"]), want, rtol=1e-5, atol=1e-6)
    # kl_in_reward off: the same KL is not subtracted
    np.testing.assert_allclose(
        adv(spec(advantage="rloo", beta=beta), d, kl_BT=d["kl"]),
        adv(spec(advantage="rloo"), d),
        rtol=1e-6,
    )


def test_reinforce_pp_baseline(d):
    beta = 0.2
    r = d["rewards"] - beta * (d["kl"] * d["mask"]).sum(1)
    want = np_whiten(np_group(r, G, std=False)[:, None] * np.ones((1, T)), d["mask"])
    s = spec(advantage="reinforce_pp_baseline", kl_in_reward=True, beta=beta)
    np.testing.assert_allclose(adv(s, d, kl_BT=d["kl"]), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.7])
def test_reinforce_pp_gamma_and_beta_override(d, gamma):
    s = spec(advantage="reinforce_pp", kl_in_reward=True, beta=0.1, gamma=gamma)
    for beta in (None, 0.5):  # the argument (adaptive controller) overrides spec.beta
        r = np_token_rewards(d, 0.1 if beta is None else beta)
        want = np_whiten(np_returns(r, d["mask"], gamma), d["mask"])
        np.testing.assert_allclose(adv(s, d, kl_BT=d["kl"], beta=beta), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_gae_gamma_lam_and_uses_value(d, gamma, lam):
    s = spec(advantage="gae", kl_in_reward=True, beta=0.1, uses_value=True, gamma=gamma, lam=lam)
    out = algorithms.advantages(s, d["rewards"], d["mask"], kl_BT=d["kl"], values_BT=d["values"])
    a = np_returns(np_token_rewards(d, 0.1), d["mask"], gamma, d["values"], lam)
    np.testing.assert_allclose(out.adv_BT, np_whiten(a, d["mask"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.returns_BT, (a + d["values"]) * d["mask"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="values_BT"):
        algorithms.advantages(s, d["rewards"], d["mask"])


def test_dense_rewards_reach_every_estimator(d):
    dense = np.where(d["mask"] > 0, 0.1, 0.0).astype(np.float32)
    for a in ("group", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"):
        s = spec(advantage=a)
        kw = dict(values_BT=d["values"])
        assert not np.allclose(adv(s, d, token_rewards_BT=dense, **kw), adv(s, d, **kw)), a


def test_controller_kl_is_the_per_token_mean(d):
    m = d["mask"]
    want = np.mean((d["kl"] * m).sum(1) / m.sum(1))
    assert float(algorithms.controller_kl(d["kl"], m)) == pytest.approx(want, rel=1e-6)
    assert float(jax.jit(algorithms.controller_kl)(d["kl"], m)) == pytest.approx(want, rel=1e-6)
    assert float(algorithms.controller_kl(d["kl"], 0 * m)) == 0.0


# ------------------------------------------------------------------ objective


def np_clip_loss(d, a, lo, hi, agg_w):
    r = np.exp(d["logp"] - d["old"])
    per = np.maximum(-a * r, -a * np.clip(r, 1 - lo, 1 + hi))
    return float((per * agg_w).sum())


def agg_w(m, mode):
    if mode == "token-mean":
        return m / m.sum()
    if mode == "seq-mean-token-sum-norm":
        return m / (m.shape[0] * m.shape[1])
    rows = m.sum(1, keepdims=True)
    return m / (rows > 0).sum() / (1.0 if mode == "seq-mean-token-sum" else np.maximum(rows, 1))


@pytest.mark.parametrize(
    "agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
@pytest.mark.parametrize("clip_low,clip_high", [(0.2, None), (0.05, 0.3)])
def test_clip_ranges_and_agg(d, agg, clip_low, clip_high):
    s = spec(agg=agg, clip_low=clip_low, clip_high=clip_high)
    loss, m = obj(s, d)
    want = np_clip_loss(d, d["adv"], clip_low, clip_high or clip_low, agg_w(d["mask"], agg))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["loss/policy"]) == float(loss)
    assert set(m) == {
        "loss/policy",
        "loss/total",
        "entropy/mean",
        "clip/frac",
        "approx_kl",
        "mismatch/sampler_kl",
        "mismatch/max_abs_logp",
        "mismatch/mean_abs_logp",
        "mismatch/frac_ratio_outside_clip",
    }
    ratio = np.exp(d["old"] - d["sampler"])[d["mask"] > 0]
    hi = 1 + (clip_high or clip_low)
    frac = ((ratio < 1 - clip_low) | (ratio > hi)).mean()  # the algorithm's own clip band
    assert float(m["mismatch/frac_ratio_outside_clip"]) == pytest.approx(frac, rel=1e-6)


def test_dual_clip_caps_negative_advantages(d):
    a = -np.abs(d["adv"])
    big = dict(d, logp=d["old"] + 2.0)  # ratio e^2 > 3
    base, _ = obj(spec(), big, adv_BT=a)
    capped, _ = obj(spec(dual_clip=3.0), big, adv_BT=a)
    assert float(capped) < float(base)
    assert float(capped) == pytest.approx(
        float((-a * 3.0 * agg_w(d["mask"], "token-mean")).sum()), rel=1e-5
    )


def test_ratio_and_loss_pick_the_surrogate(d):
    for s, ref in (
        (
            spec(ratio="sequence", clip_low=3e-4, clip_high=4e-4),
            losses.policy_loss(
                d["logp"],
                d["old"],
                d["adv"],
                d["mask"],
                clip_low=3e-4,
                clip_high=4e-4,
                ratio="sequence",
            )[0],
        ),
        (
            spec(loss="cispo", clip_low=1.0, clip_high=0.28),
            losses.cispo_loss(
                d["logp"], d["old"], d["adv"], d["mask"], clip_low=1.0, clip_high=0.28
            )[0],
        ),
    ):
        assert float(obj(s, d)[0]) == pytest.approx(float(ref), rel=1e-6)
        assert float(obj(s, d)[0]) != pytest.approx(float(obj(spec(), d)[0]), rel=1e-3)


@pytest.mark.parametrize("kl_kind", ["k1", "k2", "k3", "low_var_kl"])
def test_beta_kl_kind_and_kl_in_reward(d, kl_kind):
    beta = 0.3
    base, _ = obj(spec(), d)
    x = d["ref"] - d["logp"]
    kl = {
        "k1": -x,
        "k2": 0.5 * x**2,
        "k3": np.exp(x) - x - 1,
        "low_var_kl": np.clip(np.exp(x) - x - 1, -10, 10),
    }[kl_kind]
    w = agg_w(d["mask"], "token-mean")
    loss, m = obj(spec(beta=beta, kl_kind=kl_kind), d, ref_logp_BT=d["ref"])
    assert float(loss) == pytest.approx(float(base) + beta * float((kl * w).sum()), rel=1e-5)
    assert float(m["kl/mean"]) == pytest.approx(float((kl * w).sum()), rel=1e-5)
    # the beta argument (adaptive controller) overrides spec.beta
    loss2, _ = obj(spec(beta=beta, kl_kind=kl_kind), d, ref_logp_BT=d["ref"], beta=0.0)
    assert float(loss2) == pytest.approx(float(base), rel=1e-6)
    # KL in the reward: not in the loss, still reported
    loss3, m3 = obj(spec(beta=beta, kl_kind=kl_kind, kl_in_reward=True), d, ref_logp_BT=d["ref"])
    assert float(loss3) == float(base) and "kl/mean" in m3


def test_entropy_coef(d):
    base, _ = obj(spec(), d)
    loss, m = obj(spec(entropy_coef=0.01), d)
    mean_ent = float((d["ent"] * agg_w(d["mask"], "token-mean")).sum())
    assert float(m["entropy/mean"]) == pytest.approx(mean_ent, rel=1e-6)
    assert float(loss) == pytest.approx(float(base) - 0.01 * mean_ent, rel=1e-5)


def test_tis_max_truncates_the_sampler_weights(d):
    w = np.minimum(np.exp(d["old"] - d["sampler"]), 1.5)
    loss, m = obj(spec(tis_max=1.5), d)
    want = np_clip_loss(d, d["adv"] * w, 0.2, 0.2, agg_w(d["mask"], "token-mean"))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["mismatch/sampler_kl"]) == pytest.approx(
        float(((d["sampler"] - d["logp"]) * agg_w(d["mask"], "token-mean")).sum()), rel=1e-5
    )
    with pytest.raises(ValueError, match="sampler_logp_BT"):
        obj(spec(tis_max=1.5), d, sampler_logp_BT=None)


def test_on_policy_old_none_has_ratio_one_and_the_reinforce_gradient(d):
    s = spec(agg="seq-mean-token-sum")  # RLOO's REINFORCE on the sequence
    g = jax.grad(lambda lp: obj(s, dict(d, logp=lp), old_logp_BT=None)[0])(d["logp"])
    n_rows = (d["mask"].sum(1) > 0).sum()
    np.testing.assert_allclose(g, -d["adv"] * d["mask"] / n_rows, rtol=1e-5, atol=1e-7)


def test_objective_with_denominators_sums_over_micro_batches(d):
    s = spec(beta=0.1, entropy_coef=0.01, agg="seq-mean-token-mean")
    denom = losses.Denominators.of(d["mask"])

    def f(lp, sl, dn=None):
        sub = {k: v[sl] for k, v in d.items()}
        return obj(s, dict(sub, logp=lp), ref_logp_BT=sub["ref"], denom=dn)[0]

    whole, g_whole = jax.value_and_grad(f)(d["logp"], slice(None))
    parts = [jax.value_and_grad(f)(d["logp"][sl], sl, denom) for sl in (slice(0, 3), slice(3, 8))]
    assert float(sum(v for v, _ in parts)) == pytest.approx(float(whole), rel=1e-5)
    np.testing.assert_allclose(np.concatenate([g for _, g in parts]), g_whole, rtol=1e-5, atol=1e-7)


def test_core_read_fields_resolve_from_the_registry():
    from jaxrl_lrm.config import AlgorithmSection

    ppo = algorithms.resolve(
        AlgorithmSection(name="ppo", value_lr=1e-5, value_path="vm", kl_target=0.05)
    )
    assert (ppo.uses_value, ppo.value_clip, ppo.value_lr, ppo.value_path) == (True, 0.2, 1e-5, "vm")
    assert (ppo.kl_target, ppo.kl_horizon) == (0.05, 10000.0)
    # value_clip's effect: the clipped value loss differs from the plain one
    v, old, ret = np.ones((1, 3)), np.zeros((1, 3)), np.full((1, 3), 2.0)
    clipped = losses.value_loss(v, old, ret, np.ones((1, 3)), clip=ppo.value_clip)[0]
    assert float(clipped) > float(losses.value_loss(v, old, ret, np.ones((1, 3)))[0])
    dapo = algorithms.resolve(AlgorithmSection(name="dapo", max_gen_rounds=5, overlong_cache=0))
    assert (dapo.dynamic_sampling, dapo.overlong_penalty) == (True, True)
    assert (dapo.max_gen_rounds, dapo.overlong_cache) == (5, 0)
    grpo = algorithms.resolve(AlgorithmSection(name="grpo"))
    assert (grpo.dynamic_sampling, grpo.overlong_penalty, grpo.uses_value) == (False,) * 3


def test_decoupled_weights_by_the_behaviour_ratio(d):
    """Decoupled PPO: clip against the proximal policy (`old`), weight the advantages by
    `exp(old - behaviour)`, uncapped, or capped at `tis_max`; `behaviour_logp_BT` (the
    sampler's truncated log-probs) replaces `sampler_logp_BT` as the denominator."""
    w_mask = agg_w(d["mask"], "token-mean")
    w = np.exp(d["old"] - d["sampler"])
    loss, _ = obj(spec(decoupled=True), d)
    assert float(loss) == pytest.approx(np_clip_loss(d, d["adv"] * w, 0.2, 0.2, w_mask), rel=1e-5)
    capped, _ = obj(spec(decoupled=True, tis_max=1.5), d)
    want = np_clip_loss(d, d["adv"] * np.minimum(w, 1.5), 0.2, 0.2, w_mask)
    assert float(capped) == pytest.approx(want, rel=1e-5)
    trunc = d["sampler"] + 0.3
    loss_t, m_t = obj(spec(decoupled=True), d, behaviour_logp_BT=trunc)
    want_t = np_clip_loss(d, d["adv"] * np.exp(d["old"] - trunc), 0.2, 0.2, w_mask)
    assert float(loss_t) == pytest.approx(want_t, rel=1e-5)
    # the mismatch metrics stay full-softmax against full-softmax
    dd = np.abs(d["old"] - d["sampler"])[d["mask"] > 0]
    assert float(m_t["mismatch/max_abs_logp"]) == pytest.approx(dd.max(), rel=1e-6)
    assert float(m_t["mismatch/mean_abs_logp"]) == pytest.approx(dd.mean(), rel=1e-5)


def test_decoupled_equals_standard_when_behaviour_is_proximal(d):
    """Behaviour = proximal: the weight is exactly 1, so loss, metrics and gradient are
    bitwise the standard objective's."""

    def run(s):
        def f(logp):
            return algorithms.objective(
                s,
                logp,
                d["ent"],
                old_logp_BT=d["old"],
                ref_logp_BT=None,
                sampler_logp_BT=d["old"],
                adv_BT=d["adv"],
                mask_BT=d["mask"],
                max_len=T,
            )

        return jax.value_and_grad(f, has_aux=True)(jnp.asarray(d["logp"]))

    (l0, m0), g0 = run(spec())
    (l1, m1), g1 = run(spec(decoupled=True))
    assert float(l0) == float(l1)
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(g1))
    assert {k: float(v) for k, v in m0.items()} == {k: float(v) for k, v in m1.items()}
    assert float(m1["mismatch/max_abs_logp"]) == 0.0
