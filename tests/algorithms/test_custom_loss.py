"""`algorithm.loss: module:function`: a user's policy loss replaces the built-in surrogate,
exactly (NumPy loss and gradient, micro-batch shares, a whole training step), and every bad
reference or signature is a clear error before anything is built."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import algorithms, losses
from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.train import loop, rl_stage

B, T = 6, 5
ROOT = Path(__file__).resolve().parents[2]


def _spec(loss="custom_losses:reinforce", name="grpo", **kw):
    section = load_config(None, [f"algorithm.name={name}", f"algorithm.loss={loss}"]).algorithm
    return algorithms.resolve(dataclasses.replace(section, **kw))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    lengths = np.array([5, 3, 0, 1, 4, 2])  # an empty row: excluded from the row mean
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    logp = rng.normal(-1.5, 0.5, (B, T)).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    return logp, np.broadcast_to(adv[:, None], (B, T)).copy(), mask, lengths


def _objective(spec, logp, adv, mask, denom=None):
    return algorithms.objective(
        spec,
        logp,
        jnp.zeros_like(logp),
        old_logp_BT=None,
        ref_logp_BT=None,
        sampler_logp_BT=None,
        adv_BT=adv,
        mask_BT=mask,
        max_len=T,
        denom=denom,
    )


def test_custom_loss_value_gradient_and_metrics_match_numpy(data):
    logp, adv, mask, lengths = data
    spec = _spec()  # GRPO: seq-mean-token-mean
    assert spec.loss == "custom_losses:reinforce" and spec.agg == "seq-mean-token-mean"
    rows = lengths > 0
    per_row = (-adv * logp * mask).sum(1)[rows] / lengths[rows]
    want = per_row.mean()
    want_grad = np.where(rows[:, None], -adv * mask / np.maximum(lengths, 1)[:, None], 0.0)
    want_grad /= rows.sum()

    def loss(lp):
        return _objective(spec, lp, adv, mask)

    (got, metrics), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(logp))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(metrics["custom/logp_mean"], (logp * mask).sum() / mask.sum())
    assert "clip/frac" not in metrics  # the custom loss reports none
    # the built-in surrogate on the same inputs is a different loss (the hook is not a no-op)
    builtin, _ = _objective(algorithms.resolve(load_config(None).algorithm), logp, adv, mask)
    assert not np.isclose(float(builtin), float(got))


def test_custom_loss_shares_add_up_over_micro_batches(data):
    logp, adv, mask, _ = data
    spec = _spec()
    whole, _ = _objective(spec, logp, adv, mask)
    denom = losses.Denominators.of(mask)
    parts = [
        _objective(spec, logp[i : i + 2], adv[i : i + 2], mask[i : i + 2], denom)[0]
        for i in (0, 2, 4)
    ]
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-6)


def _run_one_step(tmp_path, *overrides):
    cfg = load_config(
        ROOT / "configs" / "smoke.yaml",
        [
            "mesh.fsdp=1",
            "train.steps=1",
            "train.eval_every=0",
            "algorithm.beta=0.0",
            "rewards.functions=[{fn: 'custom_losses:ones_fraction'}]",
            *overrides,
        ],
    )
    s = rl_stage.build(cfg)
    p0 = jax.device_get(s.state.params)
    result = loop.run(cfg, rl_stage.stage(s), tmp_path, quiet=True, checkpoints=False)
    delta = jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(result.params), p0)
    return delta, p0, result.history[0]


@pytest.mark.slow  # two tiny runs (~1 min on a shared 2-core CPU, compiling two updates)
def test_a_training_step_follows_the_custom_loss(tmp_path):
    """Minus the built-in surrogate through the hook gives exactly the opposite first Adam step
    (the same rollout; the gradient negated, so `m / sqrt(v)` is negated): the trainer's update
    is the custom loss's. The deltas agree to the rounding of `p0 + u` against `p0 - u`."""
    d_builtin, p0, m_builtin = _run_one_step(tmp_path / "a")
    d_neg, _, m_neg = _run_one_step(
        tmp_path / "b", "algorithm.loss=custom_losses:negated_policy_loss"
    )
    leaves = jax.tree.leaves
    assert any(np.abs(x).max() > 0 for x in leaves(d_builtin))
    for a, c, p in zip(leaves(d_builtin), leaves(d_neg), leaves(p0)):
        # p0 + u and p0 - u each round to float32: by at most half a spacing of the result
        assert np.all(np.abs(c + a) <= 2 * np.spacing((np.abs(p) + np.abs(a)).astype(np.float32)))
        assert np.array_equal(c == 0, a == 0)
    assert m_neg["loss/policy"] == -m_builtin["loss/policy"]
    assert m_neg["clip/frac"] == m_builtin["clip/frac"]
    assert m_neg["reward/mean"] == m_builtin["reward/mean"]  # the same rollout


@pytest.mark.parametrize(
    "ref, message",
    [
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
        ("custom_losses:missing", "has no function 'missing'"),
        ("custom_losses:NOT_A_FUNCTION", "has no function 'NOT_A_FUNCTION'"),
        ("custom_losses:three_arrays", "takes 3 positional arrays"),
        ("custom_losses:without_denom", "does not take ['denom']"),
        ("custom_losses:needs_beta", "cannot pass required argument(s) ['beta']"),
    ],
)
def test_bad_references_and_signatures_are_clear_errors(ref, message):
    with pytest.raises(ValueError, match=f"algorithm.loss='{ref}'.*") as e:
        _spec(ref)
    assert message in str(e.value)


def test_keys_the_custom_loss_would_ignore_are_refused():
    with pytest.raises(ValueError, match=r"algorithm.dual_clip=3.0: .* does not take 'dual_clip'"):
        _spec("custom_losses:without_clip", dual_clip=3.0)
    with pytest.raises(ValueError, match=r"algorithm.ratio='sequence'"):
        _spec("custom_losses:without_clip", name="gspo")  # GSPO's sequence ratio
    _spec("custom_losses:negated_policy_loss", name="gspo", dual_clip=3.0)  # takes **kwargs


def test_a_loss_returning_no_metrics_fails_when_traced(data):
    logp, adv, mask, _ = data
    with pytest.raises(ValueError, match=r"returned ArrayImpl; expected \(loss, metrics dict\)"):
        _objective(_spec("custom_losses:scalar_only"), logp, adv, mask)


def test_config_refuses_a_loss_that_is_not_a_reference():
    with pytest.raises(
        ConfigError, match=r"algorithm.loss='clip_higher': expected null or 'module"
    ):
        load_config(None, ["algorithm.loss=clip_higher"])
