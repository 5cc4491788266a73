"""Autoregressive sampling with a preallocated KV cache: prefill plus a `lax.while_loop` decode,
all inside one `jit` with the sampling configuration static (the gemma sampler's shape).

Two faces:
- `sample_tokens(params, config, prompt_ids_BP, prompt_mask_BP, rng, ...)`: pure and jittable,
  for the RL trainer, which already holds left-padded device arrays.
- `generate(model, prompts, ...)`: host-facing. Left-pads ragged prompts into a few length
  buckets (so a new prompt length rarely means a new compilation), calls a cached jitted
  `sample_tokens`, and returns NumPy arrays in a `Generation`.

Cache layout: slots `[0, P)` hold the left-padded prompt, slots `[P, P + T)` the new tokens, so
the key mask is fixed for the whole call (`prompt_mask` then ones) and the causal rule
`slot <= own slot` of `models.transformer` hides the slots not yet written. RoPE positions are
`cumsum(prompt_mask) - 1` over the prompt (0 at the first real token) and `len + t` for the
t-th new token.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.sampling_batch import (
    _batch_shards,
    _batch_sizes,
    _keep_live,
    _put_truncated,
    _start,
    _State,
)
from jaxrl_lrm.sampling_draw import _choose, _draw, _inverse_cdf, _truncate  # noqa: F401

MIN_BUCKET = 16
DRAWS = ("inverse_cdf", "categorical")  # how a token is drawn from the truncated softmax


@dataclasses.dataclass(frozen=True)
class Generation:
    """Result of `generate` (host NumPy arrays).

    Attributes:
      tokens: [B, T] int32 new tokens, `pad_id` after EOS.
      logprobs: [B, T] float32 log-prob of each new token under `softmax(logits / temperature)`
        (temperature 1 when greedy), before top-k/top-p truncation; 0 where `mask` is 0.
      mask: [B, T] int32, 1 for new tokens up to and including EOS.
      decode_steps: forward passes the decode loop ran (it stops early once every row has hit
        EOS); at most `T - 1` since the prefill yields the first token.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    mask: np.ndarray
    decode_steps: int = 0


def _constrain(x, mesh, spec_fn):
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, spec_fn(x.shape))


def _prefill(
    params, config: ModelConfig, prompt_ids_BP, pmask, kv_mask_BS, S: int, mesh, batch, cache_spec
):
    """The whole prompt in one pass into a fresh cache of length S; logits only at the last slot
    (every row's last real token, thanks to left padding). `batch` / `cache_spec` are
    `_sample`'s sharding constraints."""
    B = prompt_ids_BP.shape[0]
    ids = _constrain(prompt_ids_BP.astype(jnp.int32), mesh, batch)
    cache = transformer.init_cache(config, B, S)
    cache = {k: _constrain(v, mesh, cache_spec) for k, v in cache.items()}
    positions = jnp.maximum(jnp.cumsum(pmask, axis=1, dtype=jnp.int32) - 1, 0)
    hidden, cache = transformer.forward_hidden(
        params,
        config,
        ids,
        positions_BT=positions,
        kv_mask_BS=kv_mask_BS,
        cache=cache,
        cache_index=0,
    )
    return transformer.hidden_to_logits(params, config, hidden[:, -1]), cache


