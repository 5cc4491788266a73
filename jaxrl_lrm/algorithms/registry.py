"""The one registry of RL algorithms: each name's published defaults, its sources, and which
`algorithm.*` config keys it accepts.

Pure Python (no JAX): `jaxrl_lrm.config` validates the `algorithm` section with it, and
`algorithms.resolve` builds an `AlgorithmSpec` from it.

A config key left at `None` means the algorithm's published default below. A key that the
algorithm ignores or contradicts is an error (`check_section`), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

BASE = types.MappingProxyType(
    dict(
        advantage="group",  # "group" | "rloo" | "reinforce_pp" | "reinforce_pp_baseline" | "gae"
        std_normalize=True,
        loss="clip",  # "clip" (PPO surrogate, `losses.policy_loss`) | "cispo" (`losses.cispo_loss`)
        ratio="token",  # "token" | "sequence" (GSPO)
        clip_low=0.2,
        clip_high=None,
        dual_clip=None,
        agg="token-mean",
        beta=0.0,
        kl_kind="k3",
        kl_in_reward=False,
        uses_value=False,
        entropy_coef=0.0,
        tis_max=None,
        decoupled=False,
        gamma=1.0,
        lam=1.0,
        value_clip=None,
        value_lr=None,
        value_path=None,
        kl_target=None,
        kl_horizon=10000.0,
        dynamic_sampling=False,
        max_gen_rounds=1,
        overlong_penalty=False,
        overlong_cache=None,
    )
)
"""Values every preset starts from (PPO's clip 0.2, no KL, no entropy bonus, ...)."""

COMMON_KEYS = frozenset(
    {"clip_low", "clip_high", "agg", "tis_max", "decoupled", "entropy_coef", "loss"}
)
"""Keys every algorithm accepts."""

OVERRIDABLE = (
    "loss",
    "beta",
    "kl_kind",
    "clip_low",
    "clip_high",
    "dual_clip",
    "agg",
    "std_normalize",
    "tis_max",
    "decoupled",
    "entropy_coef",
    "value_path",
    "value_lr",
    "value_clip",
    "gamma",
    "lam",
    "kl_target",
    "kl_horizon",
    "max_gen_rounds",
    "overlong_cache",
)
"""The `algorithm.*` config keys whose `None` means "the published default"."""

KL_IN_LOSS = frozenset({"beta", "kl_kind"})
KL_IN_REWARD = frozenset({"beta", "kl_target", "kl_horizon"})
PPO_ONLY = frozenset({"value_path", "value_lr", "value_clip", "lam", "gamma"})
DAPO_ONLY = frozenset({"max_gen_rounds", "overlong_cache"})


@dataclasses.dataclass(frozen=True)
class Preset:
    """One algorithm: the spec values that differ from `BASE`, the keys it accepts, sources.

    Attributes:
        defaults: `AlgorithmSpec` field values (published defaults) that differ from `BASE`.
        keys: the `algorithm.*` keys (of `OVERRIDABLE`) this algorithm reads.
        source: paper and reference implementations the defaults come from.
    """

    defaults: Mapping
    keys: frozenset
    source: str

    def spec_kwargs(self) -> dict:
        return {**BASE, **self.defaults}


def _preset(defaults: dict, extra_keys: frozenset, source: str) -> Preset:
    return Preset(types.MappingProxyType(defaults), COMMON_KEYS | extra_keys, source)


_GROUP = frozenset({"std_normalize", "dual_clip"})

REGISTRY: Mapping[str, Preset] = types.MappingProxyType(
    {
        "grpo": _preset(
            dict(agg="seq-mean-token-mean", beta=0.04, kl_kind="k3"),
            _GROUP | KL_IN_LOSS,
            "Shao et al. 2024, DeepSeekMath (arXiv:2402.03300), Sec. 4.1: group-normalised outcome "
            "advantages, 1/G sum_i 1/|o_i| sum_t (seq-mean-token-mean), k3 KL in the loss with "
            "beta = 0.04 ('The KL coefficient is 0.04'); clip 0.2 (PPO; verl/TRL default). TRL's "
            "GRPOConfig defaults beta to 0.0 and verl's kl_loss_coef to 0.001.",
        ),
        "dr_grpo": _preset(
            dict(std_normalize=False, agg="seq-mean-token-sum-norm"),
            _GROUP | KL_IN_LOSS,
            "Liu et al. 2025, 'Understanding R1-Zero-Like Training' (arXiv:2503.20783): no std "
            "division, sum over tokens divided by the constant B * max_len; no KL term (beta 0, "
            "TRL's default for loss_type='dr_grpo').",
        ),
        "dapo": _preset(
            dict(
                clip_low=0.2,
                clip_high=0.28,
                agg="token-mean",
                dynamic_sampling=True,
                max_gen_rounds=3,
                overlong_penalty=True,
            ),
            _GROUP | DAPO_ONLY,
            "Yu et al. 2025, DAPO (arXiv:2503.14476): clip-higher 0.2 / 0.28, token-level loss "
            "(token-mean), no KL term (so no beta / kl_kind), dynamic sampling (groups with mixed "
            "rewards only; max_gen_rounds 3 is this project's cap, verl max_num_gen_batches), soft "
            "overlong punishment (overlong_cache: None = max_new_tokens // 4; the paper uses "
            "L_cache 4096 of L_max 20480).",
        ),
        "gspo": _preset(
            dict(ratio="sequence", clip_low=3e-4, clip_high=4e-4, agg="seq-mean-token-mean"),
            _GROUP | KL_IN_LOSS,
            "Zheng et al. 2025, GSPO (arXiv:2507.18071): length-normalised sequence ratio, clip "
            "3e-4 / 4e-4, sequence-level mean (seq-mean-token-mean, the ratio being shared by a "
            "row's tokens); no KL term by default (beta 0; verl's gspo recipe has use_kl_loss off).",
        ),
        "cispo": _preset(
            dict(loss="cispo", clip_low=1.0, clip_high=0.28, agg="token-mean"),
            frozenset({"std_normalize"}) | KL_IN_LOSS,
            "MiniMax 2025, MiniMax-M1 (arXiv:2506.13585), Sec. 3.1: group-normalised advantages "
            "(as GRPO), loss normalised by the batch's total token count (token-mean), the "
            "stop-gradient IS weight clipped only from above (no lower bound: clip_low 1.0 keeps "
            "w >= 0; they tune eps_high only; 0.28 as in verl / Trinity-RFT's cispo defaults), no "
            "KL term (beta 0). No dual clip (there is no PPO min to cap).",
        ),
        "rloo": _preset(
            dict(
                advantage="rloo",
                agg="seq-mean-token-sum",
                beta=0.05,
                kl_kind="k1",
                kl_in_reward=True,
            ),
            KL_IN_REWARD | {"dual_clip"},
            "Ahmadian et al. 2024, 'Back to Basics' (arXiv:2402.14740); Kool et al. 2019: the "
            "whole completion is one action: reward r - beta * sum_t k1_t (KL in the reward, per "
            "sequence), leave-one-out baseline, REINFORCE on the sequence log-prob "
            "(seq-mean-token-sum: the gradient is A * grad sum_t logp; with one update per batch "
            "the ratio is 1 and the clip inactive). beta 0.05: TRL RLOOConfig's default.",
        ),
        "reinforce_pp": _preset(
            dict(advantage="reinforce_pp", beta=0.01, kl_kind="k1", kl_in_reward=True),
            KL_IN_REWARD | {"gamma", "dual_clip"},
            "Hu 2025, REINFORCE++ (arXiv:2501.03262): token-level k1 KL in the reward, discounted "
            "returns (gamma 1), global batch whitening instead of a critic, PPO clip 0.2, "
            "token-mean. beta 0.01 (the paper's / OpenRLHF's init_kl_coef for its RLHF runs). verl: "
            "adv_estimator=reinforce_plus_plus.",
        ),
        "reinforce_pp_baseline": _preset(
            dict(advantage="reinforce_pp_baseline", beta=0.01, kl_kind="k1", kl_in_reward=True),
            KL_IN_REWARD | {"dual_clip"},
            "Hu 2025, REINFORCE++ v2 (arXiv:2501.03262), REINFORCE++-baseline: r - beta * sum_t "
            "k1_t, minus the group mean (no std division), then whitened over the whole batch; "
            "verl: adv_estimator=reinforce_plus_plus_baseline (outcome-level, no gamma).",
        ),
        "ppo": _preset(
            dict(
                advantage="gae",
                beta=0.02,
                kl_kind="k1",
                kl_in_reward=True,
                uses_value=True,
                value_clip=0.2,
                lam=0.95,
            ),
            KL_IN_REWARD | PPO_ONLY | {"dual_clip"},
            "Ouyang et al. 2022, InstructGPT (arXiv:2203.02155): per-token k1 KL in the reward, "
            "beta 0.02; GAE (Schulman et al. 2016) with gamma 1, lambda 0.95, whitened advantages, "
            "value clip 0.2 (verl/TRL defaults); adaptive KL (Ziegler et al. 2019) when kl_target "
            "is set, in per-token-mean units as verl.",
        ),
    }
)
"""name -> `Preset`. `jaxrl_lrm.config` takes its `algorithm.name` choices from here."""

NAMES = tuple(REGISTRY)


KL_KINDS = ("k1", "k2", "k3", "low_var_kl")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

VALUE_RULES = {
    "loss": (
        lambda v: isinstance(v, str) and ":" in v,
        "'module.path:function' (a policy loss with losses.policy_loss's signature, "
        "see jaxrl_lrm.algorithms.custom)",
    ),
    "beta": (lambda v: v >= 0, ">= 0"),
    "kl_kind": (lambda v: v in KL_KINDS, f"one of {KL_KINDS}"),
    "clip_low": (lambda v: v > 0, "> 0"),
    "clip_high": (lambda v: v >= 0, ">= 0"),
    "agg": (lambda v: v in AGG_MODES, f"one of {AGG_MODES}"),
    "dual_clip": (lambda v: v > 1, "> 1"),
    "tis_max": (lambda v: v >= 1, ">= 1"),
    "decoupled": (lambda v: isinstance(v, bool), "true or false"),
    "entropy_coef": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lam": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "kl_target": (lambda v: v > 0, "> 0"),
    "kl_horizon": (lambda v: v > 0, "> 0"),
    "max_gen_rounds": (lambda v: v >= 1, ">= 1"),
    "value_clip": (lambda v: v > 0, "> 0"),
    "value_lr": (lambda v: v > 0, "> 0"),
    "overlong_cache": (lambda v: v >= 0, ">= 0"),
}
"""Allowed values of the set `algorithm.*` keys (`value_path`: any string)."""


def check_section(name: str, explicit: Mapping) -> None:
    """Raises `ValueError` naming the first `algorithm.<key>` out of range, or ignored or
    contradicted by `name`.

    Args:
        name: the algorithm.
        explicit: the `OVERRIDABLE` keys the config sets (not `None`) and their values.
    """
    if name not in REGISTRY:
        raise ValueError(f"algorithm.name={name!r}: expected one of {NAMES}")
    for key, (ok, expected) in VALUE_RULES.items():
        if key in explicit and not ok(explicit[key]):
            raise ValueError(f"algorithm.{key}={explicit[key]!r}: expected null or {expected}")
    preset = REGISTRY[name]
    for key in OVERRIDABLE:
        if key in explicit and key not in preset.keys:
            raise ValueError(
                f"algorithm.{key}={explicit[key]!r}: {name!r} does not use it "
                f"({_why(key, preset)}); leave it unset"
            )
    spec = {**preset.spec_kwargs(), **explicit}
    if "kl_kind" in explicit and spec["beta"] == 0:
        raise ValueError(
            f"algorithm.kl_kind={explicit['kl_kind']!r}: no effect with beta 0 "
            f"(no KL term for {name!r}); set algorithm.beta > 0 or leave it unset"
        )
    if "kl_target" in explicit and spec["beta"] == 0:
        raise ValueError(
            f"algorithm.kl_target={explicit['kl_target']!r}: the adaptive KL "
            "controller needs algorithm.beta > 0 (its starting value)"
        )
    if "kl_horizon" in explicit and spec["kl_target"] is None:
        raise ValueError(
            f"algorithm.kl_horizon={explicit['kl_horizon']!r}: only used by the "
            "adaptive KL controller; set algorithm.kl_target too"
        )


def _why(key: str, preset: Preset) -> str:
    d = preset.spec_kwargs()
    if key in KL_IN_LOSS | KL_IN_REWARD and d["beta"] == 0 and "beta" not in preset.keys:
        return "it has no KL term"
    if key == "kl_kind" and d["kl_in_reward"]:
        return "its KL is the k1 estimate added to the reward"
    if key in {"kl_target", "kl_horizon"}:
        return "the adaptive KL controller acts on a KL in the reward only"
    if key in PPO_ONLY:
        return "only 'ppo' has a value model and GAE" + (
            "; 'reinforce_pp' takes gamma" if key == "gamma" else ""
        )
    if key in DAPO_ONLY:
        return "only 'dapo' has dynamic sampling and the overlong penalty"
    if key == "std_normalize":
        return "its advantages have no group std"
    if key == "dual_clip":
        return "its loss has no PPO min to cap"
    return "not one of its keys"
