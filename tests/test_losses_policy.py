"""policy_loss (token / GSPO ratio, dual clip), cispo_loss and truncated IS weights vs NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import losses

B, T = 6, 7


from test_losses_core import make_mask  # noqa: E402  (the same masks: holes, an empty row)


def agg_weights(mask, mode, max_len=None):
    """d aggregate / d x[b, t], written from the aggregate formulas."""
    m = mask
    if mode == "token-mean":
        return m / m.sum()
    if mode == "seq-mean-token-sum-norm":
        return m / (m.shape[0] * (max_len or m.shape[1]))
    rows = m.sum(1, keepdims=True)
    n_rows = (rows > 0).sum()
    if mode == "seq-mean-token-sum":
        return m / n_rows
    return np.where(rows > 0, m / np.maximum(rows, 1) / n_rows, 0.0)


def np_policy(logp, old, adv, mask, lo, hi, dual, ratio):
    """Forward loss per token and d l / d logp (analytic) of the clipped surrogate."""
    a = np.broadcast_to(adv[:, None], logp.shape) if adv.ndim == 1 else adv
    d = np.where(mask > 0, logp - old, 0.0)
    if ratio == "token":
        r = np.exp(d)
    else:
        s = np.where(mask.sum(1) > 0, d.sum(1) / np.maximum(mask.sum(1), 1), 0.0)
        r = np.broadcast_to(np.exp(s)[:, None], logp.shape)
    l1, l2 = -a * r, -a * np.clip(r, 1 - lo, 1 + hi)
    per = np.maximum(l1, l2)
    grad = np.where(l1 >= l2, -a * r, 0.0)  # d r / d logp = r in both cases (value s_b for GSPO)
    if dual is not None:
        capped = (a < 0) & (per > -a * dual)
        per = np.where(capped, -a * dual, per)
        grad = np.where(capped, 0.0, grad)
    clipfrac = (l2 > l1)[mask > 0].mean()
    return per, grad, clipfrac


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    mask = make_mask(rng)
    old = rng.normal(-2.0, 1.0, size=(B, T)).astype(np.float32)
    logp = (old + rng.normal(scale=0.4, size=(B, T))).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    return rng, mask, logp, old, adv


@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize(
    "agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
@pytest.mark.parametrize("dual", [None, 1.3])
def test_policy_loss_value_and_gradient(data, ratio, agg, dual):
    _, mask, logp, old, adv = data
    lo, hi = 0.2, 0.25
    per, grad, clipfrac = np_policy(logp, old, adv, mask, lo, hi, dual, ratio)
    w = agg_weights(mask, agg)
    fn = functools.partial(
        losses.policy_loss, clip_low=lo, clip_high=hi, dual_clip=dual, ratio=ratio, agg=agg
    )
    poisoned = np.where(mask > 0, logp, np.nan).astype(np.float32)
    (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(poisoned), old, adv, mask)
    np.testing.assert_allclose(loss, (np.where(mask > 0, per, 0) * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(g, grad * w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["clipfrac"], clipfrac, rtol=1e-6)
    np.testing.assert_allclose(metrics["approx_kl"], (old - logp)[mask > 0].mean(), rtol=1e-5)
    assert 0 < clipfrac < 1  # the inputs exercise both branches of the clip
    if dual is not None:
        assert float(metrics["dual_clipfrac"]) > 0  # ... and the dual clip


def test_policy_loss_token_advantages_and_jit(data):
    rng, mask, logp, old, _ = data
    adv = rng.normal(size=(B, T)).astype(np.float32)
    per, _, _ = np_policy(logp, old, adv, mask, 0.2, 0.2, None, "token")
    fn = functools.partial(losses.policy_loss, agg="seq-mean-token-mean")
    expected = (per * agg_weights(mask, "seq-mean-token-mean")).sum()
    np.testing.assert_allclose(fn(logp, old, adv, mask)[0], expected, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(fn)(logp, old, adv, mask)[0], expected, rtol=1e-5)


@pytest.mark.parametrize("ratio", ["token", "sequence"])
def test_policy_loss_extreme_log_ratios_are_finite(ratio):
    logp = jnp.array([[50.0, -50.0, 0.0], [-50.0, -50.0, 50.0]])
    old = jnp.zeros_like(logp)
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones_like(logp)
    for dual in (None, 3.0):
        fn = functools.partial(losses.policy_loss, ratio=ratio, dual_clip=dual)
        (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(logp, old, adv, mask)
        assert np.isfinite(loss) and np.all(np.isfinite(g))
        assert all(np.isfinite(v) for v in metrics.values())
    # Row 1 (A<0) with log-ratio +50 is clamped to exp(20): loss -A*exp(20), not inf.
    tok_loss = losses.policy_loss(logp[1:, 2:], old[1:, 2:], adv[1:], mask[1:, 2:])[0]
    np.testing.assert_allclose(tok_loss, np.exp(20.0), rtol=1e-5)


def test_policy_loss_edge_cases(data):
    _, mask, logp, old, adv = data
    zero = np.zeros_like(mask)
    for ratio in ("token", "sequence"):
        loss, metrics = losses.policy_loss(logp, old, adv, zero, ratio=ratio)
        assert float(loss) == 0.0 and float(metrics["clipfrac"]) == 0.0
    with pytest.raises(ValueError, match="'tok'"):
        losses.policy_loss(logp, old, adv, mask, ratio="tok")
    with pytest.raises(ValueError, match="'sum'"):
        losses.policy_loss(logp, old, adv, mask, agg="sum")
    with pytest.raises(ValueError, match="dual_clip must be > 1, got 0.5"):
        losses.policy_loss(logp, old, adv, mask, dual_clip=0.5)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        losses.policy_loss(logp, old, adv[:5], mask)


def test_cispo_loss(data):
    _, mask, logp, old, adv = data
    lo, hi = 0.1, 0.3
    r = np.exp(logp - old)
    w_is = np.clip(r, 1 - lo, 1 + hi)
    a = adv[:, None]
    per = -w_is * a * logp
    wt = agg_weights(mask, "token-mean")
    fn = functools.partial(losses.cispo_loss, clip_low=lo, clip_high=hi)
    (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(logp, old, adv, mask)
    np.testing.assert_allclose(loss, (np.where(mask > 0, per, 0) * wt).sum(), rtol=1e-5)
    np.testing.assert_allclose(g, -w_is * a * wt, rtol=1e-5, atol=1e-7)  # no token loses its grad
    clipped = ((r < 1 - lo) | (r > 1 + hi))[mask > 0].mean()
    np.testing.assert_allclose(metrics["clipfrac"], clipped, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(logp, old, adv, mask)[0], loss, rtol=1e-6)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
@pytest.mark.parametrize("lower", [None, 0.5])
def test_truncated_importance_weights(data, level, mode, lower):
    rng, mask, logp, _, _ = data
    sampler = (logp + rng.normal(scale=0.5, size=logp.shape)).astype(np.float32)
    d = np.where(mask > 0, logp - sampler, 0.0)
    if level == "sequence":
        d = np.broadcast_to(d.sum(1, keepdims=True), d.shape)
    w = np.exp(d)
    lo = -np.inf if lower is None else lower
    w = np.clip(w, lo, 1.5) if mode == "truncate" else np.where((w >= lo) & (w <= 1.5), w, 0.0)
    expected = np.where(mask > 0, w, 0.0)
    fn = functools.partial(
        losses.truncated_importance_weights, level=level, mode=mode, max=1.5, min=lower
    )
    np.testing.assert_allclose(fn(logp, sampler, mask), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(fn)(logp, sampler, mask), expected, rtol=1e-5, atol=1e-7)
    g = jax.grad(lambda lp: fn(lp, sampler, mask).sum())(logp)
    np.testing.assert_array_equal(g, 0.0)


def test_truncated_importance_weights_bad_modes(data):
    _, mask, logp, old, _ = data
    with pytest.raises(ValueError, match="'geometric'"):
        losses.truncated_importance_weights(logp, old, mask, level="geometric")
    with pytest.raises(ValueError, match="'clip'"):
        losses.truncated_importance_weights(logp, old, mask, mode="clip")


def test_sharded_matches_single_device():
    """Batch sharded over a 2x4 CPU mesh gives the single-device loss, advantages and grads."""
    rng = np.random.default_rng(3)
    b, t = 8, 5
    mask = (np.arange(t)[None] < rng.integers(0, t + 1, size=b)[:, None]).astype(np.float32)
    old = rng.normal(-1.0, 0.5, size=(b, t)).astype(np.float32)
    logp = (old + rng.normal(scale=0.3, size=(b, t))).astype(np.float32)
    rewards = rng.integers(0, 2, size=b).astype(np.float32)

    def step(logp, old, rewards, mask):
        adv = losses.group_advantages(rewards, 4)
        fn = functools.partial(losses.policy_loss, ratio="sequence", agg="seq-mean-token-sum-norm")
        (loss, _), g = jax.value_and_grad(fn, has_aux=True)(logp, old, adv, mask)
        return loss, g, adv

    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    sharded = [jax.device_put(a, spec) for a in (logp, old, rewards, mask)]
    expected = jax.jit(step)(logp, old, rewards, mask)
    got = jax.jit(step)(*sharded)
    assert len(got[1].sharding.device_set) == 8
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)
