"""An RL run's pieces, built once from its config, and the `Stage` the loop trains.

`build(config)` returns an `RLSetup`: plain pieces (mesh, text codec, algorithm spec, reward
functions, data, programs, the frozen reference, the initial state), each made by a function of
`setup` / `programs` / `state`; it owns no behaviour beyond small helpers. `stage(setup)` turns
it into the loop's `Stage`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxrl_lrm import algorithms, losses, models, sharding
from jaxrl_lrm.config import Config, ConfigError
from jaxrl_lrm.data import sources
from jaxrl_lrm.data.iterator import PromptIterator
from jaxrl_lrm.data.overlong import fit_source
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.rewards.executor import RewardExecutor
from jaxrl_lrm.rewards.math import extract_answer
from jaxrl_lrm.train import adapters, evaluation, host, multiturn, setup
from jaxrl_lrm.train.async_rl import AsyncRollouts
from jaxrl_lrm.train.batch import Prompts
from jaxrl_lrm.train.dapo import dapo_step
from jaxrl_lrm.train.loop import SAMPLES, Stage
from jaxrl_lrm.train.programs import Programs, SamplingConfig, make_rl_programs
from jaxrl_lrm.train.rl import rl_step
from jaxrl_lrm.train.state import Bases, OptimizerConfig, TrainState, init_state, make_optimizer
from jaxrl_lrm.train.update import RLUpdateConfig

EVAL_SEED_OFFSET = 999_983  # evaluation draws from fold_in(key(seed), this)


@dataclasses.dataclass
class RLSetup:
    """The built pieces of an RL run (host objects and device arrays, no jitted closures
    besides `programs`)."""

    config: Config
    mesh: Any
    task: setup.TaskInfo | None
    text: host.Text
    model_config: ModelConfig
    spec: algorithms.AlgorithmSpec
    scalar_fns: list[host.RewardFn]
    token_fns: list[host.RewardFn]
    train_rows: Any
    eval_rows: Any
    eval_fn: host.RewardFn | str  # the correctness function, or why there is none
    programs: Programs
    state: TrainState
    ref_params: Any
    schedule: Any
    update_config: RLUpdateConfig
    bases: Bases = Bases()  # LoRA's frozen base weights (all None in full fine-tuning)
    env: multiturn.EnvRun | None = None  # `env.*`: episodes instead of single completions

    @property
    def group_size(self) -> int:
        return self.spec.group_size

    def eval_subset(self, n: int | None = None) -> list[dict]:
        """The first `n` (default `eval.num_prompts`) held-out rows."""
        n = self.config.eval.num_prompts if n is None else n
        return [self.eval_rows[i] for i in range(min(n, len(self.eval_rows)))]


def _reference(config: Config, spec, policy_params):
    """The frozen reference: the initial policy (`setup.reference_params`; with LoRA the base
    weights themselves), or None when the algorithm has no KL term."""
    return setup.reference_params(config, policy_params) if spec.beta > 0 else None


def value_model(config: Config, spec, policy, base, mesh):
    """`(trained value params, their frozen base)`: PPO's value model (`(None, None)` without
    one). In full fine-tuning a copy of the policy (or `algorithm.value_path`); with LoRA its
    own adapters and head on the policy's base (no copy) or on `value_path`'s backbone."""
    if not spec.uses_value:
        return None, None
    if base is None:
        return setup.build_value_params(config, policy, mesh), None
    if config.algorithm.value_path is None:
        full = models.with_value_head(policy.replace(params=base)).params
    else:
        full = setup.build_value_params(config, policy, mesh)
    return adapters.trainable(config, policy.config, full, mesh, salt=adapters.VALUE_SALT)


def _update_config(config: Config, spec, model_config, prompt_len: int):
    c = config.train
    updates = c.steps * c.ppo_epochs * c.minibatches
    optimizer, schedule = make_optimizer(OptimizerConfig.of(c, total_updates=updates))
    value_opt = None
    if spec.uses_value:
        value_opt, _ = make_optimizer(
            OptimizerConfig.of(c, lr=spec.value_lr or c.lr, total_updates=updates)
        )
    ctrl = None
    if spec.kl_target is not None and spec.kl_in_reward and spec.beta > 0:
        ctrl = losses.AdaptiveKLController(
            init_kl_coef=spec.beta, target=spec.kl_target, horizon=spec.kl_horizon
        )
    cfg = RLUpdateConfig(
        model=model_config,
        spec=spec,
        optimizer=optimizer,
        value_optimizer=value_opt,
        prompt_len=prompt_len,
        max_new_tokens=config.sampling.max_new_tokens,
        temperature=config.sampling.temperature,
        epochs=c.ppo_epochs,
        minibatches=c.minibatches,
        micro_batches=c.micro_batches,
        pack_rows=c.pack_rows,
        kl_controller=ctrl,
        schedule=schedule,
    )
    return cfg, schedule


def load_rows(config: Config, text: host.Text, split: str):
    """The train or eval rows, every prompt measured once: those over `data.max_prompt_len`
    are filtered, kept for truncation or refused (`data.overlong`), with a count in the log."""
    src = sources.make_source(config.data, split, seed=config.seed)
    d = config.data
    return fit_source(src, text.prompt_length, d.max_prompt_len, d.overlong, f"{split} prompts")


# A reward function whose name holds one of these says it checks correctness.
CORRECTNESS_WORDS = ("accuracy", "correct", "verif", "unit_test")


def eval_reward(config: Config, scalar_fns: list[host.RewardFn]) -> host.RewardFn | str:
    """The reward function evaluation counts correct at >= 0.5: `eval.reward`; else the first
    scalar function named `task` or whose name holds one of `CORRECTNESS_WORDS`; else the only
    function `rewards.functions` lists. Without one, the reason (evaluation raises it).

    Raises:
      ConfigError: `eval.reward` names no scalar reward function of the run.
    """
    names = [name for name, _, _ in scalar_fns]
    if config.eval.reward is not None:
        if config.eval.reward not in names:
            raise ConfigError(
                f"eval.reward={config.eval.reward!r}: expected the name of one of the run's "
                f"scalar reward functions {names}"
            )
        return scalar_fns[names.index(config.eval.reward)]
    for fn in scalar_fns:
        if fn[0] == "task" or any(w in fn[0] for w in CORRECTNESS_WORDS):
            return fn
    if len(config.rewards.functions) == 1 and scalar_fns:
        return scalar_fns[0]
    return (
        f"evaluation needs a correctness function and none of the scalar reward functions "
        f"{names} says it is one (a name 'task' or holding one of {CORRECTNESS_WORDS}); set "
        "eval.reward to one of them"
    )


def build(config: Config, *, mesh=None, init_params=None) -> RLSetup:
    """Everything an RL run needs, from its config (`init_params` replaces the initial policy
    and reference, e.g. an SFT checkpoint)."""
    c = config
    mesh = mesh or sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    task = setup.resolve_task(c.data.task, c.data.task_args) if c.data.source == "task" else None
    tokenizer = setup.build_tokenizer(c, task)
    policy = setup.build_policy(c, tokenizer, mesh)
    params = policy.params if init_params is None else init_params
    spec = algorithms.resolve(c.algorithm)
    env = multiturn.build(c, tokenizer)
    scalar_fns, token_fns = multiturn.reward_fns(c, env, lambda: setup.build_rewards(c, task, mesh))
    template = "plain" if task is not None and c.data.template == "auto" else c.data.template
    P, truncate = c.data.max_prompt_len, c.data.overlong == "truncate"
    text = host.Text(tokenizer, template, P, system=c.data.system, truncate=truncate)
    train_rows, eval_rows = (load_rows(c, text, split) for split in sources.SPLITS)
    eval_fn = eval_reward(c, scalar_fns) if env is None or c.eval.reward else None
    if isinstance(eval_fn, str) and c.train.eval_every:
        raise ConfigError(f"train.eval_every={c.train.eval_every}: {eval_fn}")
    ucfg, schedule = _update_config(c, spec, policy.config, c.data.max_prompt_len)
    trained, base = adapters.trainable(c, policy.config, params, mesh)
    value_params, value_base = value_model(c, spec, policy.replace(params=params), base, mesh)
    ref = _reference(c, spec, params if base is None else base)
    state = init_state(
        trained,
        optimizer=ucfg.optimizer,
        mesh=mesh,
        seed=c.seed,
        kl_coef=spec.beta,
        value_params=value_params,
        value_optimizer=ucfg.value_optimizer,
    )
    del params, trained, value_params, policy
    bases = adapters.bases(c, base, value_base)
    rows = c.train.prompts_per_step * spec.group_size * jax.process_count()
    samp = SamplingConfig(
        max_new_tokens=c.sampling.max_new_tokens,
        temperature=c.sampling.temperature,
        top_k=c.sampling.top_k,
        top_p=c.sampling.top_p,
        logprob_mode=c.sampling.logprob_mode,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
    )
    programs = make_rl_programs(
        ucfg,
        samp,
        mesh,
        state=state,
        ref_params=ref,
        rows=rows,
        dense=bool(token_fns) or env is not None,
        keep=spec.dynamic_sampling,
        bases=bases,
        multiturn=env is not None,
    )
    return RLSetup(
        config=c,
        mesh=mesh,
        task=task,
        text=text,
        model_config=ucfg.model,
        spec=spec,
        scalar_fns=scalar_fns,
        token_fns=token_fns,
        train_rows=train_rows,
        eval_rows=eval_rows,
        eval_fn=eval_fn,
        programs=programs,
        state=state,
        ref_params=ref,
        schedule=schedule,
        update_config=ucfg,
        bases=bases,
        env=env,
    )


def with_params(s: RLSetup, params) -> RLSetup:
    """`s` restarted from `params` (a fresh state; the reference becomes `params` too), reusing
    its compiled programs (the layouts are the same). The demo starts RL from its SFT model."""
    if s.state.value is not None or adapters.lora_config(s.config) is not None:
        raise ValueError("with_params: runs with a value model or LoRA are rebuilt with build()")
    c, u = s.config, s.update_config
    state = init_state(params, optimizer=u.optimizer, mesh=s.mesh, seed=c.seed, kl_coef=s.spec.beta)
    return dataclasses.replace(s, state=state, ref_params=_reference(c, s.spec, params))


# --------------------------------------------------------------------------- evaluation


def complete(
    s: RLSetup, params, rows: list[dict], temperature: float, n: int, key=None
) -> list[str]:
    """`n` completions per row (row-major), decoded to text."""
    _, ids, mask = s.text.encode(rows, n)
    key = jax.random.key(0) if key is None else key
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)
    out = s.programs.generate(params, prompts, key, temperature)
    T = s.config.sampling.max_new_tokens
    return s.text.decode(
        sharding.host_rows(out.tokens_BL[:, -T:]), sharding.host_rows(out.attn_BL[:, -T:])
    )


def correct(s: RLSetup, rows: list[dict], completions: list[str]) -> list[bool]:
    """Correctness for evaluation: the run's correctness function (`eval_reward`) gives >= 0.5
    (called as in training: rendered prompts, the rows' columns)."""
    if isinstance(s.eval_fn, str):
        raise ConfigError(s.eval_fn)
    _, fn, _ = s.eval_fn
    cols = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    return [
        float(x) >= 0.5 for x in fn([s.text.render(r["prompt"]) for r in rows], completions, **cols)
    ]


def extract(s: RLSetup, completion: str):
    if s.task is not None:
        return s.task.extract(completion)
    return extract_answer(completion)


def evaluate(s: RLSetup, params, rows: list[dict] | None = None, key=None):
    """`(metrics, samples)`: greedy accuracy, pass@k and maj@k on held-out rows."""
    rows = s.eval_subset() if rows is None else rows
    key = (
        jax.random.fold_in(jax.random.key(s.config.seed), EVAL_SEED_OFFSET) if key is None else key
    )
    if s.env is not None:  # episodes; correct by `eval.reward`, else by the environment's reward
        fn = None if s.eval_fn is None else (lambda rs, cs: correct(s, rs, cs))
        return multiturn.evaluate(s, params, rows, key, fn, lambda x: extract(s, x))
    return evaluation.evaluate(
        rows,
        complete=lambda rs, t, n: complete(s, params, rs, t, n, key),
        correct=lambda rs, cs: correct(s, rs, cs),
        extract=lambda x: extract(s, x),
        k=s.config.eval.k,
        temperature=s.config.eval.temperature,
    )


# --------------------------------------------------------------------------- the stage


def _step_metrics(out, G: int) -> dict:
    return {
        **out.metrics,
        **host.reward_metrics(out.scores, out.mask_NT, G),
        "rows": float(len(out.mask_NT)),
    }


def _async_stepper(s: RLSetup, prompts_and_score, data) -> AsyncRollouts | None:
    """The asynchronous step of `train.max_staleness >= 1`, or None (synchronous)."""
    c = s.config.train
    if not c.max_staleness:
        return None
    return AsyncRollouts(
        s.programs,
        s.spec,
        prompts_and_score,
        data=data,
        max_staleness=c.max_staleness,
        steps=c.steps,
        mesh=s.mesh,
        T=s.config.sampling.max_new_tokens,
    )


def stage(s: RLSetup) -> Stage:
    """The loop's view of an RL run: one `rl_step` (or `dapo_step`) per step."""
    c, G, T = s.config, s.group_size, s.config.sampling.max_new_tokens
    iterator = PromptIterator(
        s.train_rows,
        c.train.prompts_per_step,
        c.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    executor = (
        RewardExecutor(
            s.scalar_fns, num_workers=c.rewards.num_workers, timeout_s=c.rewards.timeout_s
        )
        if s.scalar_fns
        else None
    )
    weights = {name: w for name, _, w in s.scalar_fns}
    every = c.log.samples_every
    guard = host.RewardGuard(c.rewards.max_error_frac, c.rewards.max_bad_steps)

    def prompts_and_score():
        rows = iterator.next_batch()
        texts, ids, mask = s.text.encode(rows, G)
        prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)
        return prompts, lambda toks, m: host.score(
            s.text, executor, s.token_fns, rows, G, texts, toks, m, guard
        )

    stepper = _async_stepper(s, prompts_and_score, iterator)

    def step(state: TrainState, k: int):
        if stepper is not None:
            state, out = stepper(state, s.ref_params, k)
        elif s.spec.dynamic_sampling:
            prompts, score = prompts_and_score()
            state, out = dapo_step(
                s.programs,
                state,
                s.ref_params,
                prompts,
                score,
                prompts_and_score,
                mesh=s.mesh,
                T=T,
                G=G,
                max_rounds=s.spec.max_gen_rounds,
                weights=weights,
            )
        elif s.env is not None:
            state, out = multiturn.env_step(s, state, iterator.next_batch(), executor, guard)
        else:
            prompts, score = prompts_and_score()
            state, out = rl_step(s.programs, state, s.ref_params, prompts, score, mesh=s.mesh, T=T)
        metrics = _step_metrics(out, G)
        if every and (k + 1) % every == 0:
            metrics[SAMPLES] = host.sample_table(out.scores, c.log.num_samples)
        return state, metrics

    def post(metrics: dict) -> dict:
        rows = metrics.pop("rows")
        metrics["tokens_per_s"] = (
            metrics["response_length/mean"] * rows / max(metrics["time/step_s"], 1e-9)
        )
        return metrics

    return Stage(
        name="rl",
        state=s.state,
        step=step,
        data=iterator,
        programs=s.programs,
        evaluate=lambda st: evaluate(s, st.params)[0],
        post=post,
        on_close=lambda: [
            f() for f in (getattr(executor, "close", None), s.env and s.env.close) if f
        ],
        pipeline=stepper,
    )
