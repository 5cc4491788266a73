"""The one place that jits: the device programs of a run, with their shardings declared.

`make_rl_programs` builds `sample`, `score` and `update` for an RL run (plus `generate` for
evaluation at other temperatures); `make_offline_programs` builds the update and the evaluation
pass of an SFT, DPO or reward-model stage. Input and output shardings come from `sharding.py`:
the train state keeps its layout (`state.state_shardings`), batch rows are split over the
`batch` logical axis, the frozen reference keeps its parameters' layout. The state is donated
to the update. `Programs.compile_count()` counts compiled executables (one per program and
input signature), logged as `compile/count`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_lrm import sampling, sharding
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.train import packing
from jaxrl_lrm.train import update as upd
from jaxrl_lrm.train.batch import Prompts, Rewards, Rollout, RolloutBatch, Scored
from jaxrl_lrm.train.state import Bases


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """The sampler's static choices."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    eos_id: int | None
    pad_id: int
    # LoRA: sample from the merged weights (folded once per call) rather than the factored
    # form (an extra low-rank product per projection and token); see docs/lora.md
    merge_adapters: bool = True
    logprob_mode: str = "truncated"  # "full" | "truncated" (see docs/sampling.md)

    @property
    def reports_truncated(self) -> bool:
        """Whether rollouts carry `sampler_trunc_logp_BT`: in `truncated` mode, when top-k or
        top-p truncates the softmax the tokens are drawn from."""
        cuts = self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)
        return self.logprob_mode == "truncated" and cuts


@dataclasses.dataclass
class Programs:
    """Jitted programs by name, and how many executables each has compiled."""

    jitted: dict[str, Any]  # LoRA's frozen `Bases` are bound: the callables below omit them
    sample: Callable | None = None  # (params, Prompts, rng_data, step) -> Rollout
    score: Callable | None = None  # (state, ref_params, Rollout) -> Scored
    update: Callable | None = None  # (state, batch[, frozen]) -> (state, metrics); donated
    evaluate: Callable | None = None  # offline stages: (params, frozen, batch) -> {name: [B]}
    generate: Callable | None = None  # (params, Prompts, key, temperature) -> Rollout
    take_rows: Callable | None = None  # ([Rollout], idx_B) -> Rollout
    rollout_target: Rollout | None = None  # `sample`'s output: shapes, dtypes, shardings

    def compile_counts(self) -> dict[str, int]:
        return {name: fn._cache_size() for name, fn in self.jitted.items()}

    def compile_count(self) -> int:
        return sum(self.compile_counts().values())


def rows_sharding(tree, mesh):
    """Batch-row shardings (`sharding.batch_spec_for`) for a pytree of arrays or shapes."""
    return jax.tree.map(lambda x: sharding.batch_spec_for(x.shape, mesh), tree)


def params_sharding(params, mesh):
    """The shardings parameters already have (replicated where they are not on `mesh`)."""
    rep = sharding.replicated(mesh)

    def one(x):
        s = getattr(x, "sharding", None)
        return s if isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh else rep

    return jax.tree.map(one, params)


# --------------------------------------------------------------------------- RL


def _sample(
    bases: Bases,
    params,
    prompts: Prompts,
    rng_data,
    step,
    *,
    model: ModelConfig,
    s: SamplingConfig,
    mesh,
) -> Rollout:
    params = bases.merged_policy(params) if s.merge_adapters else bases.policy_params(params)
    key = jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)
    greedy = s.temperature == 0.0
    tokens, logp, mask, *trunc = sampling.sample_tokens(
        params,
        model,
        prompts.ids_BP,
        prompts.mask_BP,
        key,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=0 if greedy else s.top_k,
        top_p=1.0 if greedy else s.top_p,
        eos_id=s.eos_id,
        pad_id=s.pad_id,
        mesh=mesh if mesh.size > 1 else None,
        truncated_logprobs=s.reports_truncated,
    )
    return Rollout(
        tokens_BL=jnp.concatenate([prompts.ids_BP, tokens], axis=1),
        attn_BL=jnp.concatenate([prompts.mask_BP, mask], axis=1),
        sampler_logp_BT=logp,
        sampler_trunc_logp_BT=trunc[0] if trunc else None,
    )


