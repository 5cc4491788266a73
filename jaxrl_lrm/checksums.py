"""Checksums of array pytrees that do not depend on how the arrays are sharded, and the
finiteness check of a train state (used by `checkpoint` before a save and after a restore).

Each leaf's checksum is two sums (mod 2**32) of a 32-bit mix of each word of its bytes keyed by
the word's global position: exact and order-free, so the value is the same however the array is
sharded and no array is gathered to a host for it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _leaf_finite(x: jax.Array) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.bool_(True)
    return jnp.all(jnp.isfinite(x))


def all_finite(tree: Any) -> bool | jax.Array:
    """Whether every floating-point leaf of `tree` is free of NaN and inf.

    Outside `jit` a Python bool (one tiny reduction per leaf, on the leaf's own devices, so
    leaves on different meshes mix freely); inside `jit` a traced boolean scalar.
    """
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        checks = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)
    return all(bool(_host(c)) for c in [_leaf_finite(x) for x in leaves])


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with p ~ 1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bytes of `x` as uint32 words (one per element, two for 8-byte elements)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size in (4, 8):
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _leaf_summary(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(finite, checksum[2])` of one leaf; the checksum does not depend on the sharding."""
    w = _words(x)
    # global flat position of each word, from per-axis iotas (no flat iota to re-shard)
    pos = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        pos = pos + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride)
        stride = (stride * w.shape[axis]) % 2**32
    key = _mix32(pos * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15))
    h1 = jnp.sum(_mix32(w ^ key), dtype=jnp.uint32)
    h2 = jnp.sum(_mix32(w + _mix32(key ^ jnp.uint32(0x632BE5AB))), dtype=jnp.uint32)
    return _leaf_finite(x), jnp.stack([h1, h2])


def _host(x: jax.Array) -> np.ndarray:
    # The outputs are tiny and replicated: on a multi-host run every process holds them whole.
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def summaries(tree: Any) -> dict[str, tuple[bool, str, list[int], str]]:
    """`{key path: (finite, checksum hex, shape, dtype)}` for every array leaf of `tree`."""
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    pending = [
        (jax.tree_util.keystr(p), jnp.asarray(x) if not isinstance(x, jax.Array) else x)
        for p, x in flat
    ]
    results = [(name, x, _leaf_summary(x)) for name, x in pending]  # dispatched, then fetched
    for name, x, (finite, h) in results:
        h = _host(h)
        out[name] = (
            bool(_host(finite)),
            f"{int(h[0]):08x}{int(h[1]):08x}",
            list(x.shape),
            str(x.dtype),
        )
    return out


def meta_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
