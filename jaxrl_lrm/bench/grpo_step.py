"""One full RL step with the real trainer pieces: `python -m jaxrl_lrm.bench grpo_step
[--quick] [--preset NAME] [--prompts N] [--group G] [--new-tokens T] [--vocab-size V]
[--ref-dtype float32|bfloat16] [--lengths uniform|varied] [--pack-rows N] [--vs-trl]
[--vs-tunix]`.

GRPO (k3 KL to the reference, beta 0.04) on `bench-cpu` with the vocabulary set to 8192, the
`addition` task's prompts (left-padded to 16 tokens), 4 prompts x 8 completions x 128 new
tokens at temperature 1 (quick: 2 x 4 x 32). The step is exactly the trainer's: the RL stage
of `train.rl_stage` calling `train.rl.rl_step` (sample -> score dispatched (reference
log-probs) -> host copy, decode + rewards -> the donated update, which computes the
advantages), its metrics fetched.

Reported:
- `step_s`: median wall time of the full step (compile excluded).
- per-phase times, each timed alone and blocked: `generate_s`, `decode_s`, `reward_s`,
  `score_s` (the reference pass, plus the old-policy pass when several updates per step need
  it); `update_s` (the step less its sampling and reward phases: the update and the metrics
  fetch); and the in-loop `time/sample_s`, `time/reward_s` of the trainer.
- `floor_ratio`: step time / FLOP floor (median over repeats, the peak measured right before
  each step), floor = (generate FLOPs + forward FLOPs of the reference (and old) pass + 3 x
  forward FLOPs of the update, over the real tokens only (`step_flops`), all matmul FLOPs with
  attention, see `bench._util`) / the fp32 matmul peak of the same run; `decode_vs_floor` the
  same for `generate_s` alone.
- `pad_frac`: the update's share of computed token slots that hold padding (the packed update's
  `update/pad_frac` with `--pack-rows N`, i.e. `train.pack_rows`; else 1 - real / (B x (P + T))).
- `host_exposed_frac`: host time the device sits idle, max(0, decode + reward - the device
  work dispatched before them (the score pass)) / step time.
- `vs_trl`, `vs_tunix`: the peer's step time over ours, both measured in this run on the same
  shape, batch and lengths (`--vs-trl`: TRL's `GRPOTrainer` via `bench.peers`, in a child
  process right after ours, its details in the JSON's `peers`); null without the flag, when
  the peer is not importable, and always for Tunix (no runner: `google-tunix` would replace the installed transformers).

The random-weight policy samples any of the 8192 ids, so the character tokenizer is wrapped
to decode ids past its alphabet onto it (as a real 8192-token vocabulary would decode them);
EOS ends a row with probability ~1/V per token, so with `--lengths uniform` rows run close to
all 128 tokens; `--lengths varied` edits the policy and reference so that EOS fires with
probability 1.5 / T per token (`bench.workload`; TRL's model gets the same edit).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.bench import _util, workload
from jaxrl_lrm.config import Config, from_dict
from jaxrl_lrm.rewards.executor import RewardExecutor
from jaxrl_lrm.train import host, rl, rl_stage
from jaxrl_lrm.train.batch import Prompts
from jaxrl_lrm.train.programs import needs_old_pass

# Peer step times measured earlier on this 2-vCPU machine at bench-cpu, 4 x 8 x 128, vocab
# 8192 (BENCHMARKS.md); not the same run, so only reported beside the same-run ratios.
RECORDED_PEERS_S = {"trl": 13.2}


class WideCharTokenizer:
    """A `CharTokenizer` whose `decode` accepts every id of a larger model vocabulary: ids past
    the alphabet wrap onto it (a stand-in for a real tokenizer of that size)."""

    def __init__(self, base):
        self.base = base
        self.pad_id, self.eos_id, self.bos_id = base.pad_id, base.eos_id, base.bos_id
        self.vocab_size = base.vocab_size
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        n, k = self.base.vocab_size, 3  # the 3 special ids come first
        wrapped = [i if i < n else k + (i - k) % (n - k) for i in map(int, ids)]
        return self.base.decode(wrapped, skip_special_tokens)


def make_config(
    *,
    preset: str = "bench-cpu",
    prompts: int = 4,
    group: int = 8,
    new_tokens: int = 128,
    vocab_size: int = 8192,
    beta: float = 0.04,
    ref_dtype: str | None = None,
    prompt_len: int = 16,
    pack_rows: int = 0,
    lora_rank: int = 0,
) -> Config:
    """The benchmark's run config (GRPO on the `addition` task, one device; LoRA adapters on
    every projection at `lora_rank` > 0)."""
    model = {"preset": preset, "overrides": {"vocab_size": vocab_size}, "ref_dtype": ref_dtype}
    if lora_rank:
        model["lora"] = {"rank": lora_rank, "alpha": 2.0 * lora_rank}
    return from_dict(
        {
            "seed": 0,
            "model": model,
            "data": {"source": "task", "task": "addition", "max_prompt_len": prompt_len},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
            "algorithm": {"name": "grpo", "group_size": group, "beta": beta, "kl_kind": "k3"},
            "sampling": {"max_new_tokens": new_tokens, "temperature": 1.0},
            "train": {
                "steps": 1000,
                "prompts_per_step": prompts,
                "lr": 1e-6,
                "pack_rows": pack_rows,
            },
        }
    )


def build(config: Config, lengths: str = "uniform") -> dict:
    """The RL run's pieces (`train.rl_stage.build`, the trainer's own builder) and its stage;
    `lengths="varied"` edits the policy and the reference so EOS fires (`bench.workload`)."""
    if lengths not in workload.LENGTHS:
        raise ValueError(f"lengths={lengths!r}: expected one of {workload.LENGTHS}")
    s = rl_stage.build(config, mesh=sharding.make_mesh(1, 1, 1))
    s = dataclasses.replace(
        s, text=host.Text(WideCharTokenizer(s.text.tokenizer), s.text.template, s.text.prompt_len)
    )
    if lengths == "varied":
        eos, h = s.text.tokenizer.eos_id, workload.hazard_for(config.sampling.max_new_tokens)
        policy = dataclasses.replace(
            s.state.policy, params=workload.bias_eos(s.state.policy.params, eos, h)
        )
        ref = None if s.ref_params is None else workload.bias_eos(s.ref_params, eos, h)
        s = dataclasses.replace(
            s, state=dataclasses.replace(s.state, policy=policy), ref_params=ref
        )
    stage = rl_stage.stage(s)
    return {
        "setup": s,
        "stage": stage,
        "state": s.state,
        "need_old": needs_old_pass(s.update_config, s.ref_params is not None),
    }


def full_step(parts: dict, step: int) -> tuple[float, dict]:
    """The trainer's step once (`train.rl.rl_step` through the stage), its metrics fetched:
    `(wall_s, metrics)`; updates `parts["state"]`."""
    t0 = time.perf_counter()
    parts["state"], metrics = parts["stage"].step(parts["state"], step)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    metrics["time/step_s"] = wall = time.perf_counter() - t0
    return wall, metrics


def phase_times(parts: dict, repeats: int) -> dict:
    """Each phase of the step timed alone (blocked), median of `repeats`: sampling, decoding,
    rewards, the score pass (reference and, when needed, old-policy log-probs)."""
    s, state = parts["setup"], parts["state"]
    G, T = s.group_size, s.config.sampling.max_new_tokens
    rows = [s.train_rows[i] for i in range(s.config.train.prompts_per_step)]
    texts, ids, mask = s.text.encode(rows, G)
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)
    gen = _util.timed(
        lambda: s.programs.sample(state.params, prompts, state.rng, state.step), repeats
    )
    rollout = gen["result"]
    toks, smask = (np.asarray(x) for x in rl.host_completions(rollout, T))
    dec = _util.timed(lambda: s.text.decode(toks, smask), repeats)
    executor = RewardExecutor(
        s.scalar_fns, num_workers=s.config.rewards.num_workers, timeout_s=s.config.rewards.timeout_s
    )
    try:
        rew = _util.timed(
            lambda: host.score(s.text, executor, s.token_fns, rows, G, texts, toks, smask), repeats
        )
    finally:
        executor.close()
    score = _util.timed(lambda: s.programs.score(state, s.ref_params, rollout), repeats)
    return {
        "generate_s": gen["median_s"],
        "decode_s": dec["median_s"],
        "reward_s": rew["median_s"],
        "score_s": score["median_s"],
        "generate_compile_s": gen["compile_s"],
        "response_lengths": smask.sum(axis=1),
        "prompt_lengths": np.asarray(mask).sum(axis=1),
        "prompt_len": s.text.prompt_len,
    }


def step_flops(parts: dict, prompt_lens, response_lens) -> dict:
    """Matmul FLOPs of the step's real tokens only, row by row (`bench._util`): each row's
    generation (prefill of its real prompt, one decode step per further token), one forward per
    log-prob pass and the update's 3 forwards over its real prompt + completion."""
    s = parts["setup"]
    c = s.model_config
    passes = (s.ref_params is not None) + parts["need_old"]
    rows = [(int(p), int(n)) for p, n in zip(prompt_lens, response_lens)]
    return {
        "generate": sum(_util.generate_flops(c, 1, p, n) for p, n in rows),
        "logprobs": passes * sum(_util.forward_flops(c, 1, p + n, n) for p, n in rows),
        "update": sum(_util.train_flops(c, 1, p + n, n) for p, n in rows),
    }


