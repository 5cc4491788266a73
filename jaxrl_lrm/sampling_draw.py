"""How the sampler draws one token: top-k / top-p truncation of the tempered softmax and the
draw itself (`draw="inverse_cdf"`: a two-level inverse CDF over the kept candidates, fast on
XLA:CPU; `"categorical"`: `jax.random.categorical`) and the drawn token's log-probs, through
the trainer's own kernel (`losses.sampled_logprobs`). Pure and jittable; `sampling` calls it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lrm.losses.logprobs import sampled_logprobs


def _truncate(scaled_BV: jax.Array, top_k: int, top_p: float):
    """Candidate logits and their vocabulary ids after top-k then top-p (renormalised within
    the top k, as in Hugging Face). Returns `(logits_BC, ids_BC or None)`."""
    V = scaled_BV.shape[-1]
    if top_k == 0 and top_p >= 1.0:
        return scaled_BV, None
    vals, ids = jax.lax.top_k(scaled_BV, top_k if top_k else V)  # sorted descending
    if top_p < 1.0:
        probs = jax.nn.softmax(vals, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly ahead of each candidate
        vals = jnp.where(before < top_p, vals, -jnp.inf)  # the first candidate always stays
    return vals, ids


_CDF_BLOCK = 128  # candidates per block of the two-level inverse CDF


def _noise(sample, key, shape, rows):
    """`sample(key, shape)` or, with `rows = (row_ids_B, batch)`, the rows `row_ids_B` of the
    noise a batch of `batch` rows would draw: a row's draw then does not depend on which other
    rows are still decoding (the sampler's batch shrinks as rows finish)."""
    if rows is None:
        return sample(key, shape)
    ids_B, batch = rows
    return sample(key, (batch,) + tuple(shape[1:]))[ids_B]


def _inverse_cdf(key, logits_BC, block: int | None = _CDF_BLOCK, rows=None):
    """One draw per row from softmax(logits_BC) by inverting its CDF with one uniform per row
    (CPU trick: a quarter of the cost of Gumbel-max, which needs C random numbers per row).

    For a large candidate set the CDF is inverted in two levels: first the block of `block`
    candidates whose cumulative mass reaches u, then the candidate inside it, so only
    `C / block + block` prefix sums are formed instead of C (XLA:CPU lowers a long `cumsum`
    to a log-depth scan that costs ~4x the rest of the draw). `block=None`: one level.
    `rows`: see `_noise`."""
    probs = jax.nn.softmax(logits_BC, axis=-1)
    B, C = probs.shape
    u = 1.0 - _noise(
        jax.random.uniform, key, (B, 1), rows
    )  # in (0, 1], scaled to the total mass below
    if block is None or C < 8 * block or C % block:
        cdf = jnp.cumsum(probs, axis=-1)
        pick = jnp.sum(cdf < u * cdf[:, -1:], axis=-1)  # first index whose cdf reaches u
        return jnp.minimum(pick, C - 1)
    n = C // block
    blocks = probs.reshape(B, n, block)
    mass = jnp.sum(blocks, axis=-1)
    cdf = jnp.cumsum(mass, axis=-1)
    u = u * cdf[:, -1:]
    blk = jnp.minimum(jnp.sum(cdf < u, axis=-1), n - 1)[:, None]
    start = jnp.take_along_axis(cdf - mass, blk, axis=1)  # mass before the chosen block
    inner = jnp.take_along_axis(blocks, blk[:, :, None], axis=1)[:, 0]  # [B, block]
    pick = jnp.sum(start + jnp.cumsum(inner, axis=-1) < u, axis=-1)
    # rounding may leave u just past the block's last prefix sum: take its last nonzero id
    last = block - 1 - jnp.argmax(inner[:, ::-1] > 0, axis=-1)
    return blk[:, 0] * block + jnp.minimum(pick, last)


def _draw(key, logits_BC, draw: str, rows=None):
    """One candidate index per row, distributed as softmax(logits_BC); `rows`: see `_noise`."""
    if draw == "inverse_cdf":
        return _inverse_cdf(key, logits_BC, rows=rows)
    if rows is None:
        return jax.random.categorical(key, logits_BC, axis=-1)
    # jax.random.categorical's own Gumbel-max, with the full batch's Gumbel noise
    gumbel = _noise(
        lambda k, s: jax.random.gumbel(k, s, logits_BC.dtype), key, logits_BC.shape, rows
    )
    return jnp.argmax(gumbel + logits_BC, axis=-1)


def _choose(
    logits_BV,
    key,
    temperature: float,
    top_k: int,
    top_p: float,
    draw: str = "inverse_cdf",
    rows=None,
):
    """`(token, logp, truncated logp)` of the next token: `logp` under softmax(logits /
    temperature) before truncation, `truncated logp` under the top-k / top-p renormalised
    distribution it was drawn from (`None` when nothing is truncated: the two are equal).
    Greedy: the argmax and its log-prob at temperature 1, no truncated log-prob. `rows`: the
    batch rows these are, as `(row_ids_B, batch)` (see `_noise`), or None for all of them."""
    if temperature == 0.0:
        tok = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        return tok, sampled_logprobs(logits_BV, tok), None
    scaled = logits_BV / temperature
    cand, ids = _truncate(scaled, top_k, top_p)
    pick = _draw(key, cand, draw, rows).astype(jnp.int32)
    if ids is None:
        return pick, sampled_logprobs(scaled, pick), None
    tok = jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return tok, sampled_logprobs(scaled, tok), sampled_logprobs(cand, pick)
