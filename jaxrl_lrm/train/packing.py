"""Sequence packing for the RL update and score passes: pad tokens stop costing.

A step's rows `[B, P + T]` are mostly padding when completion lengths vary (left padding of
the prompt, right padding after EOS). `layout` packs every row's real tokens (`attn_BL == 1`,
in order) into rows of the same length `S = P + T` by first-fit decreasing, each sequence
keeping its own RoPE positions (`cumsum(attn) - 1`, as the unpacked forward) and attending
only to its own tokens (`segment_ids_BT` of `models.transformer.forward_hidden`), so every
token's log-prob is the unpacked one. The packed rows are processed `rows` at a time
(a *micro-batch*) in a loop whose trip count is the number of micro-batches that hold tokens:
one compiled body, a cost that follows the real tokens (to within one micro-batch).

`accumulate` is `update.accumulate_update` over packed micro-batches: each micro-batch's loss
is its share of the whole-batch loss (`losses.Denominators` of the whole batch; the rows of
other micro-batches are masked out, and a row is never split), so the gradient and the metrics
equal the unpacked update's. `logprobs` is the packed forward-only pass of `score`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxrl_lrm import losses
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.train.state import ModelState

LOGPROB_CHUNK = 2048


def _first_fit_decreasing(n_B, capacity: int):
    """Packed row and offset of each sequence of length `n_B` (all <= `capacity`)."""
    B = n_B.shape[0]
    order = jnp.argsort(-n_B, stable=True)

    def place(used_R, b):
        n = n_B[b]
        r = jnp.argmax(used_R + n <= capacity)  # the first row it fits in (an empty one at worst)
        return used_R.at[r].add(n), (r, used_R[r])

    _, (r_sorted, off_sorted) = jax.lax.scan(place, jnp.zeros((B,), n_B.dtype), order)
    inv = jnp.argsort(order)
    return r_sorted[inv], off_sorted[inv]


def layout(tokens_BL, attn_BL, rows: int) -> dict:
    """Where each real token goes: `{"tokens", "segments", "positions"}` `[C, S]` packed arrays
    (C = B rounded up to a multiple of `rows`; pad slots have segment 0), `"dst_BL"` the flat
    packed index of every real token (`C * S` for pads), `"row_B"` each row's packed row,
    `"n_micro"` the micro-batches of `rows` packed rows that hold tokens, `"real"` the real
    token count."""
    B, S = attn_BL.shape
    C = -(-B // rows) * rows
    real = attn_BL.astype(bool)
    k_BL = jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1  # position within the sequence
    n_B = jnp.sum(real, axis=1, dtype=jnp.int32)
    row_B, off_B = _first_fit_decreasing(n_B, S)
    dst = jnp.where(real, row_B[:, None] * S + off_B[:, None] + k_BL, C * S)

    def scatter(values_BL):
        flat = jnp.zeros((C * S + 1,), values_BL.dtype).at[dst.reshape(-1)].set(values_BL.ravel())
        return flat[:-1].reshape(C, S)

    seg = jnp.broadcast_to(jnp.arange(1, B + 1, dtype=jnp.int32)[:, None], (B, S))
    used = jnp.max(jnp.where(n_B > 0, row_B, -1)) + 1
    return {
        "tokens": scatter(tokens_BL.astype(jnp.int32)),
        "segments": scatter(jnp.where(real, seg, 0)),
        "positions": scatter(jnp.maximum(k_BL, 0)),
        "dst_BL": dst,
        "row_B": row_B,
        "n_micro": (used + rows - 1) // rows,
        "real": jnp.sum(n_B),
    }


def _micro_logprobs(params, config, lay, i, rows: int, temperature: float):
    """Next-token `(logp, entropy)` at every slot of packed rows `[i*rows, (i+1)*rows)`, flat
    `[rows * S]` (the last slot of each row, which predicts nothing, is 0)."""
    S = lay["tokens"].shape[1]
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, i * rows, rows, axis=0)
    tok, seg, pos = take(lay["tokens"]), take(lay["segments"]), take(lay["positions"])
    hidden, _ = transformer.forward_hidden(
        params, config, tok, positions_BT=pos, kv_mask_BS=seg > 0, segment_ids_BT=seg
    )
    logp, ent = losses.chunked_token_logprobs(
        hidden[:, :-1],
        transformer.output_embedding(params, config),
        tok[:, 1:],
        temperature=temperature,
        chunk_size=LOGPROB_CHUNK,
    )
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 1))).reshape(rows * S)
    return pad(logp), pad(ent)


def completion_view(params, config, lay, i, rows: int, prompt_len: int, temperature: float):
    """`(logp_BT, entropy_BT, in_micro_BT)` of the completions of micro-batch `i`: token t of
    row b is predicted from its predecessor's packed slot; `in_micro_BT` marks the completion
    slots whose row lies in this micro-batch and whose token is real."""
    S = lay["tokens"].shape[1]
    logp, ent = _micro_logprobs(params, config, lay, i, rows, temperature)
    src = lay["dst_BL"][:, prompt_len - 1 : -1]  # the predecessor of completion slot t
    own = lay["dst_BL"][:, prompt_len:] < lay["tokens"].size  # the completion token is real
    mine = (lay["row_B"] // rows == i)[:, None] & own & (src < lay["tokens"].size)
    at = jnp.clip(src - i * rows * S, 0, rows * S - 1)
    return jnp.where(mine, logp[at], 0.0), jnp.where(mine, ent[at], 0.0), mine


def pad_frac(real, computed):
    """The share of the computed token slots that hold padding."""
    return 1.0 - real / jnp.maximum(computed, 1)


def logprobs(
    params,
    config: ModelConfig,
    tokens_BL,
    attn_BL,
    prompt_len: int,
    *,
    rows: int,
    temperature: float = 1.0,
):
    """`update.completion_logprobs(...)[0]` by packed micro-batches: `[B, T]`, 0 at pads."""
    lay = layout(tokens_BL, attn_BL, rows)
    B, T = tokens_BL.shape[0], tokens_BL.shape[1] - prompt_len

    def body(i, acc):
        lp, _, mine = completion_view(params, config, lay, i, rows, prompt_len, temperature)
        return jnp.where(mine, lp, acc)

    return jax.lax.fori_loop(0, lay["n_micro"], body, jnp.zeros((B, T), jnp.float32))


def accumulate(
    model: ModelState, optimizer, loss_fn: Callable, batch: dict, *, rows: int, denom_fn: Callable
) -> tuple[ModelState, dict]:
    """One optimizer update of `model` over `batch` by packed micro-batches of `rows` rows.

    `loss_fn(params, None, mb, denom) -> (loss, metrics)` as for `update.accumulate_update`;
    `mb` is the whole batch with `mask_BT` restricted to the micro-batch's rows and
    `mb["packed"] = (layout, i)`, from which the loss takes its log-probs (`completion_view`).
    Losses are summed, per-token metrics weighted by the micro-batch's share of the tokens."""
    denom = denom_fn(batch)
    lay = layout(batch["tokens_BL"], batch["attn_BL"], rows)

    def view(i):
        mine = (lay["row_B"] // rows == i).astype(batch["mask_BT"].dtype)
        return {**batch, "mask_BT": batch["mask_BT"] * mine[:, None], "packed": (lay, i)}

    grad_fn = jax.value_and_grad(lambda p, mb: loss_fn(p, None, mb, denom), has_aux=True)
    _, m_abs = jax.eval_shape(lambda p: loss_fn(p, None, view(0), denom), model.params)

    def body(i, acc):
        grads, metrics = acc
        mb = view(i)
        (_, m), g = grad_fn(model.params, mb)
        share = denom_fn(mb).tokens / jnp.maximum(denom.tokens, 1.0)
        m = {k: v if "loss" in k else v * share for k, v in m.items()}
        return jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, metrics, m)

    zeros = jax.tree.map(jnp.zeros_like, model.params)
    zero_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_abs)
    grads, metrics = jax.lax.fori_loop(0, lay["n_micro"], body, (zeros, zero_m))
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["update/pad_frac"] = pad_frac(
        lay["real"], lay["n_micro"] * rows * lay["tokens"].shape[1]
    )
    updates, opt_state = optimizer.update(grads, model.opt_state, model.params)
    return ModelState(optax.apply_updates(model.params, updates), opt_state), metrics
