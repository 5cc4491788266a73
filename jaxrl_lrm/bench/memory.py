"""Peak memory of a GRPO step: `python -m jaxrl_lrm.bench memory [--quick] [--preset NAME]
[--prompts N] [--group G] [--new-tokens T]`.

Runs the `grpo_step` benchmark's step (the trainer's pieces, `bench-cpu`, vocabulary 8192,
GRPO with a k3 KL reference) three times in a fresh subprocess per variant, so each peak is
its own: full fine-tuning with a float32 and a bfloat16 reference (`model.ref_dtype`), and LoRA
rank 16 on every projection (`model.lora.rank=16`; the reference is the base, no copy). The
summary's `lora_state_ratio` is the LoRA run's live device bytes over the full float32 run's
(policy + reference + optimizer state and whatever else the trainer keeps alive), and
`step_s_full` / `step_s_lora` the GRPO step times (median of the steps after the first). Per
variant:

- `peak_rss_mb`: the process's peak resident set (`getrusage`), compilation included; on a
  CPU backend device buffers live in host memory, so this covers them too.
- `live_device_mb`: bytes of every live JAX array after the step (policy, optimizer state,
  reference and whatever else the trainer keeps alive).
- `device_peak_mb`: `memory_stats()["peak_bytes_in_use"]` where the backend reports it (GPU,
  TPU); else (CPU) an estimate from the compiled programs' `memory_analysis()`: live bytes +
  the largest `temp + output - aliased` of the sampler, the log-prob pass and the update.
- `ref_mb`: the reference parameters' bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.bench import _util
from jaxrl_lrm.train.batch import Prompts, Rewards, RolloutBatch

DTYPES = ("float32", "bfloat16")


def _mb(n: float) -> float:
    return n / 2**20


def measure(
    preset: str,
    prompts: int,
    group: int,
    new_tokens: int,
    ref_dtype: str,
    vocab_size: int = 8192,
    lora_rank: int = 0,
) -> dict:
    """One variant in this process: three full steps, then the memory figures (module doc)."""
    if ref_dtype not in DTYPES:
        raise ValueError(f"ref_dtype={ref_dtype!r}: expected one of {DTYPES}")
    from jaxrl_lrm.bench import grpo_step

    config = grpo_step.make_config(
        preset=preset,
        prompts=prompts,
        group=group,
        new_tokens=new_tokens,
        ref_dtype=None if lora_rank else ref_dtype,
        vocab_size=vocab_size,
        lora_rank=lora_rank,
    )
    parts = grpo_step.build(config)
    try:
        rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        times = []
        for i in range(3):
            wall, metrics = grpo_step.full_step(parts, i)
            times.append(wall)
    finally:
        parts["stage"].on_close()
    live = sum(x.nbytes for x in jax.live_arrays())
    s, st = parts["setup"], parts["state"]
    ref = sum(x.nbytes for x in jax.tree.leaves(s.ref_params))
    progs = _program_memory(s, st)
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        device_peak, source = stats["peak_bytes_in_use"], "memory_stats"
    else:
        extra = max(
            (p["temp_size"] + p["output_size"] - p["alias_size"] for p in progs.values() if p),
            default=0,
        )
        device_peak, source = live + extra, "memory_analysis"
    return {
        "ref_dtype": ref_dtype,
        "lora_rank": lora_rank,
        "step_s": float(np.median(times[1:])),
        "peak_rss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "rss_after_build_mb": _mb(rss_built),
        "live_device_mb": _mb(live),
        "device_peak_mb": _mb(device_peak),
        "device_source": source,
        "ref_mb": _mb(ref),
        "params_mb": _mb(sum(x.nbytes for x in jax.tree.leaves(st.params))),
        "opt_state_mb": _mb(sum(x.nbytes for x in jax.tree.leaves(st.policy.opt_state))),
        "programs_mb": {k: {n: _mb(v) for n, v in p.items()} for k, p in progs.items()},
        "loss": metrics["loss/total"],
    }


def _program_memory(s, st) -> dict:
    """`memory_analysis()` of the sampler, the score pass and the update, compiled for a
    batch of the run's own rows."""
    rows = [s.train_rows[i] for i in range(s.config.train.prompts_per_step)]
    _, ids, mask = s.text.encode(rows, s.group_size)
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)
    rollout = s.programs.sample(st.params, prompts, st.rng, st.step)
    scored = s.programs.score(st, s.ref_params, rollout)
    rewards = sharding.shard_batch(
        Rewards(rewards_B=np.zeros(len(ids), np.float32), dense_BT=None), s.mesh
    )
    batch = RolloutBatch(rollout=rollout, scored=scored, rewards=rewards)
    return {
        "sample": _util.compiled_memory(s.programs.sample, st.params, prompts, st.rng, st.step),
        "ref_logprobs": _util.compiled_memory(s.programs.score, st, s.ref_params, rollout),
        "update": _util.compiled_memory(s.programs.update, st, batch),
    }