def _score(
    bases: Bases, state, ref_params, rollout: Rollout, *, cfg: upd.RLUpdateConfig, with_old: bool
) -> Scored:
    def logp(params):
        args = (params, cfg.model, rollout.tokens_BL, rollout.attn_BL, cfg.prompt_len)
        if cfg.pack_rows:
            return packing.logprobs(*args, rows=cfg.pack_rows, temperature=cfg.temperature)
        return upd.completion_logprobs(*args, cfg.temperature)[0]

    values = None
    if state.value is not None:
        values = upd.completion_values(
            bases.value_params(state.value.params),
            cfg.model,
            rollout.tokens_BL,
            rollout.attn_BL,
            cfg.prompt_len,
        )
    return Scored(
        old_logp_BT=logp(bases.policy_params(state.params)) if with_old else None,
        ref_logp_BT=None if ref_params is None else logp(ref_params),
        values_BT=values,
    )


def needs_old_pass(cfg: upd.RLUpdateConfig, has_ref: bool) -> bool:
    """Whether `score` computes the sampling policy's log-probs: for the ratio of several
    updates per step or of truncated importance sampling, or for KL in the reward."""
    return cfg.need_old or (cfg.spec.kl_in_reward and has_ref)


def _rollout_shapes(rows: int, P: int, T: int, truncated: bool, multiturn: bool) -> Rollout:
    f32 = jax.ShapeDtypeStruct((rows, T), jnp.float32)
    return Rollout(
        tokens_BL=jax.ShapeDtypeStruct((rows, P + T), jnp.int32),
        attn_BL=jax.ShapeDtypeStruct((rows, P + T), jnp.int32),
        sampler_logp_BT=f32,
        loss_mask_BT=jax.ShapeDtypeStruct((rows, T), jnp.int32) if multiturn else None,
        sampler_trunc_logp_BT=f32 if truncated else None,
    )


