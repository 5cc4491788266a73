"""Masked reductions shared by every loss: `masked_mean`, `masked_var`, `whiten`, `aggregate`,
and the whole-batch normalisers (`Denominators`) that make micro-batched losses exact.

Masked positions never leak into a result: values are selected with `jnp.where` (not multiplied
by the mask), so a NaN or inf sitting under padding cannot turn a sum into NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def as_mask(mask: jax.Array, like_shape: tuple[int, ...], name: str = "mask") -> jax.Array:
    """Returns `mask` as float32 after checking its shape against `like_shape`."""
    mask = jnp.asarray(mask)
    if mask.shape != tuple(like_shape):
        raise ValueError(f"{name} has shape {mask.shape}, expected {tuple(like_shape)}")
    return mask.astype(jnp.float32)


def masked_values(x: jax.Array, mask: jax.Array) -> jax.Array:
    """`x * mask` where `mask != 0`, exactly 0 elsewhere (even if `x` is NaN/inf there)."""
    return jnp.where(mask != 0, x * mask, 0.0)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """`num / den` where `den > 0`, else 0; gradient-safe (no NaN from the unused branch)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_mean(
    x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None
) -> jax.Array:
    """Mean of `x` over the entries where `mask` is set.

    Equation: `sum(x * m) / sum(m)`; an all-zero mask (per reduced slice) gives 0, not NaN.
    verl: `verl.utils.torch_functional.masked_mean`; TRL: `trl.trainer.utils.masked_mean`.

    Args:
        x: values, any shape.
        mask: same shape as `x`, bool or float (float masks act as weights).
        axis: axes to reduce; `None` reduces everything.

    Returns:
        float32 mean, reduced over `axis`.
    """
    x = jnp.asarray(x, jnp.float32)
    m = as_mask(mask, x.shape)
    return safe_div(jnp.sum(masked_values(x, m), axis=axis), jnp.sum(m, axis=axis))


def masked_var(
    x: jax.Array,
    mask: jax.Array,
    axis: int | tuple[int, ...] | None = None,
    *,
    unbiased: bool = True,
) -> jax.Array:
    """Variance of `x` over the masked entries, unbiased (ddof=1) by default.

    Equation: `mu = masked_mean(x)`; `var = sum(m * (x - mu)**2) / (sum(m) - 1)` (or `/ sum(m)`
    with `unbiased=False`). Returns 0 when fewer than two entries count (verl raises on the
    host in that case; a jitted function cannot, so we return 0).
    verl: `verl_F.masked_var(unbiased=True)`; TRL: `trl.trainer.utils.masked_var`.

    Args:
        x: values, any shape.
        mask: same shape as `x`.
        axis: axes to reduce; `None` reduces everything.
        unbiased: Bessel's correction (divide by `n - 1`).

    Returns:
        float32 variance reduced over `axis`.
    """
    x = jnp.asarray(x, jnp.float32)
    m = as_mask(mask, x.shape)
    mu = masked_mean(x, m, axis=axis)
    mu_b = mu if axis is None else jnp.expand_dims(mu, axis)
    sq = masked_values((x - mu_b) ** 2, m)
    n = jnp.sum(m, axis=axis)
    den = n - 1.0 if unbiased else n
    return jnp.where(n > 1.0, safe_div(jnp.sum(sq, axis=axis), den), 0.0)