def _child(argv: list[str]) -> dict:
    """Runs `measure` in a fresh interpreter so that each variant's peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl_lrm.bench.memory", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child {argv} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench memory")
    p.add_argument("--preset", default="bench-cpu")
    p.add_argument("--prompts", type=int, default=None)
    p.add_argument("--group", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--lora-rank", type=int, default=16, help="the LoRA variant's rank")
    return p


def run(quick: bool = False, extra_args: list[str] | None = None) -> dict:
    """Both reference dtypes, each in its own subprocess; returns `{"summary": ...}`."""
    a = _parser().parse_args(extra_args or [])
    sizes = [
        a.prompts or (2 if quick else 4),
        a.group or (4 if quick else 8),
        a.new_tokens or (32 if quick else 128),
    ]
    common = ["--child", "--preset", a.preset, "--vocab-size", str(a.vocab_size)]
    common += ["--prompts", str(sizes[0]), "--group", str(sizes[1]), "--new-tokens", str(sizes[2])]
    variants = {
        dtype: _child([*common, "--ref-dtype", dtype, "--lora-rank", "0"]) for dtype in DTYPES
    }
    variants["lora"] = _child([*common, "--lora-rank", str(a.lora_rank)])
    f32, b16, low = variants["float32"], variants["bfloat16"], variants["lora"]
    summary = {
        "peak_rss_mb_ref_fp32": f32["peak_rss_mb"],
        "peak_rss_mb_ref_bf16": b16["peak_rss_mb"],
        "device_peak_mb_ref_fp32": f32["device_peak_mb"],
        "device_peak_mb_ref_bf16": b16["device_peak_mb"],
        "live_device_mb_ref_fp32": f32["live_device_mb"],
        "live_device_mb_ref_bf16": b16["live_device_mb"],
        "ref_mb_fp32": f32["ref_mb"],
        "ref_mb_bf16": b16["ref_mb"],
        "device_source": f32["device_source"],
        "lora_rank": a.lora_rank,
        "live_device_mb_lora": low["live_device_mb"],
        "lora_state_ratio": low["live_device_mb"] / f32["live_device_mb"],
        "step_s_full": f32["step_s"],
        "step_s_lora": low["step_s"],
    }
    _util.print_table(
        summary, f"memory of a GRPO step, {a.preset}, {sizes[0]} x {sizes[1]} x {sizes[2]}"
    )
    return {
        "summary": summary,
        "variants": variants,
        "config": {"preset": a.preset, "sizes": sizes, "vocab_size": a.vocab_size, "quick": quick},
        "machine": _util.machine(),
    }


if __name__ == "__main__":
    parser = _parser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--ref-dtype", default="float32")
    args = parser.parse_args()
    result = measure(
        args.preset,
        args.prompts or 4,
        args.group or 8,
        args.new_tokens or 128,
        args.ref_dtype,
        args.vocab_size,
        args.lora_rank,
    )
    print(json.dumps(result, default=float))
