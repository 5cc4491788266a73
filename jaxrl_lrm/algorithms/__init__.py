"""The RL algorithms as declarative choices of `losses` pieces.

An `AlgorithmSpec` says how advantages are made from rewards and which loss terms apply; the
trainer loop is the same for all of them. `resolve(section)` turns the config's `algorithm`
section (name + overrides) into a spec, filling in each algorithm's published defaults.

| name | advantages | policy ratio / clip | aggregation | KL |
|---|---|---|---|---|
| grpo (DeepSeekMath) | (r - mean_g) / (std_g + eps) | token, 0.2 | seq-mean-token-mean | k3 in loss |
| dr_grpo (Liu et al. 2025) | r - mean_g | token, 0.2 | seq-mean-token-sum-norm | k3 in loss |
| dapo (Yu et al. 2025) | (r - mean_g) / (std_g + eps) | token, 0.2 / 0.28 | token-mean | none |
| gspo (Zheng et al. 2025) | (r - mean_g) / (std_g + eps) | sequence, 3e-4 / 4e-4 | seq-mean-token-mean | k3 in loss |
| rloo (Ahmadian et al. 2024) | r_i - mean of the others | token, 0.2 | token-mean | k3 in loss |
| reinforce_pp (Hu 2025) | batch-whitened returns, KL in the reward | token, 0.2 | token-mean | k1 in reward |
| ppo (Ouyang et al. 2022) | GAE on a value model | token, 0.2 | token-mean | k1 in reward |
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmSpec:
    name: str
    advantage: str  # "group" | "rloo" | "reinforce_pp" | "gae"
    std_normalize: bool = True
    ratio: str = "token"
    clip_low: float = 0.2
    clip_high: float | None = None
    dual_clip: float | None = None
    agg: str = "token-mean"
    beta: float = 0.0
    kl_kind: str = "k3"
    kl_in_reward: bool = False  # REINFORCE++ / PPO: -beta*k1 per token added to the reward
    uses_value: bool = False
    entropy_coef: float = 0.0
    tis_max: float | None = None
    group_size: int = 8
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float | None = 0.2
    dynamic_sampling: bool = False  # DAPO: keep only groups with mixed rewards
    overlong_penalty: bool = False  # DAPO: soft overlong punishment added to the reward


_DEFAULTS = {
    "grpo": dict(advantage="group", agg="seq-mean-token-mean"),
    "dr_grpo": dict(advantage="group", std_normalize=False, agg="seq-mean-token-sum-norm"),
    "dapo": dict(advantage="group", clip_low=0.2, clip_high=0.28, agg="token-mean",
                 dynamic_sampling=True, overlong_penalty=True),
    "gspo": dict(advantage="group", ratio="sequence", clip_low=3e-4, clip_high=4e-4,
                 agg="seq-mean-token-mean"),
    "rloo": dict(advantage="rloo", agg="token-mean"),
    "reinforce_pp": dict(advantage="reinforce_pp", agg="token-mean", kl_in_reward=True,
                         kl_kind="k1"),
    "ppo": dict(advantage="gae", agg="token-mean", kl_in_reward=True, kl_kind="k1",
                uses_value=True),
}


def resolve(section) -> AlgorithmSpec:
    """The spec for a config `algorithm` section: the algorithm's defaults, then every field the
    section sets explicitly (clip ranges, aggregation, std scaling, KL coefficient)."""
    if section.name not in _DEFAULTS:
        raise ValueError(f"algorithm.name={section.name!r}: expected one of {sorted(_DEFAULTS)}")
    kw = dict(_DEFAULTS[section.name])
    if section.agg is not None:
        kw["agg"] = section.agg
    if section.std_normalize is not None:
        kw["std_normalize"] = section.std_normalize
    # clip_low keeps the algorithm's default unless the section moved it from 0.2
    if section.clip_low != 0.2 or "clip_low" not in kw:
        kw["clip_low"] = section.clip_low
    if section.clip_high is not None:
        kw["clip_high"] = section.clip_high
    if section.name != "dapo":  # DAPO drops the KL term
        kw["beta"] = section.beta
    if not kw.get("kl_in_reward"):
        kw["kl_kind"] = section.kl_kind
    return AlgorithmSpec(name=section.name, dual_clip=section.dual_clip,
                         entropy_coef=section.entropy_coef, tis_max=section.tis_max,
                         group_size=section.group_size, gamma=section.gamma, lam=section.lam,
                         value_clip=section.value_clip, **kw)


def advantages(spec: AlgorithmSpec, rewards_B: jax.Array, mask_BT: jax.Array,
               kl_BT: jax.Array | None = None, values_BT: jax.Array | None = None,
               beta: jax.Array | float | None = None,
               token_rewards_BT: jax.Array | None = None):
    """Advantages for one batch: `[B]` for outcome-level estimators, `[B, T]` for token-level.

    `kl_BT` (policy minus reference log-prob per token) is needed when `spec.kl_in_reward`;
    `values_BT` when the estimator is GAE; `beta` overrides `spec.beta` (the adaptive KL
    controller's current coefficient). GAE returns `(advantages, returns)`.

    `token_rewards_BT` are dense (process) rewards from token-level reward functions, already
    weighted. Token-level estimators (`reinforce_pp`, `gae`) use
    `r_t = outcome_token_rewards(rewards_B)_t + token_rewards_BT[t] - beta * kl_BT[t]`
    (all masked); outcome estimators (`group`, `rloo`) sum them per row first,
    `r = rewards_B + sum_t mask_t * token_rewards_BT[t]`, and take the group baseline of that.
    `None` (the default) leaves every estimator exactly as without dense rewards.
    """
    beta = spec.beta if beta is None else beta
    if token_rewards_BT is not None and spec.advantage in ("group", "rloo"):
        rewards_B = rewards_B + jnp.sum(token_rewards_BT * mask_BT, axis=-1)
    if spec.advantage == "group":
        return losses.group_advantages(rewards_B, spec.group_size,
                                       std_normalize=spec.std_normalize)
    if spec.advantage == "rloo":
        return losses.rloo_advantages(rewards_B, spec.group_size)
    token_rewards = losses.outcome_token_rewards(rewards_B, mask_BT)
    if token_rewards_BT is not None:
        token_rewards = token_rewards + token_rewards_BT * mask_BT
    if spec.kl_in_reward and kl_BT is not None:
        token_rewards = token_rewards - beta * kl_BT * mask_BT
    if spec.advantage == "reinforce_pp":
        returns = losses.reinforce_pp_returns(token_rewards, mask_BT, 1.0)
        return losses.whiten(returns, mask_BT)
    if spec.advantage == "gae":
        if values_BT is None:
            raise ValueError("GAE advantages need values_BT (a value model)")
        adv, returns = losses.gae(token_rewards, values_BT, mask_BT, gamma=spec.gamma,
                                  lam=spec.lam)
        return losses.whiten(adv, mask_BT), returns
    raise ValueError(f"advantage={spec.advantage!r}: expected group, rloo, reinforce_pp or gae")


def zero_variance_group_frac(rewards_B, group_size: int) -> float:
    """Fraction of groups whose rewards all agree (they carry no learning signal). Host-side."""
    g = np.reshape(np.asarray(rewards_B), (-1, group_size))
    return float(np.mean(np.all(g == g[:, :1], axis=1)))
