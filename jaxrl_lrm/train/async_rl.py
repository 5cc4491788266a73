"""Asynchronous rollouts with bounded staleness (`train.max_staleness: K >= 1`).

The synchronous step (`rl_step`) leaves the device idle while the host detokenizes and scores.
Here step k's batch was sampled during step k-1, and step k dispatches the sampling of step
k+1's batch before the host scores its own:

    host:    copy tokens(k) | dispatch sample(k+1), score(k) pass | rewards(k) | update(k)
    device:  ... sample(k)  |          sample(k+1)    proximal pass(k)          | update(k)

so the reward functions run while the device samples (the two are dispatched from a worker
thread: XLA:CPU may run the sampler's while loop on the dispatching thread). Every batch carries the policy version
(`state.step` when its sampling was dispatched); a batch more than K versions older than the
policy it would update is dropped and resampled, never trained on. The pipeline holds one
batch in flight, so its staleness is 0 (the first step) or 1. The objective must correct for
the older behaviour policy: the decoupled PPO objective (`algorithm.decoupled`), clipping
against the proximal policy the score pass recomputes under the current parameters and
weighting by `exp(proximal - behaviour)`.

A checkpoint keeps the batch in flight (`snapshot`: its arrays in the step's `extra` orbax
item, its version, the data position before its prompts, the run's counters in the meta), so
a resumed run trains on the very batch the uninterrupted run would have (`resume` re-reads
its prompt rows to score it): resuming is exact, also after SIGTERM. The alternative,
resampling it, would need the previous version's parameters (a second copy of the policy in
every checkpoint); the batch is rows x (prompt + completion) tokens and two float32 log-probs
per completion token, small beside the parameters.

Metrics (host floats): `async/version`, `async/staleness`, `async/staleness_hist/{s}` (the
run's count of batches of staleness s so far), `time/host_exposed_s` (the device had finished
its queued work and waited for the host: the host time not hidden behind device work) and
`time/device_idle_frac` (that time over the step's wall time).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax

from jaxrl_lrm.train.batch import Prompts, Rollout, RolloutBatch
from jaxrl_lrm.train.programs import Programs
from jaxrl_lrm.train.rl import ScoreFn, StepOutput, host_completions, to_device
from jaxrl_lrm.train.state import TrainState


def check_correction(spec, max_staleness: int) -> None:
    """Refuses asynchronous rollouts without a behaviour-policy correction."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness={max_staleness!r}: expected an integer >= 0")
    if max_staleness and not (spec.decoupled or spec.tis_max is not None):
        raise ValueError(
            f"max_staleness={max_staleness}: asynchronous rollouts need the decoupled PPO "
            "objective (algorithm.decoupled=true): the standard one would clip against the "
            "stale behaviour policy without correcting for it"
        )
    if max_staleness and spec.dynamic_sampling:
        raise ValueError(f"max_staleness={max_staleness}: not with DAPO's dynamic sampling")


@dataclasses.dataclass
class _InFlight:
    rollout: Rollout
    score: ScoreFn
    version: int  # the policy version (state.step) that sampled it
    data: dict  # the prompt iterator's position before this batch's prompts


def _watch(rollout: Rollout) -> list:
    """A list that receives the monotonic time at which `rollout` is computed."""
    out: list = []

    def wait():
        jax.block_until_ready(rollout)
        out.append(time.monotonic())

    threading.Thread(target=wait, daemon=True).start()
    return out


