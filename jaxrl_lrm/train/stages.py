"""`jaxrl-lrm train` dispatch and the loop shared by the offline alignment stages.

The config's `stage` picks RL (`trainer.train`), SFT (`sft_stage.train_sft`), DPO
(`dpo.train_dpo`) or reward-model training (`reward_model.train_reward_model`). The three
offline stages share `run_stage`: a fixed, pre-encoded example set iterated by a resumable
`PromptIterator`, one jitted update per step, held-out evaluation, `metrics.jsonl` and orbax
checkpoints in the RL trainer's layout `{"params", "opt_state", "step"}` plus a JSON record of
the data position, so `jaxrl-lrm export` / `eval` and exact resume work the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.checkpoint import Checkpointer
from jaxrl_lrm.config import Config, save_config
from jaxrl_lrm.rl import setup, steps
from jaxrl_lrm.rl.logging import MetricsLogger

log = logging.getLogger(__name__)


def run(config: Config, **kwargs):
    """Runs the stage the config names, into `config.run_dir` (kwargs go to the stage)."""
    if config.stage == "rl":
        from jaxrl_lrm.rl import trainer

        return trainer.train(config, **kwargs)
    if config.stage == "sft":
        from jaxrl_lrm.rl import sft_stage

        return sft_stage.train_sft(config, **kwargs)
    if config.stage == "dpo":
        from jaxrl_lrm.rl import dpo

        return dpo.train_dpo(config, **kwargs)
    if config.stage == "reward_model":
        from jaxrl_lrm.rl import reward_model

        return reward_model.train_reward_model(config, **kwargs)
    raise ValueError(f"stage={config.stage!r}: expected one of 'rl', 'sft', 'dpo', "
                     "'reward_model'")


# --------------------------------------------------------------------------- building


def build_model(config: Config, mesh):
    """`(task or None, tokenizer, model)` exactly as the RL `Session` builds them."""
    task = setup.resolve_task(config.data.task, config.data.task_args) \
        if config.data.source == "task" else None
    tokenizer = setup.build_tokenizer(config, task)
    return task, tokenizer, setup.build_policy(config, tokenizer, mesh)


def make_render(config: Config, tokenizer) -> Callable[[str], str]:
    """Question -> prompt text, with the RL `Session`'s template rule (tasks: plain)."""
    from jaxrl_lrm.data.templates import render_prompt

    template = config.data.template
    if config.data.source == "task" and template == "auto":
        template = "plain"
    return lambda question: render_prompt(question, tokenizer, template)


def read_rows(config: Config, split: str, target_field: str, extra: tuple[str, ...] = ()):
    """Rows of a file / TFDS source with `prompt`, `target` (from `target_field`) and `extra`.

    Uses `data.sources.make_source` (JSONL, Parquet, TFDS; held-out split by `data.eval_split`
    or the last `data.eval_size` rows) with `target_field` read in place of the answer.
    """
    from jaxrl_lrm.data import sources

    data = dataclasses.replace(config.data, answer_field=target_field)
    src = sources.make_source(data, split, seed=config.seed)
    rows = []
    for i in range(len(src)):
        row = src[i]
        for field in extra:
            if not isinstance(row.get(field), str):
                raise ValueError(f"{split} row {i}: field {field!r}={row.get(field)!r}: "
                                 f"expected a string (fields present: {sorted(row)})")
        rows.append({"prompt": row["prompt"], "target": str(row["answer"]),
                     **{f: row[f] for f in extra}})
    return rows


def check_prompt_lengths(pairs, tokenizer, render, prompt_len: int) -> None:
    for prompt, _ in pairs:
        n = len(tokenizer.encode(render(prompt)))
        if n > prompt_len:
            raise ValueError(f"prompt of {n} tokens exceeds data.max_prompt_len={prompt_len}: "
                             f"{prompt[:80]!r}")


