"""The train state: every array a run updates, as one pytree that the update donates.

`TrainState` holds the policy (parameters + optimizer state), PPO's value model when there is
one, the KL coefficient (adaptive under `algorithm.kl_target`), the step counter and the run's
PRNG key data. The reference policy is frozen and lives apart (an argument of the programs
that read it, never donated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrl_lrm import sharding
from jaxrl_lrm.models import lora


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelState:
    """One trained model: its parameters and its optimizer's state."""

    params: Any
    opt_state: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a step changes. `rng` is raw key data (`uint32[2]`), so checkpoints hold it
    as an ordinary array; `step` counts steps taken (RL, SFT, DPO or reward-model)."""

    policy: ModelState
    value: ModelState | None
    kl_coef: jax.Array  # float32 []
    step: jax.Array  # int32 []
    rng: jax.Array  # uint32 [2]

    @property
    def params(self):
        return self.policy.params

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bases:
    """The frozen base weights LoRA adapters apply to, one per trained model (None: that model
    is trained in full and its `ModelState.params` are its whole parameters), and the
    adapters' `scale` (alpha / rank). An argument of every program, never donated; with LoRA
    the policy's base is also the reference (the same arrays, no second copy)."""

    policy: Any = None
    value: Any = None
    scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))

    def policy_params(self, trainable):
        """The parameters a forward pass of the policy reads (adapters applied, factored)."""
        return trainable if self.policy is None else lora.apply(self.policy, trainable, self.scale)

    def value_params(self, trainable):
        """The same for the value model (its adapters and its head on its base)."""
        return trainable if self.value is None else lora.apply(self.value, trainable, self.scale)

    def merged_policy(self, trainable):
        """The policy's plain parameters with the adapters folded in (`lora.merge`)."""
        return trainable if self.policy is None else lora.merge(self.policy, trainable, self.scale)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW after global-norm clipping, with linear warm-up then cosine decay or a constant."""

    lr: float
    total_updates: int
    warmup: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    max_grad_norm: float | None = 1.0

    @classmethod
    def of(cls, train, *, lr: float | None = None, total_updates: int) -> OptimizerConfig:
        """From a config's `train` section (`lr` overrides `train.lr`)."""
        return cls(
            lr=train.lr if lr is None else lr,
            total_updates=total_updates,
            warmup=train.warmup_steps,
            schedule=train.lr_schedule,
            min_lr_ratio=train.min_lr_ratio,
            weight_decay=train.weight_decay,
            b1=train.b1,
            b2=train.b2,
            max_grad_norm=train.max_grad_norm,
        )


def make_optimizer(c: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(optimizer, schedule)` for `c`."""
    total = max(c.total_updates, c.warmup + 1)
    if c.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if c.warmup else c.lr,
            peak_value=c.lr,
            warmup_steps=c.warmup,
            decay_steps=total,
            end_value=c.lr * c.min_lr_ratio,
        )
    elif c.warmup:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, c.lr, c.warmup), optax.constant_schedule(c.lr)], [c.warmup]
        )
    else:
        sched = optax.constant_schedule(c.lr)
    parts = [optax.clip_by_global_norm(c.max_grad_norm)] if c.max_grad_norm else []
    parts.append(optax.adamw(sched, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay))
    return optax.chain(*parts), sched


def _init(policy_params, value_params, kl_coef, rng, *, optimizer, value_optimizer):
    value = None
    if value_params is not None:
        value = ModelState(value_params, value_optimizer.init(value_params))
    return TrainState(
        policy=ModelState(policy_params, optimizer.init(policy_params)),
        value=value,
        kl_coef=jnp.asarray(kl_coef, jnp.float32),
        step=jnp.zeros((), jnp.int32),
        rng=rng,
    )


def _mirror(tree, params, param_shardings, rep):
    """Shardings for `tree`: each subtree shaped like `params` (optimizer moments) takes the
    parameters' shardings leaf by leaf; every other leaf is replicated."""
    treedef = jax.tree.structure(params)

    def like_params(x):
        return jax.tree.structure(x) == treedef

    return jax.tree.map(
        lambda x: param_shardings if like_params(x) else rep, tree, is_leaf=like_params
    )


def state_shardings(state: TrainState, mesh) -> TrainState:
    """Shardings of a train state whose `params` leaves carry their layouts (arrays on the
    mesh): optimizer moments mirror their parameters, everything else is replicated."""
    rep = sharding.replicated(mesh)

    def of_model(m: ModelState | None, params_shardings):
        if m is None:
            return None
        return ModelState(params_shardings, _mirror(m.opt_state, m.params, params_shardings, rep))

    def shard_of(params):
        def one(x):
            s = getattr(x, "sharding", None)
            on_mesh = isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh
            return s if on_mesh else rep

        return jax.tree.map(one, params)

    return TrainState(
        policy=of_model(state.policy, shard_of(state.policy.params)),
        value=None if state.value is None else of_model(state.value, shard_of(state.value.params)),
        kl_coef=rep,
        step=rep,
        rng=rep,
    )


def init_state(
    policy_params,
    *,
    optimizer,
    mesh,
    seed: int,
    kl_coef: float = 0.0,
    value_params=None,
    value_optimizer=None,
) -> TrainState:
    """A fresh `TrainState` on `mesh`, made by one jitted init whose outputs are placed by
    `state_shardings` (the optimizer moments inherit their parameters' layout). The parameters
    given are copied, never aliased: the update donates the state's buffers."""
    rng = jax.random.key_data(jax.random.key(seed))
    fn = jax.tree_util.Partial(_init, optimizer=optimizer, value_optimizer=value_optimizer)
    args = (policy_params, value_params, kl_coef, rng)
    abstract = jax.eval_shape(lambda *a: fn(*a), *args)
    out_shardings = _with_param_shardings(abstract, policy_params, value_params, mesh)
    return jax.jit(lambda *a: fn(*a), out_shardings=out_shardings)(*args)


def _with_param_shardings(abstract: TrainState, policy_params, value_params, mesh):
    """`state_shardings` of `abstract`, reading the parameters' layouts from the real arrays."""
    concrete = dataclasses.replace(
        abstract,
        policy=dataclasses.replace(abstract.policy, params=policy_params),
        value=None
        if value_params is None
        else dataclasses.replace(abstract.value, params=value_params),
    )
    return state_shardings(concrete, mesh)
