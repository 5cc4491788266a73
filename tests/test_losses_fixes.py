"""Loss bugs found against verl 0.9.1 / TRL 1.16, each against a NumPy reference with gradients:
whole-batch denominators (micro-batching never changes the loss), value clipping without
rounding, GSPO's clamp on the combined log-ratio, low_var_kl's clamp, REINFORCE++'s gamma."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import losses

MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _mask(rng, B=8, T=6):
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T
    lengths[3] = 0  # an empty row
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


# ------------------------------------------------------------------ Denominators / micro-batches


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_micro", [2, 4, 8])
def test_shares_of_micro_batches_sum_to_the_whole_batch_loss(mode, n_micro):
    rng = np.random.default_rng(1)
    mask = _mask(rng)
    x = rng.normal(size=mask.shape).astype(np.float32)
    whole = losses.aggregate(x, mask, mode, max_len=9)
    denom = losses.Denominators.of(mask)
    k = mask.shape[0] // n_micro
    shares = [
        losses.aggregate(x[i : i + k], mask[i : i + k], mode, max_len=9, denom=denom)
        for i in range(0, mask.shape[0], k)
    ]
    np.testing.assert_allclose(sum(shares), whole, rtol=1e-6, atol=1e-7)
    # without denom, a mean of micro-batch token-means is a different number here
    plain = np.mean(
        [
            losses.aggregate(x[i : i + k], mask[i : i + k], mode, max_len=9)
            for i in range(0, mask.shape[0], k)
        ]
    )
    if mode == "token-mean":
        assert abs(plain - float(whole)) > 1e-4
    # the whole batch's own denominators change nothing
    np.testing.assert_array_equal(losses.aggregate(x, mask, mode, max_len=9, denom=denom), whole)


def test_denominators_of_counts_tokens_rows_and_all_rows():
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    d = losses.Denominators.of(mask)
    assert (float(d.tokens), float(d.rows_with_tokens), float(d.rows)) == (3.0, 2.0, 3.0)
    assert jax.tree.leaves(d)  # a pytree: passes through jit and scan
    assert float(jax.jit(lambda d: d.tokens)(d)) == 3.0
    with pytest.raises(ValueError, match="B, T"):
        losses.Denominators.of(np.ones(3))


def _four_rows():
    """Two rows of 8 tokens with A = +1, two rows of 1 token with A = -1."""
    mask = np.zeros((4, 8), np.float32)
    mask[:2] = 1.0
    mask[2:, 0] = 1.0
    return mask, np.array([1.0, 1.0, -1.0, -1.0], np.float32)


def test_micro_batching_the_four_row_example_keeps_the_gradient():
    """d loss / d theta with logp = theta on every token (ratio 1): -sum(A m) / sum(m) = -14/18.
    Averaging per-micro-batch token-means over {rows 0, 1} and {rows 2, 3} gives (-1 + 1) / 2 = 0
    instead; summing shares with the whole batch's denominators gives -14/18 again."""
    mask, adv = _four_rows()
    denom = losses.Denominators.of(mask)

    def loss(theta, mb, d=None):
        logp = theta * jnp.ones_like(mb["mask"])
        return losses.policy_loss(logp, jax.lax.stop_gradient(logp), mb["adv"], mb["mask"], denom=d)

    def grad(theta, mb, d=None):
        return float(jax.grad(lambda th: loss(th, mb, d)[0])(theta))

    batch = {"mask": mask, "adv": adv}
    want = -14.0 / 18.0
    assert grad(0.0, batch) == pytest.approx(want, rel=1e-6)
    mbs = losses.split_rows(batch, 2)
    halves = [{k: v[i] for k, v in mbs.items()} for i in (0, 1)]
    averaged = np.mean([grad(0.0, mb) for mb in halves])
    assert averaged == pytest.approx(0.0, abs=1e-7)  # the bug the denominators fix
    total, g, aux = losses.summed_value_and_grad(
        lambda th, mb: loss(th, mb, denom), jnp.float32(0.0), mbs
    )
    assert float(g) == pytest.approx(want, rel=1e-6)
    assert float(total) == pytest.approx(float(loss(0.0, batch)[0]), abs=1e-7)
    assert aux["clipfrac"].shape == (2,)


@pytest.mark.parametrize("fn", ["policy_loss", "cispo_loss", "value_loss"])
@pytest.mark.parametrize("mode", MODES)
def test_every_loss_passes_denominators_through(fn, mode):
    rng = np.random.default_rng(2)
    mask = _mask(rng)
    a = rng.normal(-1, 0.5, size=mask.shape).astype(np.float32)
    b = (a + rng.normal(scale=0.3, size=mask.shape)).astype(np.float32)
    adv = rng.normal(size=mask.shape).astype(np.float32)
    if fn == "value_loss":

        def f(x, sl, d=None):
            return losses.value_loss(x, b[sl], adv[sl], mask[sl], clip=0.2, agg=mode, denom=d)[0]
    else:

        def f(x, sl, d=None):
            return getattr(losses, fn)(x, b[sl], adv[sl], mask[sl], agg=mode, denom=d)[0]

    denom = losses.Denominators.of(mask)
    halves = [slice(0, 4), slice(4, 8)]
    whole_val, whole_grad = jax.value_and_grad(f)(a, slice(None))
    parts = [jax.value_and_grad(f)(a[sl], sl, denom) for sl in halves]
    np.testing.assert_allclose(sum(v for v, _ in parts), whole_val, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        np.concatenate([g for _, g in parts]), whole_grad, rtol=1e-5, atol=1e-7
    )


