"""Advantage estimators: GRPO group normalisation, RLOO, GAE, REINFORCE++ (and its baseline)."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxrl_lrm.losses._masking import as_mask, masked_values, whiten


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    """Reshapes `rewards[B]` to `[B // G, G]`, validating the grouping."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {rewards.shape}")
    if not isinstance(group_size, numbers.Integral) or group_size < 2:
        raise ValueError(
            f"group_size must be an int >= 2 for a group statistic, got {group_size!r}"
        )
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide the batch size {rewards.shape[0]}"
        )
    return rewards.reshape(-1, group_size)


def group_advantages(
    rewards: jax.Array, group_size: int, *, std_normalize: bool = True, eps: float = 1e-6
) -> jax.Array:
    """GRPO advantages: each reward normalised within its group of `G` completions.

    Equation: per group, `A_i = (r_i - mean(r)) / (std(r) + eps)` with `std` the unbiased sample
    std (ddof=1); with `std_normalize=False`, `A_i = r_i - mean(r)` (Dr. GRPO). A group whose
    rewards are all equal gets `A = 0` exactly. Rows `[g*G, (g+1)*G)` form group `g`.
    Papers: GRPO, Shao et al. 2024 (DeepSeekMath); Dr. GRPO, Liu et al. 2025.
    verl: `algorithm.adv_estimator=grpo`, `norm_adv_by_std_in_grpo` (eps 1e-6);
    TRL: `GRPOConfig.scale_rewards` (`"group"`/`True` vs `"none"`/`False`) — TRL adds 1e-4 to
    the std, not 1e-6, so near-constant groups get smaller advantages there.

    Args:
        rewards: `[B]` scalar rewards, groups contiguous.
        group_size: `G`, must divide `B` and be >= 2.
        std_normalize: divide by the group std.
        eps: added to the std.

    Returns:
        `[B]` float32 advantages.
    """
    r = _grouped(rewards, group_size)
    centered = r - jnp.mean(r, axis=1, keepdims=True)
    if std_normalize:
        centered = centered / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
    return centered.reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """REINFORCE leave-one-out advantages.

    Equation: `A_i = r_i - (sum_group r - r_i) / (G - 1)`, the baseline being the mean reward of
    the other `G - 1` completions of the same prompt.
    Papers: Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free!");
    Ahmadian et al. 2024 ("Back to Basics"). verl: `algorithm.adv_estimator=rloo`;
    TRL: `RLOOTrainer` (`num_generations`).

    Args:
        rewards: `[B]` scalar rewards, groups contiguous.
        group_size: `G >= 2`, must divide `B`.

    Returns:
        `[B]` float32 advantages.
    """
    r = _grouped(rewards, group_size)
    baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1)


def _masked_reverse_scan(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> jax.Array:
    """`A_t = r_t + gamma*V_next - V_t + gamma*lam*A_next` over masked positions, 0 elsewhere."""
    live = mask != 0
    r = jnp.where(live, rewards, 0.0)
    v = jnp.where(live, values, 0.0)

    def step(carry: tuple, xs: tuple) -> tuple:
        v_next, a_next = carry
        r_t, v_t, live_t = xs
        a_t = r_t + gamma * v_next - v_t + gamma * lam * a_next
        a_t = jnp.where(live_t, a_t, 0.0)
        carry = (jnp.where(live_t, v_t, v_next), jnp.where(live_t, a_t, a_next))
        return carry, a_t

    zeros = jnp.zeros(r.shape[0], jnp.float32)
    _, adv_TxB = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, live.T), reverse=True)
    return adv_TxB.T


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over response tokens (a reverse `lax.scan`).

    Equation, backwards over `t`: `delta_t = r_t + gamma*V_next - V_t`,
    `A_t = delta_t + gamma*lam*A_next`, where `V_next`, `A_next` come from the next position with
    `mask=1` (0 after the last one), so holes in the mask are skipped; `returns = A + V`; both
    are 0 where `mask=0`. No whitening inside (call `whiten` on the advantages, as verl does).
    Paper: Schulman et al. 2016 ("High-Dimensional Continuous Control Using GAE").
    verl: `algorithm.adv_estimator=gae`, `algorithm.gamma`, `algorithm.lam`;
    TRL: `PPOConfig.gamma`, `PPOConfig.lam`.

    Args:
        rewards: `[B, T]` per-token rewards (outcome reward at the last token, KL penalty...).
        values: `[B, T]` value estimates `V_t`.
        mask: `[B, T]`.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        `(advantages, returns)`, both `[B, T]` float32.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    if rewards.ndim != 2 or values.shape != rewards.shape:
        raise ValueError(
            f"rewards and values must both be [B, T], got {rewards.shape} and {values.shape}"
        )
    m = as_mask(mask, rewards.shape)
    adv = _masked_reverse_scan(rewards, values, m, gamma, lam)
    returns = jnp.where(m != 0, adv + values, 0.0)
    return adv, returns