def _sample(
    params,
    config: ModelConfig,
    prompt_ids_BP,
    prompt_mask_BP,
    rng,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int | None,
    pad_id: int,
    mesh=None,
    draw: str = "inverse_cdf",
    truncated_logprobs: bool = False,
    shrink: bool = True,
):
    """`sample_tokens`'s arrays, the decode passes run, the truncated log-probs (or None).
    `shrink=False` decodes every row to the end of the loop (the reference for the tests)."""
    B, P = prompt_ids_BP.shape
    T = max_new_tokens
    S = P + T
    batch = functools.partial(sharding.batch_spec_for, mesh=mesh) if mesh is not None else None
    cache_spec = functools.partial(sharding.cache_sharding, mesh=mesh) if mesh is not None else None
    pmask = _constrain(prompt_mask_BP.astype(bool), mesh, batch)
    kv_mask_BS = jnp.concatenate([pmask, jnp.ones((B, T), bool)], axis=1)
    lengths_B = jnp.sum(pmask, axis=1, dtype=jnp.int32)
    logits, cache = _prefill(
        params, config, prompt_ids_BP, pmask, kv_mask_BS, S, mesh, batch, cache_spec
    )

    def emit(state: _State) -> _State:
        key = jax.random.fold_in(rng, state.step)
        rows = (state.rows_b, B)
        tok, logp, trunc = _choose(state.logits_bV, key, temperature, top_k, top_p, draw, rows)
        live = ~state.done_b
        tok = jnp.where(live, tok, pad_id)
        done = state.done_b | (live & (tok == eos_id)) if eos_id is not None else state.done_b
        put = lambda buf, x: buf.at[state.rows_b, state.step].set(x)
        return state._replace(
            done_b=done,
            tokens_BT=put(state.tokens_BT, tok),
            logprobs_BT=put(state.logprobs_BT, jnp.where(live, logp, 0.0)),
            mask_BT=put(state.mask_BT, live.astype(jnp.int32)),
            trunc_logprobs_BT=_put_truncated(state.trunc_logprobs_BT, put, live, logp, trunc),
        )

    def cond(smaller: int, state: _State):
        return (state.step < T) & (jnp.sum(~state.done_b) > smaller)

    def body(state: _State) -> _State:
        prev = state.tokens_BT[state.rows_b, state.step - 1][:, None]  # [b,1]
        hidden, cache = transformer.forward_hidden(
            params,
            config,
            prev,
            positions_BT=(state.lengths_b + state.step - 1)[:, None],
            kv_mask_BS=state.kv_mask_bS,
            cache=state.cache,
            cache_index=P + state.step - 1,
        )
        cache = {k: _constrain(v, mesh, cache_spec) for k, v in cache.items()}
        logits = transformer.hidden_to_logits(params, config, hidden[:, 0])
        return emit(state._replace(cache=cache, logits_bV=logits))._replace(step=state.step + 1)

    zeros = lambda dtype: _constrain(jnp.zeros((B, T), dtype), mesh, batch)
    state = _start(cache, logits, lengths_B, kv_mask_BS, zeros, pad_id, truncated_logprobs)
    state = emit(state)._replace(step=jnp.ones((), jnp.int32))
    sizes = _batch_sizes(B, _batch_shards(mesh)) if shrink and T > 1 else (B,)
    for b, smaller in zip(sizes, sizes[1:] + (0,)):
        state = _keep_live(state, b, lambda x: _constrain(x, mesh, cache_spec))
        state = jax.lax.while_loop(functools.partial(cond, smaller), body, state)
    out = state.tokens_BT, state.logprobs_BT, state.mask_BT, state.step - 1
    return out + (state.trunc_logprobs_BT,)


def sample_tokens(
    params,
    config: ModelConfig,
    prompt_ids_BP: jax.Array,
    prompt_mask_BP: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int | None,
    pad_id: int,
    mesh=None,
    draw: str = "inverse_cdf",
    truncated_logprobs: bool = False,
) -> tuple[jax.Array, ...]:
    """Samples `max_new_tokens` continuations of left-padded prompts. Pure and jittable (mark
    every keyword argument and `config` static).

    Args:
      params: the model's parameter pytree.
      config: its `ModelConfig`.
      prompt_ids_BP: int prompt ids, left-padded (every row's last column is a real token).
      prompt_mask_BP: 1 for real prompt tokens, 0 for left padding.
      rng: one PRNG key; step t uses `fold_in(rng, t)`, and rows draw independent noise from it.
      max_new_tokens: T, the static output length; the loop may stop earlier when every row
        has emitted `eos_id`, the rest stays padding.
      temperature: 0.0 is greedy (argmax).
      top_k: keep the k most likely tokens (0: all).
      top_p: nucleus mass in (0, 1]; applied after top-k.
      eos_id: id that ends a row, or None for no stop.
      pad_id: written after EOS.
      mesh: when given, the batch and the KV cache are constrained to the rules' shardings.
      draw: how a token is drawn from the (truncated) softmax: `"inverse_cdf"` inverts its CDF
        with one uniform per row, in two levels for large vocabularies (fastest on CPU);
        `"categorical"` is `jax.random.categorical` (Gumbel-max). Same distribution, other
        tokens for the same key; greedy ignores it.
      truncated_logprobs: also return each token's log-prob under the top-k / top-p
        renormalised distribution it was drawn from (equal to `logprobs_BT` when nothing is
        truncated or when greedy).

    Returns:
      `(tokens_BT int32, logprobs_BT float32, mask_BT int32)` as in `Generation`, then
      `truncated_logprobs_BT float32` (0 where `mask` is 0) when `truncated_logprobs`.
    """
    _check_draw(draw)
    out = _sample(
        params,
        config,
        prompt_ids_BP,
        prompt_mask_BP,
        rng,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        pad_id=pad_id,
        mesh=mesh,
        draw=draw,
        truncated_logprobs=truncated_logprobs,
    )
    return out[:3] + ((out[4],) if truncated_logprobs else ())


_STATIC = (
    "config",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "eos_id",
    "pad_id",
    "mesh",
    "draw",
)
_sample_jit = jax.jit(_sample, static_argnames=_STATIC)


