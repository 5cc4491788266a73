"""The decoder-only transformer (Llama 3 / Qwen2 / Qwen3) as pure functions over a params pytree.

Layer parameters are stacked on a leading `layers` axis and every forward pass (training,
prefill, decode) runs them through one `lax.scan` (`_run_layers`), unrolled by
`ModelConfig.scan_unroll`, its body rematerialised under differentiation by `ModelConfig.remat`
(`remat_layer`). The XLA:CPU formulations (`ModelConfig.cpu_kernels`: 2-D projection
matmuls, GQA as batched matmuls, the KV cache written in place) are small functions beside the
plain einsum ones they replace. Shapes are written into names: B batch, T query positions,
S key positions (cache slots), D d_model, N query heads, K kv heads, G = N // K, H head dim,
F mlp dim, V vocab, L layers.

The KV cache is `{"k": [L,B,S,K,H], "v": [L,B,S,K,H]}`; a forward pass with a cache writes its
T new keys at slots `[cache_index, cache_index + T)` and attends to every slot `s` with
`kv_mask[b, s]` and `s <= its own slot`. Without a cache the same rule applies with slots
`0..T-1`, so training, prefill and decode share one attention code path.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm.models import lora
from jaxrl_lrm.models.config import ModelConfig, param_axes, param_shapes  # noqa: F401  (param_axes/param_shapes re-exported)

Params = dict
_NEG = -1e30  # finite "minus infinity": a fully masked row gives a uniform softmax, never NaN


def init_params(
    config: ModelConfig, rng: jax.Array, *, value_head: bool = False, init_std: float = 0.02
) -> Params:
    """Random parameters: N(0, init_std) matrices, unit norms, zero biases and value head."""
    shapes = param_shapes(config, value_head=value_head)
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    keys = jax.random.split(rng, len(flat))
    dtype = jnp.dtype(config.dtype)
    leaves = []
    for key, (path, shape) in zip(keys, flat):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            leaves.append(jnp.ones(shape, dtype))
        elif (
            "value_head" in name
            or name.endswith("['bq']")
            or name.endswith("['bk']")
            or name.endswith("['bv']")
        ):
            leaves.append(jnp.zeros(shape, dtype))
        else:
            leaves.append((init_std * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [H/2], with Llama 3 frequency scaling when configured."""
    h = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    if config.rope_scaling is not None and config.rope_scaling[0] == "llama3":
        _, factor, low_ff, high_ff, old_ctx = config.rope_scaling
        low_wavelen, high_wavelen = old_ctx / low_ff, old_ctx / high_ff
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def _apply_rope(x_BTnH: jax.Array, positions_BT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq  # [B,T,H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x = x_BTnH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x_BTnH.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF-style RMSNorm: normalise in float32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def _dense(x, w):
    """`x[..., D] @ w[D, *out]` as one plain 2-D matmul `[rows, D] @ [D, prod(out)]` (CPU trick).

    Reshaping the (contiguous) weight is free; XLA:CPU runs 2-D dots much better than the
    multi-dimensional einsums they replace, whose weight gradients needed transposes."""
    d = w.shape[0]
    y = jnp.dot(x.reshape(-1, d), w.reshape(d, -1))
    return y.reshape(*x.shape[:-1], *w.shape[1:])


def _project(config: ModelConfig, x, w, n_in: int = 1):
    """`x[..., *in] @ w[*in, *out]`, contracting the last `n_in` axes of `x`; `w` may be a
    `lora.LoRAWeight` (a weight with its adapter, in factored form)."""
    if isinstance(w, lora.LoRAWeight):
        return lora.project(lambda x, w, n: _project(config, x, w, n), x, w, n_in)
    if config.cpu_kernels:
        lead = x.shape[: x.ndim - n_in]
        return _dense(x.reshape(*lead, -1), w.reshape(-1, *w.shape[n_in:]))
    return jnp.tensordot(x, w, axes=n_in)


def _attention_cpu(q_BTNH, k_BSKH, v_BSKH, mask_BTS):
    """`_attention` with the G query heads of a KV head stacked along the query axis, so both
    products are batched matmuls over `[B, K]` with no broadcast of K/V (CPU trick)."""
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    G = N // K
    q = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    k = k_BSKH.transpose(0, 2, 1, 3)  # [B,K,S,H]
    v = v_BSKH.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqh,bksh->bkqs", q, k, preferred_element_type=jnp.float32) / math.sqrt(H)
    scores = scores.reshape(B, K, G, T, S)
    scores = jnp.where(mask_BTS[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(B, K, G * T, S)
    out = jnp.einsum("bkqs,bksh->bkqh", probs, v)  # [B,K,G*T,H]
    return out.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def _attention(config: ModelConfig, q_BTNH, k_BSKH, v_BSKH, mask_BTS):
    """Grouped-query attention: query head `n` reads KV head `n // G`; float32 softmax."""
    if config.cpu_kernels:
        return _attention_cpu(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    scores = jnp.einsum(
        "btkgh,bskh->bkgts", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
    ) / math.sqrt(H)
    scores = jnp.where(mask_BTS[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BSKH.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v_BSKH).reshape(B, T, N, H)


def _write_cache_in_place(cache, k_BTKH, v_BTKH, cache_index, layer):
    """`_write_cache` on the whole stacked `[L,B,S,K,H]` cache, carried through the layer scan
    and written at `[layer, :, cache_index:]` in place (CPU trick: no per-layer cache copy)."""
    if jnp.ndim(cache_index) == 1:  # a slot per row

        def put(buf, x):
            row = lambda b, xb, i: jax.lax.dynamic_update_slice(b, xb[None], (layer, i, 0, 0))
            return jax.vmap(row, in_axes=(1, 0, 0), out_axes=1)(
                buf, x.astype(buf.dtype), cache_index
            )

    else:
        at = (layer, 0, cache_index, 0, 0)
        put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[None].astype(buf.dtype), at)
    cache = {n: put(cache[n], x) for n, x in (("k", k_BTKH), ("v", v_BTKH))}
    k, v = (jax.lax.dynamic_index_in_dim(cache[n], layer, keepdims=False) for n in "kv")
    return k, v, cache


def _write_cache(config: ModelConfig, cache, k_BTKH, v_BTKH, cache_index, layer):
    """Writes this layer's T new keys and values at slots `[cache_index, cache_index + T)`.

    Returns `(keys_BSKH, values_BSKH, cache)`. `cache` is this layer's `[B,S,K,H]` slice of the
    stacked cache (the scan's input and output), or with `cpu_kernels` the whole stack."""
    if config.cpu_kernels:
        return _write_cache_in_place(cache, k_BTKH, v_BTKH, cache_index, layer)
    if jnp.ndim(cache_index) == 1:  # a slot per row
        row = lambda b, x, i: jax.lax.dynamic_update_slice_in_dim(b, x, i, axis=0)
        put = lambda buf, x: jax.vmap(row)(buf, x, cache_index)
    else:
        put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x, cache_index, axis=1)
    cache = {n: put(cache[n], x.astype(cache[n].dtype)) for n, x in (("k", k_BTKH), ("v", v_BTKH))}
    return cache["k"], cache["v"], cache


def _layer(
    config: ModelConfig, inv_freq, x_BTD, lp, positions_BT, mask_BTS, cache, cache_index, layer
):
    """One transformer block: `(new residual stream, updated cache or None)`."""
    c = config
    h = rms_norm(x_BTD, lp["attn_norm"], c.norm_eps)
    q = _project(c, h, lp["wq"])
    k = _project(c, h, lp["wk"])
    v = _project(c, h, lp["wv"])
    if c.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    if c.qk_norm:
        q = rms_norm(q, lp["q_norm"], c.norm_eps)
        k = rms_norm(k, lp["k_norm"], c.norm_eps)
    q = _apply_rope(q, positions_BT, inv_freq)
    k = _apply_rope(k, positions_BT, inv_freq)
    if cache is not None:
        k, v, cache = _write_cache(c, cache, k, v, cache_index, layer)
    x_BTD = x_BTD + _project(c, _attention(c, q, k, v, mask_BTS), lp["wo"], n_in=2)
    h = rms_norm(x_BTD, lp["mlp_norm"], c.norm_eps)
    gate = _project(c, h, lp["w_gate"])
    up = _project(c, h, lp["w_up"])
    x_BTD = x_BTD + _project(c, jax.nn.silu(gate) * up, lp["w_down"])
    return x_BTD, cache


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache of `max_len` slots."""
    shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def remat_layer(config: ModelConfig, body):
    """`body` wrapped in `jax.checkpoint` as `config.remat` asks: unchanged for "none", with
    nothing saved for "full", else with the named `jax.checkpoint_policies` policy."""
    if config.remat == "none":
        return body
    policy = None if config.remat == "full" else getattr(jax.checkpoint_policies, config.remat)
    return jax.checkpoint(body, policy=policy)


def _run_layers(
    params: Params, config: ModelConfig, x_BTD, positions_BT, mask_BTS, cache, cache_index
):
    """The layer loop: one `lax.scan` over the stacked layer params, `config.layer_unroll`
    iterations per trip. The whole cache rides in the carry when written in place
    (`cpu_kernels`); otherwise each layer's slice is a scan input and its update an output."""
    in_place = cache is not None and config.cpu_kernels
    inv_freq = rope_inv_freq(config)

    def body(carry, xs):
        x, carried = carry
        lp, layer, own = xs
        x, out = _layer(
            config,
            inv_freq,
            x,
            lp,
            positions_BT,
            mask_BTS,
            carried if in_place else own,
            cache_index,
            layer,
        )
        return (x, out if in_place else None), None if in_place else out

    init = (x_BTD, cache if in_place else None)
    xs = (params["layers"], jnp.arange(config.n_layers), None if in_place else cache)
    (x_BTD, carried), stacked = jax.lax.scan(
        remat_layer(config, body), init, xs, unroll=config.layer_unroll
    )
    return x_BTD, carried if in_place else stacked


def forward_hidden(
    params: Params,
    config: ModelConfig,
    tokens_BT: jax.Array,
    *,
    positions_BT: jax.Array | None = None,
    kv_mask_BS: jax.Array | None = None,
    cache: dict | None = None,
    cache_index: jax.Array | int = 0,
    segment_ids_BT: jax.Array | None = None,
):
    """Runs the backbone and returns `(hidden_BTD after the final norm, new cache or None)`.

    Args:
      tokens_BT: input ids.
      positions_BT: RoPE positions; by default `cumsum(kv_mask) - 1` (left padding skipped).
      kv_mask_BS: 1 for key slots that hold real tokens. Without a cache S == T; with a cache
        S is the cache length and the caller marks the slots it has filled (including the T
        being written now). Defaults to all ones.
      cache: a KV cache from `init_cache`, or None for a plain causal forward pass.
      cache_index: the slot where this call's first token is written: a scalar for every row,
        or an int array [B] of one slot per row (the multi-turn sampler's rows sit at
        different lengths).
      segment_ids_BT: packed rows (no cache): a query attends only to keys of its own segment
        id, so several sequences share a row as if each ran alone (with `positions_BT`
        restarting per sequence).
    """
    B, T = tokens_BT.shape
    S = T if cache is None else cache["k"].shape[2]
    if kv_mask_BS is None:
        kv_mask_BS = jnp.ones((B, S), bool)
    kv_mask_BS = kv_mask_BS.astype(bool)
    if positions_BT is None:
        if cache is not None:
            raise ValueError("positions_BT is required when decoding with a cache")
        positions_BT = jnp.maximum(jnp.cumsum(kv_mask_BS, axis=1) - 1, 0)
    if jnp.ndim(cache_index) == 1:  # a slot per row (rows at different lengths)
        q_slots_BT = cache_index[:, None] + jnp.arange(T)
        causal_BTS = jnp.arange(S)[None, None, :] <= q_slots_BT[:, :, None]
    else:
        q_slots = cache_index + jnp.arange(T)
        causal_BTS = (jnp.arange(S)[None, :] <= q_slots[:, None])[None]
    mask_BTS = causal_BTS & kv_mask_BS[:, None, :]
    if segment_ids_BT is not None:
        if cache is not None:
            raise ValueError("segment_ids_BT is for packed rows without a cache")
        mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
    x = params["embed"][tokens_BT]
    x, new_cache = _run_layers(params, config, x, positions_BT, mask_BTS, cache, cache_index)
    return rms_norm(x, params["final_norm"], config.norm_eps), new_cache


def output_embedding(params: Params, config: ModelConfig) -> jax.Array:
    """The [D, V] matrix that maps hidden states to logits (the embedding when tied)."""
    return params["embed"].T if config.tie_embeddings else params["lm_head"]


def hidden_to_logits(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Float32 logits from final hidden states."""
    return jnp.einsum(
        "...d,dv->...v",
        hidden,
        output_embedding(params, config),
        preferred_element_type=jnp.float32,
    )


def forward(params: Params, config: ModelConfig, tokens_BT: jax.Array, **kw):
    """Full forward pass: `(logits_BTV float32, new cache or None)`; see `forward_hidden`."""
    hidden, cache = forward_hidden(params, config, tokens_BT, **kw)
    return hidden_to_logits(params, config, hidden), cache


def value_head(params: Params, hidden: jax.Array) -> jax.Array:
    """Scalar value per position, float32: `hidden @ w + b`."""
    vh = params["value_head"]
    return jnp.einsum("...d,d->...", hidden, vh["w"], preferred_element_type=jnp.float32) + vh[
        "b"
    ].astype(jnp.float32)
