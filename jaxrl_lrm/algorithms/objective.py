"""`algorithms.objective`: the policy loss of one (micro-)batch, from log-probs and advantages."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lrm import losses
from jaxrl_lrm.algorithms import custom
from jaxrl_lrm.algorithms.spec import AlgorithmSpec


def _surrogate(spec: AlgorithmSpec, logp, old, adv, mask, max_len, denom):
    if custom.is_reference(spec.loss):
        values = {k: getattr(spec, k) for k in ("agg", *custom.OPTIONAL_KEYWORDS)}
        return custom.surrogate(spec.loss, values, logp, old, adv, mask, max_len, denom)
    if spec.loss == "cispo":
        return losses.cispo_loss(
            logp,
            old,
            adv,
            mask,
            clip_low=spec.clip_low,
            clip_high=spec.clip_high,
            agg=spec.agg,
            max_len=max_len,
            denom=denom,
        )
    if spec.loss != "clip":
        raise ValueError(f"loss={spec.loss!r}: expected 'clip', 'cispo' or 'module:function'")
    return losses.policy_loss(
        logp,
        old,
        adv,
        mask,
        clip_low=spec.clip_low,
        clip_high=spec.clip_high,
        dual_clip=spec.dual_clip,
        ratio=spec.ratio,
        agg=spec.agg,
        max_len=max_len,
        denom=denom,
    )


def _weighted_advantages(spec: AlgorithmSpec, adv_BT, old, behaviour_logp_BT, mask, shape):
    """`A` broadcast to `[B, T]`, times the behaviour-policy weights `exp(old - behaviour)`
    (capped at `tis_max`) under `tis_max` or `decoupled`."""
    adv = jnp.asarray(adv_BT, jnp.float32)
    if adv.ndim == 1:
        adv = jnp.broadcast_to(adv[:, None], shape)
    if spec.tis_max is None and not spec.decoupled:
        return adv
    if behaviour_logp_BT is None:
        raise ValueError(
            "tis_max and decoupled need the behaviour policy's log-probs (sampler_logp_BT)"
        )
    cap = jnp.inf if spec.tis_max is None else spec.tis_max
    return adv * losses.truncated_importance_weights(old, behaviour_logp_BT, mask, max=cap)


def objective(
    spec: AlgorithmSpec,
    logp_BT: jax.Array,
    entropy_BT: jax.Array,
    *,
    old_logp_BT: jax.Array | None,
    ref_logp_BT: jax.Array | None,
    sampler_logp_BT: jax.Array | None,
    adv_BT: jax.Array,
    mask_BT: jax.Array,
    max_len: int | None,
    beta: jax.Array | float | None = None,
    denom: losses.Denominators | None = None,
    behaviour_logp_BT: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """The loss the policy minimises, given this pass's log-probs and entropies.

    Equation, every term aggregated with `spec.agg` (and `denom`, if given):
      `w = min(exp(old - behaviour), tis_max)` (stop-gradient; 1 without both knobs);
      `L = surrogate(logp, old, w * A)` (PPO clip, GSPO sequence ratio, or CISPO)
          `+ beta * agg(kl_penalty(logp, ref, kl_kind))` (only with a reference and not
          `kl_in_reward`) `- entropy_coef * token-mean(entropy)`.
    `old_logp_BT=None`: on-policy, one update (ratio 1 against `stop_gradient(logp)`). The
    reference is given exactly when `beta > 0`. `old` proximal (current before the update) and
    `behaviour` the sampler: decoupled PPO (Hilton et al. 2022, arXiv:2110.00641; AReaL);
    behaviour = proximal gives `w = 1`, the standard objective. TIS: Yao et al. 2025.

    With `denom = losses.Denominators.of(mask)` of the whole (mini)batch, the loss (and
    `loss/*` metrics) are this micro-batch's share: sum them and their gradients over
    micro-batches. The other metrics are means over its tokens (average them).

    Args:
        spec: the resolved algorithm (static under jit).
        logp_BT: `[B, T]` log-probs of the sampled tokens under the policy being trained.
        entropy_BT: `[B, T]` entropies at the same positions.
        old_logp_BT: `[B, T]` log-probs under the policy that sampled, or `None` (on-policy).
        ref_logp_BT: `[B, T]` reference log-probs, or `None` when `beta == 0`.
        sampler_logp_BT: `[B, T]` the sampler's full-softmax log-probs, or `None`.
        adv_BT: `[B, T]` advantages (`Advantages.adv_BT`; `[B]` is broadcast).
        mask_BT: `[B, T]` response mask.
        max_len: `L` of `"seq-mean-token-sum-norm"` (the sampling budget), or `None` for `T`.
        beta: KL coefficient overriding `spec.beta`.
        denom: whole-batch normalisers for exact micro-batching, or `None`.
        behaviour_logp_BT: `[B, T]` the truncated ones (top-k / top-p), or `None`: sampler's.

    Returns:
        `(loss, metrics)` with `loss/policy`, `loss/total`, `entropy/mean`, `clip/frac`,
        `approx_kl`, `mismatch/sampler_kl`, `mismatch/{max_abs_logp, mean_abs_logp,
        frac_ratio_outside_clip}` (`old` against `sampler_logp_BT`: `losses.logprob_mismatch`)
        and, with a reference, `kl/mean`.
    """
    beta = spec.beta if beta is None else beta
    mask = mask_BT
    old = jax.lax.stop_gradient(logp_BT) if old_logp_BT is None else old_logp_BT
    behaviour = sampler_logp_BT if behaviour_logp_BT is None else behaviour_logp_BT
    adv = _weighted_advantages(spec, adv_BT, old, behaviour, mask, logp_BT.shape)
    pg, pg_metrics = _surrogate(spec, logp_BT, old, adv, mask, max_len, denom)
    loss, metrics = pg, {}
    if ref_logp_BT is not None:
        kl = losses.kl_penalty(logp_BT, ref_logp_BT, spec.kl_kind)
        metrics["kl/mean"] = losses.aggregate(kl, mask, "token-mean")
        if not spec.kl_in_reward:
            loss = loss + beta * losses.aggregate(kl, mask, spec.agg, max_len=max_len, denom=denom)
    ent_mean = losses.aggregate(entropy_BT, mask, "token-mean")
    if spec.entropy_coef:
        ent_term = (
            ent_mean
            if denom is None
            else losses.aggregate(entropy_BT, mask, "token-mean", denom=denom)
        )
        loss = loss - spec.entropy_coef * ent_term
    metrics |= {
        "loss/policy": pg,
        "loss/total": loss,
        "entropy/mean": ent_mean,
        **_mismatch(spec, logp_BT, old, sampler_logp_BT, mask),
    }
    return loss, metrics | _surrogate_metrics(spec, pg_metrics)


def _surrogate_metrics(spec: AlgorithmSpec, m: dict) -> dict:
    """`clip/frac` and `approx_kl`; a custom loss's other metrics as `custom/<key>`."""
    if not custom.is_reference(spec.loss):
        return {"clip/frac": m["clipfrac"], "approx_kl": m["approx_kl"]}
    names = {"clipfrac": "clip/frac", "approx_kl": "approx_kl"}
    return {names.get(k, f"custom/{k}"): jnp.asarray(v, jnp.float32) for k, v in m.items()}


def _mismatch(spec: AlgorithmSpec, logp, old, sampler_logp_BT, mask) -> dict:
    """`mismatch/sampler_kl` (sampler against this pass) and `losses.logprob_mismatch` of
    the sampler against `old`, the trainer's log-probs under the sampling parameters."""
    if sampler_logp_BT is None:
        return {"mismatch/sampler_kl": jnp.zeros((), jnp.float32)}
    gap = losses.logprob_mismatch(
        old, sampler_logp_BT, mask, clip_low=spec.clip_low, clip_high=spec.clip_high
    )
    return {
        "mismatch/sampler_kl": losses.aggregate(sampler_logp_BT - logp, mask, "token-mean"),
        **{f"mismatch/{k}": v for k, v in gap.items()},
    }
