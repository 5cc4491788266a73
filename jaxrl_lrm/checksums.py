"""Checksums of array pytrees that do not depend on how the arrays are sharded, and the
finiteness check of a train state (used by `checkpoint` before a save and after a restore).

Each leaf's checksum is two sums (mod 2**32) of a 32-bit mix of each word of its bytes keyed by
the word's global position: exact and order-free, so the value is the same however the array is
sharded. Each device sums its own shard (one replica of each piece); the host adds the partial
sums, so no array is gathered to a host and no collective runs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


@jax.jit
def _leaf_finite(x: jax.Array) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.bool_(True)
    return jnp.all(jnp.isfinite(x))


def _as_array(x: Any) -> jax.Array:
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def _shards(x: jax.Array) -> list:
    """This process's shards of `x` that count: one replica of each distinct piece."""
    return [s for s in x.addressable_shards if s.replica_id == 0]


def _all_processes(local: np.ndarray) -> np.ndarray:
    """`local` (uint32) of every process, stacked on a leading axis (one small collective on a
    multi-process run; on one process, just `local[None]`)."""
    if jax.process_count() == 1:
        return local[None]
    return np.asarray(multihost_utils.process_allgather(local))


def all_finite(tree: Any) -> bool | jax.Array:
    """Whether every floating-point leaf of `tree` is free of NaN and inf.

    Outside `jit` a Python bool, from one single-device reduction per shard: no collective runs
    (programs with collectives dispatched side by side can deadlock XLA:CPU's simulated
    devices), and leaves on different meshes mix freely. Inside `jit` a traced boolean scalar.
    """
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        checks = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)
    inexact = [_as_array(x) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    flags = [_leaf_finite(s.data) for x in inexact for s in _shards(x)]
    local = np.array([all(bool(f) for f in flags)], np.uint32)
    return bool(_all_processes(local).min() == 1)


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
def _shard_summary(
    x: jax.Array, offsets: jax.Array, strides: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`(finite, partial checksum[2])` of one shard whose words start at global `offsets` (one
    per word axis) of a leaf with word strides `strides`; partials of a leaf's shards add up
    (mod 2**32) to the leaf's checksum."""
    w = _words(x)
    # global flat position of each word, from per-axis iotas
    pos = jnp.zeros(w.shape, jnp.uint32)
    for axis in range(w.ndim):
        idx = jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) + offsets[axis]
        pos = pos + idx * strides[axis]
    key = _mix32(pos * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15))
    h1 = jnp.sum(_mix32(w ^ key), dtype=jnp.uint32)
    h2 = jnp.sum(_mix32(w + _mix32(key ^ jnp.uint32(0x632BE5AB))), dtype=jnp.uint32)
    return _leaf_finite(x), jnp.stack([h1, h2])


def _word_strides(shape: tuple[int, ...], itemsize: int) -> np.ndarray:
    """Row-major strides (mod 2**32) of a leaf's word view (8-byte elements add an axis of 2)."""
    wshape = (*shape, 2) if itemsize == 8 else tuple(shape)
    strides, stride = [], 1
    for n in reversed(wshape):
        strides.append(stride)
        stride = (stride * n) % 2**32
    return np.array(strides[::-1], np.uint32)


def _leaf_partials(x: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    """Dispatches `_shard_summary` on each counted shard of `x` (each on its own device)."""
    strides = _word_strides(x.shape, x.dtype.itemsize)
    out = []
    for s in _shards(x):
        starts = [sl.indices(n)[0] for sl, n in zip(s.index, x.shape)]
        if x.dtype.itemsize == 8:
            starts.append(0)
        offsets = np.array(starts, np.uint32)
        out.append(_shard_summary(s.data, offsets, strides))
    return out


def summaries(tree: Any) -> dict[str, tuple[bool, str, list[int], str]]:
    """`{key path: (finite, checksum hex, shape, dtype)}` for every array leaf of `tree`.

    Each shard is summarised on its own device (no array is gathered to a host, and no
    collective runs: programs with collectives dispatched side by side, as these would be, can
    deadlock XLA:CPU's simulated devices); the per-shard sums are added on the host, and across
    processes by one small all-gather on a multi-process run.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    leaves = [(jax.tree_util.keystr(p), _as_array(x)) for p, x in flat]
    pending = [(name, x, _leaf_partials(x)) for name, x in leaves]  # dispatched, then fetched
    local = np.zeros((len(leaves), 3), np.uint32)  # [finite, h1, h2] per leaf
    for i, (_, _, parts) in enumerate(pending):
        local[i, 0] = all(bool(np.asarray(f)) for f, _ in parts)
        hashes = [np.asarray(h, np.uint64) for _, h in parts]
        local[i, 1:] = sum(hashes, np.zeros(2, np.uint64)) % 2**32
    every = _all_processes(local.reshape(-1)).reshape(-1, len(leaves), 3).astype(np.uint64)
    finite = every[:, :, 0].min(axis=0) == 1
    h = every[:, :, 1:].sum(axis=0) % 2**32
    return {
        name: (
            bool(finite[i]),
            f"{int(h[i, 0]):08x}{int(h[i, 1]):08x}",
            list(x.shape),
            str(x.dtype),
        )
        for i, (name, x, _) in enumerate(pending)
    }


def meta_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
