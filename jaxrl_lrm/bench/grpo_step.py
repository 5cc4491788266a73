"""One full RL step with the real trainer pieces: `python -m jaxrl_lrm.bench grpo_step
[--quick] [--preset NAME] [--prompts N] [--group G] [--new-tokens T] [--vocab-size V]
[--ref-dtype float32|bfloat16] [--vs-trl] [--vs-tunix]`.

GRPO (k3 KL to the reference, beta 0.04) on `bench-cpu` with the vocabulary set to 8192, the
`addition` task's prompts (left-padded to 16 tokens), 4 prompts x 8 completions x 128 new
tokens at temperature 1 (quick: 2 x 4 x 32). The step is exactly `rl.trainer.train`'s loop
body: `rl_step_batch` (sample -> dispatch reference log-probs -> decode + score on the host
-> advantages) then the jitted, donated `rl_update`.

Reported:
- `step_s`: median wall time of the full step (compile excluded).
- per-phase times, each timed alone and blocked: `generate_s`, `decode_s`, `reward_s`,
  `ref_logprobs_s`, `old_logprobs_s` (0: one update per step needs no old-policy pass),
  `advantages_s`, `update_s`; and the in-loop `time/sample_s`, `time/reward_s` of the trainer.
- `floor_ratio`: step time / FLOP floor (median over repeats, the peak measured right before
  each step), floor = (generate FLOPs at the mean response length +
  forward FLOPs of the reference (and old) pass + 3 x forward FLOPs of the update, all matmul
  FLOPs with attention, see `bench._util`) / the fp32 matmul peak of the same run.
- `host_exposed_frac`: host time the device sits idle, max(0, decode + reward - the device
  work dispatched before them (reference and old log-probs)) / step time.
- `vs_trl`, `vs_tunix`: the peer's step time over ours, both measured in this run on the same
  shape, batch and lengths (`--vs-trl`: TRL's `GRPOTrainer` via `bench.peers`, in a child
  process right after ours, its details in the JSON's `peers`); null without the flag, when the peer is not importable, and always for
  Tunix (no runner: `google-tunix` would replace the installed transformers).

The random-weight policy samples any of the 8192 ids, so the character tokenizer is wrapped
to decode ids past its alphabet onto it (as a real 8192-token vocabulary would decode them);
EOS ends a row with probability ~1/V per token, so rows run close to all 128 tokens (the mean
response length is reported).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import numpy as np

from jaxrl_lrm import algorithms, sharding
from jaxrl_lrm.bench import _util
from jaxrl_lrm.config import Config, from_dict
from jaxrl_lrm.rl import setup, trainer

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


def make_config(*, preset: str = "bench-cpu", prompts: int = 4, group: int = 8,
                new_tokens: int = 128, vocab_size: int = 8192, beta: float = 0.04,
                ref_dtype: str | None = None, prompt_len: int = 16) -> Config:
    """The benchmark's run config (GRPO on the `addition` task, one device)."""
    return from_dict({
        "seed": 0,
        "model": {"preset": preset, "overrides": {"vocab_size": vocab_size},
                  "ref_dtype": ref_dtype},
        "data": {"source": "task", "task": "addition", "max_prompt_len": prompt_len},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "algorithm": {"name": "grpo", "group_size": group, "beta": beta, "kl_kind": "k3"},
        "sampling": {"max_new_tokens": new_tokens, "temperature": 1.0},
        "train": {"steps": 1000, "prompts_per_step": prompts, "lr": 1e-6},
    })


def build(config: Config) -> dict:
    """The pieces `trainer.train` builds: session, state, reference, update fn, executor."""
    from jaxrl_lrm.rewards.executor import RewardExecutor

    session = trainer.Session(config, mesh=sharding.make_mesh(1, 1, 1))
    session.tokenizer = WideCharTokenizer(session.tokenizer)
    c = config
    state, optimizer, _ = trainer.make_train_state(
        session, setup.frozen_copy(session.policy.params), c.train.steps, c.train.lr)
    ref_params = None
    if session.spec.beta > 0:
        ref_params = session.policy.params if c.model.ref_dtype in (None, c.model.dtype) \
            else setup.frozen_copy(session.policy.params, c.model.ref_dtype)
    update_fn = _util.jit_update(
        config=session.model_config, spec=session.spec, optimizer=optimizer,
        epochs=c.train.ppo_epochs, minibatches=c.train.minibatches,
        micro_batches=c.train.micro_batches, prompt_len=session.prompt_len,
        temperature=c.sampling.temperature, max_len=c.sampling.max_new_tokens)
    executor = RewardExecutor(session.scalar_reward_fns, num_workers=c.rewards.num_workers,
                              timeout_s=c.rewards.timeout_s)
    need_old = c.train.ppo_epochs * c.train.minibatches > 1 or session.spec.tis_max is not None
    return {"session": session, "state": state, "ref_params": ref_params,
            "update_fn": update_fn, "executor": executor, "need_old": need_old}