def test_split_rows_refuses_a_non_divisor():
    with pytest.raises(ValueError, match="micro_batches=3"):
        losses.split_rows({"x": np.zeros((4, 2))}, 3)


# ------------------------------------------------------------------ value loss


def test_value_clipfrac_counts_only_real_clipping_and_the_gradient_matches_numpy():
    rng = np.random.default_rng(3)
    shape = (64, 32)
    mask = np.ones(shape, np.float32)
    old = rng.normal(size=shape).astype(np.float32)
    v = (old + rng.normal(scale=0.2, size=shape)).astype(np.float32)
    ret = rng.normal(size=shape).astype(np.float32)
    c = 0.2
    # NumPy reference: v_c = clip(v, old - c, old + c) exactly
    v_c = np.clip(v, old - c, old + c)
    l1, l2 = (v - ret) ** 2, (v_c - ret) ** 2
    want_loss = (0.5 * np.maximum(l1, l2)).mean()
    want_frac = (l2 > l1).mean()
    inside = (v >= old - c) & (v <= old + c)
    want_grad = np.where(l1 >= l2, v - ret, np.where(inside, v_c - ret, 0.0)) / v.size
    (loss, m), grad = jax.value_and_grad(
        lambda x: losses.value_loss(x, old, ret, mask, clip=c), has_aux=True
    )(v)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-9)
    assert float(m["vf_clipfrac"]) == pytest.approx(want_frac, abs=1e-6)
    # rounding of old + (v - old) is not clipping: a wide range clips nothing
    _, m = losses.value_loss(v, old, ret, mask, clip=100.0)
    assert float(m["vf_clipfrac"]) == 0.0


# ------------------------------------------------------------------ GSPO clamp


@pytest.mark.parametrize("adv", [-1.0, 1.0])
@pytest.mark.parametrize("old", [-25.0, 25.0])
def test_gspo_gradient_is_zero_beyond_the_log_ratio_clamp(adv, old):
    """logp = 0, old = -25 (mean log-ratio 25 > 20), A = -1 used to give |A| e^20 / |y| = 1.2e8
    per token; verl (and the docstring) give 0 beyond the clamp."""
    mask = np.ones((1, 4), np.float32)
    old_BT = np.full((1, 4), old, np.float32)
    g = jax.grad(
        lambda lp: losses.policy_loss(
            lp, old_BT, np.array([adv], np.float32), mask, ratio="sequence"
        )[0]
    )(jnp.zeros((1, 4)))
    np.testing.assert_array_equal(g, np.zeros((1, 4)))


def test_gspo_gradient_inside_the_clamp_is_the_numpy_one():
    """At mean log-ratio 19 (inside), A = -1, unclipped side: d l / d logp_t = e^19 / |y|."""
    mask = np.ones((1, 4), np.float32)
    old_BT = np.full((1, 4), -19.0, np.float32)
    g = jax.grad(
        lambda lp: losses.policy_loss(
            lp, old_BT, np.array([-1.0], np.float32), mask, ratio="sequence"
        )[0]
    )(jnp.zeros((1, 4)))
    np.testing.assert_allclose(g, np.full((1, 4), np.exp(19.0) / 4), rtol=1e-5)


# ------------------------------------------------------------------ KL, REINFORCE++ gamma


def test_low_var_kl_is_clamped_at_ten_and_its_gradient_is_zero_there():
    logp = jnp.array([[0.0, -30.0, 0.5]])
    ref = jnp.zeros((1, 3))
    kl = losses.kl_penalty(logp, ref, "low_var_kl")
    k3 = np.exp(0.0 - np.array([0.0, -30.0, 0.5])) + np.array([0.0, -30.0, 0.5]) - 1
    np.testing.assert_allclose(kl, [np.clip(np.minimum(k3, np.exp(20) - 21), -10, 10)], rtol=1e-6)
    g = jax.grad(lambda lp: losses.kl_penalty(lp, ref, "low_var_kl").sum())(logp)
    np.testing.assert_allclose(g, [[0.0, 0.0, 1.0 - np.exp(-0.5)]], rtol=1e-5, atol=1e-7)
    assert float(losses.kl_penalty(logp, ref, "k3")[0, 1]) > 1e12  # "k3" itself is unclamped


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_reinforce_pp_discount(gamma):
    r = np.array([[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 3.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    want = np.zeros_like(r)
    for b in range(2):
        acc = 0.0
        for t in reversed(range(4)):
            if mask[b, t]:
                acc = r[b, t] + gamma * acc
                want[b, t] = acc
    np.testing.assert_allclose(losses.reinforce_pp_returns(r, mask, gamma), want, rtol=1e-6)
    sel = want[mask > 0]
    whitened = np.where(mask > 0, (want - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8), 0.0)
    np.testing.assert_allclose(
        losses.reinforce_pp_advantages(r, mask, gamma=gamma), whitened, rtol=1e-5, atol=1e-6
    )
