"""The RL loop: where host and device meet.

One step: sample G completions per prompt (jit) -> dispatch reference / old-policy log-probs
(jit, asynchronous) -> detokenize and score rewards on the host while the device computes them
-> advantages -> `rl_update` (jit) -> metrics, evaluation, checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import algorithms, losses, sampling, sharding
from jaxrl_lrm.checkpoint import Checkpointer
from jaxrl_lrm.config import Config, save_config
from jaxrl_lrm.rl import evaluation, rollout, setup, steps
from jaxrl_lrm.rl.logging import MetricsLogger, plot_run

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient; the last good checkpoint is left untouched."""


@dataclasses.dataclass
class _Preempted:
    flag: bool = False


class Session:
    """The pieces of one run, built once from the config. Host state only: the jitted
    functions it holds are pure and take every array they use as an argument."""

    def __init__(self, config: Config, *, mesh=None):
        self.config = config
        c = config
        self.mesh = mesh or sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
        self.task = setup.resolve_task(c.data.task, c.data.task_args) \
            if c.data.source == "task" else None
        self.tokenizer = setup.build_tokenizer(c, self.task)
        self.policy = setup.build_policy(c, self.tokenizer, self.mesh)
        self.model_config = self.policy.config
        self.spec = algorithms.resolve(c.algorithm)
        self.reward_fns = setup.build_rewards(c, self.task)
        from jaxrl_lrm.rewards.dense import is_token_level

        # scalar functions go to the executor's pool; token-level ones (dense, PRM) run here
        self.scalar_reward_fns = [t for t in self.reward_fns if not is_token_level(t[1])]
        self.token_reward_fns = [t for t in self.reward_fns if is_token_level(t[1])]
        self.train_rows, self.eval_rows = self._sources()
        self.prompt_len = c.data.max_prompt_len
        self.max_new = c.sampling.max_new_tokens
        self.eos_id = self.tokenizer.eos_id
        self.pad_id = self.tokenizer.pad_id
        self.base_rng = jax.random.key(c.seed)

    # ----------------------------------------------------------------- data
    def _sources(self):
        from jaxrl_lrm.data import sources

        c = self.config
        return (sources.make_source(c.data, "train", seed=c.seed),
                sources.make_source(c.data, "eval", seed=c.seed))

    def eval_subset(self, n: int | None = None) -> list[dict]:
        """The first `n` (default `eval.num_prompts`) held-out rows."""
        n = self.config.eval.num_prompts if n is None else n
        return [self.eval_rows[i] for i in range(min(n, len(self.eval_rows)))]

    def render(self, question: str) -> str:
        from jaxrl_lrm.data.templates import render_prompt

        template = self.config.data.template
        if self.task is not None and template == "auto":
            template = "plain"
        return render_prompt(question, self.tokenizer, template)

    def encode_prompts(self, rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
        texts = [self.render(r["prompt"]) for r in rows]
        ids = [self.tokenizer.encode(t) for t in texts]
        for t, i in zip(texts, ids):
            if len(i) > self.prompt_len:
                raise ValueError(f"prompt of {len(i)} tokens exceeds data.max_prompt_len="
                                 f"{self.prompt_len}: {t[:80]!r}")
        ids_BP, mask_BP = sampling.left_pad(ids, self.pad_id, bucket_sizes=[self.prompt_len])
        return texts, ids_BP, mask_BP

    def decode(self, tokens_BT: np.ndarray, mask_BT: np.ndarray) -> list[str]:
        # A model's vocabulary is often padded past the tokenizer's (Qwen: 151,936 embeddings
        # for 151,665 tokens); ids with no text decode to nothing.
        n = self.tokenizer.vocab_size
        return [self.tokenizer.decode([int(t) for t, m in zip(row, mrow) if m and t < n])
                for row, mrow in zip(tokens_BT, mask_BT)]

    # ----------------------------------------------------------------- device
    @property
    def sample_fn(self):
        """`(params, ids, mask, rng, temperature) -> (tokens, logprobs, mask)`, jitted once per
        process for this model and sampling shape."""
        sc = self.config.sampling
        fn = steps.jitted(_sample, static_argnames=_SAMPLE_STATIC)
        return functools.partial(fn, config=self.model_config, max_new_tokens=self.max_new,
                                 top_k=sc.top_k, top_p=sc.top_p, eos_id=self.eos_id,
                                 pad_id=self.pad_id,
                                 mesh=self.mesh if self.mesh.size > 1 else None)

    @property
    def logprob_fn(self):
        """`(params, tokens_BL, attn_BL) -> logp_BT` of the completion tokens, jitted."""
        fn = steps.jitted(_completion_logp, static_argnames=("config", "prompt_len",
                                                             "temperature"))
        return functools.partial(fn, config=self.model_config, prompt_len=self.prompt_len,
                                 temperature=self.config.sampling.temperature)

    @property
    def value_fn(self):
        """`(value_params, tokens_BL, attn_BL) -> values_BT`, jitted."""
        fn = steps.jitted(_completion_values, static_argnames=("config", "prompt_len"))
        return functools.partial(fn, config=self.model_config, prompt_len=self.prompt_len)

    def complete(self, params, rows: list[dict], temperature: float, n: int,
                 rng=None) -> list[str]:
        """n completions per row (row-major), decoded to text."""
        _, ids, mask = self.encode_prompts(rows)
        ids, mask = np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0)
        rng = jax.random.key(0) if rng is None else rng
        batch = sharding.shard_batch({"ids": ids, "mask": mask}, self.mesh)
        toks, _, m = self.sample_fn(params, batch["ids"], batch["mask"], rng, float(temperature))
        return self.decode(sharding.host_rows(toks), sharding.host_rows(m))

    def correct(self, rows: list[dict], completions: list[str]) -> list[bool]:
        """Correctness for evaluation: the first scalar reward function gives >= 0.5."""
        if not self.scalar_reward_fns:
            raise ValueError("evaluation needs a scalar reward function (rewards.functions "
                             "lists only token-level ones)")
        name, fn, _ = self.scalar_reward_fns[0]
        cols = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        scores = fn([r["prompt"] for r in rows], completions, **cols)
        return [float(s) >= 0.5 for s in scores]

    def extract(self, completion: str):
        if self.task is not None:
            return self.task.extract(completion)
        from jaxrl_lrm.rewards.math import extract_answer

        return extract_answer(completion)

    def evaluate(self, params, rng=None, rows=None) -> tuple[dict, list]:
        rows = self.eval_subset() if rows is None else rows
        rng = jax.random.fold_in(self.base_rng, 999_983) if rng is None else rng
        return evaluation.evaluate(
            rows, complete=lambda rs, t, n: self.complete(params, rs, t, n, rng),
            correct=self.correct, extract=self.extract, k=self.config.eval.k,
            temperature=self.config.eval.temperature)


