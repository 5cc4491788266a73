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


def _weighted_advantages(spec: AlgorithmSpec, adv_BT, old, sampler_logp_BT, mask, shape):
    """`A` broadcast to `[B, T]`, times the truncated importance weights under `tis_max`."""
    adv = jnp.asarray(adv_BT, jnp.float32)
    if adv.ndim == 1:
        adv = jnp.broadcast_to(adv[:, None], shape)
    if spec.tis_max is None:
        return adv
    if sampler_logp_BT is None:
        raise ValueError("tis_max needs sampler_logp_BT (the sampler's log-probs)")
    return adv * losses.truncated_importance_weights(old, sampler_logp_BT, mask, max=spec.tis_max)


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
) -> tuple[jax.Array, dict]:
    """The loss the policy minimises, given this pass's log-probs and entropies.

    Equation, every term aggregated with `spec.agg` (and `denom`, if given):
      `w = min(exp(old - sampler), tis_max)` (stop-gradient; 1 without `tis_max`);
      `L = surrogate(logp, old, w * A)` (PPO clip, GSPO sequence ratio, or CISPO)
          `+ beta * agg(kl_penalty(logp, ref, kl_kind))` (only with a reference and not
          `kl_in_reward`) `- entropy_coef * token-mean(entropy)`.
    `old_logp_BT=None`: on-policy, one update (ratio 1 against `stop_gradient(logp)`). The
    reference is given exactly when `beta > 0`. Sources: TIS, Yao et al. 2025; `losses`.

    With `denom = losses.Denominators.of(mask)` of the whole (mini)batch, the loss (and
    `loss/*` metrics) are this micro-batch's share: sum them and their gradients over
    micro-batches (`losses.summed_value_and_grad`). The other metrics are means over this
    micro-batch's tokens (average them).

    Args:
        spec: the resolved algorithm (static under jit).
        logp_BT: `[B, T]` log-probs of the sampled tokens under the policy being trained.
        entropy_BT: `[B, T]` entropies at the same positions.
        old_logp_BT: `[B, T]` log-probs under the policy that sampled, or `None` (on-policy).
        ref_logp_BT: `[B, T]` reference log-probs, or `None` when `beta == 0`.
        sampler_logp_BT: `[B, T]` the sampler's own log-probs (TIS, mismatch metric) or `None`.
        adv_BT: `[B, T]` advantages (`Advantages.adv_BT`; `[B]` is broadcast).
        mask_BT: `[B, T]` response mask.
        max_len: `L` of `"seq-mean-token-sum-norm"` (the sampling budget), or `None` for `T`.
        beta: KL coefficient overriding `spec.beta`.
        denom: whole-batch normalisers for exact micro-batching, or `None`.

    Returns:
        `(loss, metrics)` with `loss/policy`, `loss/total`, `entropy/mean`, `clip/frac`,
        `approx_kl`, `mismatch/sampler_kl` and, with a reference, `kl/mean`.
    """
    beta = spec.beta if beta is None else beta
    mask = mask_BT
    old = jax.lax.stop_gradient(logp_BT) if old_logp_BT is None else old_logp_BT
    adv = _weighted_advantages(spec, adv_BT, old, sampler_logp_BT, mask, logp_BT.shape)
    pg, pg_metrics = _surrogate(spec, logp_BT, old, adv, mask, max_len, denom)
    loss = pg
    metrics = {}
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
    mismatch = (
        jnp.zeros((), jnp.float32)
        if sampler_logp_BT is None
        else losses.aggregate(sampler_logp_BT - logp_BT, mask, "token-mean")
    )
    metrics |= {
        "loss/policy": pg,
        "loss/total": loss,
        "entropy/mean": ent_mean,
        "mismatch/sampler_kl": mismatch,
    }
    return loss, metrics | _surrogate_metrics(spec, pg_metrics)


def _surrogate_metrics(spec: AlgorithmSpec, m: dict) -> dict:
    """`clip/frac` and `approx_kl`; a custom loss's other metrics as `custom/<key>`."""
    if not custom.is_reference(spec.loss):
        return {"clip/frac": m["clipfrac"], "approx_kl": m["approx_kl"]}
    names = {"clipfrac": "clip/frac", "approx_kl": "approx_kl"}
    return {names.get(k, f"custom/{k}"): jnp.asarray(v, jnp.float32) for k, v in m.items()}