def peer_step(
    name: str, wanted: bool, config: Config, parts: dict, repeats: int, lengths: str
) -> dict | None:
    """The peer's GRPO step on the same shape, batch and lengths, timed in this run (in a
    child process, `bench.peers`); None when not `wanted` or the peer is not importable."""
    if not wanted:
        return None
    module = {"trl": "trl", "tunix": "tunix"}[name]
    if importlib.util.find_spec(module) is None:
        print(f"  --vs-{name}: {module!r} is not installed; vs_{name} = null")
        return None
    if name == "tunix":
        print(
            "  --vs-tunix: no Tunix runner (google-tunix would replace the installed "
            "transformers; see bench.peers); vs_tunix = null"
        )
        return None
    from jaxrl_lrm.bench import peers

    s = parts["setup"]
    return peers.trl_grpo_step_time_isolated(
        model_config=s.model_config,
        prompts=config.train.prompts_per_step,
        group=s.group_size,
        new_tokens=config.sampling.max_new_tokens,
        prompt_len=s.text.prompt_len,
        lengths=lengths,
        repeats=repeats,
        beta=s.spec.beta,
        lr=config.train.lr,
    )


def pad_frac(loop: list[dict], phases: dict, config: Config) -> float:
    """The update's share of pad token slots: the packed update's own metric, else one minus
    the real tokens over the `B x (P + T)` slots of the unpacked update."""
    if "update/pad_frac" in loop[0]:
        return float(np.median([x["update/pad_frac"] for x in loop]))
    real = phases["prompt_lengths"].sum() + phases["response_lengths"].sum()
    rows = len(phases["prompt_lengths"])
    return float(1 - real / (rows * (phases["prompt_len"] + config.sampling.max_new_tokens)))


