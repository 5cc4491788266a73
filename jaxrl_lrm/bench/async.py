"""Asynchronous rollouts against synchronous ones, in one run: `python -m jaxrl_lrm.bench async`.

The smoke setup (configs/smoke.yaml, one device) with a second reward function that sleeps
`REWARD_S` = 0.3 s per batch of completions (a stand-in for a code sandbox or an LLM judge),
trained with `train.max_staleness=0` and `=1`, both with the decoupled objective so that only
the schedule differs. The batch (`PROMPTS x GROUP` rows, `TOKENS` tokens) is sized so that the
device's work per step is of the order of the reward's 0.3 s, the regime asynchronous rollouts
are for (the speedup is at most 2 there, and tends to 1 when either side dominates).
Each mode runs `warmup` steps (compilation) and then `steps` timed steps, called directly
through the stage's step function and blocked on the final state.

Summary: `sync_steps_per_s`, `async_steps_per_s`, `async_speedup` (their ratio), the async
run's mean `device_idle_frac`, `host_exposed_s` and staleness histogram, and the arithmetic
that bounds the ratio: `sync_device_s` (sample + score + update, each timed blocked after the
synchronous run, median of 3 steps), `sync_host_s` (the synchronous step's wall time less
that) and `async_speedup_ideal` = (device + host) / max(device, host), what perfect overlap
would give if the host's time stayed the same (on a loaded machine the synchronous host share
also holds waiting, and the measured ratio can exceed it).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.config import load_config
from jaxrl_lrm.train import rl_stage
from jaxrl_lrm.train.batch import Prompts, Rewards, RolloutBatch

REWARD_S = 0.3
SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def slow_zero(prompts, completions, *, batch_rows: int, **columns):
    """A reward of 0 for every completion, after `REWARD_S` seconds per `batch_rows`
    completions (the executor calls it on chunks of a batch: 0.3 s per batch in all)."""
    time.sleep(REWARD_S * len(completions) / batch_rows)
    return [0.0] * len(completions)


PROMPTS, GROUP, TOKENS = 16, 4, 16  # 64 rows x 16 tokens
# the smoke model made 2 layers of width 64, so that the device's work per step is of the
# order of the reward's 0.3 s on 2 vCPU
MODEL = "{d_model: 64, n_layers: 2, n_heads: 2, n_kv_heads: 1, head_dim: 32, mlp_dim: 128}"


def _overrides(staleness: int, steps: int) -> list[str]:
    slow = f"{{fn: 'jaxrl_lrm.bench.async:slow_zero', args: {{batch_rows: {PROMPTS * GROUP}}}}}"
    return [
        "mesh.data=1",
        "mesh.fsdp=1",
        "mesh.tensor=1",
        f"train.steps={steps}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        f"model.overrides={MODEL}",
        f"train.prompts_per_step={PROMPTS}",
        f"algorithm.group_size={GROUP}",
        f"sampling.max_new_tokens={TOKENS}",
        "algorithm.decoupled=true",
        f"train.max_staleness={staleness}",
        f"rewards.functions=[task, {slow}]",
    ]


def _device_s(setup, state, steps: int = 3) -> float:
    """The device's seconds per synchronous step: sample, score and update, each blocked on
    (median over `steps`; consumes `state`)."""
    rows = [setup.train_rows[i] for i in range(setup.config.train.prompts_per_step)]
    _, ids, mask = setup.text.encode(rows, setup.group_size)
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), setup.mesh)
    zeros = Rewards(rewards_B=np.zeros(len(ids), np.float32), dense_BT=None)
    rewards = sharding.shard_batch(zeros, setup.mesh)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        rollout = jax.block_until_ready(
            setup.programs.sample(state.params, prompts, state.rng, state.step)
        )
        scored = jax.block_until_ready(setup.programs.score(state, setup.ref_params, rollout))
        batch = RolloutBatch(rollout=rollout, scored=scored, rewards=rewards)
        state, _ = jax.block_until_ready(setup.programs.update(state, batch))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _mode(staleness: int, warmup: int, steps: int) -> dict:
    cfg = load_config(SMOKE, _overrides(staleness, warmup + steps))
    setup = rl_stage.build(cfg)
    stage = rl_stage.stage(setup)
    state, history = stage.state, []
    try:
        for k in range(warmup + steps):
            if k == warmup:
                jax.block_until_ready(state)
                t0 = time.perf_counter()
            state, metrics = stage.step(state, k)
            history.append(metrics)
        jax.block_until_ready(state)
        wall = time.perf_counter() - t0
        device_s = _device_s(setup, state) if staleness == 0 else None
    finally:
        if stage.on_close is not None:
            stage.on_close()
    timed = [jax.device_get(h) for h in history[warmup:]]
    out = {"steps_per_s": steps / wall, "wall_s": wall, "steps": steps, "device_s": device_s}
    for key in ("time/reward_s", "time/device_idle_frac", "time/host_exposed_s"):
        if key in timed[0]:
            out[key] = sum(float(h[key]) for h in timed) / len(timed)
    hist = {k: float(v) for k, v in timed[-1].items() if k.startswith("async/staleness_hist/")}
    if hist:
        out["staleness_hist"] = hist
    return out


def run(quick: bool = False, extra_args=None) -> dict:
    warmup, steps = (2, 4) if quick else (2, 10)
    sync = _mode(0, warmup, steps)
    asyn = _mode(1, warmup, steps)
    step_s = 1.0 / sync["steps_per_s"]
    device, host = sync["device_s"], max(step_s - sync["device_s"], 0.0)
    summary = {
        "reward_s": REWARD_S,
        "sync_device_s": device,
        "sync_host_s": host,
        "async_speedup_ideal": step_s / max(device, host, 1e-9),
        "sync_reward_s": sync.get("time/reward_s"),
        "sync_steps_per_s": sync["steps_per_s"],
        "async_steps_per_s": asyn["steps_per_s"],
        "async_speedup": asyn["steps_per_s"] / sync["steps_per_s"],
        "async_device_idle_frac": asyn.get("time/device_idle_frac"),
        "async_host_exposed_s": asyn.get("time/host_exposed_s"),
        "async_staleness_hist": asyn.get("staleness_hist"),
    }
    return {"summary": summary, "sync": sync, "async": asyn, "quick": quick}