def reinforce_pp_returns(token_rewards: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
    """Discounted returns-to-go over response tokens, for REINFORCE++.

    Equation: `G_t = r_t + gamma * G_next`, `G_next` the return at the next position with
    `mask=1` (0 after the last one); `G_t = 0` where `mask=0`. This is `gae` with `V = 0` and
    `lam = 1`. With the usual right-padded mask it equals verl's loop, which instead resets the
    running return at every `mask=0` position (the two differ only for masks with holes).
    Paper: Hu et al. 2025 ("REINFORCE++"). verl: `compute_reinforce_plus_plus_outcome_advantage`
    (`algorithm.gamma`); TRL: no equivalent.

    Args:
        token_rewards: `[B, T]` per-token rewards, e.g. `outcome_token_rewards(...) - beta * kl`.
        mask: `[B, T]`.
        gamma: discount.

    Returns:
        `[B, T]` float32 returns.
    """
    token_rewards = jnp.asarray(token_rewards, jnp.float32)
    if token_rewards.ndim != 2:
        raise ValueError(f"token_rewards must be [B, T], got shape {token_rewards.shape}")
    m = as_mask(mask, token_rewards.shape)
    return _masked_reverse_scan(token_rewards, jnp.zeros_like(token_rewards), m, gamma, 1.0)


def reinforce_pp_advantages(
    token_rewards: jax.Array, mask: jax.Array, *, gamma: float = 1.0, eps: float = 1e-8
) -> jax.Array:
    """REINFORCE++ advantages: returns-to-go whitened over the whole batch.

    Equation: `A = whiten(reinforce_pp_returns(r, mask, gamma), mask)`, i.e.
    `(G - mean) / sqrt(var + eps)` with the mean and unbiased variance over every masked token of
    the batch (the "global batch normalisation" that replaces a critic); 0 where `mask=0`.
    Paper: Hu et al. 2025 ("REINFORCE++"). verl: `algorithm.adv_estimator=reinforce_plus_plus`;
    TRL: no equivalent.

    Args:
        token_rewards: `[B, T]` per-token rewards (KL penalty folded in by the caller).
        mask: `[B, T]`.
        gamma: discount.
        eps: added to the variance.

    Returns:
        `[B, T]` float32 advantages.
    """
    returns = reinforce_pp_returns(token_rewards, mask, gamma)
    return whiten(returns, mask, eps=eps)


def reinforce_pp_baseline_advantages(
    rewards: jax.Array, mask: jax.Array, group_size: int, *, eps: float = 1e-8
) -> jax.Array:
    """REINFORCE++-baseline advantages: group-mean baseline, then batch whitening.

    Equation: `a_i = r_i - mean_{group(i)}(r)` (no std division), broadcast to every token of row
    `i`, then `A = whiten(a, mask)` over all masked tokens of the batch (mean and unbiased
    variance, `eps` inside the square root); 0 where `mask=0`.
    Paper: Hu et al. 2025 ("REINFORCE++", baseline variant).
    verl: `algorithm.adv_estimator=reinforce_plus_plus_baseline`; TRL: no equivalent.

    Args:
        rewards: `[B]` scalar outcome rewards, groups contiguous.
        mask: `[B, T]`.
        group_size: `G >= 2`, must divide `B`.
        eps: added to the variance.

    Returns:
        `[B, T]` float32 advantages.
    """
    centered = group_advantages(rewards, group_size, std_normalize=False)
    mask = jnp.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] != centered.shape[0]:
        raise ValueError(f"mask has shape {mask.shape}, expected [{centered.shape[0]}, T]")
    per_token = jnp.broadcast_to(centered[:, None], mask.shape)
    return whiten(per_token, mask, eps=eps)


def outcome_token_rewards(rewards: jax.Array, mask: jax.Array) -> jax.Array:
    """Places each row's scalar reward on its last masked token (0 elsewhere).

    Equation: `r_tok[b, t] = rewards[b]` if `t` is the last position with `mask[b, t] = 1`, else 0.
    This is how verl and TRL's PPO turn an outcome reward into token-level rewards before adding
    `-beta * kl` (verl `algorithm.use_kl_in_reward`). An empty row gets no reward.

    Args:
        rewards: `[B]` scalar rewards.
        mask: `[B, T]`.

    Returns:
        `[B, T]` float32 token rewards.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    mask = jnp.asarray(mask)
    if mask.ndim != 2 or rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards {rewards.shape} and mask {mask.shape} must be [B] and [B, T]")
    live = mask != 0
    t_idx = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(live, t_idx, -1), axis=1)
    is_last = (t_idx[None, :] == last[:, None]) & live
    return masked_values(
        jnp.broadcast_to(rewards[:, None], mask.shape), is_last.astype(jnp.float32)
    )
