"""The decoder-only transformer (Llama 3 / Qwen2 / Qwen3) as pure functions over a params pytree.

Layer parameters are stacked on a leading `layers` axis. Models of up to `UNROLL_MAX_LAYERS`
layers run them as a Python loop (on XLA:CPU the scan's stacked residuals and
dynamic-update-slices made the backward ~5x the forward instead of ~3x, and each decode step
copied every layer's cache); deeper models scan over them, which keeps compile time flat in
depth. Projections are plain 2-D matmuls over reshaped weights (`_dense`). Shapes are written into names: B batch, T query
positions, S key positions (cache slots), D d_model, N query heads, K kv heads, G = N // K,
H head dim, F mlp dim, V vocab, L layers.

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

from jaxrl_lrm.models.config import ModelConfig

Params = dict
UNROLL_MAX_LAYERS = 8  # shallower models run their layers as a Python loop (see forward_hidden)
_NEG = -1e30  # finite "minus infinity": a fully masked row gives a uniform softmax, never NaN


def param_axes(config: ModelConfig, *, value_head: bool = False) -> dict:
    """Logical axis names of every parameter (same tree structure as `init_params`)."""
    layers = {
        "attn_norm": ("layers", "norm"),
        "wq": ("layers", "embed", "heads", "head_dim"),
        "wk": ("layers", "embed", "kv_heads", "head_dim"),
        "wv": ("layers", "embed", "kv_heads", "head_dim"),
        "wo": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm": ("layers", "norm"),
        "w_gate": ("layers", "embed", "mlp"),
        "w_up": ("layers", "embed", "mlp"),
        "w_down": ("layers", "mlp", "embed"),
    }
    if config.qkv_bias:
        layers |= {"bq": ("layers", "heads", "head_dim"), "bk": ("layers", "kv_heads", "head_dim"),
                   "bv": ("layers", "kv_heads", "head_dim")}
    if config.qk_norm:
        layers |= {"q_norm": ("layers", "norm"), "k_norm": ("layers", "norm")}
    axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
    if not config.tie_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    if value_head:
        axes["value_head"] = {"w": ("embed",), "b": ()}
    return axes


def param_shapes(config: ModelConfig, *, value_head: bool = False) -> dict:
    """Shapes of every parameter (same tree structure as `param_axes`)."""
    c = config
    L, D, N, K, H, F, V = (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim,
                           c.mlp_dim, c.vocab_size)
    layers = {
        "attn_norm": (L, D), "wq": (L, D, N, H), "wk": (L, D, K, H), "wv": (L, D, K, H),
        "wo": (L, N, H, D), "mlp_norm": (L, D), "w_gate": (L, D, F), "w_up": (L, D, F),
        "w_down": (L, F, D),
    }
    if c.qkv_bias:
        layers |= {"bq": (L, N, H), "bk": (L, K, H), "bv": (L, K, H)}
    if c.qk_norm:
        layers |= {"q_norm": (L, H), "k_norm": (L, H)}
    shapes = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not c.tie_embeddings:
        shapes["lm_head"] = (D, V)
    if value_head:
        shapes["value_head"] = {"w": (D,), "b": ()}
    return shapes


def init_params(config: ModelConfig, rng: jax.Array, *, value_head: bool = False,
                init_std: float = 0.02) -> Params:
    """Random parameters: N(0, init_std) matrices, unit norms, zero biases and value head."""
    shapes = param_shapes(config, value_head=value_head)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(rng, len(flat))
    dtype = jnp.dtype(config.dtype)
    leaves = []
    for key, (path, shape) in zip(keys, flat):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            leaves.append(jnp.ones(shape, dtype))
        elif "value_head" in name or name.endswith("['bq']") or name.endswith("['bk']") \
                or name.endswith("['bv']"):
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
    """`x[..., D] @ w[D, *out]` as one plain 2-D matmul `[rows, D] @ [D, prod(out)]`.

    Reshaping the (contiguous) weight is free; XLA:CPU runs 2-D dots much better than the
    multi-dimensional einsums they replace, whose weight gradients needed transposes."""
    d = w.shape[0]
    y = jnp.dot(x.reshape(-1, d), w.reshape(d, -1))
    return y.reshape(*x.shape[:-1], *w.shape[1:])


def _attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS):
    """Grouped-query attention with the G query heads of a KV head stacked along the query
    axis, so both products are batched matmuls over `[B, K]` with no broadcast of K/V."""
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    G = N // K
    q = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    k = k_BSKH.transpose(0, 2, 1, 3)  # [B,K,S,H]
    v = v_BSKH.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqh,bksh->bkqs", q, k,
                        preferred_element_type=jnp.float32) / math.sqrt(H)
    scores = scores.reshape(B, K, G, T, S)
    scores = jnp.where(mask_BTS[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(B, K, G * T, S)
    out = jnp.einsum("bkqs,bksh->bkqh", probs, v)  # [B,K,G*T,H]
    return out.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def _layer(config: ModelConfig, inv_freq, x_BTD, lp, positions_BT, mask_BTS, k_cache, v_cache,
           cache_index, layer=0):
    """One transformer block. Returns the new residual stream and the updated cache.

    `k_cache`/`v_cache` are the whole stacked `[L,B,S,K,H]` caches (or None): only this call's
    T new keys are written, at `[layer, :, cache_index:cache_index + T]`, in place."""
    c = config
    h = rms_norm(x_BTD, lp["attn_norm"], c.norm_eps)
    q = _dense(h, lp["wq"])
    k = _dense(h, lp["wk"])
    v = _dense(h, lp["wv"])
    if c.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    if c.qk_norm:
        q = rms_norm(q, lp["q_norm"], c.norm_eps)
        k = rms_norm(k, lp["k_norm"], c.norm_eps)
    q = _apply_rope(q, positions_BT, inv_freq)
    k = _apply_rope(k, positions_BT, inv_freq)
    if k_cache is not None:
        at = (layer, 0, cache_index, 0, 0)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k[None].astype(k_cache.dtype), at)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v[None].astype(v_cache.dtype), at)
        k = jax.lax.dynamic_index_in_dim(k_cache, layer, keepdims=False)
        v = jax.lax.dynamic_index_in_dim(v_cache, layer, keepdims=False)
    attn = _attention(q, k, v, mask_BTS)
    B, T = attn.shape[:2]
    x_BTD = x_BTD + _dense(attn.reshape(B, T, -1), lp["wo"].reshape(-1, c.d_model))
    h = rms_norm(x_BTD, lp["mlp_norm"], c.norm_eps)
    gate = _dense(h, lp["w_gate"])
    up = _dense(h, lp["w_up"])
    x_BTD = x_BTD + _dense(jax.nn.silu(gate) * up, lp["w_down"])
    return x_BTD, k_cache, v_cache


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache of `max_len` slots."""
    shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def forward_hidden(params: Params, config: ModelConfig, tokens_BT: jax.Array, *,
                   positions_BT: jax.Array | None = None, kv_mask_BS: jax.Array | None = None,
                   cache: dict | None = None, cache_index: jax.Array | int = 0):
    """Runs the backbone and returns `(hidden_BTD after the final norm, new cache or None)`.

    Args:
      tokens_BT: input ids.
      positions_BT: RoPE positions; by default `cumsum(kv_mask) - 1` (left padding skipped).
      kv_mask_BS: 1 for key slots that hold real tokens. Without a cache S == T; with a cache
        S is the cache length and the caller marks the slots it has filled (including the T
        being written now). Defaults to all ones.
      cache: a KV cache from `init_cache`, or None for a plain causal forward pass.
      cache_index: the slot where this call's first token is written.
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
    q_slots = cache_index + jnp.arange(T)
    mask_BTS = (jnp.arange(S)[None, :] <= q_slots[:, None])[None] & kv_mask_BS[:, None, :]
    inv_freq = rope_inv_freq(config)
    x = params["embed"][tokens_BT]

    if cache is None and config.n_layers <= UNROLL_MAX_LAYERS:
        for i in range(config.n_layers):
            lp = jax.tree.map(lambda w, i=i: w[i], params["layers"])
            x, _, _ = _layer(config, inv_freq, x, lp, positions_BT, mask_BTS, None, None, 0)
        new_cache = None
    elif cache is None:
        def body(x, lp):
            x, _, _ = _layer(config, inv_freq, x, lp, positions_BT, mask_BTS, None, None, 0)
            return x, None
        x, _ = jax.lax.scan(body, x, params["layers"])
        new_cache = None
    elif config.n_layers <= UNROLL_MAX_LAYERS:
        ck, cv = cache["k"], cache["v"]
        for i in range(config.n_layers):
            lp = jax.tree.map(lambda w, i=i: w[i], params["layers"])
            x, ck, cv = _layer(config, inv_freq, x, lp, positions_BT, mask_BTS, ck, cv,
                               cache_index, i)
        new_cache = {"k": ck, "v": cv}
    else:
        def body(carry, inputs):
            x, ck, cv = carry
            lp, i = inputs
            x, ck, cv = _layer(config, inv_freq, x, lp, positions_BT, mask_BTS, ck, cv,
                               cache_index, i)
            return (x, ck, cv), None
        (x, ck, cv), _ = jax.lax.scan(body, (x, cache["k"], cache["v"]),
                                      (params["layers"], jnp.arange(config.n_layers)))
        new_cache = {"k": ck, "v": cv}
    return rms_norm(x, params["final_norm"], config.norm_eps), new_cache


def output_embedding(params: Params, config: ModelConfig) -> jax.Array:
    """The [D, V] matrix that maps hidden states to logits (the embedding when tied)."""
    return params["embed"].T if config.tie_embeddings else params["lm_head"]


def hidden_to_logits(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Float32 logits from final hidden states."""
    return jnp.einsum("...d,dv->...v", hidden, output_embedding(params, config),
                      preferred_element_type=jnp.float32)


def forward(params: Params, config: ModelConfig, tokens_BT: jax.Array, **kw):
    """Full forward pass: `(logits_BTV float32, new cache or None)`; see `forward_hidden`."""
    hidden, cache = forward_hidden(params, config, tokens_BT, **kw)
    return hidden_to_logits(params, config, hidden), cache


def value_head(params: Params, hidden: jax.Array) -> jax.Array:
    """Scalar value per position, float32: `hidden @ w + b`."""
    vh = params["value_head"]
    return (jnp.einsum("...d,d->...", hidden, vh["w"], preferred_element_type=jnp.float32)
            + vh["b"].astype(jnp.float32))
