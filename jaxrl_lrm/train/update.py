"""The pure device functions of training: completion log-probs and values, the gradient
accumulation shared by every stage, and the RL update (advantages, KL-in-reward, policy and
value updates, the adaptive KL coefficient) of one step. `programs.py` jits them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxrl_lrm import algorithms, losses
from jaxrl_lrm.algorithms import AlgorithmSpec
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.train import packing
from jaxrl_lrm.train.batch import RolloutBatch
from jaxrl_lrm.train.state import Bases, ModelState, TrainState

LOGPROB_CHUNK = 2048  # positions per chunk of the log-softmax (bounds the [B, T, V] logits)


def completion_logprobs(
    params, config: ModelConfig, tokens_BL, attn_BL, prompt_len: int, temperature: float = 1.0
):
    """`(logp_BT, entropy_BT)` of the completion tokens under `softmax(logits / temperature)`,
    from hidden states in chunks so the `[B, T, V]` logits never exist at once."""
    hidden, _ = transformer.forward_hidden(params, config, tokens_BL, kv_mask_BS=attn_BL)
    return losses.chunked_token_logprobs(
        hidden[:, prompt_len - 1 : -1],
        transformer.output_embedding(params, config),
        tokens_BL[:, prompt_len:],
        temperature=temperature,
        chunk_size=LOGPROB_CHUNK,
    )


def completion_values(params, config: ModelConfig, tokens_BL, attn_BL, prompt_len: int):
    """Values `[B, T]` at the completion positions: `V[b, t]` is read from the hidden state that
    predicts completion token t (the state before the action, as in the log-probs)."""
    hidden, _ = transformer.forward_hidden(params, config, tokens_BL, kv_mask_BS=attn_BL)
    return transformer.value_head(params, hidden[:, prompt_len - 1 : -1])


def next_token_logprobs(params, config: ModelConfig, batch: dict):
    """`(logp [B, L-1], target mask [B, L-1], hidden [B, L, D])` of every next token of
    `tokens_BL`, the mask being `loss_mask_BL` shifted onto the targets."""
    tokens, attn, lmask = batch["tokens_BL"], batch["attn_BL"], batch["loss_mask_BL"]
    hidden, _ = transformer.forward_hidden(params, config, tokens, kv_mask_BS=attn)
    logp, _ = losses.chunked_token_logprobs(
        hidden[:, :-1],
        transformer.output_embedding(params, config),
        tokens[:, 1:],
        chunk_size=LOGPROB_CHUNK,
    )
    return logp, lmask[:, 1:].astype(jnp.float32), hidden


# --------------------------------------------------------------------------- accumulation


def _split(tree, n: int):
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), tree)


def accumulate_update(
    model: ModelState,
    optimizer,
    loss_fn: Callable,
    batch,
    micro_batches: int,
    *,
    frozen=None,
    denom_fn: Callable | None = None,
) -> tuple[ModelState, dict]:
    """One optimizer update of `model` over `batch` split into `micro_batches` equal slices.

    `loss_fn(params, frozen, micro_batch, denom) -> (loss, metrics)`. With `denom_fn` (batch ->
    `losses.Denominators` of the whole batch) and several micro-batches, each micro-batch's
    loss is its share of the whole-batch loss, and shares and gradients are summed: micro-
    batching then never changes the loss. Metrics whose name contains "loss" are shares too and
    are summed; the others (per-token means: entropy, clip fraction, KL) are weighted by each
    micro-batch's share of the tokens, so they equal the whole batch's. Without `denom_fn` (or
    with one micro-batch) `denom` is None and gradients and metrics are averaged. Metrics
    named `.../max...` are maxima: the largest over micro-batches."""
    exact = denom_fn is not None and micro_batches > 1
    denom = denom_fn(batch) if exact else None
    grad_fn = jax.value_and_grad(lambda p, mb: loss_fn(p, frozen, mb, denom), has_aux=True)

    def micro(acc, mb):
        (_, m), g = grad_fn(model.params, mb)
        # the micro-batch's share of the batch's tokens: weights its per-token-mean metrics
        share = denom_fn(mb).tokens / jnp.maximum(denom.tokens, 1.0) if exact else 1.0
        return jax.tree.map(jnp.add, acc, g), (m, share)

    zeros = jax.tree.map(jnp.zeros_like, model.params)
    grads, (metrics, share) = jax.lax.scan(micro, zeros, _split(batch, micro_batches))
    metrics_max = {k: metrics.pop(k) for k in list(metrics) if _is_max(k)}
    if exact:
        metrics = {k: jnp.sum(v) if "loss" in k else jnp.sum(v * share) for k, v in metrics.items()}
    else:
        grads = jax.tree.map(lambda g: g / micro_batches, grads)
        metrics = {k: jnp.mean(v) for k, v in metrics.items()}
    metrics |= {k: jnp.max(v) for k, v in metrics_max.items()}
    metrics["grad_norm"] = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, model.opt_state, model.params)
    return ModelState(optax.apply_updates(model.params, updates), opt_state), metrics


def _is_max(name: str) -> bool:
    return "/max" in name


def _mask_denominators(batch) -> losses.Denominators:
    return losses.Denominators.of(batch["mask_BT"])


def epochs_update(
    model: ModelState,
    optimizer,
    loss_fn: Callable,
    batch,
    *,
    epochs: int,
    minibatches: int,
    micro_batches: int,
    frozen=None,
    denom_fn: Callable | None = None,
    accumulate: Callable | None = None,
) -> tuple[ModelState, dict]:
    """`epochs` passes over `batch`, each `minibatches` optimizer updates with gradients
    accumulated over `micro_batches` (see `accumulate_update`, or `accumulate` with its
    signature: `packing.accumulate`); metrics averaged over all updates (maxima: the
    largest)."""
    accumulate = accumulate or accumulate_update

    def one(m, mb):
        return accumulate(
            m, optimizer, loss_fn, mb, micro_batches, frozen=frozen, denom_fn=denom_fn
        )

    per_epoch = []
    for _ in range(epochs):
        model, m = jax.lax.scan(one, model, _split(batch, minibatches))
        per_epoch.append(m)
    stacked = {k: jnp.stack([m[k] for m in per_epoch]) for k in per_epoch[0]}
    return model, {k: jnp.max(v) if _is_max(k) else jnp.mean(v) for k, v in stacked.items()}


# --------------------------------------------------------------------------- the RL update


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLUpdateConfig:
    """The static choices of an RL update (hashable: part of the program's identity)."""

    model: ModelConfig
    spec: AlgorithmSpec
    optimizer: optax.GradientTransformation
    value_optimizer: optax.GradientTransformation | None
    prompt_len: int
    max_new_tokens: int
    temperature: float
    epochs: int
    minibatches: int
    micro_batches: int
    kl_controller: losses.AdaptiveKLController | None
    schedule: Callable | None = None  # the learning-rate schedule, logged as `lr` on the device
    pack_rows: int = 0  # > 0: the policy update packs rows, this many per micro-batch (packing)

    @property
    def need_old(self) -> bool:
        """Whether the ratio needs the sampling policy's log-probs from a separate pass
        (several updates per step, or importance weights against the behaviour policy:
        truncated or decoupled)."""
        multi = self.epochs * self.minibatches > 1
        return multi or self.spec.tis_max is not None or self.spec.decoupled


def _policy_loss(params, _, mb: dict, denom, *, cfg: RLUpdateConfig):
    if "packed" in mb:  # packing.accumulate: this micro-batch's rows, others masked out
        logp, ent, mine = packing.completion_view(
            params, cfg.model, *mb["packed"], cfg.pack_rows, cfg.prompt_len, cfg.temperature
        )
        logp = jnp.where(mine, logp, mb["sampler_logp_BT"])  # finite where masked out
    else:
        logp, ent = completion_logprobs(
            params, cfg.model, mb["tokens_BL"], mb["attn_BL"], cfg.prompt_len, cfg.temperature
        )
    old = mb.get("old_logp_BT")
    # One update per step: the sampling policy is the current one, so the ratio's denominator
    # is this very forward pass (value 1, no gradient) and no extra pass is needed.
    old = jax.lax.stop_gradient(logp) if old is None else old
    return algorithms.objective(
        cfg.spec,
        logp,
        ent,
        old_logp_BT=old,
        ref_logp_BT=mb.get("ref_logp_BT"),
        sampler_logp_BT=mb["sampler_logp_BT"],
        behaviour_logp_BT=mb.get("behaviour_logp_BT"),
        adv_BT=mb["adv_BT"],
        mask_BT=mb["mask_BT"],
        max_len=cfg.max_new_tokens,
        denom=denom,
    )


def _value_loss(params, _, mb: dict, denom, *, cfg: RLUpdateConfig):
    v = completion_values(params, cfg.model, mb["tokens_BL"], mb["attn_BL"], cfg.prompt_len)
    loss, m = losses.value_loss(
        v,
        mb["old_values_BT"],
        mb["returns_BT"],
        mb["mask_BT"],
        clip=cfg.spec.value_clip,
        denom=denom,
    )
    return loss, {"value/loss": loss, **{f"value/{k}": x for k, x in m.items()}}


def _kl_BT(batch: RolloutBatch, spec: AlgorithmSpec):
    s = batch.scored
    if not spec.kl_in_reward or s.ref_logp_BT is None:
        return None
    return s.old_logp_BT - s.ref_logp_BT


def rl_update(
    state: TrainState, batch: RolloutBatch, *, cfg: RLUpdateConfig, bases: Bases | None = None
) -> tuple[TrainState, dict]:
    """The update of one RL step: advantages (with KL in the reward where the algorithm puts it
    there) from the batch, `epochs x minibatches` policy updates, PPO's value updates on the
    GAE returns, and the adaptive KL coefficient's step. Returns the new state (step + 1) and
    the metrics averaged over the updates. With LoRA (`bases`) only the adapters (and a value
    model's head) are trained and hold optimizer state."""
    bases = Bases() if bases is None else bases
    spec, r = cfg.spec, batch.rollout
    mask = r.completion_mask_BT.astype(jnp.float32)
    if batch.rewards.keep_B is not None:  # DAPO's filler groups: outside every denominator
        mask = mask * batch.rewards.keep_B[:, None]
    kl = _kl_BT(batch, spec)
    values = batch.scored.values_BT
    adv = algorithms.advantages(
        spec,
        batch.rewards.rewards_B,
        mask,
        kl_BT=kl,
        values_BT=values,
        beta=state.kl_coef,
        token_rewards_BT=batch.rewards.dense_BT,
    )
    rows = {"tokens_BL": r.tokens_BL, "attn_BL": r.attn_BL, "mask_BT": mask}
    policy_rows = {
        **rows,
        "adv_BT": adv.adv_BT,
        "sampler_logp_BT": r.sampler_logp_BT,
        "behaviour_logp_BT": r.sampler_trunc_logp_BT,  # None: the full-softmax log-probs
        "old_logp_BT": batch.scored.old_logp_BT,
        "ref_logp_BT": batch.scored.ref_logp_BT,
    }
    if not cfg.need_old:
        policy_rows["old_logp_BT"] = None  # computed for the KL in the reward only
    kw = dict(
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        micro_batches=cfg.micro_batches,
        denom_fn=_mask_denominators,
    )
    policy_loss = lambda p, f, mb, d: _policy_loss(bases.policy_params(p), f, mb, d, cfg=cfg)
    if cfg.pack_rows:
        pack = lambda m, o, fn, b, micro_batches, frozen, denom_fn: packing.accumulate(
            m, o, fn, b, rows=cfg.pack_rows, denom_fn=denom_fn
        )
        policy, metrics = epochs_update(
            state.policy, cfg.optimizer, policy_loss, policy_rows, **kw, accumulate=pack
        )
    else:
        policy, metrics = epochs_update(state.policy, cfg.optimizer, policy_loss, policy_rows, **kw)
    value = state.value
    if value is not None:
        value_rows = {**rows, "old_values_BT": values, "returns_BT": adv.returns_BT}
        value, vm = epochs_update(
            value,
            cfg.value_optimizer,
            lambda p, f, mb, d: _value_loss(bases.value_params(p), f, mb, d, cfg=cfg),
            value_rows,
            **kw,
        )
        vm["value/grad_norm"] = vm.pop("grad_norm")
        metrics |= vm
        metrics["value/mean"] = losses.masked_mean(values, mask)
    kl_coef = state.kl_coef
    if kl is not None:
        metrics["kl/seq_sum"] = jnp.mean(jnp.sum(kl * mask, axis=1))
        if cfg.kl_controller is not None:  # the target is a per-token mean KL, as verl's
            observed = algorithms.controller_kl(kl, mask)
            metrics["kl/coef"] = kl_coef
            metrics["kl/controller"] = observed
            kl_coef = cfg.kl_controller.update(
                losses.AdaptiveKLState(kl_coef=kl_coef), observed, mask.shape[0]
            ).kl_coef
    if cfg.schedule is not None:  # the rate of this step's first update (no host sync for it)
        metrics["lr"] = cfg.schedule(state.step * cfg.epochs * cfg.minibatches)
    new = dataclasses.replace(
        state, policy=policy, value=value, kl_coef=kl_coef, step=state.step + 1
    )
    return new, metrics
