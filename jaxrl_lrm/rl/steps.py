"""The jitted device functions of a training run: log-probs of completions, the RL update
(epochs x minibatches x micro-batches with gradient accumulation), and the SFT step.

A batch is a dict of arrays whose leading axis is the row (B = prompts x group size):
  tokens_BL     int32  left-padded prompt (P) followed by the completion (T); L = P + T
  attn_BL       int32  1 for real tokens (prompt and completion up to EOS)
  mask_BT       f32    1 for completion tokens that count
  adv_B / adv_BT f32   advantages
  old_logp_BT   f32    log-probs under the policy that sampled (recomputed by the trainer)
  ref_logp_BT   f32    reference log-probs (zeros when beta == 0)
  sampler_logp_BT f32  the sampler's own log-probs (for truncated importance sampling)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrl_lrm import losses
from jaxrl_lrm.algorithms import AlgorithmSpec
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # RL (or SFT) steps taken


@functools.lru_cache(maxsize=32)
def make_optimizer(*, lr: float, total_updates: int, warmup: int = 0, schedule: str = "cosine",
                   min_lr_ratio: float = 0.1, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, max_grad_norm: float | None = 1.0):
    """AdamW with linear warm-up then cosine decay (or constant), after global-norm clipping.

    Cached: the same hyperparameters give the same optimizer object, so jitted updates that take
    it as a static argument are compiled once per process, not once per run."""
    total_updates = max(total_updates, warmup + 1)
    if schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=total_updates, end_value=lr * min_lr_ratio)
    else:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]) \
            if warmup else optax.constant_schedule(lr)
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts), sched


def completion_logprobs(params, config: ModelConfig, tokens_BL, attn_BL, prompt_len: int,
                        temperature: float = 1.0):
    """`(logp_BT, entropy_BT)` of the completion tokens under `softmax(logits / temperature)`,
    computed from hidden states in chunks so the `[B, T, V]` logits never exist at once."""
    hidden, _ = transformer.forward_hidden(params, config, tokens_BL, kv_mask_BS=attn_BL)
    hidden_BTD = hidden[:, prompt_len - 1:-1]
    targets_BT = tokens_BL[:, prompt_len:]
    return losses.chunked_token_logprobs(
        hidden_BTD, transformer.output_embedding(params, config), targets_BT,
        temperature=temperature, chunk_size=2048)


def rl_loss(params, config: ModelConfig, spec: AlgorithmSpec, mb: dict, *, prompt_len: int,
            temperature: float, max_len: int):
    """The policy-gradient objective of one micro-batch: clipped surrogate, optional KL to the
    reference in the loss, optional entropy bonus, optional truncated importance weights."""
    logp, ent = completion_logprobs(params, config, mb["tokens_BL"], mb["attn_BL"], prompt_len,
                                    temperature)
    mask = mb["mask_BT"]
    adv = mb["adv"]
    # On-policy with a single update: the sampling policy is the current one, so the ratio's
    # denominator is this very forward pass (value 1, no gradient) and no extra pass is needed.
    old = mb["old_logp_BT"] if mb.get("old_logp_BT") is not None else jax.lax.stop_gradient(logp)
    if adv.ndim == 1:
        adv = jnp.broadcast_to(adv[:, None], mask.shape)
    if spec.tis_max is not None:
        w = losses.truncated_importance_weights(old, mb["sampler_logp_BT"], mask,
                                                max=spec.tis_max)
        adv = adv * w
    pg, pg_metrics = losses.policy_loss(
        logp, old, adv, mask, clip_low=spec.clip_low, clip_high=spec.clip_high,
        dual_clip=spec.dual_clip, ratio="sequence" if spec.ratio == "sequence" else "token",
        agg=spec.agg, max_len=max_len)
    loss = pg
    metrics = {}
    if spec.beta > 0:  # there is a reference model (the trainer builds one only then)
        kl = losses.kl_penalty(logp, mb["ref_logp_BT"], spec.kl_kind)
        metrics["kl/mean"] = losses.aggregate(kl, mask, "token-mean")
        if not spec.kl_in_reward:
            loss = loss + spec.beta * losses.aggregate(kl, mask, spec.agg, max_len=max_len)
    ent_mean = losses.aggregate(ent, mask, "token-mean")
    if spec.entropy_coef:
        loss = loss - spec.entropy_coef * ent_mean
    metrics |= {
        "loss/policy": pg,
        "loss/total": loss,
        "entropy/mean": ent_mean,
        "clip/frac": pg_metrics["clipfrac"],
        "approx_kl": pg_metrics["approx_kl"],
        "mismatch/sampler_kl": losses.aggregate(mb["sampler_logp_BT"] - logp, mask, "token-mean"),
    }
    return loss, metrics


def _split(tree, n: int):
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), tree)


def accumulate_update(state: TrainState, optimizer, loss_fn, batch: dict, micro_batches: int):
    """One optimizer update over `batch`, gradients averaged over `micro_batches` slices."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(acc, mb):
        (_, m), g = grad_fn(state.params, mb)
        return jax.tree.map(jnp.add, acc, g), m

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, metrics = jax.lax.scan(micro, zeros, _split(batch, micro_batches))
    grads = jax.tree.map(lambda g: g / micro_batches, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return dataclasses.replace(state, params=params, opt_state=opt_state), metrics


def epochs_update(state: TrainState, batch: dict, loss_fn, *, optimizer, epochs: int,
                  minibatches: int, micro_batches: int):
    """`epochs` passes over the batch, each `minibatches` optimizer updates with gradients
    accumulated over `micro_batches`. Returns the new state (step + 1) and the metrics
    averaged over all updates."""
    def one_update(st, mb):
        return accumulate_update(st, optimizer, loss_fn, mb, micro_batches)

    all_metrics = []
    for _ in range(epochs):
        state, m = jax.lax.scan(one_update, state, _split(batch, minibatches))
        all_metrics.append(m)
    metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *all_metrics)
    return dataclasses.replace(state, step=state.step + 1), metrics


