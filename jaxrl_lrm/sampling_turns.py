"""The multi-turn sampler's device side: decode until every row has stopped (its stop sequence,
e.g. `</tool_call>`), ended (EOS) or filled its budget; then append each row's observation
tokens to its KV cache at the row's own offset and decode again. Pure and jittable (`start` and
`resume`, jitted here as `start_jit` / `resume_jit` with the sampling settings static); the host
loop that runs the environment between rounds is `jaxrl_lrm.episodes`.

Layout. A row's transcript (sampled and observation tokens, in order) fills `tokens_BT[b,
:n_B[b]]` and cache slots `[P, P + n_B[b])` behind its left-padded prompt in slots `[0, P)`;
RoPE positions continue the prompt's (`len(prompt) + i` for transcript token i). Rows sit at
different lengths, so every forward pass writes at a slot per row (`transformer.forward_hidden`
with `cache_index` [B]). The cache has `P + T + W` slots: T the transcript budget, W the width
of one observation chunk, so that a chunk written at any offset below T stays inside it.

Slots past a row's length may hold stale keys (a row that is not sampling writes a pad token at
its next free slot; an observation chunk is written W wide); the causal rule (`slot <= own
slot`) hides them, and each is overwritten before any query can reach it. So the logits of
transcript token i depend on exactly the prompt and tokens `[0, i)`: the sampler's log-probs
equal a full forward pass over the final transcript (tests/test_sampling_turns.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.sampling import _prefill
from jaxrl_lrm.sampling_draw import _choose


class TurnState(NamedTuple):
    """The multi-turn sampler's state between rounds (a pytree; device arrays).

    Attributes:
      cache: the KV cache `{"k","v"}: [L, B, P + T + W, K, H]`.
      logits_BV: float32 logits of each row's next token.
      kv_mask_BS: key slots that may be attended (the prompt's real tokens, then every slot).
      lengths_B: real prompt tokens per row (RoPE offset of the transcript).
      stop_BL: each row's stop sequence, right-aligned, -1 where unused.
      n_B: transcript tokens so far.
      tokens_BT: the transcript (`pad_id` past `n_B`).
      sampled_BT: 1 where the token was sampled (0 for observation tokens and padding).
      logprobs_BT: float32 log-prob of each sampled token under softmax(logits / temperature).
      stopped_B: the row's turn ended with its stop sequence; it waits for an observation.
      done_B: the row is over (EOS, budget, or the host ended it).
      step: draws so far (step t draws with `fold_in(rng, t)`).
    """

    cache: dict
    logits_BV: jax.Array
    kv_mask_BS: jax.Array
    lengths_B: jax.Array
    stop_BL: jax.Array
    n_B: jax.Array
    tokens_BT: jax.Array
    sampled_BT: jax.Array
    logprobs_BT: jax.Array
    stopped_B: jax.Array
    done_B: jax.Array
    step: jax.Array


def _stop_hit(state: TurnState, n_B, tokens_BT, sampled_BT):
    """Rows whose last sampled tokens (ending at index n_B - 1) are their stop sequence."""
    L = state.stop_BL.shape[1]
    idx_BL = n_B[:, None] - L + jnp.arange(L)
    safe = jnp.clip(idx_BL, 0, tokens_BT.shape[1] - 1)
    tok = jnp.take_along_axis(tokens_BT, safe, axis=1)
    smp = jnp.take_along_axis(sampled_BT, safe, axis=1)
    used = state.stop_BL >= 0
    match = (tok == state.stop_BL) & (smp == 1) & (idx_BL >= 0)
    return jnp.any(used, axis=1) & jnp.all(match | ~used, axis=1)


def _decode(params, config, state: TurnState, rng, *, P, draws) -> TurnState:
    """Samples one token per live row and runs it through the model, until no row is live."""
    T = state.tokens_BT.shape[1]
    temperature, top_k, top_p, eos_id, pad_id, draw = draws

    def cond(s: TurnState):
        return jnp.any(~s.done_B & ~s.stopped_B)

    def body(s: TurnState) -> TurnState:
        live = ~s.done_B & ~s.stopped_B
        tok, logp, _ = _choose(s.logits_BV, jax.random.fold_in(rng, s.step), *draws[:3], draw)
        tok = jnp.where(live, tok, pad_id)
        at_BT = live[:, None] & (jnp.arange(T)[None, :] == s.n_B[:, None])
        tokens = jnp.where(at_BT, tok[:, None], s.tokens_BT)
        sampled = jnp.where(at_BT, 1, s.sampled_BT)
        logprobs = jnp.where(at_BT, logp[:, None], s.logprobs_BT)
        n = s.n_B + live
        ended = live & ((n >= T) | ((tok == eos_id) if eos_id is not None else False))
        stopped = s.stopped_B | (live & ~ended & _stop_hit(s, n, tokens, sampled))
        hidden, cache = transformer.forward_hidden(
            params,
            config,
            tok[:, None],
            positions_BT=(s.lengths_B + s.n_B)[:, None],
            kv_mask_BS=s.kv_mask_BS,
            cache=s.cache,
            cache_index=P + s.n_B,
        )
        logits = transformer.hidden_to_logits(params, config, hidden[:, 0])
        return s._replace(
            cache=cache,
            logits_BV=jnp.where(live[:, None], logits, s.logits_BV),
            n_B=n,
            tokens_BT=tokens,
            sampled_BT=sampled,
            logprobs_BT=logprobs,
            stopped_B=stopped,
            done_B=s.done_B | ended,
            step=s.step + 1,
        )

    return jax.lax.while_loop(cond, body, state)


def start(
    params,
    config: ModelConfig,
    prompt_ids_BP,
    prompt_mask_BP,
    stop_BL,
    rng,
    *,
    max_tokens: int,
    chunk: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int | None,
    pad_id: int,
    draw: str = "inverse_cdf",
) -> TurnState:
    """Prefills left-padded prompts and samples every row's first turn.

    Args:
      prompt_ids_BP, prompt_mask_BP: left-padded prompts, as for `sampling.sample_tokens`.
      stop_BL: int [B, L] stop sequence per row, right-aligned and -1-padded on the left (a
        row of all -1 never stops).
      rng: the episode's key; draw t uses `fold_in(rng, t)` across all rounds.
      max_tokens: T, the transcript budget per row (sampled + observation tokens).
      chunk: W, the most observation tokens one `resume` appends to a row.
      temperature, top_k, top_p, eos_id, pad_id, draw: as in `sampling.sample_tokens`.
    """
    B, P = prompt_ids_BP.shape
    T, W = max_tokens, chunk
    pmask = prompt_mask_BP.astype(bool)
    kv_mask = jnp.concatenate([pmask, jnp.ones((B, T + W), bool)], axis=1)
    logits, cache = _prefill(
        params, config, prompt_ids_BP, pmask, kv_mask, P + T + W, None, None, None
    )
    zeros = lambda dtype: jnp.zeros((B, T), dtype)
    state = TurnState(
        cache=cache,
        logits_BV=logits,
        kv_mask_BS=kv_mask,
        lengths_B=jnp.sum(pmask, axis=1, dtype=jnp.int32),
        stop_BL=stop_BL.astype(jnp.int32),
        n_B=jnp.zeros((B,), jnp.int32),
        tokens_BT=zeros(jnp.int32) + pad_id,
        sampled_BT=zeros(jnp.int32),
        logprobs_BT=zeros(jnp.float32),
        stopped_B=jnp.zeros((B,), bool),
        done_B=jnp.zeros((B,), bool),
        step=jnp.zeros((), jnp.int32),
    )
    draws = (temperature, top_k, top_p, eos_id, pad_id, draw)
    return _decode(params, config, state, rng, P=P, draws=draws)


def resume(
    params,
    config: ModelConfig,
    state: TurnState,
    obs_BW,
    obs_len_B,
    end_B,
    rng,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int | None,
    pad_id: int,
    draw: str = "inverse_cdf",
) -> TurnState:
    """Appends each row's observation (`obs_BW[b, :obs_len_B[b]]`, at its own offset) to its
    cache in one prefill pass, ends the rows in `end_B`, and samples the next turns.

    The host guarantees `n_B + obs_len_B < T` for every row that continues (room for at least
    one sampled token) and gives every stopped row either an observation or `end_B`.
    """
    B, W = obs_BW.shape
    T = state.tokens_BT.shape[1]
    P = state.kv_mask_BS.shape[1] - T - W
    pos_BW = (state.lengths_B + state.n_B)[:, None] + jnp.arange(W)
    hidden, cache = transformer.forward_hidden(
        params,
        config,
        obs_BW.astype(jnp.int32),
        positions_BT=pos_BW,
        kv_mask_BS=state.kv_mask_BS,
        cache=state.cache,
        cache_index=P + state.n_B,
    )
    last = jnp.maximum(obs_len_B - 1, 0)[:, None, None]
    logits = transformer.hidden_to_logits(
        params, config, jnp.take_along_axis(hidden, last, axis=1)[:, 0]
    )
    has = (obs_len_B > 0) & ~end_B & ~state.done_B
    k_BT = jnp.arange(T)[None, :] - state.n_B[:, None]
    in_obs = has[:, None] & (k_BT >= 0) & (k_BT < obs_len_B[:, None])
    obs_at = jnp.take_along_axis(obs_BW.astype(jnp.int32), jnp.clip(k_BT, 0, W - 1), axis=1)
    state = state._replace(
        cache=cache,
        logits_BV=jnp.where(has[:, None], logits, state.logits_BV),
        n_B=state.n_B + jnp.where(has, obs_len_B, 0),
        tokens_BT=jnp.where(in_obs, obs_at, state.tokens_BT),
        stopped_B=jnp.zeros_like(state.stopped_B),
        done_B=state.done_B | end_B | (state.stopped_B & ~has),
    )
    draws = (temperature, top_k, top_p, eos_id, pad_id, draw)
    return _decode(params, config, state, rng, P=P, draws=draws)


_STATIC = ("config", "temperature", "top_k", "top_p", "eos_id", "pad_id", "draw")
start_jit = jax.jit(start, static_argnames=(*_STATIC, "max_tokens", "chunk"))
resume_jit = jax.jit(resume, static_argnames=_STATIC, donate_argnames=("state",))
