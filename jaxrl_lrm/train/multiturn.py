"""Multi-turn RL in the trainer (`env.*`): episodes instead of single completions.

A step with an environment: the prompts' episodes run to their end (`episodes.run_episodes`:
the jitted multi-turn sampler, the environment on the host between rounds), the transcripts
become the step's `Rollout` with `loss_mask_BT` = the sampled tokens (`episodes.to_rollout`),
placed on the mesh with the declared shardings, and the usual `score` and `update` programs
run on it. Observation tokens are attended but outside the loss, the KL and the entropy. The
environment's turn rewards are the dense rewards on each turn's last sampled token (GAE and
REINFORCE++ credit them there; outcome estimators add each row's sum); the scalar
`rewards.functions`, if any, score the decoded transcript. Evaluation runs the same episodes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxrl_lrm import episodes, sharding
from jaxrl_lrm.config import Config, ConfigError
from jaxrl_lrm.envs import resolve_environment
from jaxrl_lrm.envs import template as obs_template
from jaxrl_lrm.models.model import Model
from jaxrl_lrm.train import evaluation, host
from jaxrl_lrm.train.batch import RolloutBatch
from jaxrl_lrm.train.rl import StepOutput, to_device


@dataclasses.dataclass(frozen=True)
class EnvRun:
    """The environment of a run and how its episodes are sampled."""

    env: Callable  # row -> Episode
    tokenizer: object
    stop_ids: list[int]
    template: obs_template.ObservationTemplate
    max_tool_output_tokens: int
    threads: int
    close: Callable[[], None] | None = None  # stops the tool workers

    def sample(self, model: Model, rows: list[dict], ids_NP, mask_NP, key, *, T: int, draws: dict):
        """One episode per prompt row (`rows[i]` is the data row of prompt i)."""
        prompts = [[int(t) for t, m in zip(i, mk) if m] for i, mk in zip(ids_NP, mask_NP)]
        return episodes.run_episodes(
            model,
            self.tokenizer,
            prompts,
            [self.env(r) for r in rows],
            stop_ids=self.stop_ids,
            max_tokens=T,
            max_tool_output_tokens=self.max_tool_output_tokens,
            rng=key,
            template=self.template,
            threads=self.threads,
            **draws,
        )


def build(config: Config, tokenizer) -> EnvRun | None:
    """The run's `EnvRun` (None without `env.name`).

    Raises:
      ConfigError: the environment cannot be built from its keys, the stop text encodes to
        nothing, or the run spans several processes (episodes run on one process's rows).
    """
    e = config.env
    if e.name is None:
        return None
    if jax.process_count() > 1:
        raise ConfigError(
            f"env.name={e.name!r}: multi-turn episodes run in one process; this run has "
            f"{jax.process_count()}"
        )
    options = dict(e.options)
    if e.name == "tools":
        options = dict(
            tools=list(e.tools),
            reward=e.reward,
            max_turns=e.max_turns,
            timeout_s=e.tool_timeout_s,
            num_workers=e.num_workers,
            error_reward=e.error_reward,
        )
    try:
        env = resolve_environment(e.name, options)
    except ValueError as err:
        raise ConfigError(f"env.name={e.name!r}: {err}") from None
    stop_ids = list(tokenizer.encode(e.stop))
    if not stop_ids:
        raise ConfigError(f"env.stop={e.stop!r}: encodes to no tokens")
    runner = getattr(env, "runner", None)
    return EnvRun(
        env=env,
        tokenizer=tokenizer,
        stop_ids=stop_ids,
        template=obs_template.from_tokenizer(tokenizer),
        max_tool_output_tokens=e.max_tool_output_tokens,
        threads=e.threads,
        close=getattr(runner, "close", None),
    )


def reward_fns(config: Config, env: EnvRun | None, build_fns: Callable[[], list]):
    """`(scalar, token-level)` reward functions of a run (`build_fns()` builds the configured
    ones). With an environment and no `rewards.functions`, none: the environment's turn
    rewards are the reward (a data task's own verifier is not added).

    Raises:
      ConfigError: token-level functions with an environment (its turn rewards are the dense
        rewards).
    """
    if env is not None and not config.rewards.functions:
        return [], []
    scalar, token = host.split_reward_fns(build_fns())
    if env is not None and token:
        raise ConfigError(
            f"rewards.functions: the token-level functions {[n for n, *_ in token]} are not "
            f"built for env.name={config.env.name!r} (its turn rewards are the dense rewards)"
        )
    return scalar, token


def draws(config: Config, temperature: float | None = None) -> dict:
    """The sampling settings of `run_episodes` (`temperature` replaces the config's)."""
    s = config.sampling
    t = s.temperature if temperature is None else float(temperature)
    greedy = t == 0.0
    return dict(temperature=t, top_k=0 if greedy else s.top_k, top_p=1.0 if greedy else s.top_p)


def transcript_mask(ep: episodes.Episodes) -> np.ndarray:
    """`[B, T]` 1 over each transcript (sampled and observation tokens)."""
    return (np.arange(ep.tokens.shape[1])[None, :] < ep.lengths[:, None]).astype(np.int32)


def env_step(s, state, rows: list[dict], executor, guard) -> tuple:
    """One RL step with episodes (`s` an `rl_stage.RLSetup` with `s.env`): the episodes of
    `rows` (`s.group_size` each), the update on their transcripts; the scalar reward functions
    (in `executor`, or none) score the decoded transcripts (`host.score`, checked by `guard`).
    Returns `(state, StepOutput)` as `rl.rl_step`."""
    t0, G = time.monotonic(), s.group_size
    texts, ids, mask = s.text.encode(rows, G)
    key = jax.random.fold_in(state.key, state.step)
    model = Model(config=s.model_config, params=s.bases.merged_policy(state.params))
    T, eos, pad = s.config.sampling.max_new_tokens, s.text.tokenizer.eos_id, s.text.tokenizer.pad_id
    ep = s.env.sample(
        model, [r for r in rows for _ in range(G)], ids, mask, key, T=T,
        draws=dict(draws(s.config), eos_id=eos, pad_id=pad),
    )  # fmt: skip
    rollout_np, turn_NT = episodes.to_rollout(ep, ids, mask)
    rollout = sharding.shard_batch(rollout_np, s.mesh)
    scored = s.programs.score(state, s.ref_params, rollout)  # runs while the host scores
    t1 = time.monotonic()
    attn = transcript_mask(ep)
    scores = host.score(s.text, executor, [], rows, G, texts, ep.tokens, attn, guard)
    scores = dataclasses.replace(
        scores, dense_NT=turn_NT, per_fn={**scores.per_fn, "env": turn_NT.sum(axis=1)}
    )
    t2 = time.monotonic()
    batch = RolloutBatch(rollout=rollout, scored=scored, rewards=to_device(scores, s.mesh))
    state, dev_metrics = s.programs.update(state, batch)
    metrics = {
        "time/sample_s": t1 - t0,
        "time/reward_s": t2 - t1,
        **episodes.episode_metrics(ep),
        **dev_metrics,
    }
    return state, StepOutput(metrics=metrics, scores=scores, tokens_NT=ep.tokens, mask_NT=attn)


def evaluate(s, params, rows: list[dict], key, correct_fn, extract) -> tuple[dict, list]:
    """Greedy accuracy, pass@k and maj@k of the episodes of `rows` (`eval.*`). An episode is
    correct when `correct_fn(rows, transcripts)` says so, or, when it is None, when its
    environment reward (the sum of its turn rewards) is >= 0.5; `extract` gives maj@k's
    answer of a transcript. Adds `eval/tool_call_rate`: the share of greedy episodes that
    call a tool."""
    model = Model(config=s.model_config, params=s.bases.merged_policy(params))
    tok = s.text.tokenizer
    reward_of: dict = {}
    greedy_calls: list[float] = []

    def complete(rs, temperature, n):
        _, ids, mask = s.text.encode(rs, n)
        rep = [r for r in rs for _ in range(n)]
        d = dict(draws(s.config, temperature), eos_id=tok.eos_id, pad_id=tok.pad_id)
        ep = s.env.sample(model, rep, ids, mask, key, T=s.config.sampling.max_new_tokens, draws=d)
        texts = s.text.decode(ep.tokens, transcript_mask(ep))
        if temperature == 0.0:
            greedy_calls[:] = [float(np.mean(ep.tool_calls > 0))]
        for r, t, v in zip(rep, texts, ep.turn_rewards.sum(axis=1)):
            reward_of[(repr(r["prompt"]), t)] = float(v)
        return texts

    def correct(rs, cs):
        if correct_fn is not None:
            return correct_fn(rs, cs)
        return [reward_of[(repr(r["prompt"]), c)] >= 0.5 for r, c in zip(rs, cs)]

    metrics, samples = evaluation.evaluate(
        rows,
        complete=complete,
        correct=correct,
        extract=extract,
        k=s.config.eval.k,
        temperature=s.config.eval.temperature,
    )
    if greedy_calls:
        metrics["eval/tool_call_rate"] = greedy_calls[0]  # greedy episodes with a tool call
    return metrics, samples