class AsyncRollouts:
    """The step function of an asynchronous RL run (host state: the batch in flight).

    Args:
      programs: `make_rl_programs(...)` (its `score` computes the proximal log-probs).
      spec: the algorithm (`check_correction` is applied).
      next_prompts: `() -> (Prompts on the mesh, ScoreFn)` for the next batch.
      data: the iterator `next_prompts` reads (`state()` / `restore()`: a checkpoint records
        where the batch in flight's prompts start).
      max_staleness: K >= 1.
      steps: the run's last step index + 1 (no batch is sampled past it).
      mesh, T: as in `rl_step`.
    """

    def __init__(
        self,
        programs: Programs,
        spec,
        next_prompts: Callable[[], tuple[Prompts, ScoreFn]],
        *,
        data,
        max_staleness: int,
        steps: int,
        mesh,
        T: int,
    ):
        check_correction(spec, max_staleness)
        if max_staleness < 1:
            raise ValueError(f"max_staleness={max_staleness}: AsyncRollouts needs K >= 1")
        self.programs, self.next_prompts, self.data = programs, next_prompts, data
        self.K, self.steps, self.mesh, self.T = max_staleness, steps, mesh, T
        self.pending: _InFlight | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="async-rollouts")
        self.hist: Counter = Counter()
        self.dropped = 0
        self.version: int | None = None  # updates applied (state.step), counted on the host

    def _dispatch(self, state: TrainState, index: int) -> _InFlight:
        before = self.data.state()
        prompts, score = self.next_prompts()
        # the key is the batch's step index (as in the synchronous run), not the version
        rollout = self.programs.sample(state.params, prompts, state.rng, index)
        return _InFlight(rollout, score, self.version, before)

    def _device_work(self, state: TrainState, ref_params, batch: _InFlight, k: int):
        """Dispatches step k+1's sampling and step k's proximal pass: `(the batch in flight,
        scored, [the time both are computed])`."""
        pending = self._dispatch(state, k + 1) if k + 1 < self.steps else None
        scored = self.programs.score(state, ref_params, batch.rollout)  # proximal log-probs
        queued = _watch((scored, None if pending is None else pending.rollout))
        return pending, scored, queued

    @property
    def target(self) -> Rollout:
        """The abstract batch in flight (shapes, dtypes, shardings), to restore it."""
        return self.programs.rollout_target

    def snapshot(self) -> tuple[Rollout | None, dict]:
        """`(the batch in flight or None, JSON meta)` for a checkpoint."""
        p = self.pending
        meta = {
            "version": None if p is None else p.version,
            "data": None if p is None else p.data,
            "hist": {str(s): n for s, n in sorted(self.hist.items())},
            "dropped": self.dropped,
        }
        return (None if p is None else p.rollout), meta

    def resume(self, rollout: Rollout | None, meta: dict) -> None:
        """Continues from `snapshot()`'s output, after the iterator was restored to the
        checkpoint's position (it ends there again: the batch's prompts are re-read)."""
        self.hist = Counter({int(s): n for s, n in meta["hist"].items()})
        self.dropped, self.pending, self.version = meta["dropped"], None, None
        if meta["version"] is None:
            return
        if rollout is None:
            raise ValueError(
                f"the checkpoint records a batch in flight (version {meta['version']}) but "
                "holds no arrays for it: expected its `extra` item"
            )
        after = self.data.state()
        self.data.restore(meta["data"])
        _, score = self.next_prompts()
        if self.data.state() != after:
            raise ValueError(
                f"the batch in flight's prompts end at {self.data.state()}, the checkpoint's "
                f"data position is {after}: expected the same"
            )
        self.pending = _InFlight(rollout, score, meta["version"], meta["data"])

    def __call__(self, state: TrainState, ref_params, k: int) -> tuple[TrainState, StepOutput]:
        """Step `k`: trains on the batch in flight (sampled by an older version, at most K
        behind) and leaves step k+1's batch sampling on the device."""
        t0 = time.monotonic()
        if self.version is None:  # once: reading state.step later would wait for the update
            self.version = int(state.step)
        version = self.version
        if self.pending is not None and version - self.pending.version > self.K:
            self.dropped += 1  # too old to train on: resample with the current policy
            self.pending = None
        batch = self.pending or self._dispatch(state, k)
        tokens, mask = host_completions(batch.rollout, self.T)
        # dispatched from another thread: XLA:CPU may run a program with a while loop (the
        # sampler) on the thread that dispatches it, which would then not score meanwhile
        work = self._pool.submit(self._device_work, state, ref_params, batch, k)
        t1 = time.monotonic()
        scores = batch.score(tokens, mask)
        t2 = time.monotonic()
        self.pending, scored, queued = work.result()
        rb = RolloutBatch(
            rollout=batch.rollout, scored=scored, rewards=to_device(scores, self.mesh)
        )
        state, dev_metrics = self.programs.update(state, rb)
        self.version += 1
        staleness = version - batch.version
        self.hist[staleness] += 1
        # the device had finished everything queued before the update: it waited for the host
        exposed = max(0.0, t2 - queued[0]) if queued else 0.0
        step_s = max(time.monotonic() - t0, 1e-9)
        metrics = {
            "time/sample_s": t1 - t0,
            "time/reward_s": t2 - t1,
            "time/host_exposed_s": exposed,
            "time/device_idle_frac": min(1.0, exposed / step_s),
            "async/version": float(batch.version),
            "async/staleness": float(staleness),
            "async/dropped": float(self.dropped),
            **{f"async/staleness_hist/{s}": float(self.hist[s]) for s in range(self.K + 1)},
            **dev_metrics,
        }
        return state, StepOutput(metrics=metrics, scores=scores, tokens_NT=tokens, mask_NT=mask)