def make_state(config: Config, params, mesh=None):
    """A fresh `TrainState` (optimizer from `train.*`, `train.steps` updates in all)."""
    c = config.train
    optimizer, schedule = steps.make_optimizer(
        lr=c.lr, total_updates=c.steps, warmup=c.warmup_steps, schedule=c.lr_schedule,
        min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay, b1=c.b1, b2=c.b2,
        max_grad_norm=c.max_grad_norm)
    # Eager init: the moments inherit each parameter's sharding (`zeros_like` keeps it), and
    # the rest is replicated on the mesh, so the first jitted update sees the same shardings
    # as every later one and compiles once.
    opt_state = optimizer.init(params)
    state = steps.TrainState(params=params, opt_state=opt_state,
                             step=jax.numpy.zeros((), jax.numpy.int32))
    if mesh is not None:
        rep = sharding.replicated(mesh)
        state = jax.tree.map(
            lambda x: x if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
            else jax.device_put(x, rep), state)
    return state, optimizer, schedule


def check_batch(config: Config, n_train: int) -> int:
    """The per-step batch (`train.prompts_per_step`), checked against the data and micro-batches."""
    b, micro = config.train.prompts_per_step, config.train.micro_batches
    if b > n_train:
        raise ValueError(f"train.prompts_per_step={b} exceeds the {n_train} training examples")
    if b % micro:
        raise ValueError(f"train.prompts_per_step={b} is not divisible by "
                         f"train.micro_batches={micro}")
    return b


# --------------------------------------------------------------------------- evaluation


def eval_rows(fn, params, data: dict, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """`fn(params, batch) -> {name: [B]}` over every row of `data`, in fixed-size batches (the
    last one padded with repeats of row 0 and cut off), concatenated on the host."""
    n = next(iter(data.values())).shape[0]
    out: dict[str, list] = {}
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, lo + batch_size)
        idx = np.where(idx < n, idx, 0)
        res = jax.device_get(fn(params, sharding.shard_batch(
            {k: v[idx] for k, v in data.items()}, mesh)))
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v)[: min(batch_size, n - lo)])
    return {k: np.concatenate(v) for k, v in out.items()}


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class StageResult:
    metrics: dict  # the last step's metrics
    params: object  # the final parameters
    history: list  # every step's metrics (this call's steps)
    run_dir: Path