def rl_update(state: TrainState, batch: dict, *, config: ModelConfig, spec: AlgorithmSpec,
              optimizer, epochs: int, minibatches: int, micro_batches: int, prompt_len: int,
              temperature: float, max_len: int):
    """The policy update of one RL step (see `epochs_update`)."""
    def loss_fn(params, mb):
        return rl_loss(params, config, spec, mb, prompt_len=prompt_len,
                       temperature=temperature, max_len=max_len)

    return epochs_update(state, batch, loss_fn, optimizer=optimizer, epochs=epochs,
                         minibatches=minibatches, micro_batches=micro_batches)


def completion_values(params, config: ModelConfig, tokens_BL, attn_BL, prompt_len: int):
    """Value estimates `[B, T]` at the completion positions: `V[b, t]` is read from the hidden
    state that predicts completion token t (the state before the action, as in the policy's
    log-probs)."""
    hidden, _ = transformer.forward_hidden(params, config, tokens_BL, kv_mask_BS=attn_BL)
    return transformer.value_head(params, hidden[:, prompt_len - 1:-1])


def value_update(state: TrainState, batch: dict, *, config: ModelConfig, optimizer, epochs: int,
                 minibatches: int, micro_batches: int, prompt_len: int,
                 clip: float | None):
    """PPO's value-model update: clipped squared error to the GAE returns."""
    def loss_fn(params, mb):
        v = completion_values(params, config, mb["tokens_BL"], mb["attn_BL"], prompt_len)
        loss, m = losses.value_loss(v, mb["old_values_BT"], mb["returns_BT"], mb["mask_BT"],
                                    clip=clip)
        return loss, {"value/loss": loss, **{f"value/{k}": x for k, x in m.items()}}

    return epochs_update(state, batch, loss_fn, optimizer=optimizer, epochs=epochs,
                         minibatches=minibatches, micro_batches=micro_batches)


VALUE_STATIC = ("config", "optimizer", "epochs", "minibatches", "micro_batches", "prompt_len",
                "clip")


def sft_loss(params, config: ModelConfig, batch: dict):
    """Masked next-token cross-entropy: mean over target tokens with `loss_mask_BL == 1`.

    `tokens_BL` is a left-padded prompt followed by the completion (right-padded); position
    t's logits predict token t + 1, and only completion tokens (and their EOS) are targets."""
    logp, m, _ = next_token_logprobs(params, config, batch)
    loss = -losses.aggregate(logp, m, "token-mean")
    return loss, {"sft/loss": loss}


def next_token_logprobs(params, config: ModelConfig, batch: dict):
    """`(logp [B, L-1], target mask [B, L-1], hidden [B, L, D])` of every next token of
    `tokens_BL`, the mask being `loss_mask_BL` shifted onto the targets."""
    tokens, attn, lmask = batch["tokens_BL"], batch["attn_BL"], batch["loss_mask_BL"]
    hidden, _ = transformer.forward_hidden(params, config, tokens, kv_mask_BS=attn)
    logp, _ = losses.chunked_token_logprobs(
        hidden[:, :-1], transformer.output_embedding(params, config), tokens[:, 1:],
        chunk_size=2048)
    return logp, lmask[:, 1:].astype(jnp.float32), hidden


def sft_update(state: TrainState, batch: dict, *, config: ModelConfig, optimizer):
    state, metrics = accumulate_update(state, optimizer, lambda p, b: sft_loss(p, config, b),
                                       batch, 1)
    return dataclasses.replace(state, step=state.step + 1), metrics


_JITTED: dict = {}


def jitted(fn, *, static_argnames: tuple[str, ...], donate_argnums=(), state_shardings=None):
    """`jax.jit(fn)` created once per function object (and output layout), so repeated runs in
    one process (tests, the demo's stages) reuse compiled programs instead of recompiling.

    With `state_shardings` (the shardings of a `TrainState` argument), the function's first
    output keeps exactly that layout and its second (metrics) is replicated: the updated state
    then matches its input, so the next step (and the sampler reading its parameters) hits the
    compiled program instead of compiling again for a layout the compiler chose.
    """
    out_shardings, layout_key = None, None
    if state_shardings is not None:
        leaves, treedef = jax.tree.flatten(state_shardings)
        mesh = leaves[0].mesh
        out_shardings = (state_shardings,
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        layout_key = (tuple(leaves), treedef)
    key = (fn, static_argnames, donate_argnums, layout_key)
    if key not in _JITTED:
        kw = {} if out_shardings is None else {"out_shardings": out_shardings}
        _JITTED[key] = jax.jit(fn, static_argnames=static_argnames,
                               donate_argnums=donate_argnums, **kw)
    return _JITTED[key]


UPDATE_STATIC = ("config", "spec", "optimizer", "epochs", "minibatches", "micro_batches",
                 "prompt_len", "temperature", "max_len")
