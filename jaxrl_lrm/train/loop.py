"""The one training loop, for RL, SFT, DPO and reward-model training alike.

A `Stage` says what one step does (dispatching device work and returning its metrics, some
still on the device); the loop owns everything around it: exact resume from the newest
checkpoint, the NaN guard, evaluation, checkpoint cadence, SIGTERM, metrics.jsonl /
TensorBoard / progress, and the compile count. Step k's metrics are fetched after step k+1 has
been dispatched, except at steps that evaluate, checkpoint or end the run, where the state must
be known good before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from jaxrl_lrm.checkpoint import Checkpointer, all_finite
from jaxrl_lrm.config import Config, save_config
from jaxrl_lrm.data.iterator import PromptIterator
from jaxrl_lrm.train import resume, wandb_sink
from jaxrl_lrm.train.compile_cache import compile_stats
from jaxrl_lrm.train.logging import MetricsLogger
from jaxrl_lrm.train.plots import plot_run
from jaxrl_lrm.train.programs import Programs
from jaxrl_lrm.train.state import TrainState

log = logging.getLogger(__name__)

SAMPLES = "samples"  # a step's metrics may carry its sample table (host rows) under this key


class TrainingDivergedError(RuntimeError):
    """A non-finite metric or state; the last good checkpoint is left untouched."""


@dataclasses.dataclass
class Stage:
    """What the loop trains.

    Attributes:
      name: `rl`, `sft`, `dpo` or `reward_model` (recorded in checkpoint metadata).
      state: the fresh train state (replaced by the checkpoint's on resume).
      step: `(state, step_index) -> (new_state, metrics)`; it dispatches device work and may
        return metrics that are still device arrays (fetched by the loop), and under
        `SAMPLES` a table of sample completions (host rows) to log with that step.
      data: the resumable data position.
      programs: the stage's jitted programs (their executables are counted).
      evaluate: `state -> metrics` on held-out data, or None.
      eval_at_end: evaluate after the last step even off the `train.eval_every` cadence.
      post: adds metrics that need the fetched values and the step time.
      on_close: called once when the loop ends (closes reward executors and the like).
      pipeline: host state that outlives a step (an asynchronous run's batch in flight), or
        None: `snapshot() -> (arrays or None, JSON meta)` is checkpointed with the state,
        `target` is the arrays' abstract tree, `resume(arrays, meta)` continues from it.
    """

    name: str
    state: TrainState
    step: Callable[[TrainState, int], tuple[TrainState, dict]]
    data: PromptIterator
    programs: Programs
    evaluate: Callable[[TrainState], dict] | None = None
    eval_at_end: bool = False
    post: Callable[[dict], dict] | None = None  # metrics -> metrics, once fetched and timed
    on_close: Callable[[], None] | None = None
    pipeline: Any = None


@dataclasses.dataclass
class RunResult:
    metrics: dict  # the last step's metrics
    state: TrainState  # the final state
    history: list  # every step's metrics (this call's steps)
    run_dir: Path

    @property
    def params(self):
        return self.state.params


def _fetch(metrics: dict) -> dict:
    host = jax.device_get(metrics)
    return {k: float(v) for k, v in host.items()}


def _guard(step: int, metrics: dict, ckpt: Checkpointer | None) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        where = (
            "no checkpoints are written"
            if ckpt is None
            else (
                f"the last good checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is "
                "untouched"
            )
        )
        raise TrainingDivergedError(f"non-finite values at step {step}: {bad}; stopping; {where}.")


def _kept(ckpt: Checkpointer | None) -> str:
    if ckpt is None:
        return "no checkpoints are written"
    if ckpt.latest_step() is None:
        return f"no checkpoint was written to {ckpt.directory}"
    return f"the last good checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is untouched"


def _restore(ckpt: Checkpointer, stage: Stage) -> tuple[TrainState, int]:
    if ckpt.latest_step() is None:
        return stage.state, 0
    if stage.pipeline is None:
        state, meta, start = ckpt.restore(stage.state)
    else:
        state, meta, start, extra = ckpt.restore(stage.state, extra=stage.pipeline.target)
    stage.data.restore(meta["data"])
    if stage.pipeline is not None and "pipeline" in meta:
        stage.pipeline.resume(extra, meta["pipeline"])
    log.info("resumed %s from step %d in %s", stage.name, start, ckpt.directory)
    return state, start


class _Sigterm:
    """Sets `flag` on SIGTERM while installed (main thread only)."""

    def __init__(self):
        self.flag = False
        self.old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._set)
        return self

    def _set(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def run(
    config: Config,
    stage: Stage,
    run_dir: str | Path,
    *,
    max_steps_this_run: int | None = None,
    max_seconds: float | None = None,
    quiet: bool = False,
    checkpoints: bool = True,
    allow_config_change: bool = False,
) -> RunResult:
    """Trains `stage` for `train.steps` steps into `run_dir`, resuming from its newest
    checkpoint.

    Args:
      config: the run's config (`train.*` sets steps and cadences).
      stage: what to train (its `state` is the starting point when there is no checkpoint).
      run_dir: where `config.yaml`, `metrics.jsonl`, TensorBoard events and `checkpoints/` go.
      max_steps_this_run: stop after this many steps (a later call resumes exactly).
      max_seconds: stop once this much wall time has passed (checked before each step).
      quiet: write only checkpoints (no config, metrics, plot or progress).
      checkpoints: False trains in memory only (no restore, no saves: the demo's control).
      allow_config_change: resume checkpoints written with another config (else a
        `ConfigError` lists the changes and `config.yaml` is left as it was).
    """
    c = config.train
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=c.max_to_keep) if checkpoints else None
    logger = None
    try:
        latest = ckpt.latest_step() if ckpt is not None else None
        resume.check_restart(config, run_dir, latest, allow_config_change=allow_config_change)
        if is_main and not quiet:
            save_config(config, run_dir / "config.yaml")
        if finished := resume.finished_message(config, run_dir, latest):
            log.warning(finished)
        state, start = _restore(ckpt, stage) if ckpt is not None else (stage.state, 0)
        logger = MetricsLogger(
            run_dir,
            total_steps=c.steps,
            enabled=is_main and not quiet,
            resume_step=start,
            wandb=wandb_sink.settings(config) if is_main and not quiet else None,
        )
        end = c.steps if max_steps_this_run is None else min(c.steps, start + max_steps_this_run)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        with _Sigterm() as sigterm:
            state, history = _steps(
                config, stage, state, (start, end, deadline), ckpt, logger, sigterm
            )
    finally:
        if ckpt is not None:
            ckpt.close()
        if stage.on_close is not None:
            stage.on_close()
        if logger is not None:
            logger.close()
    if is_main and not quiet:
        plot_run(run_dir)
    return RunResult(
        metrics=history[-1] if history else {}, state=state, history=history, run_dir=run_dir
    )


def _steps(
    config: Config, stage: Stage, state: TrainState, span: tuple, ckpt, logger, sigterm: _Sigterm
):
    c = config.train
    start, end, deadline = span
    history: list[dict] = []
    pending: tuple[int, dict, float, list | None] | None = None

    def finish(item) -> dict:
        done, metrics, t0, _ = item
        metrics = _fetch(metrics)
        _guard(done, metrics, ckpt)
        metrics["time/step_s"] = time.monotonic() - t0
        metrics["compile/count"] = float(stage.programs.compile_count())
        metrics.update(compile_stats())
        return stage.post(metrics) if stage.post is not None else metrics

    def record(done: int, metrics: dict, samples: list | None) -> None:
        history.append({"step": done, **metrics})
        if samples is not None:
            logger.log_samples(done, samples)
        logger.log(done, metrics)
        if done % c.log_every == 0 or done == end:
            logger.progress(done, metrics, end - start, done - start)
        if done == start + 1:
            log.info("first step done (compile/count %d)", metrics["compile/count"])

    for step in range(start, end):
        t0 = time.monotonic()
        if deadline is not None and t0 >= deadline:
            break
        if step == start:
            log.info("step %d/%d: compiling and running the first step", step + 1, c.steps)
        try:
            state, metrics = stage.step(state, step)
        except Exception:
            if pending is not None:  # the last finished step is logged before the error
                record(pending[0], finish(pending), pending[3])
            raise
        samples = metrics.pop(SAMPLES, None)  # host rows (a table of completions), or None
        if pending is not None:  # the previous step's metrics, fetched after this dispatch
            record(pending[0], finish(pending), pending[3])
        done = step + 1
        evaluate = stage.evaluate is not None and (
            (c.eval_every and done % c.eval_every == 0) or (stage.eval_at_end and done == c.steps)
        )
        save = ckpt is not None and (
            sigterm.flag
            or done == c.steps
            or (c.checkpoint_every and done % c.checkpoint_every == 0)
        )
        pending = (done, metrics, t0, samples)
        if not (evaluate or save or done == end):
            continue
        metrics, pending = finish(pending), None
        if evaluate:
            log.info("step %d: evaluating", done)
            metrics.update(stage.evaluate(state))
        if save:
            if not all_finite(state):
                raise TrainingDivergedError(
                    f"non-finite values at step {done} in the train state; not saved; the "
                    f"last good checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is "
                    "untouched."
                )
            meta = {"step": done, "data": stage.data.state(), "seed": config.seed}
            extra = None
            if stage.pipeline is not None:
                extra, meta["pipeline"] = stage.pipeline.snapshot()
            ckpt.save(done, state, {**meta, "stage": stage.name}, extra=extra)
        record(done, metrics, samples)
        if sigterm.flag:
            log.warning("SIGTERM: saved step %d, exiting", done)
            break
    if pending is not None:  # stopped by the deadline
        record(pending[0], finish(pending), pending[3])
    return state, history
