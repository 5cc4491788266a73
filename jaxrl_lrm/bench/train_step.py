"""One jitted GRPO update: `python -m jaxrl_lrm.bench train_step [--quick] [--batch B]
[--prompt-len P] [--new-tokens T] [--preset NAME]`.

The trainer's update program (`train.programs.make_rl_programs`: group advantages, policy loss
+ k3 KL to a reference with beta 0.04, AdamW after global-norm clipping, one epoch, one
minibatch, one micro-batch, the state donated) on random tokens, `bench-cpu` by default, 32 rows x (16 prompt + 128 completion) tokens
(quick: 8 x (16 + 32)).

- `mfu`: FLOPs / step time / the fp32 matmul peak (a 1024^3 matmul) measured right before
  each timed step in the same run; the median over repeats.
  FLOPs = 3 x forward matmul FLOPs: `6 x matmul_params x B x L` for the blocks, `6 x D x V x
  B x T` for the output head (logits only at completion positions), and `12 x layers x N x H
  x L x B x L` for attention over the full score matrix (see `bench._util`).
- `tokens_per_s`: B x L / step time (prompt and completion tokens both pass through the model).
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxrl_lrm import algorithms, models, sharding
from jaxrl_lrm.bench import _util
from jaxrl_lrm.config import AlgorithmSection
from jaxrl_lrm.train.batch import Rewards, Rollout, RolloutBatch, Scored
from jaxrl_lrm.train.programs import SamplingConfig, make_rl_programs
from jaxrl_lrm.train.state import OptimizerConfig, init_state, make_optimizer
from jaxrl_lrm.train.update import RLUpdateConfig


def random_batch(
    config: models.ModelConfig, batch: int, prompt_len: int, new_tokens: int, seed: int = 0
) -> RolloutBatch:
    """A `RolloutBatch` with random tokens, rewards and reference log-probs.

    Prompts are left-padded by 0..3 tokens and completions end at random lengths >= half of
    `new_tokens`, so masks are not trivially all ones.
    """
    if min(batch, prompt_len, new_tokens) < 1:
        raise ValueError(
            f"batch={batch!r}, prompt_len={prompt_len!r}, new_tokens={new_tokens!r}"
            ": expected positive sizes"
        )
    rng = np.random.default_rng(seed)
    L = prompt_len + new_tokens
    tokens = rng.integers(3, config.vocab_size, (batch, L)).astype(np.int32)
    pad = rng.integers(0, min(4, prompt_len), batch)
    length = rng.integers((new_tokens + 1) // 2, new_tokens + 1, batch)
    cols_p, cols_t = np.arange(prompt_len), np.arange(new_tokens)
    attn = np.concatenate([cols_p[None] >= pad[:, None], cols_t[None] < length[:, None]], 1)
    mask = (cols_t[None] < length[:, None]).astype(np.float32)
    logp = (-rng.exponential(2.0, (batch, new_tokens)) * mask).astype(np.float32)
    ref = (logp + 0.01 * rng.normal(size=logp.shape) * mask).astype(np.float32)
    return RolloutBatch(
        rollout=Rollout(tokens_BL=tokens, attn_BL=attn.astype(np.int32), sampler_logp_BT=logp),
        scored=Scored(old_logp_BT=None, ref_logp_BT=ref, values_BT=None),
        rewards=Rewards(rewards_B=rng.normal(size=batch).astype(np.float32), dense_BT=None),
    )


def make_update(
    model: models.Model, batch: int, prompt_len: int, new_tokens: int, beta: float = 0.04
):
    """`(programs, state)`: the trainer's jitted, donated RL update for GRPO with k3 KL."""
    spec = algorithms.resolve(
        AlgorithmSection(name="grpo", beta=beta, kl_kind="k3", group_size=min(8, batch))
    )
    optimizer, _ = make_optimizer(OptimizerConfig(lr=1e-6, total_updates=1000))
    mesh = sharding.make_mesh(1, 1, 1)
    cfg = RLUpdateConfig(
        model=model.config,
        spec=spec,
        optimizer=optimizer,
        value_optimizer=None,
        prompt_len=prompt_len,
        max_new_tokens=new_tokens,
        temperature=1.0,
        epochs=1,
        minibatches=1,
        micro_batches=1,
        kl_controller=None,
    )
    samp = SamplingConfig(
        max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_id=None, pad_id=0
    )
    params = sharding.shard_params(model.params, model.config, mesh)
    state = init_state(params, optimizer=optimizer, mesh=mesh, seed=0, kl_coef=beta)
    programs = make_rl_programs(
        cfg, samp, mesh, state=state, ref_params=params, rows=batch, dense=False
    )
    return programs, state, mesh


def run(quick: bool = False, extra_args: list[str] | None = None) -> dict:
    """Times one GRPO update; returns `{"summary": {"mfu", "tokens_per_s", ...}, ...}`."""
    parser = argparse.ArgumentParser(prog="bench train_step")
    parser.add_argument("--preset", default="bench-cpu")
    parser.add_argument("--batch", type=int, default=8 if quick else 32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32 if quick else 128)
    parser.add_argument("--repeats", type=int, default=2 if quick else 5)
    args = parser.parse_args(extra_args or [])
    B, P, T = args.batch, args.prompt_len, args.new_tokens
    L = P + T

    model = models.init(args.preset, 0)
    config = model.config
    programs, state, mesh = make_update(model, B, P, T)
    batch = sharding.shard_batch(random_batch(config, B, P, T), mesh)
    holder = {"state": state}

    def one():
        holder["state"], metrics = programs.update(holder["state"], batch)
        return metrics

    # The machine is shared: the peak is measured right before every timed step and each
    # repeat gives its own MFU; the median of those is reported.
    t = _util.timed(one, 1, warmup=2)
    flops = _util.train_flops(config, B, L, T)
    times, peaks = [], []
    for _ in range(args.repeats):
        peaks.append(_util.matmul_gflops(1024, "float32", 3))
        r = _util.timed(one, 1, warmup=0)
        times.append(r["median_s"])
    loss = float(r["result"]["loss/total"])
    if not np.isfinite(loss):
        raise RuntimeError(f"the benchmarked update produced a non-finite loss ({loss})")
    step_s = float(np.median(times))
    summary = {
        "mfu": float(np.median([flops / s / (p * 1e9) for s, p in zip(times, peaks)])),
        "tokens_per_s": B * L / step_s,
        "step_s": step_s,
        "compile_s": t["compile_s"],
        "achieved_gflops": flops / step_s / 1e9,
        "fp32_peak_gflops": float(np.median(peaks)),
    }
    _util.print_table(summary, f"train_step {args.preset}: {B} x ({P} + {T}) tokens")
    return {
        "summary": summary,
        "config": vars(args)
        | {
            "quick": quick,
            "params": config.num_params,
            "matmul_params": _util.matmul_params(config),
        },
        "flops": flops,
        "flops_6nd": 6 * config.num_params * B * L,
        "flops_note": "3 x forward matmul FLOPs: blocks over all B*L tokens, output head at the "
        "B*T completion positions, attention over the full LxL score matrix",
        "times_s": times,
        "peaks_gflops": peaks,
        "loss": loss,
        "compiled_versions": programs.compile_counts()["update"],
        "machine": _util.machine(),
    }