_SAMPLE_STATIC = ("config", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id",
                  "pad_id", "mesh")


def _sample(params, ids, mask, rng, temperature, *, config, max_new_tokens, top_k, top_p,
            eos_id, pad_id, mesh):
    greedy = temperature == 0.0
    return sampling.sample_tokens(params, config, ids, mask, rng, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=0 if greedy else top_k,
                                  top_p=1.0 if greedy else top_p, eos_id=eos_id, pad_id=pad_id,
                                  mesh=mesh)


def _completion_values(params, tokens_BL, attn_BL, *, config, prompt_len):
    return steps.completion_values(params, config, tokens_BL, attn_BL, prompt_len)


def _completion_logp(params, tokens_BL, attn_BL, *, config, prompt_len, temperature):
    return steps.completion_logprobs(params, config, tokens_BL, attn_BL, prompt_len,
                                     temperature)[0]


def make_train_state(session: Session, params, total_updates: int, lr: float):
    c = session.config.train
    optimizer, schedule = steps.make_optimizer(
        lr=lr, total_updates=total_updates, warmup=c.warmup_steps, schedule=c.lr_schedule,
        min_lr_ratio=c.min_lr_ratio, weight_decay=c.weight_decay, b1=c.b1, b2=c.b2,
        max_grad_norm=c.max_grad_norm)
    opt_state = jax.jit(optimizer.init)(params)
    state = steps.TrainState(params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32))
    state = sharding.on_mesh(state, session.mesh)
    return state, optimizer, schedule


def rl_step_batch(session: Session, state: steps.TrainState, ref_params, rows: list[dict],
                  step: int, executor, need_old: bool):
    """Sampling, rewards and the policy-update batch of one step: `(batch, metrics, samples)`
    (the GRPO-family path; `rollout.rl_step_batch` has the PPO and DAPO extras)."""
    batch, _, metrics, samples = rollout.rl_step_batch(session, state, ref_params, rows, step,
                                                       executor, need_old)
    return batch, metrics, samples


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(float(v)) for v in metrics.values())


