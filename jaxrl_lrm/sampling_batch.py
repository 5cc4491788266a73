"""The sampler's decode batch, which shrinks as rows finish: the loop's carry (`_State`) and the
cut from `b` rows to fewer (`_keep_live`).

`sampling._sample` runs its `while_loop` once per batch size of `_batch_sizes` (the full batch,
then halving, down to `MIN_ROWS`): each loop stops when at most the next size's rows are still decoding, the live
rows move to the front of a smaller cache, and the next loop goes on with them, so a decode step
costs the rows still running to within a factor of 2 rather than the whole batch until the
longest row ends. A row's computation never depends on the other rows (its own cache, logits
and, through `sampling_draw._noise`, the noise of its row of the full batch), so the tokens are
those of the full-batch loop (tested bitwise) and the log-probs too, to float32 round-off: a
smaller batch's forward may round a few by one ulp (XLA:CPU vectorises other shapes
differently; tested within 1e-6, measured 4 of 576 differing).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class _State(NamedTuple):
    """The decode loop's carry: `b` rows still in the (shrinking) decode batch, whose outputs
    go to rows `rows_b` of the full `[B, T]` buffers."""

    step: jax.Array  # [] index of the token to sample next
    cache: dict  # {"k","v"}: [L,b,S,K,H]
    logits_bV: jax.Array  # float32 logits for the token at `step`
    done_b: jax.Array  # bool, row has emitted EOS
    rows_b: jax.Array  # int32 row of the full batch
    lengths_b: jax.Array  # int32 real prompt length
    kv_mask_bS: jax.Array
    tokens_BT: jax.Array
    logprobs_BT: jax.Array
    mask_BT: jax.Array
    trunc_logprobs_BT: jax.Array | None  # under the truncated distribution, when asked for


def _start(cache, logits_BV, lengths_B, kv_mask_BS, zeros, pad_id: int, truncated: bool):
    """The carry before the first token, every row in the decode batch; `zeros(dtype)` makes
    an output buffer `[B, T]`."""
    B = logits_BV.shape[0]
    return _State(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits_bV=logits_BV,
        done_b=jnp.zeros((B,), bool),
        rows_b=jnp.arange(B, dtype=jnp.int32),
        lengths_b=lengths_B,
        kv_mask_bS=kv_mask_BS,
        tokens_BT=zeros(jnp.int32) + pad_id,
        logprobs_BT=zeros(jnp.float32),
        mask_BT=zeros(jnp.int32),
        trunc_logprobs_BT=zeros(jnp.float32) if truncated else None,
    )


def _put_truncated(buf, put, live, logp, trunc):
    """The truncated log-probs buffer with this step's written (`logp` when nothing is cut)."""
    if buf is None:
        return None
    return put(buf, jnp.where(live, logp if trunc is None else trunc, 0.0))


def _batch_shards(mesh) -> int:
    """The batch's shards on `mesh` (`data x fsdp`), 1 without a mesh."""
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


# A decode step streams every weight once, so below ~8 rows it costs about the same whatever
# the rows (bench-cpu on 2 vCPUs: 16.6 / 17.2 / 18.5 ms per step at 16 / 8 / 4 rows): smaller
# batches would only add compilations.
MIN_ROWS = 8


def _batch_sizes(B: int, shards: int, min_rows: int = MIN_ROWS) -> tuple[int, ...]:
    """The decode batch's sizes as rows finish: `B`, then halving, in multiples of `shards`,
    none below `min_rows`."""
    sizes = [B]
    while (nxt := -(-(sizes[-1] // 2) // shards) * shards) >= max(min_rows, 1) and nxt < sizes[-1]:
        sizes.append(nxt)
    return tuple(sizes)


def _keep_live(state: _State, b: int, constrain_cache) -> _State:
    """The state with its decode batch cut to `b` rows: the live ones first, in order (the
    loop before ran until at most `b` were left), the rest finished rows that write padding."""
    if b == state.done_b.shape[0]:
        return state
    keep = jnp.argsort(state.done_b, stable=True)[:b]
    take = lambda x: jnp.take(x, keep, axis=0)
    return state._replace(
        cache={k: constrain_cache(jnp.take(v, keep, axis=1)) for k, v in state.cache.items()},
        logits_bV=take(state.logits_bV),
        done_b=take(state.done_b),
        rows_b=take(state.rows_b),
        lengths_b=take(state.lengths_b),
        kv_mask_bS=take(state.kv_mask_bS),
    )
