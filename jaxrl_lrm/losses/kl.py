"""KL estimators and the adaptive KL coefficient controller."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3")
KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}
"""verl's names for the same estimators (`algorithm.kl_penalty`, `actor.kl_loss_type`)."""
LOW_VAR_KL_CLAMP = 10.0
"""verl's `low_var_kl` is k3 clamped to `[-10, 10]` (`kl_penalty_forward`); so is ours."""


def kl_penalty(
    logp: jax.Array, ref_logp: jax.Array, kind: str, *, clamp: float | None = None
) -> jax.Array:
    """Per-token estimate of `KL(pi || pi_ref)` from sampled-token log-probs.

    Equation, with `d = logp - ref_logp`:
      - `k1 = d`
      - `k2 = 0.5 * d**2`
      - `k3 = exp(-d) + d - 1 = exp(ref_logp - logp) - (ref_logp - logp) - 1` (unbiased, >= 0)
    `clamp=c` (off by default) clips the result to `[-c, c]` and, as verl does, first clamps
    `ref_logp - logp` to `[-20, 20]` before the `exp` of `k3`. `kind="low_var_kl"` is verl's
    estimator of that name: `k3` with `clamp=10` (unless `clamp` says otherwise); `"k3"` itself
    is unclamped.
    Paper: Schulman 2020, "Approximating KL Divergence" (k1/k2/k3); k3 is GRPO's KL term
    (Shao et al. 2024). verl: `algorithm.kl_penalty` / `actor.kl_loss_type` = `"kl"` (k1),
    `"mse"` (k2), `"low_var_kl"` (k3) — accepted here as aliases; TRL: GRPO always uses k3
    (weight `beta`), PPO uses k1 (`kl_estimator="k1"`, or `"k3"`).

    Args:
        logp: `[B, T]` policy log-probs of the sampled tokens.
        ref_logp: `[B, T]` reference-policy log-probs of the same tokens.
        kind: `"k1"`, `"k2"`, `"k3"` (or a verl alias).
        clamp: optional symmetric bound on the result.

    Returns:
        `[B, T]` float32 KL estimates (not masked; aggregate with a mask).
    """
    name = KL_ALIASES.get(kind, kind)
    if name not in KL_KINDS:
        raise ValueError(
            f"unknown KL kind {kind!r}; expected one of {KL_KINDS} or {tuple(KL_ALIASES)}"
        )
    if kind == "low_var_kl" and clamp is None:
        clamp = LOW_VAR_KL_CLAMP
    if clamp is not None and not clamp > 0:
        raise ValueError(f"clamp must be > 0 or None, got {clamp}")
    logp = jnp.asarray(logp, jnp.float32)
    ref_logp = jnp.asarray(ref_logp, jnp.float32)
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {logp.shape} and ref_logp {ref_logp.shape} must match")
    d = logp - ref_logp
    if name == "k1":
        kl = d
    elif name == "k2":
        kl = 0.5 * d**2
    else:
        neg = -d if clamp is None else jnp.clip(-d, -20.0, 20.0)
        kl = jnp.exp(neg) - neg - 1.0
    return kl if clamp is None else jnp.clip(kl, -clamp, clamp)


class AdaptiveKLState(NamedTuple):
    """The controller's state: the current KL coefficient `beta` (a scalar pytree)."""

    kl_coef: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveKLController:
    """Adaptive KL coefficient, as pure `init` / `update` functions (optax-style).

    Equation (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"):
    `e = clip(KL / target - 1, -0.2, 0.2)`; `beta <- beta * (1 + e * n_steps / horizon)`.
    Units: `KL` and `target` must be in the same units. `algorithm.kl_target` is a per-token
    mean, as in verl (`apply_kl_penalty`: the mean over sequences of each sequence's masked
    token-mean of the k1 estimate; `algorithms.controller_kl` computes it); Ziegler et al.
    state their target (6 nats) per sequence, which is `T` times larger.
    verl: `algorithm.kl_ctrl.type="adaptive"`, `kl_coef`, `target_kl`, `horizon`;
    TRL (legacy PPOTrainer): `adap_kl_ctrl=True`, `init_kl_coef`, `target`, `horizon`.

    Example:
        ctrl = AdaptiveKLController(init_kl_coef=0.1, target=6.0)
        state = ctrl.init()
        state = ctrl.update(state, current_kl=8.0, n_steps=256)  # jit-able

    Attributes:
        init_kl_coef: starting `beta` (> 0).
        target: target KL, in the units of the `current_kl` passed to `update` (> 0).
        horizon: steps over which the proportional controller acts (> 0); `None` means 10000,
            the value of Ziegler et al. and verl's default.
    """

    init_kl_coef: float
    target: float
    horizon: float | None = 10000.0

    def __post_init__(self) -> None:
        if self.horizon is None:  # `algorithm.kl_horizon: null` = the published default
            object.__setattr__(self, "horizon", 10000.0)
        for name in ("init_kl_coef", "target", "horizon"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"AdaptiveKLController.{name} must be > 0, got {value}")

    def init(self) -> AdaptiveKLState:
        """Returns the initial state."""
        return AdaptiveKLState(kl_coef=jnp.asarray(self.init_kl_coef, jnp.float32))

    def update(
        self, state: AdaptiveKLState, current_kl: jax.Array, n_steps: int | jax.Array
    ) -> AdaptiveKLState:
        """Returns the state after observing `current_kl` over `n_steps` samples/steps."""
        error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / self.target - 1.0, -0.2, 0.2)
        mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / self.horizon
        return AdaptiveKLState(kl_coef=state.kl_coef * mult)
