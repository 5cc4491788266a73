"""Sampler against trainer log-probs: `python -m jaxrl_lrm.bench mismatch [--quick]`.

The smoke setup (configs/smoke.yaml, one device) with 16 prompts x 4 completions x 8 tokens
(`--quick`: 4 prompts x 4 tokens), in float32 and bfloat16: one rollout from the sampler, its
completion tokens' log-probs recomputed by the trainer's pass (`update.completion_logprobs`,
the same parameters), and over the completion tokens the max and mean |Δ|, the share of tokens
whose log-probs are bitwise equal and the share whose ratio leaves the clip band [0.8, 1.2].
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.config import load_config
from jaxrl_lrm.train import rl_stage
from jaxrl_lrm.train import update as upd
from jaxrl_lrm.train.batch import Prompts

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def measure(overrides: list[str]) -> dict:
    """Mismatch figures of one rollout of the smoke setup with `overrides`."""
    s = rl_stage.build(
        load_config(SMOKE, ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"] + overrides)
    )
    rows = [s.train_rows[i] for i in range(s.config.train.prompts_per_step)]
    _, ids, mask = s.text.encode(rows, s.group_size)
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)
    r = s.programs.sample(s.state.params, prompts, s.state.rng, s.state.step)
    u = s.update_config
    logp = jax.jit(
        lambda p, t, a: upd.completion_logprobs(p, u.model, t, a, u.prompt_len, u.temperature)[0]
    )(s.state.params, r.tokens_BL, r.attn_BL)
    m = np.asarray(r.completion_mask_BT).astype(bool)
    d = (np.asarray(logp) - np.asarray(r.sampler_logp_BT))[m]
    ratio = np.exp(d)
    return {
        "tokens": int(m.sum()),
        "max_abs_logp": float(np.abs(d).max()),
        "mean_abs_logp": float(np.abs(d).mean()),
        "bitwise_frac": float((d == 0).mean()),
        "frac_ratio_outside_clip": float(((ratio < 0.8) | (ratio > 1.2)).mean()),
    }


def run(quick: bool = False, extra_args=None) -> dict:
    size = (
        ["train.prompts_per_step=4", "sampling.max_new_tokens=4"]
        if quick
        else ["train.prompts_per_step=16", "sampling.max_new_tokens=8"]
    )
    out = {dtype: measure(size + [f"model.dtype={dtype}"]) for dtype in ("float32", "bfloat16")}
    summary = {f"{dtype}_{k}": v for dtype, m in out.items() for k, v in m.items()}
    return {"summary": summary, **out}
