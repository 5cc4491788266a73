"""The offline stages (`stage: sft | dpo | reward_model`) as `Stage`s of the one loop: a fixed,
pre-encoded example set iterated by a resumable `PromptIterator`, one jitted update per step,
held-out evaluation, checkpoints in the RL run's layout (so `export`, `eval` and exact resume
work the same way). The objectives live in `jaxrl_lrm.offline`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.config import Config
from jaxrl_lrm.data.iterator import PromptIterator
from jaxrl_lrm.offline import data as offline_data
from jaxrl_lrm.offline import dpo, reward_model, sft
from jaxrl_lrm.train import adapters, loop, setup
from jaxrl_lrm.train.programs import make_offline_programs
from jaxrl_lrm.train.state import OptimizerConfig, TrainState, init_state, make_optimizer


@dataclasses.dataclass(frozen=True)
class Objective:
    """An offline stage's objective: its loss, its held-out pass and how to summarise it."""

    loss: Callable  # (params, frozen, batch, denom) -> (loss, metrics)
    denominators: Callable  # batch -> losses.Denominators of the whole batch
    eval_terms: Callable | None  # (params, frozen, batch) -> {name: [B]}
    summarize: Callable[[dict], dict] | None  # host: {name: [N]} -> metrics


def eval_rows(fn, params, frozen, data: dict, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """`fn(params, frozen, batch) -> {name: [B]}` over every row of `data`, in fixed-size
    batches (the last padded with repeats of row 0 and cut off), concatenated on the host."""
    n = next(iter(data.values())).shape[0]
    out: dict[str, list] = {}
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, lo + batch_size)
        idx = np.where(idx < n, idx, 0)
        res = jax.device_get(
            fn(params, frozen, sharding.shard_batch({k: v[idx] for k, v in data.items()}, mesh))
        )
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v)[: min(batch_size, n - lo)])
    return {k: np.concatenate(v) for k, v in out.items()}


def _on_base(objective: Objective, bases) -> Objective:
    """`objective` of the adapters: they are applied to the frozen base (the objective's
    `frozen` argument, so DPO's reference is the base with the adapters off)."""

    def view(p, base):
        return dataclasses.replace(bases, policy=base).policy_params(p)

    terms = objective.eval_terms
    return dataclasses.replace(
        objective,
        loss=lambda p, base, b, d: objective.loss(view(p, base), base, b, d),
        eval_terms=None if terms is None else (lambda p, base, b: terms(view(p, base), base, b)),
    )


def check_batch(config: Config, n_train: int) -> int:
    """The per-step batch (`train.prompts_per_step`), checked against the data and micro-batches."""
    b, micro = config.train.prompts_per_step, config.train.micro_batches
    if b > n_train:
        raise ValueError(f"train.prompts_per_step={b} exceeds the {n_train} training examples")
    if b % micro:
        raise ValueError(
            f"train.prompts_per_step={b} is not divisible by train.micro_batches={micro}"
        )
    return b


