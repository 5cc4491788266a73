"""DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476, section 3.2): keep only groups
whose completions are neither all correct nor all wrong (`0 < #correct < G`), sampling more
prompts until the batch is full.

Correctness is the task reward: the weighted sum of the scalar reward functions other than the
soft overlong punishment (shaping and dense terms would make almost every group "mixed").
Sampling is bounded by `algorithm.max_gen_rounds`; when the rounds run out, the batch is filled
with uniform groups whose tokens are kept out of every loss denominator (`Rewards.keep_B` = 0),
so they neither add gradient nor dilute the step, and `dapo/mixed_group_frac` says how full the
batch really was.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.train.batch import Prompts, RolloutBatch
from jaxrl_lrm.train.host import Scores
from jaxrl_lrm.train.programs import Programs
from jaxrl_lrm.train.rl import StepOutput, host_completions, to_device
from jaxrl_lrm.train.state import TrainState

OVERLONG = "overlong"  # the name the trainer gives the soft overlong punishment


def mixed_groups(scores: Scores, G: int, weights: dict[str, float]) -> np.ndarray:
    """`[N / G]` bool: groups whose task reward is not the same for every completion."""
    task = sum(
        weights[k] * np.asarray(v, np.float64)
        for k, v in scores.per_fn.items()
        if k != OVERLONG and k in weights
    )
    g = np.broadcast_to(np.asarray(task), (len(scores.total_N),)).reshape(-1, G)
    return ~np.all(g == g[:, :1], axis=1)


def choose(mixed: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`(group indices, keep flags)`: the first `n_groups` mixed groups in sampling order,
    then uniform ones (keep = 0) when there are too few."""
    m, u = np.flatnonzero(mixed), np.flatnonzero(~mixed)
    fill = u[: max(0, n_groups - len(m))]
    chosen = np.concatenate([m[:n_groups], fill])
    keep = np.concatenate([np.ones(min(len(m), n_groups)), np.zeros(len(fill))])
    order = np.argsort(chosen, kind="stable")
    return chosen[order], keep[order]


def _concat_scores(parts: list[Scores], idx: np.ndarray) -> Scores:
    cat = np.concatenate
    dense = None if parts[0].dense_NT is None else cat([p.dense_NT for p in parts])[idx]
    completions = sum((p.completions for p in parts), [])
    prompts = sum((p.prompts for p in parts), [])
    return Scores(
        total_N=cat([p.total_N for p in parts])[idx],
        dense_NT=dense,
        per_fn={k: cat([p.per_fn[k] for p in parts])[idx] for k in parts[0].per_fn},
        stats={k: sum(p.stats.get(k, 0.0) for p in parts) for k in parts[0].stats},
        completions=[completions[i] for i in idx],
        prompts=[prompts[i] for i in idx] if prompts else [],
    )


def dapo_step(
    programs: Programs,
    state: TrainState,
    ref_params,
    prompts: Prompts,
    score: Callable,
    more_prompts: Callable[[], tuple[Prompts, Callable]],
    *,
    mesh,
    T: int,
    G: int,
    max_rounds: int,
    weights: dict[str, float],
) -> tuple[TrainState, StepOutput]:
    """`rl_step` with dynamic sampling. `more_prompts()` gives the next prompts and their score
    function (the host rows differ per round)."""
    t0 = time.monotonic()
    key_data = jax.random.key_data(jax.random.fold_in(state.key, state.step))
    rollouts, parts, tok_parts, mask_parts = [], [], [], []
    n_groups = None
    for rnd in range(max_rounds):
        if rnd:
            prompts, score = more_prompts()
        rollout = (
            programs.sample(state.params, prompts, state.rng, state.step)
            if rnd == 0
            else programs.sample(state.params, prompts, key_data, rnd)
        )
        tokens, mask = host_completions(rollout, T)
        rollouts.append(rollout)
        parts.append(score(tokens, mask))
        tok_parts.append(tokens)
        mask_parts.append(mask)
        n_groups = n_groups or len(tokens) // G
        mixed = np.concatenate([mixed_groups(p, G, weights) for p in parts])
        if mixed.sum() >= n_groups:
            break
    groups, keep_g = choose(mixed, n_groups)
    local = (groups[:, None] * G + np.arange(G)).reshape(-1)  # rows of the host concatenation
    b = n_groups * G
    rnd_of, within = local // b, local % b
    global_idx = rnd_of * b * jax.process_count() + jax.process_index() * b + within
    rollout = programs.take_rows(rollouts, sharding.shard_batch(global_idx.astype(np.int32), mesh))
    scored = programs.score(state, ref_params, rollout)
    scores = _concat_scores(parts, local)
    keep = np.repeat(keep_g, G).astype(np.float32)
    t1 = time.monotonic()
    batch = RolloutBatch(
        rollout=rollout, scored=scored, rewards=to_device(scores, mesh, keep_N=keep)
    )
    state, dev_metrics = programs.update(state, batch)
    metrics = {
        "time/sample_s": t1 - t0,
        "dapo/gen_rounds": float(len(parts)),
        "dapo/mixed_group_frac": float(keep_g.mean()),
        **dev_metrics,
    }
    return state, StepOutput(
        metrics=metrics,
        scores=scores,
        tokens_NT=np.concatenate(tok_parts)[local],
        mask_NT=np.concatenate(mask_parts)[local],
    )