def bucket_length(n: int, bucket_sizes: Sequence[int] | None = None) -> int:
    """The smallest bucket >= n: from `bucket_sizes`, or a power of two of at least 16."""
    if bucket_sizes is None:
        return max(MIN_BUCKET, 1 << max(0, (n - 1).bit_length()))
    fits = [b for b in bucket_sizes if b >= n]
    if not fits:
        raise ValueError(
            f"prompt length {n} exceeds every bucket in bucket_sizes={list(bucket_sizes)}"
        )
    return min(fits)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, bucket_sizes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads ragged prompts to a bucket length: `(ids int32 [B,P], mask int32 [B,P])`."""
    if len(prompts) == 0:
        raise ValueError("prompts=[]: expected at least one prompt")
    lengths = [len(p) for p in prompts]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
    P = bucket_length(max(lengths), bucket_sizes)
    ids = np.full((len(prompts), P), pad_id, np.int32)
    mask = np.zeros((len(prompts), P), np.int32)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = np.asarray(p, np.int32)
        mask[i, P - len(p) :] = 1
    return ids, mask


def _mesh_of(params) -> Any:
    leaf = jax.tree.leaves(params)[0]
    placed = getattr(leaf, "sharding", None)
    mesh = getattr(placed, "mesh", None)
    return mesh if mesh is not None and mesh.size > 1 else None


def _check_draw(draw) -> None:
    if draw not in DRAWS:
        raise ValueError(f"draw={draw!r}: expected one of {DRAWS}")


def _check(
    config: ModelConfig, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id
) -> None:
    V = config.vocab_size
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a positive integer")
    if not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature={temperature!r}: expected a finite number >= 0")
    if not isinstance(top_k, int | np.integer) or not 0 <= top_k <= V:
        raise ValueError(f"top_k={top_k!r}: expected an integer in [0, vocab_size={V}]")
    if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r}: expected a number in (0, 1]")
    if eos_id is not None and not (isinstance(eos_id, int | np.integer) and 0 <= eos_id < V):
        raise ValueError(f"eos_id={eos_id!r}: expected None or a token id in [0, {V})")
    if not (isinstance(pad_id, int | np.integer) and 0 <= pad_id < V):
        raise ValueError(f"pad_id={pad_id!r}: expected a token id in [0, {V})")
    if not isinstance(prompts, Sequence) or isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError(f"prompts={prompts!r}: expected a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"prompts[{i}]={p!r}: expected a non-empty list of token ids")
        if a.min() < 0 or a.max() >= V:
            bad = int(a.min() if a.min() < 0 else a.max())
            raise ValueError(f"prompts[{i}] holds token id {bad} outside [0, vocab_size={V})")
        if len(p) + max_new_tokens > config.max_seq_len:
            raise ValueError(
                f"prompts[{i}] has {len(p)} tokens: with max_new_tokens="
                f"{max_new_tokens} that exceeds max_seq_len={config.max_seq_len}"
            )


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    rng: jax.Array | int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    bucket_sizes: Sequence[int] | None = None,
    mesh=None,
    draw: str = "inverse_cdf",
) -> Generation:
    """Samples continuations of ragged token-id prompts (see `sample_tokens` for the knobs).

    Prompts are left-padded to a bucket length (`bucket_sizes`, default powers of two >= 16,
    capped so that bucket + `max_new_tokens` fits `max_seq_len`), so the jitted sampler compiles
    once per (bucket, batch size, sampling config). With `mesh` (by default the mesh the
    parameters live on, if any) the batch and cache are sharded by the rules; the batch is
    padded with dummy rows to a multiple of the batch-sharding axes.

    Returns:
      A `Generation` of NumPy arrays `[len(prompts), max_new_tokens]`.
    """
    config = model.config
    _check(config, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id)
    _check_draw(draw)
    longest = max(len(p) for p in prompts)
    P = bucket_length(longest, bucket_sizes)
    if bucket_sizes is None:
        P = max(longest, min(P, config.max_seq_len - max_new_tokens))
    ids, mask = left_pad(prompts, pad_id, [P])
    B = len(prompts)
    mesh = _mesh_of(model.params) if mesh is None else mesh
    if mesh is not None:
        n = mesh.shape["data"] * mesh.shape["fsdp"]
        extra = -B % n
        if extra:  # dummy rows: one pad token each
            ids = np.concatenate([ids, np.full((extra, P), pad_id, np.int32)])
            mask = np.concatenate([mask, np.zeros((extra, P), np.int32)])
            mask[B:, -1] = 1
    if rng is None:
        rng = 0
    if isinstance(rng, int | np.integer):
        rng = jax.random.key(int(rng))
    tokens, logprobs, out_mask, steps, _ = _sample_jit(
        model.params,
        config,
        jnp.asarray(ids),
        jnp.asarray(mask),
        rng,
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_id=None if eos_id is None else int(eos_id),
        pad_id=int(pad_id),
        mesh=mesh,
        draw=draw,
    )
    tokens, logprobs, out_mask, steps = jax.device_get((tokens, logprobs, out_mask, steps))
    return Generation(
        tokens=np.asarray(tokens)[:B],
        logprobs=np.asarray(logprobs)[:B],
        mask=np.asarray(out_mask)[:B],
        decode_steps=int(steps),
    )
