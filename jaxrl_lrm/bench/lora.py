"""LoRA sampling: the merged weights (folded once per call) against the factored form.

`python -m jaxrl_lrm.bench lora [--quick]`

One jitted `sampling.sample_tokens` call (prefill + decode with a KV cache) from the
`bench-cpu` preset (`--quick`: 2 layers of it) with rank-16 adapters on all seven projections,
8 sequences, 16-token prompts, 64 new tokens (`--quick`: 16), EOS disabled so every call
decodes the same number of tokens. `merged_s`: `lora.merge` inside the same program, then
sampling with plain weights; `factored_s`: sampling with `lora.apply`'s factored weights (two
extra low-rank products per projection and token). Median of interleaved repeats, compile
excluded. `factored_over_merged` > 1 means merging is faster (what `train/programs.py` does).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from jaxrl_lrm import models, sampling
from jaxrl_lrm.models import lora


def _program(config, spec, merged: bool, T: int):
    def run(base, adapters, ids, mask, key):
        params = (lora.merge if merged else lora.apply)(base, adapters, spec.scale)
        return sampling.sample_tokens(
            params,
            config,
            ids,
            mask,
            key,
            max_new_tokens=T,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            eos_id=None,
            pad_id=0,
        )[0]

    return jax.jit(run)


def run(quick: bool = False, extra_args=()) -> dict:
    config = models.preset("bench-cpu", **({"n_layers": 2} if quick else {}))
    spec = lora.LoraConfig(rank=16, alpha=32.0)
    B, P, T, repeats = 8, 16, 16 if quick else 64, 3 if quick else 5
    base = models.init(config, 0).params
    adapters = lora.init_adapters(config, spec, jax.random.key(1))
    adapters = jax.tree.map(lambda x: x + 0.01, adapters)  # a trained-looking (non-zero) B
    ids = jax.random.randint(jax.random.key(2), (B, P), 0, config.vocab_size)
    mask = jnp.ones((B, P), jnp.int32)
    progs = {name: _program(config, spec, name == "merged", T) for name in ("merged", "factored")}
    times = {name: [] for name in progs}
    for fn in progs.values():  # compile and warm up
        jax.block_until_ready(fn(base, adapters, ids, mask, jax.random.key(3)))
    for i in range(repeats):
        for name, fn in progs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(base, adapters, ids, mask, jax.random.key(4 + i)))
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    summary = {
        "merged_s": round(med["merged"], 4),
        "factored_s": round(med["factored"], 4),
        "factored_over_merged": round(med["factored"] / med["merged"], 3),
        "new_tokens_per_call": B * T,
    }
    return {"summary": summary, "times": times, "shape": {"B": B, "P": P, "T": T, "rank": 16}}