def _args(quick: bool, extra_args: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench grpo_step")
    p.add_argument("--preset", default="bench-cpu")
    p.add_argument("--prompts", type=int, default=2 if quick else 4)
    p.add_argument("--group", type=int, default=4 if quick else 8)
    p.add_argument("--new-tokens", type=int, default=32 if quick else 128)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--ref-dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=2 if quick else 3)
    p.add_argument("--lengths", default="uniform", choices=workload.LENGTHS)
    p.add_argument("--pack-rows", type=int, default=0, help="train.pack_rows (0: no packing)")
    p.add_argument("--vs-trl", action="store_true")
    p.add_argument("--vs-tunix", action="store_true")
    return p.parse_args(extra_args or [])


def _measure(parts: dict, repeats: int) -> dict:
    """Two warm-up steps (the first compiles; the second shows nothing compiles again), then
    `repeats` timed steps, each after a fresh matmul-peak measurement, then the phases."""
    try:
        warm = [full_step(parts, i)[0] for i in range(2)]
        walls, loop, peaks = [], [], []
        for i in range(repeats):
            peaks.append(_util.matmul_gflops(1024, "float32", 3))
            wall, metrics = full_step(parts, i + 2)
            walls.append(wall)
            loop.append(metrics)
        phases = phase_times(parts, repeats)
        compiled = parts["setup"].programs.compile_counts()
    finally:
        parts["stage"].on_close()
    return {
        "warm": warm,
        "walls": walls,
        "loop": loop,
        "peaks": peaks,
        "phases": phases,
        "compiled": compiled,
    }