def run_stage(config: Config, *, run_dir: Path, mesh, params, loss_fn, train_data: dict,
              evaluate: Callable[[object], dict] | None, frozen=None,
              max_steps_this_run: int | None = None, quiet: bool = False) -> StageResult:
    """Trains `params` on `train_data` for `train.steps` steps (resuming from `run_dir`).

    Args:
      config: the run's config; reads `seed`, `train.*` (steps, prompts_per_step as the batch,
        micro_batches, optimizer fields, checkpoint_every, eval_every, max_to_keep).
      run_dir: where `config.yaml`, `metrics.jsonl` and `checkpoints/` go.
      mesh: the device mesh.
      params: the initial parameters (a copy is trained; the argument stays valid).
      loss_fn: `(params, frozen, batch) -> (loss, metrics)`, jit-able, on a slice of
        `train_data`.
      train_data: numpy arrays with a leading example axis.
      evaluate: `params -> metrics` (held-out), run every `train.eval_every` steps and at the end.
      frozen: arrays the loss reads but does not train (the DPO reference), passed to the
        jitted update as an argument (never baked in as constants, never donated).
      max_steps_this_run: stop after this many steps (a later call resumes exactly).
      quiet: write only checkpoints (no config, metrics or progress).
    """
    from jaxrl_lrm.data.iterator import PromptIterator
    from jaxrl_lrm.rl.trainer import TrainingDivergedError

    c = config.train
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main and not quiet:
        save_config(config, run_dir / "config.yaml")
    n = next(iter(train_data.values())).shape[0]
    batch_size = check_batch(config, n)
    iterator = PromptIterator(range(n), batch_size, config.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
    state, optimizer, schedule = make_state(config, setup.frozen_copy(params), mesh)
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=c.max_to_keep)
    start = 0
    if ckpt.latest_step() is not None:
        target = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
        restored, meta, start = ckpt.restore(target)
        state = steps.TrainState(**restored)
        iterator.restore(meta["data"])
        log.info("resumed %s from step %d in %s", config.stage, start, ckpt.directory)
    logger = MetricsLogger(run_dir, total_steps=c.steps, enabled=is_main and not quiet,
                           resume_step=start)

    def update(state, frozen, batch):
        state, metrics = steps.accumulate_update(
            state, optimizer, lambda p, b: loss_fn(p, frozen, b), batch, c.micro_batches)
        return dataclasses.replace(state, step=state.step + 1), metrics

    update_fn = jax.jit(update, donate_argnums=0)
    end = c.steps if max_steps_this_run is None else min(c.steps, start + max_steps_this_run)
    metrics, history = {}, []
    try:
        for step in range(start, end):
            t0 = time.monotonic()
            idx = np.asarray(iterator.next_indices())
            batch = sharding.shard_batch({k: v[idx] for k, v in train_data.items()}, mesh)
            new_state, dev = update_fn(state, frozen, batch)
            metrics = {k: float(v) for k, v in jax.device_get(dev).items()}
            bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
            if bad:
                raise TrainingDivergedError(
                    f"non-finite values at step {step + 1}: {bad}; stopping. The last good "
                    f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is untouched.")
            state = new_state
            done = step + 1
            metrics["lr"] = float(schedule(step))
            if evaluate is not None and (done == c.steps or (c.eval_every and
                                                             done % c.eval_every == 0)):
                metrics.update(evaluate(state.params))
            metrics["time/step_s"] = time.monotonic() - t0
            history.append({"step": done, **metrics})
            logger.log(done, metrics)
            logger.progress(done, metrics, end - start, done - start)
            if done == c.steps or (c.checkpoint_every and done % c.checkpoint_every == 0):
                ckpt.save(done, {"params": state.params, "opt_state": state.opt_state,
                                 "step": state.step},
                          {"step": done, "data": iterator.state(), "seed": config.seed,
                           "stage": config.stage})
    finally:
        ckpt.close()
        logger.close()
    return StageResult(metrics=metrics, params=state.params, history=history, run_dir=run_dir)


# --------------------------------------------------------------------------- chaining


def run_dir_of(path: str | Path) -> Path:
    """The run directory of `path` (a run directory or its `checkpoints/`)."""
    run_dir = Path(path)
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"run_dir={str(run_dir)!r}: no config.yaml in it; expected the run "
                         "directory of a `jaxrl-lrm train` run")
    return run_dir


def restore_params(run_dir: str | Path, step: int | None = None, *, mesh=None):
    """`(config, tokenizer, model, step)`: the trained model of any stage's run directory.

    Rebuilds the initial model from the run's `config.yaml` (a reward model gets its value head)
    and restores the checkpoint's `params` into it.
    """
    from jaxrl_lrm import checkpoint
    from jaxrl_lrm.config import load_config

    run_dir = run_dir_of(run_dir)
    config = load_config(run_dir / "config.yaml")
    mesh = mesh or sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    if config.stage == "reward_model":
        from jaxrl_lrm.rl.reward_model import build_reward_model

        tokenizer, model = build_reward_model(config, mesh)
    else:
        _, tokenizer, model = build_model(config, mesh)
    state, _, _ = make_state(config, model.params, mesh)
    target = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    restored, step = checkpoint.restore_state_only(run_dir / "checkpoints", target, step)
    return config, tokenizer, model.replace(params=restored["params"]), step


def export(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> int:
    """Writes a run's model as a Hugging Face checkpoint in `out_dir`; returns the step.

    For a reward model the backbone goes through `models.save_pretrained` and the scalar head
    to `value_head.safetensors` beside it (`models.save_value_model`; `models.load_value_model`
    reads both).
    """
    from jaxrl_lrm import models

    _, tokenizer, model, step = restore_params(run_dir, step)
    if model.tokenizer is None:
        model = model.replace(tokenizer=tokenizer)
    if model.has_value_head:
        models.save_value_model(model, out_dir)
    else:
        models.save_pretrained(model, out_dir)
    return step
