"""Masked statistics, aggregation, KL, advantage estimators, value and DPO losses vs NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import losses

B, T, G = 6, 7, 3


def make_mask(rng: np.random.Generator) -> np.ndarray:
    """Right-padded rows of random length, a hole in row 0, row 2 empty."""
    lengths = rng.integers(2, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    mask[0, :] = 1.0
    mask[0, 3] = 0.0
    mask[2, :] = 0.0
    return mask


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    mask = make_mask(rng)
    x = rng.normal(size=(B, T)).astype(np.float32)
    x_poisoned = np.where(mask > 0, x, np.nan).astype(np.float32)  # padding must not leak
    return rng, mask, x, x_poisoned


# ---------------------------------------------------------------- masked statistics / aggregate


def np_aggregate(x, m, mode, max_len=None):
    x = np.where(m > 0, x, 0.0)
    if mode == "token-mean":
        return (x * m).sum() / m.sum() if m.sum() > 0 else 0.0
    if mode == "seq-mean-token-sum-norm":
        return (x * m).sum() / (x.shape[0] * (max_len or x.shape[1]))
    rows = []
    for b in range(x.shape[0]):
        if m[b].sum() > 0:
            s = (x[b] * m[b]).sum()
            rows.append(s if mode == "seq-mean-token-sum" else s / m[b].sum())
    return np.mean(rows) if rows else 0.0


@pytest.mark.parametrize("mode", losses._masking.AGG_MODES)
def test_aggregate_matches_numpy(data, mode):
    _, mask, x, xp = data
    got = losses.aggregate(xp, mask, mode)
    np.testing.assert_allclose(got, np_aggregate(x, mask, mode), rtol=1e-6)
    if mode == "seq-mean-token-sum-norm":
        got = losses.aggregate(xp, mask, mode, max_len=20)
        np.testing.assert_allclose(got, (x * mask).sum() / (B * 20), rtol=1e-6)


@pytest.mark.parametrize("mode", losses._masking.AGG_MODES)
def test_aggregate_all_zero_mask_is_zero(mode):
    x = jnp.full((3, 4), jnp.nan)
    assert float(losses.aggregate(x, jnp.zeros((3, 4), bool), mode)) == 0.0


def test_aggregate_rejects_unknown_mode_and_shapes():
    with pytest.raises(ValueError, match="seq-sum"):
        losses.aggregate(jnp.ones((2, 3)), jnp.ones((2, 3)), "seq-sum")
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        losses.aggregate(jnp.ones((2, 3)), jnp.ones((2, 4)), "token-mean")


def test_masked_mean_var_whiten(data):
    _, mask, x, xp = data
    sel = x[mask > 0]
    np.testing.assert_allclose(losses.masked_mean(xp, mask), sel.mean(), rtol=1e-6)
    np.testing.assert_allclose(losses.masked_var(xp, mask), sel.var(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(
        losses.masked_var(xp, mask, unbiased=False), sel.var(ddof=0), rtol=1e-5
    )
    row_means = [x[b][mask[b] > 0].mean() if mask[b].sum() else 0.0 for b in range(B)]
    np.testing.assert_allclose(losses.masked_mean(xp, mask, axis=1), row_means, rtol=1e-6)
    expected = (x - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(
        losses.whiten(xp, mask), np.where(mask > 0, expected, 0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        losses.whiten(xp, mask, shift_mean=False),
        np.where(mask > 0, expected + sel.mean(), 0),
        rtol=1e-5,
        atol=1e-6,
    )
    assert float(losses.masked_var(x, np.zeros_like(mask))) == 0.0


# ---------------------------------------------------------------- KL


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
def test_kl_penalty(data, kind):
    rng, _, x, _ = data
    ref = rng.normal(size=x.shape).astype(np.float32)
    d = x - ref
    expected = {
        "k1": d,
        "k2": 0.5 * d**2,
        "k3": np.exp(ref - x) - (ref - x) - 1,
        # verl's low_var_kl: k3 with ref - logp clamped to +-20, the result to +-10
        "low_var_kl": np.clip(
            np.exp(np.clip(ref - x, -20, 20)) - np.clip(ref - x, -20, 20) - 1, -10, 10
        ),
    }[kind]
    np.testing.assert_allclose(losses.kl_penalty(x, ref, kind), expected, rtol=1e-5, atol=1e-6)


def test_kl_penalty_clamp():
    logp = jnp.array([[0.0, -30.0, 5.0]])
    ref = jnp.array([[0.0, 0.0, 0.0]])
    unclamped = losses.kl_penalty(logp, ref, "k3")
    assert float(unclamped[0, 1]) == pytest.approx(np.exp(30.0) - 31.0, rel=1e-5)
    clamped = losses.kl_penalty(logp, ref, "k3", clamp=10.0)
    np.testing.assert_allclose(clamped, [[0.0, 10.0, min(np.exp(-5.0) + 4.0, 10.0)]], rtol=1e-6)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "low_var_kl"), clamped, rtol=1e-6)
    g = jax.grad(lambda lp: losses.kl_penalty(lp, ref, "k3", clamp=10.0).sum())(logp)
    assert np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="k4"):
        losses.kl_penalty(logp, ref, "k4")


def test_adaptive_kl_controller():
    ctrl = losses.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=1000)
    state = ctrl.init()
    state = jax.jit(ctrl.update)(state, 9.0, 100)  # error clipped at +0.2
    assert float(state.kl_coef) == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    state2 = ctrl.update(state, 5.4, 50)  # error -0.1, not clipped
    assert float(state2.kl_coef) == pytest.approx(float(state.kl_coef) * (1 - 0.1 * 50 / 1000))
    state3 = ctrl.update(state2, 0.0, 10)  # error clipped at -0.2
    assert float(state3.kl_coef) == pytest.approx(float(state2.kl_coef) * (1 - 0.2 * 10 / 1000))
    with pytest.raises(ValueError, match="target"):
        losses.AdaptiveKLController(init_kl_coef=0.1, target=0.0)


# ---------------------------------------------------------------- outcome advantages


def test_group_and_rloo_advantages():
    rng = np.random.default_rng(1)
    r = rng.normal(size=B).astype(np.float32)
    r[3:6] = 0.5  # an all-equal group
    grp = r.reshape(-1, G)
    mean, std = grp.mean(1, keepdims=True), grp.std(1, ddof=1, keepdims=True)
    expected = ((grp - mean) / (std + 1e-6)).reshape(-1)
    got = losses.group_advantages(r, G)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got[3:6]), 0.0)
    np.testing.assert_allclose(
        losses.group_advantages(r, G, std_normalize=False), (grp - mean).reshape(-1), atol=1e-6
    )
    loo = np.array([r[i] - (grp[i // G].sum() - r[i]) / (G - 1) for i in range(B)])
    np.testing.assert_allclose(losses.rloo_advantages(r, G), loo, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [losses.group_advantages, losses.rloo_advantages])
def test_group_size_validation(fn):
    with pytest.raises(ValueError, match="group_size 4 does not divide the batch size 6"):
        fn(jnp.zeros(6), 4)
    with pytest.raises(ValueError, match="got 1"):
        fn(jnp.zeros(6), 1)


# ---------------------------------------------------------------- token-level estimators


def np_reverse(r, v, m, gamma, lam):
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        v_next = a_next = 0.0
        for t in reversed(range(r.shape[1])):
            if m[b, t]:
                adv[b, t] = r[b, t] + gamma * v_next - v[b, t] + gamma * lam * a_next
                v_next, a_next = v[b, t], adv[b, t]
    return adv


def test_gae_skips_holes_and_zeroes_padding(data):
    rng, mask, r, rp = data
    v = rng.normal(size=r.shape).astype(np.float32)
    vp = np.where(mask > 0, v, np.inf).astype(np.float32)
    adv, ret = losses.gae(rp, vp, mask, gamma=0.9, lam=0.8)
    ref = np_reverse(r, v, mask, 0.9, 0.8)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, np.where(mask > 0, ref + v, 0), rtol=1e-5, atol=1e-5)


def test_reinforce_pp(data):
    _, mask, r, rp = data
    returns = np_reverse(r, np.zeros_like(r), mask, 0.95, 1.0)
    np.testing.assert_allclose(
        losses.reinforce_pp_returns(rp, mask, 0.95), returns, rtol=1e-5, atol=1e-6
    )
    sel = returns[mask > 0]
    white = np.where(mask > 0, (returns - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), 0)
    np.testing.assert_allclose(
        losses.reinforce_pp_advantages(rp, mask, gamma=0.95), white, rtol=1e-4, atol=1e-5
    )


def test_reinforce_pp_baseline_and_outcome_rewards(data):
    rng, mask, _, _ = data
    scores = rng.normal(size=B).astype(np.float32)
    centered = (scores.reshape(-1, G) - scores.reshape(-1, G).mean(1, keepdims=True)).reshape(-1)
    tok = np.broadcast_to(centered[:, None], mask.shape)
    sel = tok[mask > 0]
    expected = np.where(mask > 0, (tok - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), 0)
    got = losses.reinforce_pp_baseline_advantages(scores, mask, G)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    placed = np.zeros_like(mask)
    for b in range(B):
        idx = np.nonzero(mask[b])[0]
        if len(idx):
            placed[b, idx[-1]] = scores[b]
    np.testing.assert_allclose(losses.outcome_token_rewards(scores, mask), placed)


# ---------------------------------------------------------------- value and DPO losses


@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss(data, clip):
    rng, mask, v, vp = data
    old = v + rng.normal(scale=0.5, size=v.shape).astype(np.float32)
    ret = rng.normal(size=v.shape).astype(np.float32)
    if clip is None:
        per = 0.5 * (v - ret) ** 2
    else:
        vc = old + np.clip(v - old, -clip, clip)
        per = 0.5 * np.maximum((v - ret) ** 2, (vc - ret) ** 2)
    loss, metrics = losses.value_loss(vp, old, ret, mask, clip=clip)
    np.testing.assert_allclose(loss, np_aggregate(per, mask, "token-mean"), rtol=1e-5)
    if clip is not None:
        frac = ((vc - ret) ** 2 > (v - ret) ** 2)[mask > 0].mean()
        np.testing.assert_allclose(metrics["vf_clipfrac"], frac, rtol=1e-6)


def test_dpo_loss():
    rng = np.random.default_rng(2)
    c, r, rc, rr = (rng.normal(size=5).astype(np.float32) * 3 for _ in range(4))
    h = (c - rc) - (r - rr)
    log_sig = lambda z: -np.log1p(np.exp(-z))
    for ls in (0.0, 0.1):
        expected = -(1 - ls) * log_sig(0.5 * h) - ls * log_sig(-0.5 * h)
        got = losses.dpo_loss(c, r, rc, rr, beta=0.5, label_smoothing=ls)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


# ---------------------------------------------------------------- jit == no-jit

JIT_CASES = {
    "aggregate": (functools.partial(losses.aggregate, mode="seq-mean-token-mean"), 2),
    "whiten": (losses.whiten, 2),
    "masked_var": (losses.masked_var, 2),
    "gae": (functools.partial(losses.gae, gamma=0.9, lam=0.7), 3),
    "reinforce_pp_advantages": (losses.reinforce_pp_advantages, 2),
    "value_loss": (functools.partial(losses.value_loss, clip=0.1), 4),
    "kl_k3": (functools.partial(losses.kl_penalty, kind="k3"), 2),
}


@pytest.mark.parametrize("name", sorted(JIT_CASES))
def test_jit_matches_eager(data, name):
    rng, mask, x, _ = data
    fn, n_arrays = JIT_CASES[name]
    args = [x] + [rng.normal(size=x.shape).astype(np.float32) for _ in range(n_arrays - 2)]
    args.append(mask)
    if name == "kl_k3":
        args = [x, args[-1] - 1.0]
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), eager, jitted)
