"""`algorithms.advantages`: rewards (+ KL, values, dense rewards) -> `Advantages` for a spec."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import losses
from jaxrl_lrm.algorithms.spec import AlgorithmSpec

OUTCOME_ESTIMATORS = ("group", "rloo", "reinforce_pp_baseline")
TOKEN_ESTIMATORS = ("reinforce_pp", "gae")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Advantages:
    """What `advantages` returns (a pytree; `returns_BT` is `None` except for GAE).

    Attributes:
        adv_BT: `[B, T]` float32 advantages, always 2-D (outcome estimators broadcast their `[B]`
            value over the row), exactly 0 where `mask_BT` is 0.
        returns_BT: `[B, T]` value-model targets `A + V` (GAE only), else `None`.
    """

    adv_BT: jax.Array
    returns_BT: jax.Array | None = None


def _outcome_rewards(spec, rewards_B, mask_BT, kl_BT, beta, token_rewards_BT):
    """`r = rewards + sum_t m * dense_t - [kl_in_reward] beta * sum_t m * k1_t` per row."""
    r = jnp.asarray(rewards_B, jnp.float32)
    if token_rewards_BT is not None:
        r = r + jnp.sum(jnp.where(mask_BT != 0, token_rewards_BT, 0.0), axis=-1)
    if spec.kl_in_reward and kl_BT is not None:
        r = r - beta * jnp.sum(jnp.where(mask_BT != 0, kl_BT, 0.0), axis=-1)
    return r


def _token_rewards(spec, rewards_B, mask_BT, kl_BT, beta, token_rewards_BT):
    """`r_t = [t last] rewards + dense_t - [kl_in_reward] beta * k1_t`, masked."""
    r = losses.outcome_token_rewards(rewards_B, mask_BT)
    if token_rewards_BT is not None:
        r = r + jnp.where(mask_BT != 0, token_rewards_BT * mask_BT, 0.0)
    if spec.kl_in_reward and kl_BT is not None:
        r = r - beta * jnp.where(mask_BT != 0, kl_BT * mask_BT, 0.0)
    return r


def advantages(
    spec: AlgorithmSpec,
    rewards_B: jax.Array,
    mask_BT: jax.Array,
    *,
    kl_BT: jax.Array | None = None,
    values_BT: jax.Array | None = None,
    beta: jax.Array | float | None = None,
    token_rewards_BT: jax.Array | None = None,
) -> Advantages:
    """Advantages of one batch under `spec` (jit-able with `spec` static).

    Equations, `m` the mask, `k_t` = `kl_BT` (policy minus reference log-prob of the sampled
    token, the k1 estimate; used only when `spec.kl_in_reward`), `d_t` = `token_rewards_BT`
    (dense rewards, already weighted), `beta` = the argument or `spec.beta`:
      - outcome estimators first form `r = rewards + sum_t m d_t - beta sum_t m k_t`, then
        `"group"`: `(r - mean_g) / (std_g + 1e-6)` (or `r - mean_g`, `std_normalize=False`);
        `"rloo"`: `r_i - (sum_g r - r_i) / (G - 1)`; `"reinforce_pp_baseline"`:
        `whiten(r - mean_g)` over every masked token of the batch. Broadcast over the row.
      - token estimators form `r_t = [t = last] rewards + d_t - beta k_t`, then
        `"reinforce_pp"`: `whiten(G_t)`, `G_t = r_t + gamma G_{t+1}`; `"gae"`: `whiten(A_t)`
        of `losses.gae(r, values, gamma, lam)`, with `returns = A + V` (not whitened).
    Sources: see `REGISTRY[spec.name].source`; verl `compute_*_outcome_advantage`,
    `compute_gae_advantage_return`.

    Args:
        spec: the resolved algorithm.
        rewards_B: `[B]` scalar (outcome) rewards, groups contiguous.
        mask_BT: `[B, T]` response mask.
        kl_BT: `[B, T]` k1 log-ratio to the reference (needed for `kl_in_reward` with beta > 0).
        values_BT: `[B, T]` value estimates (GAE).
        beta: KL coefficient overriding `spec.beta` (the adaptive controller's current value).
        token_rewards_BT: `[B, T]` dense rewards, or `None`.

    Returns:
        `Advantages` with `adv_BT [B, T]` (0 where the mask is 0) and `returns_BT` (GAE).
    """
    beta = spec.beta if beta is None else beta
    mask = jnp.asarray(mask_BT).astype(jnp.float32)
    if spec.advantage in OUTCOME_ESTIMATORS:
        r = _outcome_rewards(spec, rewards_B, mask, kl_BT, beta, token_rewards_BT)
        if spec.advantage == "reinforce_pp_baseline":
            return Advantages(losses.reinforce_pp_baseline_advantages(r, mask, spec.group_size))
        if spec.advantage == "group":
            a = losses.group_advantages(r, spec.group_size, std_normalize=spec.std_normalize)
        else:
            a = losses.rloo_advantages(r, spec.group_size)
        return Advantages(jnp.where(mask != 0, a[:, None] * mask, 0.0))
    if spec.advantage not in TOKEN_ESTIMATORS:
        raise ValueError(
            f"advantage={spec.advantage!r}: expected one of {OUTCOME_ESTIMATORS + TOKEN_ESTIMATORS}"
        )
    r = _token_rewards(spec, rewards_B, mask, kl_BT, beta, token_rewards_BT)
    if spec.advantage == "reinforce_pp":
        return Advantages(losses.reinforce_pp_advantages(r, mask, gamma=spec.gamma))
    if values_BT is None:
        raise ValueError("GAE advantages need values_BT (a value model)")
    adv, returns = losses.gae(r, values_BT, mask, gamma=spec.gamma, lam=spec.lam)
    return Advantages(losses.whiten(adv, mask), returns)


def controller_kl(kl_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
    """The KL the adaptive controller compares with `spec.kl_target`: a per-token mean, as verl.

    Equation: `mean over rows with tokens of (sum_t m k_t / sum_t m)` (verl `apply_kl_penalty`:
    `masked_mean(kld, mask, axis=-1).mean()`), `k_t` the k1 estimate. Not the per-sequence sum
    (`kl/seq_sum`), which is about `T` times larger. Jit-able; 0 for an all-empty batch.
    """
    m = jnp.asarray(mask_BT).astype(jnp.float32)
    per_row = losses.masked_mean(kl_BT, m, axis=1)
    has = (jnp.sum(m, axis=1) > 0).astype(jnp.float32)
    return jnp.where(jnp.sum(has) > 0, jnp.sum(per_row * has) / jnp.maximum(jnp.sum(has), 1.0), 0.0)


def zero_variance_group_frac(rewards_B, group_size: int) -> float:
    """Fraction of groups whose rewards all agree (they carry no learning signal). Host-side."""
    g = np.reshape(np.asarray(rewards_B), (-1, group_size))
    return float(np.mean(np.all(g == g[:, :1], axis=1)))