def make_rl_programs(
    cfg: upd.RLUpdateConfig,
    s: SamplingConfig,
    mesh,
    *,
    state,
    ref_params,
    rows: int,
    dense: bool,
    keep: bool = False,
    bases: Bases | None = None,
    multiturn: bool = False,
) -> Programs:
    """`sample`, `score`, `update` and `generate` for an RL run of `rows` global rows (prompts x
    group size x processes) per step, with the layouts of `state` and `ref_params`; `dense`:
    whether token-level rewards come with the scalar ones; `keep`: whether rows carry a keep
    weight (DAPO); `bases`: LoRA's frozen base weights, bound as the programs' first argument;
    `multiturn`: rollouts are episodes (`episodes.to_rollout`) and carry `loss_mask_BT`, which
    `score` and `update` take with the rows' sharding (`sample` is not used then)."""
    bases = Bases() if bases is None else bases
    bases_sh = params_sharding(bases, mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    ref_sh = None if ref_params is None else params_sharding(ref_params, mesh)
    rep = sharding.replicated(mesh)
    P, T = cfg.prompt_len, s.max_new_tokens
    prompts_sh = rows_sharding(
        Prompts(ids_BP=jnp.zeros((rows, P)), mask_BP=jnp.zeros((rows, P))), mesh
    )
    rollout_abs = _rollout_shapes(rows, P, T, s.reports_truncated, multiturn)
    rollout_sh = rows_sharding(rollout_abs, mesh)
    sample = jax.jit(
        lambda b, p, pr, r, k: _sample(b, p, pr, r, k, model=cfg.model, s=s, mesh=mesh),
        in_shardings=(bases_sh, state_sh.policy.params, prompts_sh, rep, rep),
        out_shardings=rows_sharding(_rollout_shapes(rows, P, T, s.reports_truncated, False), mesh),
    )
    with_old = needs_old_pass(cfg, ref_params is not None)

    # A closure of this call: its jit cache (and so `compile_count`) belongs to this run alone.
    def score_fn(b, state, ref, rollout):
        return _score(b, state, ref, rollout, cfg=cfg, with_old=with_old)

    scored_abs = jax.eval_shape(score_fn, bases, state, ref_params, rollout_abs)
    score = jax.jit(
        score_fn,
        in_shardings=(bases_sh, state_sh, ref_sh, rollout_sh),
        out_shardings=rows_sharding(scored_abs, mesh),
    )
    rewards_abs = Rewards(
        rewards_B=jax.ShapeDtypeStruct((rows,), jnp.float32),
        dense_BT=jax.ShapeDtypeStruct((rows, T), jnp.float32) if dense else None,
        keep_B=jax.ShapeDtypeStruct((rows,), jnp.float32) if keep else None,
    )
    batch_sh = RolloutBatch(
        rollout=rollout_sh,
        scored=rows_sharding(scored_abs, mesh),
        rewards=rows_sharding(rewards_abs, mesh),
    )
    update = jax.jit(  # bases first, as for sample and score: a partial binds them
        lambda bs, st, b: upd.rl_update(st, b, cfg=cfg, bases=bs),
        donate_argnums=1,
        in_shardings=(bases_sh, state_sh, batch_sh),
        out_shardings=(state_sh, rep),
    )
    generate = _generator(cfg.model, s, mesh, bases)
    take = jax.jit(lambda rs, idx: _take_rows(rs, idx), out_shardings=rollout_sh)
    return Programs(
        jitted={
            "sample": sample,
            "score": score,
            "update": update,
            "generate": generate.jitted,
            "take_rows": take,
        },
        sample=functools.partial(sample, bases),
        score=functools.partial(score, bases),
        update=functools.partial(update, bases),
        generate=generate,
        take_rows=take,
        rollout_target=jax.tree.map(_with_sharding, rollout_abs, rollout_sh),
    )


def _with_sharding(a: jax.ShapeDtypeStruct, sh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh)


def _take_rows(rollouts: list[Rollout], idx_B) -> Rollout:
    """Rows `idx_B` of the rollouts concatenated along the rows (DAPO's selection)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs)[idx_B], *rollouts)


@dataclasses.dataclass(frozen=True)
class _Generator:
    """Sampling at a temperature given per call (evaluation: greedy and pass@k)."""

    jitted: Any
    bases: Bases

    def __call__(self, params, prompts: Prompts, key, temperature: float) -> Rollout:
        return self.jitted(
            self.bases, params, prompts, jax.random.key_data(key), 0, temperature=float(temperature)
        )


def _generator(model: ModelConfig, s: SamplingConfig, mesh, bases: Bases) -> _Generator:
    def gen(bases, params, prompts, rng_data, step, temperature):
        return _sample(
            bases,
            params,
            prompts,
            rng_data,
            step,
            model=model,
            s=dataclasses.replace(s, temperature=temperature),
            mesh=mesh,
        )

    return _Generator(jax.jit(gen, static_argnames=("temperature",)), bases)


# --------------------------------------------------------------------------- offline stages


def make_offline_programs(
    loss_fn: Callable,
    eval_fn: Callable | None,
    *,
    optimizer,
    micro_batches: int,
    mesh,
    state,
    batch,
    frozen=None,
    denom_fn: Callable | None = None,
    schedule: Callable | None = None,
) -> Programs:
    """The update and evaluation of an offline stage (SFT, DPO, reward model).

    `loss_fn(params, frozen, batch, denom) -> (loss, metrics)` on a micro-batch (`denom` as in
    `update.accumulate_update`, from `denom_fn`); `eval_fn(params,
    frozen, batch) -> {name: [B]}`; `batch` is one step's batch (arrays or shapes: its rows
    set the layout); `frozen` (the DPO reference) is an argument, never baked in as a
    constant, never donated."""
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    rep = sharding.replicated(mesh)
    frozen_sh = None if frozen is None else params_sharding(frozen, mesh)
    batch_sh = rows_sharding(batch, mesh)

    def step(st, fz, b):
        policy, metrics = upd.accumulate_update(
            st.policy, optimizer, loss_fn, b, micro_batches, frozen=fz, denom_fn=denom_fn
        )
        if schedule is not None:
            metrics["lr"] = schedule(st.step)
        return dataclasses.replace(st, policy=policy, step=st.step + 1), metrics

    update = jax.jit(
        step,
        donate_argnums=0,
        in_shardings=(state_sh, frozen_sh, batch_sh),
        out_shardings=(state_sh, rep),
    )
    jitted = {"update": update}
    evaluate = None
    if eval_fn is not None:
        evaluate = jax.jit(eval_fn, in_shardings=(state_sh.policy.params, frozen_sh, batch_sh))
        jitted["evaluate"] = evaluate
    return Programs(jitted=jitted, update=update, evaluate=evaluate)
