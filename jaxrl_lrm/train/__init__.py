"""The training core: state, batches, programs (the one place that jits), the RL step and the
one loop that every stage runs.

    from jaxrl_lrm import train
    result = train.run_rl(config, run_dir="runs/x")     # build + loop
    s = train.rl_stage.build(config)                     # or the pieces, for a notebook
    state, out = train.rl_step(s.programs, s.state, s.ref_params, prompts, score, ...)
"""

from __future__ import annotations

from pathlib import Path

from jaxrl_lrm.config import Config
from jaxrl_lrm.train import loop, rl_stage
from jaxrl_lrm.train.batch import Prompts, Rewards, Rollout, RolloutBatch, Scored
from jaxrl_lrm.train.loop import RunResult, Stage, TrainingDivergedError
from jaxrl_lrm.train.programs import Programs, make_offline_programs, make_rl_programs
from jaxrl_lrm.train.rl import rl_step
from jaxrl_lrm.train.state import ModelState, TrainState, init_state

__all__ = [
    "ModelState",
    "Programs",
    "Prompts",
    "Rewards",
    "Rollout",
    "RolloutBatch",
    "RunResult",
    "Scored",
    "Stage",
    "TrainState",
    "TrainingDivergedError",
    "init_state",
    "make_offline_programs",
    "make_rl_programs",
    "rl_step",
    "run_rl",
]


def run_rl(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    mesh=None,
    max_steps_this_run: int | None = None,
    quiet: bool = False,
    init_params=None,
) -> RunResult:
    """Builds an RL run from `config` and trains it into `run_dir` (default `config.run_dir`),
    resuming from its newest checkpoint. `init_params` replaces the initial policy and
    reference (the demo starts RL from its SFT checkpoint)."""
    setup = rl_stage.build(config, mesh=mesh, init_params=init_params)
    return loop.run(
        config,
        rl_stage.stage(setup),
        run_dir or config.run_dir,
        max_steps_this_run=max_steps_this_run,
        quiet=quiet,
    )
