"""`AlgorithmSpec`: the resolved, hashable choice of loss pieces one run uses, and `resolve`."""

from __future__ import annotations

import dataclasses

from jaxrl_lrm.algorithms import custom
from jaxrl_lrm.algorithms.registry import OVERRIDABLE, REGISTRY, check_section


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmSpec:
    """Everything the RL core needs to know about the algorithm; hashable (a jit static arg).

    Advantages (`algorithms.advantages`):
        advantage: `"group"` (GRPO: `(r - mean_g) / (std_g + eps)`), `"rloo"`
            (`r_i - mean of the other G - 1`), `"reinforce_pp"` (whitened returns-to-go of token
            rewards), `"reinforce_pp_baseline"` (`r - mean_g`, whitened over the batch),
            `"gae"` (whitened GAE on a value model).
        std_normalize: divide group advantages by the group std (`False`: Dr. GRPO).
        group_size: `G`, rows `[g*G, (g+1)*G)` share a prompt.
        gamma: discount of `reinforce_pp` returns and of GAE.
        lam: GAE lambda.
        kl_in_reward: `r_t -= beta * k1_t` before the advantages (token-level estimators) or
            `r -= beta * sum_t k1_t` (outcome estimators), instead of a KL term in the loss.
        uses_value: a value model gives `values_BT` (PPO); `advantages` then returns
            `returns_BT` for its loss.
    Loss (`algorithms.objective`):
        loss: `"clip"` (`losses.policy_loss`), `"cispo"` (`losses.cispo_loss`) or a user's
            `"module:function"` with their signature (`algorithms.custom`).
        ratio: `"token"` or `"sequence"` (GSPO).
        clip_low, clip_high, dual_clip: clip ranges (`clip_high=None`: `clip_low`).
        agg: the `losses.aggregate` mode of every loss term.
        beta: KL coefficient (in the loss unless `kl_in_reward`); 0 means no reference model.
        kl_kind: `losses.kl_penalty` kind of the KL in the loss (`"low_var_kl"`: verl's k3
            clamped at 10).
        entropy_coef: the loss gets `- entropy_coef * token-mean entropy`.
        tis_max: truncated importance weights `min(exp(old - sampler), tis_max)` on the
            advantages (sampler/trainer mismatch), `None` for none.
        decoupled: the decoupled PPO objective: the ratio clips against the proximal policy
            (`old`, recomputed under the current parameters before the step's updates) and
            the advantages are weighted by `exp(old - behaviour)` (capped at `tis_max` if set);
            required by asynchronous rollouts (`train.max_staleness >= 1`).
    Read by the core, outside the loss:
        value_clip, value_lr, value_path: PPO's value model (`value_lr=None`: `train.lr`).
        kl_target, kl_horizon: adaptive KL controller on `beta` (per-token-mean KL units; see
            `losses.AdaptiveKLController`), `kl_target=None` for a fixed `beta`.
        dynamic_sampling, max_gen_rounds: DAPO's refill with mixed-reward groups and its cap.
        overlong_penalty, overlong_cache: DAPO's soft overlong punishment (`None`:
            `sampling.max_new_tokens // 4`; 0: off).
    """

    name: str
    group_size: int = 8
    advantage: str = "group"
    std_normalize: bool = True
    loss: str = "clip"
    ratio: str = "token"
    clip_low: float = 0.2
    clip_high: float | None = None
    dual_clip: float | None = None
    agg: str = "token-mean"
    beta: float = 0.0
    kl_kind: str = "k3"
    kl_in_reward: bool = False
    uses_value: bool = False
    entropy_coef: float = 0.0
    tis_max: float | None = None
    decoupled: bool = False
    gamma: float = 1.0
    lam: float = 1.0
    value_clip: float | None = None
    value_lr: float | None = None
    value_path: str | None = None
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    dynamic_sampling: bool = False
    max_gen_rounds: int = 1
    overlong_penalty: bool = False
    overlong_cache: int | None = None


def explicit_keys(section) -> dict:
    """The `OVERRIDABLE` keys `section` sets (not `None`), with their values."""
    return {k: getattr(section, k) for k in OVERRIDABLE if getattr(section, k, None) is not None}


def resolve(section) -> AlgorithmSpec:
    """The spec for a config `algorithm` section (`config.AlgorithmSection` or any object with
    its attributes): the algorithm's published defaults (`REGISTRY`), then every key the section
    sets explicitly. A set key that the algorithm ignores or contradicts raises `ValueError`
    naming it (`config` raises the same as `ConfigError` when the section is built).

    `kl_kind="low_var_kl"` stays as named (`losses.kl_penalty` clamps it at 10). A custom
    `loss` (`module:function`) is imported and its signature checked here (`ValueError` on a bad
    reference, a wrong signature, or a set key it would ignore).
    """
    explicit = explicit_keys(section)
    check_section(section.name, explicit)
    kw = REGISTRY[section.name].spec_kwargs() | explicit
    if custom.is_reference(kw["loss"]):
        custom.check(kw["loss"], kw, explicit)
    return AlgorithmSpec(name=section.name, group_size=section.group_size, **kw)