def whiten(
    x: jax.Array, mask: jax.Array, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    """Normalises `x` with the mean and unbiased variance of its masked entries.

    Equation: `(x - mean) / sqrt(var + eps)`, statistics over entries with `mask=1`, `var`
    unbiased; with `shift_mean=False` the mean is added back: `(x - mean) / sqrt(var + eps) + mean`.
    Output is 0 where `mask=0`.
    verl: `verl_F.masked_whiten` (same eps 1e-8, unbiased var, used for GAE and REINFORCE++
    advantages); TRL: `trl.trainer.utils.masked_whiten` (PPOTrainer `whiten_rewards`).

    Args:
        x: values, any shape (`[B, T]` or `[B]`).
        mask: same shape as `x`.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance.

    Returns:
        float32 array shaped like `x`.
    """
    x = jnp.asarray(x, jnp.float32)
    m = as_mask(mask, x.shape)
    mu = masked_mean(x, m)
    out = (x - mu) * jax.lax.rsqrt(masked_var(x, m) + eps)
    if not shift_mean:
        out = out + mu
    return masked_values(out, (m != 0).astype(jnp.float32))


class Denominators(NamedTuple):
    """Normalisers of `aggregate`, computed once on a whole (mini)batch before it is split.

    A NamedTuple, hence a pytree: it can be passed through `jit` and `lax.scan` unchanged (do not
    split it with the batch). With `denom = Denominators.of(mask_BT)` for the whole batch and any
    split of the rows into micro-batches `mb`,
    `sum_mb aggregate(x[mb], mask[mb], mode, denom=denom) == aggregate(x, mask, mode)` for every
    mode, so summing (not averaging) micro-batch losses and gradients is exact. Without it, a
    token-mean over micro-batches of unequal token counts becomes a mean of per-micro-batch means
    (TRL normalises by the tokens of the whole global batch for the same reason,
    `loss_type="dapo"`).

    Attributes:
        tokens: `sum(mask)` over the whole batch.
        rows_with_tokens: number of rows with at least one token.
        rows: number of rows `B` (empty ones included; `seq-mean-token-sum-norm` divides by it).
    """

    tokens: jax.Array
    rows_with_tokens: jax.Array
    rows: jax.Array

    @classmethod
    def of(cls, mask_BT: jax.Array) -> Denominators:
        """The normalisers of the whole batch `mask_BT` (`[B, T]`, bool or float)."""
        m = jnp.asarray(mask_BT).astype(jnp.float32)
        if m.ndim != 2:
            raise ValueError(f"mask must be [B, T], got shape {m.shape}")
        row_tokens = jnp.sum(m, axis=1)
        return cls(
            tokens=jnp.sum(m),
            rows_with_tokens=jnp.sum((row_tokens > 0).astype(jnp.float32)),
            rows=jnp.asarray(m.shape[0], jnp.float32),
        )


def aggregate(
    x: jax.Array,
    mask: jax.Array,
    mode: str,
    *,
    max_len: int | None = None,
    denom: Denominators | None = None,
) -> jax.Array:
    """Reduces a per-token quantity `x[B, T]` to a scalar loss.

    Modes (verl `actor.loss_agg_mode` names):
      - `"token-mean"`: `sum(x*m) / sum(m)`. TRL `loss_type="bnpo"` (per micro-batch) and
        `"dapo"` (TRL normalises by the tokens of the whole global batch instead).
      - `"seq-mean-token-sum"`: mean over rows with at least one token of `sum_t x*m`.
      - `"seq-mean-token-mean"`: mean over rows with at least one token of
        `sum_t x*m / sum_t m`. TRL `loss_type="grpo"` (original GRPO, Shao et al. 2024).
      - `"seq-mean-token-sum-norm"`: `sum(x*m) / (B * L)` with `L = max_len` or `T`
        (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training"). TRL
        `loss_type="dr_grpo"` divides by `B * max_completion_length` as we do; verl's mode of
        the same name divides by `L` only (no division by the batch size, so its loss is `B`
        times ours).
    An all-zero mask gives 0, never NaN.

    With `denom` (the `Denominators` of the whole batch this slice belongs to) the same sums are
    divided by the whole batch's counts instead of this slice's: `sum(x*m) / denom.tokens`,
    `sum_rows(...) / denom.rows_with_tokens`, `sum(x*m) / (denom.rows * L)`. The result is this
    slice's share of the whole-batch loss; the shares of a partition of the rows add up to it.

    Args:
        x: `[B, T]` per-token values.
        mask: `[B, T]`, bool or float.
        mode: one of the four names above.
        max_len: `L` for `"seq-mean-token-sum-norm"`; defaults to `T`.
        denom: whole-batch normalisers, or `None` to normalise by this batch.

    Returns:
        float32 scalar.

    Raises:
        ValueError: unknown `mode`, shape mismatch, or non-positive `max_len`.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"aggregate expects x of shape [B, T], got {x.shape}")
    m = as_mask(mask, x.shape)
    xm = masked_values(x, m)
    if denom is None:
        denom = Denominators.of(m)
    if mode == "token-mean":
        return safe_div(jnp.sum(xm), denom.tokens)
    if mode == "seq-mean-token-sum-norm":
        length = x.shape[1] if max_len is None else max_len
        if length <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        return safe_div(jnp.sum(xm), denom.rows * length)
    row_tokens = jnp.sum(m, axis=1)
    row_sum = jnp.sum(xm, axis=1)
    per_row = row_sum if mode == "seq-mean-token-sum" else safe_div(row_sum, row_tokens)
    # rows without tokens contribute 0 either way (their sum is 0)
    return safe_div(jnp.sum(per_row), denom.rows_with_tokens)
