"""Sampling throughput: `sampling.generate` with its KV cache against decoding without a cache,
and the decode step against its roofline floor.

`python -m jaxrl_lrm.bench sampling [--quick] [--batch N] [--prompt-len P] [--new-tokens T]`

- `tokens_per_s`: new tokens per second of `generate` (B x T / wall time; compile excluded,
  median of repeats), `bench-cpu` preset, 32 sequences, 16-token prompts, 128 new tokens.
- `speedup_vs_nocache`: against jitted greedy decoding that runs the full forward pass over the
  whole sequence so far for every new token. Its per-step time is measured at the first and the
  last sequence length and integrated linearly over the steps (cost is close to linear in
  length at these sizes) rather than running all T steps.
- `decode_step_vs_floor`: one decode step's time over max(bytes read / copy bandwidth,
  FLOPs / matmul peak), both machine numbers measured in the same run. Bytes read per step:
  every parameter except the input-embedding table (only B rows of it are gathered) plus the
  whole preallocated K and V cache (attention reads every slot and masks).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import models, sampling
from jaxrl_lrm.models import transformer


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_peaks(repeats: int = 5) -> dict:
    """Measured fp32 matmul GFLOP/s and copy GB/s (bytes read + written per second,
    a donated in-place `x + 1` over 256 MiB)."""
    n = 1024
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))
    jax.block_until_ready(mm(a, b))
    t_mm = _median_time(lambda: mm(a, b), repeats)
    # In place (donated) so the time is memory traffic, not page faults on a fresh output; 256
    # MiB, past any last-level cache, so it is DRAM bandwidth.
    x = jnp.ones((64 * 2**20,), jnp.float32)
    cp = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        x = jax.block_until_ready(cp(x))
        if i >= 2:
            times.append(time.perf_counter() - t0)
    t_cp = statistics.median(times)
    return {"fp32_gflops": 2 * n**3 / t_mm / 1e9, "copy_gbps": 2 * x.nbytes / t_cp / 1e9}


def _nocache_step_fn(config):
    """One greedy token without a cache: the full causal forward over the sequence so far."""

    def step(params, tokens_BL):
        logits, _ = transformer.forward(params, config, tokens_BL)
        return jnp.argmax(logits[:, -1], axis=-1)

    return jax.jit(step)


def _prefill_fn(config, max_new_tokens):
    def prefill(params, ids, mask):
        B, P = ids.shape
        cache = transformer.init_cache(config, B, P + max_new_tokens)
        kv = jnp.concatenate([mask.astype(bool), jnp.ones((B, max_new_tokens), bool)], axis=1)
        pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        hidden, cache = transformer.forward_hidden(
            params, config, ids, positions_BT=pos, kv_mask_BS=kv, cache=cache, cache_index=0
        )
        return transformer.hidden_to_logits(params, config, hidden[:, -1]), cache

    return jax.jit(prefill)


def _decode_floor(model, B: int, S: int, peaks: dict):
    """One decode step's floor: max(bytes moved / copy bandwidth, FLOPs / matmul peak), with
    the weights (the untied input embedding excepted) and the whole KV cache read once."""
    c = model.config
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    if not c.tie_embeddings:
        param_bytes -= model.params["embed"].nbytes
    cache_bytes = 2 * c.n_layers * B * S * c.n_kv_heads * c.head_dim * 4
    matmul_params = (param_bytes // 4) - c.n_layers * 2 * c.d_model - c.d_model  # minus norms
    flops = 2 * B * matmul_params + 4 * B * S * c.n_heads * c.head_dim * c.n_layers
    floor_bw = (param_bytes + cache_bytes) / (peaks["copy_gbps"] * 1e9)
    floor_flops = flops / (peaks["fp32_gflops"] * 1e9)
    return max(floor_bw, floor_flops), floor_bw, floor_flops, param_bytes, cache_bytes, flops


def run(quick: bool = False, extra_args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="bench sampling")
    parser.add_argument("--preset", default="bench-cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32 if quick else 128)
    parser.add_argument("--repeats", type=int, default=3 if quick else 5)
    args = parser.parse_args(extra_args or [])
    B, P, T = args.batch, args.prompt_len, args.new_tokens

    model = models.init(args.preset, 0)
    config = model.config
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, config.vocab_size, P)) for _ in range(B)]
    kw = dict(max_new_tokens=T, temperature=1.0, rng=1)  # no EOS: every row runs T tokens

    t0 = time.perf_counter()
    gen = sampling.generate(model, prompts, **kw)
    compile_s = time.perf_counter() - t0
    t_gen = _median_time(lambda: sampling.generate(model, prompts, **kw).tokens, args.repeats)
    assert gen.tokens.shape == (B, T) and gen.decode_steps == T - 1

    ids, mask = sampling.left_pad(prompts, 0)
    prefill = _prefill_fn(config, T)
    jax.block_until_ready(prefill(model.params, ids, mask))
    t_prefill = _median_time(lambda: prefill(model.params, ids, mask), args.repeats)
    step_s = max(t_gen - t_prefill, 0.0) / (T - 1)

    peaks = machine_peaks(args.repeats)
    S = ids.shape[1] + T
    floor_s, floor_bw, floor_flops, param_bytes, cache_bytes, flops = _decode_floor(
        model, B, S, peaks
    )

    # Without a cache: per-token time at the first and last lengths, integrated linearly.
    nocache = _nocache_step_fn(config)
    seq = np.asarray(ids[:, -P:]) if ids.shape[1] >= P else np.asarray(ids)
    full = np.concatenate([seq, np.asarray(gen.tokens)], axis=1)
    t_len = {}
    for length in (P, P + T - 1):
        toks = jnp.asarray(full[:, :length])
        jax.block_until_ready(nocache(model.params, toks))
        t_len[length] = _median_time(
            lambda toks=toks: nocache(model.params, toks), max(1, args.repeats - 2)
        )
    t_nocache = T * (t_len[P] + t_len[P + T - 1]) / 2

    tokens_per_s = B * T / t_gen
    return {
        "summary": {
            "tokens_per_s": tokens_per_s,
            "speedup_vs_nocache": t_nocache / t_gen,
            "decode_step_vs_floor": step_s / floor_s,
        },
        "config": {
            "preset": args.preset,
            "batch": B,
            "prompt_len": P,
            "new_tokens": T,
            "cache_len": S,
            "repeats": args.repeats,
            "quick": quick,
            "devices": str(jax.devices()[0].device_kind),
            "n_devices": jax.device_count(),
        },
        "generate_s": t_gen,
        "compile_s": compile_s,
        "prefill_s": t_prefill,
        "decode_step_s": step_s,
        "floor_step_s": floor_s,
        "floor_bandwidth_s": floor_bw,
        "floor_flops_s": floor_flops,
        "bytes_per_step": param_bytes + cache_bytes,
        "flops_per_step": flops,
        "nocache_step_s_first_last": [t_len[P], t_len[P + T - 1]],
        "nocache_s_extrapolated": t_nocache,
        "nocache_note": "full forward per token at the growing length; timed at the first and "
        "last length and integrated linearly over the steps",
        **peaks,
    }