def rows_for(parts: dict, step: int) -> list[dict]:
    n = parts["session"].config.train.prompts_per_step
    rows = parts["session"].train_rows
    start = (step * n) % (len(rows) - n)
    return [rows[start + i] for i in range(n)]  # a `PromptSource`: indexable, not sliceable


def full_step(parts: dict, step: int) -> tuple[float, dict, dict]:
    """Runs the trainer's step body once (updates `parts["state"]`): `(wall_s, metrics, batch)`."""
    t0 = time.perf_counter()
    batch, metrics, _ = trainer.rl_step_batch(parts["session"], parts["state"],
                                              parts["ref_params"], rows_for(parts, step), step,
                                              parts["executor"], parts["need_old"])
    t1 = time.perf_counter()
    parts["state"], dev = parts["update_fn"](parts["state"], batch)
    dev = {k: float(v) for k, v in jax.device_get(dev).items()}
    t2 = time.perf_counter()
    metrics = {**metrics, **dev, "time/update_s": t2 - t1}
    return t2 - t0, metrics, batch


def phase_times(parts: dict, step: int, repeats: int) -> dict:
    """Each phase of the step timed alone (blocked), median of `repeats`."""
    s, state, ex = parts["session"], parts["state"], parts["executor"]
    G = s.spec.group_size
    rows = rows_for(parts, step)
    texts, ids, mask = s.encode_prompts(rows)
    ids, mask = np.repeat(ids, G, axis=0), np.repeat(mask, G, axis=0)
    rng = jax.random.fold_in(s.base_rng, step)
    temp = float(s.config.sampling.temperature)
    gen = _util.timed(lambda: s.sample_fn(state.params, ids, mask, rng, temp), repeats)
    toks, _, smask = (np.asarray(x) for x in gen["result"])
    dec = _util.timed(lambda: s.decode(toks, smask), repeats)
    completions = dec["result"]
    cols = {k: [r.get(k) for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
    cols["group_size"] = [G] * len(completions)
    cols["completion_lengths"] = [int(m.sum()) for m in smask]
    prompts = [t for t in texts for _ in range(G)]
    rew = _util.timed(lambda: ex.score(prompts, completions, cols)[0], repeats)
    tokens = np.concatenate([ids, toks], axis=1)
    attn = np.concatenate([mask, smask], axis=1)
    ref = parts["ref_params"]
    t_ref = _util.timed(lambda: s.logprob_fn(ref, tokens, attn), repeats)["median_s"] \
        if ref is not None else 0.0
    t_old = _util.timed(lambda: s.logprob_fn(state.params, tokens, attn), repeats)["median_s"] \
        if parts["need_old"] else 0.0
    mask_bt = np.asarray(smask, np.float32)
    adv = _util.timed(lambda: algorithms.advantages(s.spec, np.asarray(rew["result"]), mask_bt),
                      repeats)
    return {"generate_s": gen["median_s"], "decode_s": dec["median_s"],
            "reward_s": rew["median_s"], "ref_logprobs_s": t_ref, "old_logprobs_s": t_old,
            "advantages_s": adv["median_s"], "generate_compile_s": gen["compile_s"],
            "response_lengths": smask.sum(axis=1)}


def step_flops(parts: dict, mean_len: float) -> dict:
    s = parts["session"]
    c, B = s.model_config, s.config.train.prompts_per_step * s.spec.group_size
    P, T = s.prompt_len, s.max_new
    passes = (parts["ref_params"] is not None) + parts["need_old"]
    return {"generate": _util.generate_flops(c, B, P, mean_len),
            "logprobs": passes * _util.forward_flops(c, B, P + T, T),
            "update": _util.train_flops(c, B, P + T, T)}


def peer_step(name: str, wanted: bool, config: Config, parts: dict,
              repeats: int) -> dict | None:
    """The peer's GRPO step on the same shape, batch and lengths, timed in this run (in a
    child process, `bench.peers`); None when not `wanted` or the peer is not importable."""
    if not wanted:
        return None
    module = {"trl": "trl", "tunix": "tunix"}[name]
    if importlib.util.find_spec(module) is None:
        print(f"  --vs-{name}: {module!r} is not installed; vs_{name} = null")
        return None
    if name == "tunix":
        print("  --vs-tunix: no Tunix runner (google-tunix would replace the installed "
              "transformers; see bench.peers); vs_tunix = null")
        return None
    from jaxrl_lrm.bench import peers

    s = parts["session"]
    return peers.trl_grpo_step_time_isolated(
        model_config=s.model_config, prompts=config.train.prompts_per_step,
        group=s.spec.group_size, new_tokens=s.max_new, prompt_len=s.prompt_len,
        repeats=repeats, beta=s.spec.beta, lr=config.train.lr)


def run(quick: bool = False, extra_args: list[str] | None = None) -> dict:
    """Times one full GRPO step and its phases; returns `{"summary": ...}`."""
    p = argparse.ArgumentParser(prog="bench grpo_step")
    p.add_argument("--preset", default="bench-cpu")
    p.add_argument("--prompts", type=int, default=2 if quick else 4)
    p.add_argument("--group", type=int, default=4 if quick else 8)
    p.add_argument("--new-tokens", type=int, default=32 if quick else 128)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--ref-dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=2 if quick else 3)
    p.add_argument("--vs-trl", action="store_true")
    p.add_argument("--vs-tunix", action="store_true")
    a = p.parse_args(extra_args or [])
    config = make_config(preset=a.preset, prompts=a.prompts, group=a.group,
                         new_tokens=a.new_tokens, vocab_size=a.vocab_size, ref_dtype=a.ref_dtype)
    parts = build(config)
    try:
        # Two warm-up steps: the first compiles; the second compiles the update and the
        # sampler again because the state `rl_update` returns carries other shardings than
        # the initial one (measured and reported as `second_step_s`).
        warm = [full_step(parts, i)[0] for i in range(2)]
        walls, loop, peaks = [], [], []
        for i in range(a.repeats):
            peaks.append(_util.matmul_gflops(1024, "float32", 3))
            wall, metrics, _ = full_step(parts, i + 2)
            walls.append(wall)
            loop.append(metrics)
        step_s = float(np.median(walls))
        phases = phase_times(parts, 1, a.repeats)
        compiled = {"update": _util.cache_size(parts["update_fn"]),
                    "sample": _util.cache_size(parts["session"].sample_fn),
                    "logprob": _util.cache_size(parts["session"].logprob_fn)}
    finally:
        parts["executor"].close()
    peers = {name: peer_step(name, wanted, config, parts, a.repeats)
             for name, wanted in (("trl", a.vs_trl), ("tunix", a.vs_tunix))}
    update_s = float(np.median([m["time/update_s"] for m in loop]))
    lengths = phases.pop("response_lengths")
    flops = step_flops(parts, float(lengths.mean()))
    floors = [sum(flops.values()) / (pk * 1e9) for pk in peaks]
    floor_s = float(np.median(floors))
    exposed = max(0.0, phases["decode_s"] + phases["reward_s"]
                  - phases["ref_logprobs_s"] - phases["old_logprobs_s"])
    device_s = (phases["generate_s"] + phases["ref_logprobs_s"] + phases["old_logprobs_s"]
                + update_s)
    full = (a.preset, a.prompts, a.group, a.new_tokens, a.vocab_size) == \
        ("bench-cpu", 4, 8, 128, 8192)
    summary = {
        "step_s": step_s,
        "floor_ratio": float(np.median([w / f for w, f in zip(walls, floors)])),
        "host_exposed_frac": exposed / step_s,
        **{f"vs_{k}": (p["step_s"] / step_s if p else None) for k, p in peers.items()},
        **{k: v for k, v in phases.items() if k.endswith("_s") and "compile" not in k},
        "update_s": update_s,
        "loop_sample_s": float(np.median([m["time/sample_s"] for m in loop])),
        "loop_reward_s": float(np.median([m["time/reward_s"] for m in loop])),
        "floor_s": floor_s,
        "fp32_peak_gflops": float(np.median(peaks)),
        "mean_response_len": float(lengths.mean()),
        "compile_s": warm[0],
        "second_step_s": warm[1],
    }
    _util.print_table(summary, f"grpo_step {a.preset}: {a.prompts} x {a.group} x "
                               f"{a.new_tokens} tokens, vocab {a.vocab_size}")
    for name, p in peers.items():
        if p:
            _util.print_table({k: v for k, v in p.items() if not isinstance(v, list)},
                              f"{name} GRPO step, same shape and batch, this run")
    return {
        "summary": summary,
        "config": vars(a) | {"quick": quick, "params": parts["session"].model_config.num_params},
        "flops": flops,
        "flops_note": "matmul FLOPs with attention (bench._util): generate at the mean response "
                      "length, one forward per log-prob pass, 3 forwards for the update",
        "step_times_s": walls,
        "peaks_gflops": peaks,
        "compiled_versions": compiled,
        "device_phases_s": device_s,
        "unaccounted_s": step_s - device_s - exposed,
        "peers": peers,
        "recorded_peer_ratio": {k: v / step_s for k, v in RECORDED_PEERS_S.items()} if full else {},
        "recorded_peer_note": "peer times from BENCHMARKS.md (earlier runs, not this one)",
        "loop_metrics": loop,
        "machine": _util.machine(),
    }
