"""One RL step: the function the trainer, the benchmarks and the notebooks all call.

    sample (jit) -> score (jit, dispatched at once: old / reference log-probs and values run
    while the host scores) -> host copy of the tokens -> detokenize + rewards on the host ->
    update (jit, donated: advantages, KL-in-reward, policy and value updates)

Tokens stay on the device; the host receives a copy only to detokenize, and the only
host-to-device transfer of a step is the rewards (and dense rewards when configured).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.train.batch import Prompts, Rewards, RolloutBatch
from jaxrl_lrm.train.host import Scores
from jaxrl_lrm.train.programs import Programs
from jaxrl_lrm.train.state import TrainState

# (completion tokens [N, T], completion mask [N, T]) of this process's rows -> their scores
ScoreFn = Callable[[np.ndarray, np.ndarray], Scores]


@dataclasses.dataclass
class StepOutput:
    """What a step leaves on the host besides the new state."""

    metrics: dict  # host floats and device scalars (the loop fetches them)
    scores: Scores
    tokens_NT: np.ndarray
    mask_NT: np.ndarray


def host_completions(rollout, T: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's completion tokens and mask, copied to the host (to detokenize)."""
    return (
        sharding.host_rows(rollout.tokens_BL[:, -T:]),
        sharding.host_rows(rollout.attn_BL[:, -T:]),
    )


def to_device(scores: Scores, mesh, keep_N: np.ndarray | None = None) -> Rewards:
    """The step's one host-to-device transfer: the rewards of this process's rows."""
    return sharding.shard_batch(
        Rewards(rewards_B=scores.total_N, dense_BT=scores.dense_NT, keep_B=keep_N), mesh
    )


def rl_step(
    programs: Programs,
    state: TrainState,
    ref_params,
    prompts: Prompts,
    score: ScoreFn,
    *,
    mesh,
    T: int,
) -> tuple[TrainState, StepOutput]:
    """One RL step from device-placed `prompts` (each prompt repeated G times).

    Args:
      programs: `make_rl_programs(...)`.
      state: the train state (donated to the update).
      ref_params: the frozen reference, or None when the algorithm has no KL term.
      prompts: `Prompts` on the mesh.
      score: host reward function over this process's completion tokens and mask.
      mesh: the device mesh.
      T: `sampling.max_new_tokens`.
    """
    t0 = time.monotonic()
    rollout = programs.sample(state.params, prompts, state.rng, state.step)
    scored = programs.score(state, ref_params, rollout)  # runs while the host scores
    tokens, mask = host_completions(rollout, T)
    t1 = time.monotonic()
    scores = score(tokens, mask)
    t2 = time.monotonic()
    batch = RolloutBatch(rollout=rollout, scored=scored, rewards=to_device(scores, mesh))
    state, dev_metrics = programs.update(state, batch)
    metrics = {"time/sample_s": t1 - t0, "time/reward_s": t2 - t1, **dev_metrics}
    return state, StepOutput(metrics=metrics, scores=scores, tokens_NT=tokens, mask_NT=mask)