@dataclasses.dataclass
class RunResult:
    metrics: dict  # the last step's metrics
    params: object  # the final policy parameters
    session: Session
    history: list  # every logged step's metrics


def train(config: Config, *, run_dir: str | Path | None = None, mesh=None,
          max_steps_this_run: int | None = None, quiet: bool = False,
          session: Session | None = None, init_params=None) -> RunResult:
    """Runs (or resumes) RL training into `run_dir`.

    Args:
      config: the run's config.
      run_dir: overrides `config.run_dir`.
      mesh: overrides the mesh built from `config.mesh`.
      max_steps_this_run: stop after this many steps (a later call resumes).
      quiet: no files in run_dir but checkpoints, no progress output.
      session: reuse an already built session (the demo runs several stages on one).
      init_params: initial policy (and reference) parameters instead of the session's.
    """
    run_dir = Path(run_dir or config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    session = session or Session(config, mesh=mesh)
    if init_params is not None:
        session.policy = session.policy.replace(params=init_params)
    c, spec = config, session.spec
    is_main = jax.process_index() == 0
    if is_main:
        save_config(config, run_dir / "config.yaml")
    from jaxrl_lrm.data.iterator import PromptIterator
    from jaxrl_lrm.rewards.executor import RewardExecutor

    iterator = PromptIterator(session.train_rows, c.train.prompts_per_step, c.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
    updates_per_step = c.train.ppo_epochs * c.train.minibatches
    # The reference is the initial policy, rebuilt identically on resume (same seed or path).
    # The update donates the state's buffers, so the state and the reference never share
    # arrays: with a same-dtype reference the state gets a copy; otherwise the state takes the
    # session's initial parameters over (and the reference, if any, is a cast copy), so a
    # bfloat16 reference really costs half a model, not one and a half.
    policy_params = session.policy.params
    ref_params = None
    if spec.beta > 0 and c.model.ref_dtype in (None, c.model.dtype):
        ref_params, init_params = policy_params, setup.frozen_copy(policy_params)
    else:
        if spec.beta > 0:
            ref_params = setup.frozen_copy(policy_params, c.model.ref_dtype)
        init_params = policy_params
        session.policy = session.policy.replace(params=None)
    state, optimizer, schedule = make_train_state(session, init_params,
                                                  c.train.steps * updates_per_step, c.train.lr)
    del policy_params, init_params
    vstate = value_optimizer = None
    if spec.uses_value:  # PPO: a value model on the same mesh, with its own optimizer
        vstate, value_optimizer, _ = make_train_state(
            session, setup.build_value_params(c, session.policy, session.mesh,
                                              backbone=state.params),
            c.train.steps * updates_per_step, c.algorithm.value_lr or c.train.lr)
    kl_ctrl = kl_state = None
    if c.algorithm.kl_target is not None and spec.kl_in_reward and spec.beta > 0:
        kl_ctrl = losses.AdaptiveKLController(init_kl_coef=spec.beta,
                                               target=c.algorithm.kl_target,
                                               horizon=c.algorithm.kl_horizon)
        kl_state = kl_ctrl.init()
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=c.train.max_to_keep)
    start_step = 0
    if ckpt.latest_step() is not None:
        restored, meta, start_step = ckpt.restore(_ckpt_tree(state, vstate))
        state = steps.TrainState(**{k: restored[k] for k in ("params", "opt_state", "step")})
        if vstate is not None:
            vstate = steps.TrainState(**restored["value"])
        if kl_state is not None:
            kl_state = kl_state._replace(kl_coef=jnp.float32(meta["kl_coef"]))
        iterator.restore(meta["data"])
        log.info("resumed from step %d in %s", start_step, ckpt.directory)
    logger = MetricsLogger(run_dir, total_steps=c.train.steps, enabled=is_main and not quiet,
                           resume_step=start_step)
    update_fn = functools.partial(
        steps.jitted(steps.rl_update, static_argnames=steps.UPDATE_STATIC, donate_argnums=0,
                     state_shardings=_shardings(state)),
        config=session.model_config, spec=spec, optimizer=optimizer,
        epochs=c.train.ppo_epochs, minibatches=c.train.minibatches,
        micro_batches=c.train.micro_batches, prompt_len=session.prompt_len,
        temperature=c.sampling.temperature, max_len=c.sampling.max_new_tokens)
    preempted = _Preempted()
    old_handler = _install_sigterm(preempted)
    executor = RewardExecutor(session.scalar_reward_fns, num_workers=c.rewards.num_workers,
                              timeout_s=c.rewards.timeout_s) if session.scalar_reward_fns else None
    value_update_fn = None
    if vstate is not None:
        value_update_fn = functools.partial(
            steps.jitted(steps.value_update, static_argnames=steps.VALUE_STATIC,
                         donate_argnums=0, state_shardings=_shardings(vstate)),
            config=session.model_config, optimizer=value_optimizer, epochs=c.train.ppo_epochs,
            minibatches=c.train.minibatches, micro_batches=c.train.micro_batches,
            prompt_len=session.prompt_len, clip=spec.value_clip)
    need_old = updates_per_step > 1 or spec.tis_max is not None
    end_step = c.train.steps if max_steps_this_run is None else \
        min(c.train.steps, start_step + max_steps_this_run)
    metrics: dict = {}
    history: list = []
    try:
        for step in range(start_step, end_step):
            t0 = time.monotonic()
            rows = iterator.next_batch()
            kl_coef = float(kl_state.kl_coef) if kl_state is not None else None
            batch, value_batch, metrics, _ = rollout.rl_step_batch(
                session, state, ref_params, rows, step, executor, need_old,
                value_params=vstate.params if vstate is not None else None, kl_coef=kl_coef,
                next_rows=iterator.next_batch)
            t1 = time.monotonic()
            new_state, dev_metrics = update_fn(state, batch)
            if value_update_fn is not None:
                new_vstate, vmetrics = value_update_fn(vstate, value_batch)
                dev_metrics = {**dev_metrics, **vmetrics}
            dev_metrics = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
            if not _finite(dev_metrics):
                bad = {k: v for k, v in dev_metrics.items() if not math.isfinite(v)}
                raise TrainingDivergedError(
                    f"non-finite values at step {step + 1}: {bad}; stopping. The last good "
                    f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is untouched.")
            state = new_state
            if value_update_fn is not None:
                vstate = new_vstate
            if kl_state is not None:
                metrics["kl/coef"] = kl_coef
                kl_state = kl_ctrl.update(kl_state, metrics["kl/seq_sum"], len(batch["adv"]))
            metrics.update(dev_metrics)
            metrics["time/update_s"] = time.monotonic() - t1
            metrics["lr"] = float(schedule(int(step * updates_per_step)))
            metrics["time/step_s"] = time.monotonic() - t0
            metrics["tokens_per_s"] = (metrics["response_length/mean"] * len(rows) *
                                       spec.group_size / metrics["time/step_s"])
            done = step + 1
            if c.train.eval_every and done % c.train.eval_every == 0:
                metrics.update(session.evaluate(state.params)[0])
            history.append({"step": done, **metrics})
            logger.log(done, metrics)
            logger.progress(done, metrics, end_step - start_step, done - start_step)
            last = done == c.train.steps
            if preempted.flag or last or (c.train.checkpoint_every
                                          and done % c.train.checkpoint_every == 0):
                meta = {"step": done, "data": iterator.state(), "seed": c.seed}
                if kl_state is not None:
                    meta["kl_coef"] = float(kl_state.kl_coef)
                ckpt.save(done, _ckpt_tree(state, vstate), meta)
            if preempted.flag:
                log.warning("SIGTERM: saved step %d, exiting", done)
                break
    finally:
        ckpt.close()
        if executor is not None:
            executor.close()
        logger.close()
        signal.signal(signal.SIGTERM, old_handler) if old_handler is not None else None
    if is_main and not quiet:
        plot_run(run_dir)
    return RunResult(metrics=metrics, params=state.params, session=session, history=history)


def _shardings(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def _ckpt_tree(state: steps.TrainState, vstate: steps.TrainState | None) -> dict:
    """The array state a checkpoint holds: the policy's, and PPO's value model under "value"."""
    tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    if vstate is not None:
        tree["value"] = {"params": vstate.params, "opt_state": vstate.opt_state,
                         "step": vstate.step}
    return tree


def _install_sigterm(flag: _Preempted):
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        flag.flag = True

    return signal.signal(signal.SIGTERM, handler)