def make_stage(
    config: Config,
    objective: Objective,
    *,
    mesh,
    params,
    train_data: dict,
    eval_data: dict | None,
    frozen=None,
    name: str | None = None,
    lr: float | None = None,
    total_updates: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    model_config=None,
) -> loop.Stage:
    """A `Stage` training a copy of `params` on `train_data` (numpy, leading example axis).
    With LoRA (`model.lora.rank > 0`; needs `model_config`) it trains adapters on `params`,
    frozen, which are then also the `frozen` argument (DPO's reference)."""
    c = config.train
    if adapters.lora_config(config) is not None:
        if model_config is None:
            raise ValueError(f"model.lora.rank={config.model.lora.rank}: this stage has no LoRA")
        params, frozen = adapters.trainable(config, model_config, params, mesh)
        objective = _on_base(objective, adapters.bases(config, frozen))
    n = next(iter(train_data.values())).shape[0]
    batch_size = batch_size or check_batch(config, n)
    seed = config.seed if seed is None else seed
    iterator = PromptIterator(
        range(n),
        batch_size,
        seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    optimizer, schedule = make_optimizer(
        OptimizerConfig.of(
            c, lr=lr, total_updates=c.steps if total_updates is None else total_updates
        )
    )
    state = init_state(params, optimizer=optimizer, mesh=mesh, seed=seed)
    example = {k: v[:batch_size] for k, v in train_data.items()}
    programs = make_offline_programs(
        objective.loss,
        objective.eval_terms,
        optimizer=optimizer,
        micro_batches=c.micro_batches,
        mesh=mesh,
        state=state,
        batch=example,
        frozen=frozen,
        denom_fn=objective.denominators,
        schedule=schedule,
    )

    def step(st: TrainState, k: int):
        idx = np.asarray(iterator.next_indices())
        batch = sharding.shard_batch({key: v[idx] for key, v in train_data.items()}, mesh)
        st, metrics = programs.update(st, frozen, batch)
        return st, metrics

    evaluate = None
    if eval_data is not None and objective.eval_terms is not None:

        def evaluate(st: TrainState) -> dict:
            return objective.summarize(
                eval_rows(programs.evaluate, st.params, frozen, eval_data, batch_size, mesh)
            )

    return loop.Stage(
        name=name or config.stage,
        state=state,
        step=step,
        data=iterator,
        programs=programs,
        evaluate=evaluate,
        eval_at_end=True,
    )


# --------------------------------------------------------------------------- the three stages


def _has_eval(config: Config) -> bool:
    return bool(config.data.eval_size or config.data.eval_split)


def sft_stage(config: Config, mesh) -> loop.Stage:
    """`stage: sft`: masked next-token loss on (prompt, completion) pairs (see `offline.sft`).
    Metrics: `sft/loss`, `grad_norm`, `lr`; held-out `eval/loss`, `eval/token_accuracy`,
    `eval/accuracy` (share of rows whose whole completion is the greedy choice)."""
    task, tokenizer, model = setup.build_model(config, mesh)
    render = offline_data.make_render(config, tokenizer)
    train_data = offline_data.encode_checked(
        config, sft.sft_pairs(config, task, "train"), tokenizer, render, "train prompts"
    )
    eval_data = None
    if _has_eval(config):
        pairs = sft.sft_pairs(config, task, "eval")
        eval_data = (
            offline_data.encode_checked(config, pairs, tokenizer, render, "eval prompts")
            if pairs
            else None
        )
    mc = model.config
    objective = Objective(
        loss=lambda p, _, b, d: sft.sft_loss(p, mc, b, d),
        denominators=sft.target_denominators,
        eval_terms=lambda p, _, b: sft.token_stats(p, mc, b),
        summarize=sft.summarize,
    )
    return make_stage(
        config,
        objective,
        mesh=mesh,
        params=model.params,
        train_data=train_data,
        eval_data=eval_data,
        model_config=mc,
    )


def _pair_summary(loss_key: str, a: str, b: str, acc_name: str) -> Callable[[dict], dict]:
    def summarize(t: dict) -> dict:
        margin = t[a] - t[b]
        return {
            "eval/loss": float(np.mean(t[loss_key])),
            f"eval/{acc_name}": float(np.mean(margin > 0)),
            "eval/margin": float(np.mean(margin)),
        }

    return summarize


def dpo_stage(config: Config, mesh, *, label_smoothing: float = 0.0) -> loop.Stage:
    """`stage: dpo` (see `offline.dpo`); the frozen reference is the initial model (cast to
    `model.ref_dtype` when set). Metrics: `dpo/*`, `grad_norm`, `lr`; held-out `eval/loss`,
    `eval/reward_accuracy`, `eval/margin`."""
    beta = config.algorithm.beta
    if beta is None or beta <= 0:
        raise ValueError(
            f"algorithm.beta={beta!r}: expected > 0 for stage='dpo' (the DPO temperature, e.g. 0.1)"
        )
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected 0 <= value < 0.5")
    _, tokenizer, model = setup.build_model(config, mesh)
    render = offline_data.make_render(config, tokenizer)
    P, T = config.data.max_prompt_len, config.sampling.max_new_tokens

    def encode(split):
        triples = dpo.read_pairs(config, split)
        o = config.data.overlong
        return dpo.encode_preferences(triples, tokenizer, P, T, render, o, f"{split} prompts")

    ref = setup.reference_params(config, model.params)
    kw = dict(prompt_len=P, beta=beta, label_smoothing=label_smoothing)
    mc = model.config
    objective = Objective(
        loss=lambda p, ref_p, b, d: dpo.dpo_batch_loss(p, ref_p, mc, b, d, **kw),
        denominators=dpo.pair_denominators,
        eval_terms=lambda p, ref_p, b: dpo.dpo_terms(p, ref_p, mc, b, **kw),
        summarize=_pair_summary("loss", "chosen_reward", "rejected_reward", "reward_accuracy"),
    )
    return make_stage(
        config,
        objective,
        mesh=mesh,
        params=model.params,
        train_data=encode("train"),
        eval_data=encode("eval") if _has_eval(config) else None,
        frozen=ref,
        model_config=mc,
    )


def reward_model_stage(config: Config, mesh) -> loop.Stage:
    """`stage: reward_model`: Bradley-Terry on preference pairs (see `offline.reward_model`).
    Metrics: `rm/*`, `grad_norm`, `lr`; held-out `eval/loss`, `eval/accuracy`, `eval/margin`."""
    tokenizer, model = reward_model.build_reward_model(config, mesh)
    render = offline_data.make_render(config, tokenizer)
    P, T = config.data.max_prompt_len, config.sampling.max_new_tokens

    def encode(split):
        triples = dpo.read_pairs(config, split)
        o = config.data.overlong
        return dpo.encode_preferences(triples, tokenizer, P, T, render, o, f"{split} prompts")

    mc = model.config
    objective = Objective(
        loss=lambda p, _, b, d: reward_model.rm_batch_loss(p, mc, b, d),
        denominators=dpo.pair_denominators,
        eval_terms=lambda p, _, b: reward_model.rm_terms(p, mc, b),
        summarize=_pair_summary("loss", "r_chosen", "r_rejected", "accuracy"),
    )
    return make_stage(
        config,
        objective,
        mesh=mesh,
        params=model.params,
        train_data=encode("train"),
        eval_data=encode("eval") if _has_eval(config) else None,
        model_config=mc,
    )


STAGES = {"sft": sft_stage, "dpo": dpo_stage, "reward_model": reward_model_stage}


def run(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    mesh=None,
    max_steps_this_run: int | None = None,
    quiet: bool = False,
    allow_config_change: bool = False,
) -> loop.RunResult:
    """Builds the offline stage `config.stage` names and trains it into `run_dir`."""
    mesh = mesh or sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    stage = STAGES[config.stage](config, mesh)
    return loop.run(
        config,
        stage,
        run_dir or config.run_dir,
        max_steps_this_run=max_steps_this_run,
        quiet=quiet,
        allow_config_change=allow_config_change,
    )
