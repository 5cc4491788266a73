"""Policy-gradient surrogates (PPO/GRPO/GSPO clip, CISPO), the value loss, DPO, and
importance weights for the sampler/trainer mismatch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lrm.losses._masking import (
    Denominators,
    aggregate,
    as_mask,
    masked_mean,
    masked_values,
    safe_div,
)

LOG_RATIO_CLAMP = 20.0
"""Log-ratios are clamped to `[-20, 20]` before `exp` (as verl does), so ratios stay finite."""

RATIO_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask")


def _advantages_2d(advantages: jax.Array, shape: tuple[int, int]) -> jax.Array:
    a = jnp.asarray(advantages, jnp.float32)
    if a.shape == shape[:1]:
        return jnp.broadcast_to(a[:, None], shape)
    if a.shape != shape:
        raise ValueError(f"advantages has shape {a.shape}, expected [B] or [B, T] = {shape}")
    return a


def _inputs(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> tuple:
    logp = jnp.asarray(logp, jnp.float32)
    old_logp = jnp.asarray(old_logp, jnp.float32)
    if logp.ndim != 2 or old_logp.shape != logp.shape:
        raise ValueError(
            f"logp and old_logp must both be [B, T], got {logp.shape} and {old_logp.shape}"
        )
    m = as_mask(mask, logp.shape)
    log_ratio = jnp.where(m != 0, logp - old_logp, 0.0)
    return logp, old_logp, m, log_ratio


def _clip_bounds(clip_low: float, clip_high: float | None) -> tuple[float, float]:
    clip_high = clip_low if clip_high is None else clip_high
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0, got {clip_low} and {clip_high}")
    return 1.0 - clip_low, 1.0 + clip_high


def _ratio(logp: jax.Array, m: jax.Array, log_ratio: jax.Array, level: str) -> jax.Array:
    """Token ratio `exp(clamp(logp - old))`, or GSPO's `s_b` carrying the token's gradient."""
    if level == "token":
        return jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    seq_log_ratio = safe_div(jnp.sum(log_ratio, axis=1), jnp.sum(m, axis=1))
    safe_logp = jnp.where(m != 0, logp, 0.0)
    # value log s_b, gradient d logp; clamping the sum zeroes the gradient beyond +-20
    combined = (
        safe_logp - jax.lax.stop_gradient(safe_logp) + jax.lax.stop_gradient(seq_log_ratio)[:, None]
    )
    return jnp.exp(jnp.clip(combined, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    ratio: str = "token",
    agg: str = "token-mean",
    max_len: int | None = None,
    denom: Denominators | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped policy-gradient surrogate (PPO / GRPO / DAPO / Dr. GRPO / GSPO).

    Equation, per token with `A` broadcast over `T` when `[B]`:
      - `ratio="token"`: `r = exp(logp - old_logp)`.
      - `ratio="sequence"` (GSPO): `s_b = exp(sum_t m*(logp - old_logp) / sum_t m)` and
        `r = stop_gradient(s_b) * exp(logp - stop_gradient(logp))` (value `s_b`, gradient of
        the token log-prob scaled by `s_b`), computed as
        `exp(clip(logp - sg(logp) + sg(log s_b), -20, 20))`: the clamp acts on the combined
        log-ratio, so beyond it the gradient is exactly 0 (verl clamps the same sum, at +10,
        `compute_policy_loss_gspo`).
      - `l = max(-A*r, -A*clip(r, 1 - clip_low, 1 + clip_high))`; with `dual_clip=c > 1`, where
        `A < 0`: `l = min(l, -A*c)`. Loss `= aggregate(l, mask, agg, max_len=max_len)`.
    Log-ratios (token or sequence) are clamped to `[-20, 20]` before `exp`, as verl does, so
    log-ratios of +-50 give finite loss and gradients (zero gradient beyond the clamp).
    `clip_high=None` means `clip_high = clip_low`.
    Papers: PPO, Schulman et al. 2017; dual clip, Ye et al. 2020; clip-higher (`clip_high >
    clip_low`), DAPO, Yu et al. 2025; GSPO, Zheng et al. 2025.
    verl: `actor.clip_ratio_low` / `clip_ratio_high` / `clip_ratio_c` (dual clip),
    `actor.loss_agg_mode` (our `agg`), `policy_loss.loss_mode="gspo"` (our `ratio="sequence"`).
    TRL: `epsilon` / `epsilon_high`, `importance_sampling_level="sequence"`, `loss_type` (`"grpo"`
    = `agg="seq-mean-token-mean"`, `"bnpo"`/`"dapo"` = `"token-mean"`, `"dr_grpo"` =
    `"seq-mean-token-sum-norm"`); TRL's `delta` is a different (upper) clip than dual clip.

    Args:
        logp: `[B, T]` log-probs under the policy being trained.
        old_logp: `[B, T]` log-probs under the policy that sampled (or the previous iterate).
        advantages: `[B]` or `[B, T]`.
        mask: `[B, T]`.
        clip_low: lower clip `epsilon`.
        clip_high: upper clip `epsilon` (`None`: same as `clip_low`).
        dual_clip: `c > 1`, caps the loss of negative-advantage tokens at `-A*c`.
        ratio: `"token"` or `"sequence"`.
        agg: an `aggregate` mode.
        max_len: `L` for `agg="seq-mean-token-sum-norm"`.
        denom: whole-batch `Denominators` for exact micro-batching (see `aggregate`).

    Returns:
        `(loss, metrics)`: metrics `clipfrac` (masked mean of where the clipped term is the
        larger), `approx_kl` (masked mean of `old_logp - logp`), `ratio_mean` (masked mean of
        `r`) and, with `dual_clip`, `dual_clipfrac`.
    """
    if ratio not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio {ratio!r}; expected one of {RATIO_LEVELS}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    lo, hi = _clip_bounds(clip_low, clip_high)
    logp, old_logp, m, log_ratio = _inputs(logp, old_logp, mask)
    adv = _advantages_2d(advantages, logp.shape)
    r = _ratio(logp, m, log_ratio, ratio)
    unclipped = -adv * r
    clipped = -adv * jnp.clip(r, lo, hi)
    per_token = jnp.maximum(unclipped, clipped)
    metrics = {
        "clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), m),
        "approx_kl": masked_mean(old_logp - logp, m),
        "ratio_mean": masked_mean(r, m),
    }
    if dual_clip is not None:
        cap = -adv * dual_clip
        capped = (adv < 0) & (per_token > cap)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, cap), per_token)
        metrics["dual_clipfrac"] = masked_mean(capped.astype(jnp.float32), m)
    loss = aggregate(per_token, m, agg, max_len=max_len, denom=denom)
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def cispo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    agg: str = "token-mean",
    max_len: int | None = None,
    denom: Denominators | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CISPO: clipped, stop-gradient importance weight times the log-prob.

    Equation: `r = exp(logp - old_logp)` (log-ratio clamped to `[-20, 20]`),
    `w = stop_gradient(clip(r, 1 - clip_low, 1 + clip_high))`, `l = -w * A * logp`, then
    `aggregate(l, mask, agg)`. Unlike the PPO clip, no token loses its gradient: the clip bounds
    the weight, not the update. Both sides are clipped (`clip_high=None` means `clip_low`; pass a
    large `clip_low`, e.g. 1.0, to leave the lower side open as MiniMax-M1 does).
    Paper: MiniMax-M1, MiniMax 2025 (arXiv:2506.13585).
    verl: `policy_loss.loss_mode="cispo"` with `clip_ratio_low` / `clip_ratio_high` (two-sided,
    like ours); TRL: `loss_type="cispo"`, which clamps only from above, at the absolute value
    `epsilon_high` (e.g. 5.0), not at `1 + epsilon_high`.

    Args:
        logp: `[B, T]` current log-probs.
        old_logp: `[B, T]` sampling log-probs.
        advantages: `[B]` or `[B, T]`.
        mask: `[B, T]`.
        clip_low: the weight is clipped below at `1 - clip_low`.
        clip_high: the weight is clipped above at `1 + clip_high` (`None`: `clip_low`).
        agg: an `aggregate` mode.
        max_len: `L` for `agg="seq-mean-token-sum-norm"`.
        denom: whole-batch `Denominators` for exact micro-batching (see `aggregate`).

    Returns:
        `(loss, metrics)` with `clipfrac` (masked fraction of tokens whose weight was clipped),
        `approx_kl` and `ratio_mean`.
    """
    lo, hi = _clip_bounds(clip_low, clip_high)
    logp, old_logp, m, log_ratio = _inputs(logp, old_logp, mask)
    adv = _advantages_2d(advantages, logp.shape)
    r = jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    w = jax.lax.stop_gradient(jnp.clip(r, lo, hi))
    per_token = -w * adv * jnp.where(m != 0, logp, 0.0)
    metrics = {
        "clipfrac": masked_mean(((r < lo) | (r > hi)).astype(jnp.float32), m),
        "approx_kl": masked_mean(old_logp - logp, m),
        "ratio_mean": masked_mean(r, m),
    }
    loss = aggregate(per_token, m, agg, max_len=max_len, denom=denom)
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip: float | None = None,
    agg: str = "token-mean",
    max_len: int | None = None,
    denom: Denominators | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped value-function loss (PPO critic).

    Equation: `v_c = old + clip(v - old, -clip, clip)`; `l = 0.5 * max((v - R)**2, (v_c - R)**2)`;
    without `clip`, `l = 0.5 * (v - R)**2`; then `aggregate(l, mask, agg)`. `v_c` is computed as
    `clip(v, old - clip, old + clip)` (the same number, and exactly `v` inside the range): the
    form `old + (v - old)` differs from `v` by rounding, which `vf_clipfrac` used to count as
    clipping (about 23x over-reported on random data).
    Paper: PPO, Schulman et al. 2017 (value clipping as in OpenAI baselines).
    verl: `critic.cliprange_value`, `critic.loss_agg_mode`; TRL: `PPOConfig.cliprange_value`,
    `vf_coef`.

    Args:
        values: `[B, T]` current value predictions.
        old_values: `[B, T]` predictions at sampling time.
        returns: `[B, T]` targets `R` (e.g. from `gae`).
        mask: `[B, T]`.
        clip: value clip range, or `None` for no clipping.
        agg: an `aggregate` mode.
        max_len: `L` for `agg="seq-mean-token-sum-norm"`.
        denom: whole-batch `Denominators` for exact micro-batching (see `aggregate`).

    Returns:
        `(loss, metrics)` with `vf_clipfrac` (masked mean of where the clipped term is larger)
        and `vpred_mean`.
    """
    v = jnp.asarray(values, jnp.float32)
    old = jnp.asarray(old_values, jnp.float32)
    ret = jnp.asarray(returns, jnp.float32)
    if v.ndim != 2 or old.shape != v.shape or ret.shape != v.shape:
        raise ValueError(
            f"values, old_values, returns must be [B, T], got {v.shape}, {old.shape}, {ret.shape}"
        )
    m = as_mask(mask, v.shape)
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0 or None, got {clip}")
    unclipped = (v - ret) ** 2
    if clip is None:
        per_token = 0.5 * unclipped
        clipfrac = jnp.zeros((), jnp.float32)
    else:
        v_c = jnp.clip(v, old - clip, old + clip)
        clipped = (v_c - ret) ** 2
        per_token = 0.5 * jnp.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).astype(jnp.float32), m)
    metrics = {"vf_clipfrac": clipfrac, "vpred_mean": masked_mean(v, m)}
    loss = aggregate(per_token, m, agg, max_len=max_len, denom=denom)
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def dpo_loss(
    chosen_logp: jax.Array,
    rejected_logp: jax.Array,
    ref_chosen_logp: jax.Array,
    ref_rejected_logp: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Direct preference optimisation loss per pair (sigmoid loss, optionally label-smoothed).

    Equation: `h = (chosen - ref_chosen) - (rejected - ref_rejected)`;
    `l = -(1 - ls) * log_sigmoid(beta * h) - ls * log_sigmoid(-beta * h)`.
    Inputs are summed sequence log-probs. Papers: DPO, Rafailov et al. 2023; label smoothing
    (conservative DPO), Mitchell 2023. TRL: `DPOConfig(loss_type="sigmoid", beta=...,
    label_smoothing=...)`; verl: no built-in DPO loss.

    Args:
        chosen_logp: `[B]` policy log-prob of the chosen responses.
        rejected_logp: `[B]` policy log-prob of the rejected responses.
        ref_chosen_logp: `[B]` reference log-prob of the chosen responses.
        ref_rejected_logp: `[B]` reference log-prob of the rejected responses.
        beta: inverse temperature.
        label_smoothing: probability that a label is flipped, in `[0, 0.5]`.

    Returns:
        `[B]` float32 losses (average them yourself).
    """
    arrays = [
        jnp.asarray(a, jnp.float32)
        for a in (chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp)
    ]
    if any(a.shape != arrays[0].shape for a in arrays) or arrays[0].ndim != 1:
        raise ValueError(f"dpo_loss inputs must all be [B], got {[a.shape for a in arrays]}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    c, r, rc, rr = arrays
    h = (c - rc) - (r - rr)
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
        beta * h
    ) - label_smoothing * jax.nn.log_sigmoid(-beta * h)


def truncated_importance_weights(
    train_logp: jax.Array,
    sampler_logp: jax.Array,
    mask: jax.Array,
    *,
    level: str = "token",
    mode: str = "truncate",
    max: float = 2.0,
    min: float | None = None,
) -> jax.Array:
    """Importance weights correcting for the sampler/trainer log-prob mismatch (TIS / MIS).

    Equation: the log-ratio `d = train_logp - sampler_logp` (masked), clamped to `[-20, 20]`;
    `level="token"`: `w[b,t] = exp(d[b,t])`; `level="sequence"`: `w[b,t] = exp(sum_t m*d)` (the
    product of the token ratios, shared by every token of the row).
    `mode="truncate"` (TIS): `w = clip(w, min, max)` (no lower bound when `min=None`);
    `mode="mask"` (MIS): `w` is kept where `min <= w <= max` and set to 0 elsewhere. The result is
    a stop-gradient constant and 0 where `mask=0`. Scale the per-token loss by it — for
    `policy_loss`/`cispo_loss`, passing `advantages * w` is the same thing, since `w >= 0`.
    Papers: Yao et al. 2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training", TIS); Espeholt et al. 2018 (IMPALA, truncated IS). verl:
    `algorithm.rollout_is_level` (`token`/`sequence`), `rollout_is_mode` (`truncate`/`mask`),
    `rollout_is_threshold` (our `max`), `rollout_is_threshold_lower` (our `min`; verl defaults it
    to `1/max`, we default to no lower bound); older verl `actor.tis_imp_ratio_cap`.
    TRL: `vllm_importance_sampling_correction=True`, `vllm_importance_sampling_mode`
    (`"token_truncate"`, `"token_mask"`, `"sequence_truncate"`, `"sequence_mask"`),
    `vllm_importance_sampling_cap` (our `max`).

    Args:
        train_logp: `[B, T]` log-probs recomputed by the trainer (the `old_logp` of the loss).
        sampler_logp: `[B, T]` log-probs reported by the sampler.
        mask: `[B, T]`.
        level: `"token"` or `"sequence"`.
        mode: `"truncate"` or `"mask"`.
        max: upper threshold.
        min: lower threshold, or `None`.

    Returns:
        `[B, T]` float32 weights (stop-gradient).
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {RATIO_LEVELS}")
    if mode not in IS_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {IS_MODES}")
    if min is not None and not min <= max:
        raise ValueError(f"min must be <= max, got min={min}, max={max}")
    _, _, m, d = _inputs(train_logp, sampler_logp, mask)
    if level == "sequence":
        d = jnp.broadcast_to(jnp.sum(d, axis=1, keepdims=True), d.shape)
    w = jnp.exp(jnp.clip(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    lower = -jnp.inf if min is None else min
    if mode == "truncate":
        w = jnp.clip(w, lower, max)
    else:
        w = jnp.where((w >= lower) & (w <= max), w, 0.0)
    return jax.lax.stop_gradient(masked_values(w, (m != 0).astype(jnp.float32)))


def logprob_mismatch(
    train_logp: jax.Array,
    sampler_logp: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
) -> dict[str, jax.Array]:
    """How far the sampler's log-probs are from the trainer's recomputation of them.

    Equation, over the tokens where `mask` is set, with `d = train_logp - sampler_logp`:
    `max_abs_logp = max |d|`, `mean_abs_logp = token-mean |d|`, and `frac_ratio_outside_clip =
    token-mean 1[exp(d) outside [1 - clip_low, 1 + clip_high]]`: the share of tokens whose
    trainer/sampler ratio alone leaves the PPO clip band (a few percent with a vLLM sampler
    and an FSDP trainer, Yao et al. 2025). An empty mask gives zeros. No gradient.

    Args:
        train_logp: `[B, T]` log-probs recomputed by the trainer under the sampling policy.
        sampler_logp: `[B, T]` log-probs the sampler reported for the same tokens.
        mask: `[B, T]`.
        clip_low, clip_high: the clip band (`clip_high=None`: `clip_low`).

    Returns:
        `{"max_abs_logp", "mean_abs_logp", "frac_ratio_outside_clip"}` float32 scalars.
    """
    lo, hi = _clip_bounds(clip_low, clip_high)
    _, _, m, d = _inputs(train_logp, sampler_logp, mask)
    ratio = jnp.exp(jnp.clip(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    out = {
        "max_abs_logp": jnp.max(jnp.abs(d)),  # d is 0 off the mask
        "mean_abs_logp": masked_mean(jnp.abs(d), m),
        "frac_ratio_outside_clip": masked_mean(
            ((ratio < lo) | (ratio > hi)).astype(jnp.float32), m
        ),
    }
    return jax.tree.map(jax.lax.stop_gradient, out)