def run(quick: bool = False, extra_args: list[str] | None = None) -> dict:
    """Times one full GRPO step and its phases; returns `{"summary": ...}`."""
    a = _args(quick, extra_args)
    config = make_config(
        preset=a.preset,
        prompts=a.prompts,
        group=a.group,
        new_tokens=a.new_tokens,
        vocab_size=a.vocab_size,
        ref_dtype=a.ref_dtype,
        pack_rows=a.pack_rows,
    )
    parts = build(config, a.lengths)
    m = _measure(parts, a.repeats)
    walls, loop, peaks, phases = m["walls"], m["loop"], m["peaks"], m["phases"]
    step_s = float(np.median(walls))
    peers = {
        name: peer_step(name, wanted, config, parts, a.repeats, a.lengths)
        for name, wanted in (("trl", a.vs_trl), ("tunix", a.vs_tunix))
    }
    update_s = float(
        np.median([x["time/step_s"] - x["time/sample_s"] - x["time/reward_s"] for x in loop])
    )
    pads = pad_frac(loop, phases, config)
    phases.pop("prompt_len")
    lengths = phases.pop("response_lengths")
    flops = step_flops(parts, phases.pop("prompt_lengths"), lengths)
    floors = [sum(flops.values()) / (pk * 1e9) for pk in peaks]
    peak = float(np.median(peaks))
    exposed = max(0.0, phases["decode_s"] + phases["reward_s"] - phases["score_s"])
    device_s = phases["generate_s"] + phases["score_s"] + update_s
    full = (a.preset, a.prompts, a.group, a.new_tokens, a.vocab_size) == FULL_SHAPE
    summary = {
        "step_s": step_s,
        "floor_ratio": float(np.median([w / f for w, f in zip(walls, floors)])),
        "host_exposed_frac": exposed / step_s,
        **{f"vs_{k}": (p["step_s"] / step_s if p else None) for k, p in peers.items()},
        **{k: v for k, v in phases.items() if k.endswith("_s") and "compile" not in k},
        "update_s": update_s,
        "loop_sample_s": float(np.median([x["time/sample_s"] for x in loop])),
        "loop_reward_s": float(np.median([x["time/reward_s"] for x in loop])),
        "floor_s": float(np.median(floors)),
        "decode_vs_floor": phases["generate_s"] / (flops["generate"] / (peak * 1e9)),
        "pad_frac": pads,
        "fp32_peak_gflops": peak,
        "mean_response_len": float(lengths.mean()),
        "response_len_p10_p50_p90": [float(q) for q in np.percentile(lengths, [10, 50, 90])],
        "compile_s": m["warm"][0],
        "second_step_s": m["warm"][1],
    }
    _print(summary, peers, a)
    return {
        "summary": summary,
        "config": vars(a) | {"quick": quick, "params": parts["setup"].model_config.num_params},
        "flops": flops,
        "flops_note": FLOPS_NOTE,
        "step_times_s": walls,
        "peaks_gflops": peaks,
        "compiled_versions": m["compiled"],
        "device_phases_s": device_s,
        "unaccounted_s": step_s - device_s - exposed,
        "peers": peers,
        "recorded_peer_ratio": {k: v / step_s for k, v in RECORDED_PEERS_S.items()} if full else {},
        "recorded_peer_note": "peer times from docs/benchmarks.md (earlier runs, not this one)",
        "loop_metrics": loop,
        "machine": _util.machine(),
    }


FULL_SHAPE = ("bench-cpu", 4, 8, 128, 8192)
FLOPS_NOTE = (
    "matmul FLOPs with attention (bench._util) of the real tokens, row by row: generation "
    "(real prompt, then one step per further token), one forward per log-prob pass, 3 forwards "
    "for the update"
)


def _print(summary: dict, peers: dict, a) -> None:
    _util.print_table(
        summary,
        f"grpo_step {a.preset}: {a.prompts} x {a.group} x "
        f"{a.new_tokens} tokens, vocab {a.vocab_size}",
    )
    for name, p in peers.items():
        if p:
            _util.print_table(
                {k: v for k, v in p.items() if not isinstance(v, list)},
                f"{name} GRPO step, same shape and batch, this run",
            )
