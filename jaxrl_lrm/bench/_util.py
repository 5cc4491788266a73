"""Shared helpers of the benchmarks: honest timing, machine peaks and FLOP counts.

Timing: the first call (compile + run) is reported apart as `compile_s`; every timed call ends
in `jax.block_until_ready` before the clock is read; the figure reported is the median of the
repeats. FLOPs: matmul FLOPs only (norms, RoPE, softmax and the optimizer are not counted),
from the *matmul parameters* (every weight matrix, including the output head, but not the
input-embedding table, which is a gather, nor the norm scales), plus attention counted over
the full `[T, S]` score matrix (no causal discount, the PaLM convention).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_lrm.models.config import ModelConfig


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    """Times `fn()` (blocked on its result): `{"compile_s", "median_s", "times_s", "result"}`.

    `compile_s` is the wall time of the first warm-up call (compilation plus one run).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"repeats={repeats!r}, warmup={warmup!r}: expected repeats >= 1, warmup >= 0"
        )
    compile_s = 0.0
    result = None
    for i in range(warmup):
        t0 = time.perf_counter()
        result = jax.block_until_ready(fn())
        if i == 0:
            compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "times_s": times,
        "result": result,
    }


def matmul_gflops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """Measured GFLOP/s of an `n x n @ n x n` jitted matmul (2 n^3 FLOPs) in `dtype`."""
    if n < 1:
        raise ValueError(f"n={n!r}: expected a positive matrix size")
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(
        lambda a, b: jnp.dot(a, b, precision="highest", preferred_element_type=jnp.dtype(dtype))
    )
    t = timed(lambda: mm(a, b), repeats)["median_s"]
    return 2 * n**3 / t / 1e9


def copy_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s (bytes read + written) of a donated in-place `x + 1` over a
    float32 buffer of `mib` MiB (donated so it measures traffic, not page faults)."""
    if mib < 1:
        raise ValueError(f"mib={mib!r}: expected a positive size in MiB")
    x = jnp.ones((mib * 2**18,), jnp.float32)
    step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        x = jax.block_until_ready(step(x))
        if i >= 2:  # the first two include compilation and first touch
            times.append(time.perf_counter() - t0)
    return 2 * x.nbytes / statistics.median(times) / 1e9


def matmul_params(config: ModelConfig) -> dict:
    """Weight-matrix parameter counts: `{"layers": all blocks, "head": D x V output head}`.

    Biases, norm scales and the input-embedding table (a gather) are excluded; the output
    head counts even when tied, since it is a matmul either way.
    """
    c = config
    attn = c.d_model * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads)
    mlp = 3 * c.d_model * c.mlp_dim
    return {"layers": c.n_layers * (attn + mlp), "head": c.d_model * c.vocab_size}


def forward_flops(
    config: ModelConfig,
    batch: int,
    seq_len: int,
    logit_positions: int,
    context: float | None = None,
) -> float:
    """Matmul FLOPs of one forward pass over `batch` rows of `seq_len` tokens, with logits at
    `logit_positions` per row: `2 * layer_params * tokens + 2 * D * V * logit tokens +
    4 * L * N * H * context * tokens` (QK^T and PV; `context` keys per query, default
    `seq_len`, i.e. the full score matrix)."""
    if min(batch, seq_len) < 1 or logit_positions < 0:
        raise ValueError(
            f"batch={batch!r}, seq_len={seq_len!r}, logit_positions="
            f"{logit_positions!r}: expected positive sizes"
        )
    c = config
    p = matmul_params(c)
    ctx = seq_len if context is None else context
    tokens = batch * seq_len
    attn = 4 * c.n_layers * c.n_heads * c.head_dim * ctx * tokens
    return 2 * p["layers"] * tokens + 2 * p["head"] * batch * logit_positions + attn


def train_flops(config: ModelConfig, batch: int, seq_len: int, logit_positions: int) -> float:
    """Forward + backward: 3x `forward_flops` (the `6 x params x tokens` rule plus attention)."""
    return 3 * forward_flops(config, batch, seq_len, logit_positions)


def generate_flops(config: ModelConfig, batch: int, prompt_len: int, new_tokens: float) -> float:
    """Prefill of `prompt_len` (logits at the last slot) plus `new_tokens - 1` single-token
    decode steps, each attending to the real context so far (prompt + tokens before it)."""
    prefill = forward_flops(config, batch, prompt_len, 1)
    steps = max(new_tokens - 1, 0)
    mean_ctx = prompt_len + steps / 2 + 1
    decode = steps * forward_flops(config, batch, 1, 1, context=mean_ctx)
    return prefill + decode


def machine() -> dict:
    """What the numbers were measured on: device kind, count, CPU count, load average."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "n_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
    }


def _unwrap(fn) -> tuple[Any, tuple, dict]:
    """A jitted function and the positional and keyword arguments `functools.partial` bound."""
    args: tuple = ()
    kwargs: dict = {}
    while isinstance(fn, functools.partial):
        args, kwargs = (*fn.args, *args), {**fn.keywords, **kwargs}
        fn = fn.func
    return fn, args, kwargs


def cache_size(fn) -> int | None:
    """How many compiled versions a jitted function (or a partial of one) holds; None if JAX
    does not say."""
    size = getattr(_unwrap(fn)[0], "_cache_size", None)
    return size() if callable(size) else None


def compiled_memory(fn, *args) -> dict:
    """`memory_analysis()` of a jitted function (or a partial of one) compiled for `args`:
    `{"argument_size", "output_size", "temp_size", "alias_size"}` in bytes ({} if unknown, or
    when `fn` is not a jitted function)."""
    jitted, bound, kwargs = _unwrap(fn)
    if not hasattr(jitted, "lower"):  # not a jitted function (a closure over one)
        return {}
    ma = jitted.lower(*bound, *args, **kwargs).compile().memory_analysis()
    if ma is None:
        return {}
    return {
        k: int(getattr(ma, k + "_in_bytes"))
        for k in ("argument_size", "output_size", "temp_size", "alias_size")
    }


def print_table(rows: dict, title: str) -> None:
    """Prints `name value` rows (floats to 4 significant digits)."""
    print(title)
    for k, v in rows.items():
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(f"  {k:<32}{text:>16}")
