"""Multi-turn episodes, token in and token out: the host loop around `sampling_turns`.

Each round the device samples until every row has stopped at its stop sequence (the end of a
tool call), ended, or filled its budget. The host then reads the new tokens, checks the token
invariant, decodes each waiting row's turn to text and steps its episode (`envs`); the
observation text becomes token ids once (`envs.template.observation_tokens`) and is appended to
the row's cache on the device; the next round resumes. Earlier turns are never re-tokenised.

The token invariant, checked after every round for every row: the device's transcript
`tokens[b, :n[b]]` equals the host's record, which is the concatenation, in order, of the
tokens the device sampled and the observation ids the host appended; sampled positions are
exactly the sampled segments. A violation raises `AssertionError` naming the row and round.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sampling, sampling_turns
from jaxrl_lrm.envs import template as obs_template
from jaxrl_lrm.envs.env import Episode, Step
from jaxrl_lrm.train.batch import Rollout


@dataclasses.dataclass(frozen=True)
class Episodes:
    """A batch of finished episodes (host NumPy arrays, B rows, T = the token budget).

    Attributes:
      tokens: [B, T] transcripts after the prompt (sampled and observation tokens), pad after.
      sampled: [B, T] 1 for sampled tokens (the ones the loss may touch), 0 for observation
        tokens and padding.
      observation: [B, T] 1 for observation tokens.
      logprobs: [B, T] sampler log-probs of sampled tokens, 0 elsewhere.
      turn_rewards: [B, T] each turn's reward at the turn's last sampled token.
      lengths: [B] transcript lengths.
      turns, tool_calls, tool_errors: [B] counts per episode.
      tool_seconds: [B] seconds spent in tools.
      segments: per row, `(kind, start, end)` for each segment of the transcript, kind
        "sampled" or "observation".
    """

    tokens: np.ndarray
    sampled: np.ndarray
    observation: np.ndarray
    logprobs: np.ndarray
    turn_rewards: np.ndarray
    lengths: np.ndarray
    turns: np.ndarray
    tool_calls: np.ndarray
    tool_errors: np.ndarray
    tool_seconds: np.ndarray
    segments: list


@dataclasses.dataclass
class _Row:
    """The host's record of one row."""

    episode: Episode
    tokens: list = dataclasses.field(default_factory=list)
    segments: list = dataclasses.field(default_factory=list)
    rewards: dict = dataclasses.field(default_factory=dict)  # token index -> turn reward
    finished: bool = False
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_seconds: float = 0.0


def _absorb(rows: list[_Row], tokens, n, sampled, round_: int) -> None:
    """Appends each row's newly sampled tokens to the host record, checking the invariant."""
    for b, row in enumerate(rows):
        have = len(row.tokens)
        if n[b] < have or list(tokens[b, :have]) != row.tokens:
            raise AssertionError(f"token invariant broken in row {b} after round {round_}")
        if n[b] > have:
            if not np.all(sampled[b, have : n[b]] == 1):
                raise AssertionError(f"row {b}, round {round_}: new tokens not marked sampled")
            row.tokens.extend(int(t) for t in tokens[b, have : n[b]])
            row.segments.append(("sampled", have, int(n[b])))
        expect = np.zeros(tokens.shape[1], np.int32)
        for kind, s, e in row.segments:
            expect[s:e] = kind == "sampled"
        if not np.array_equal(sampled[b], expect):
            raise AssertionError(f"row {b}, round {round_}: sampled mask differs from segments")


def _step_all(rows, todo, texts, pool) -> list[Step]:
    if pool is None or len(todo) <= 1:
        return [rows[b].episode.step(t) for b, t in zip(todo, texts)]
    return list(pool.map(lambda bt: rows[bt[0]].episode.step(bt[1]), zip(todo, texts)))


def _round(rows, tokens, n, stopped, done, tokenizer, template, limits, pool):
    """Steps the episodes whose turn ended; returns `(obs ids per row, end flags)`."""
    max_obs, T, W = limits
    todo = [b for b, r in enumerate(rows) if not r.finished and (stopped[b] or done[b])]
    texts = []
    for b in todo:
        start = rows[b].segments[-1][1] if rows[b].segments[-1][0] == "sampled" else n[b]
        texts.append(tokenizer.decode(rows[b].tokens[start : n[b]]))
    obs = [[] for _ in rows]
    end = np.zeros(len(rows), bool)
    for b, step in zip(todo, _step_all(rows, todo, texts, pool)):
        row = rows[b]
        row.turns += 1
        row.tool_calls += step.tool_calls
        row.tool_errors += step.tool_errors
        row.tool_seconds += step.tool_seconds
        row.rewards[len(row.tokens) - 1] = row.rewards.get(len(row.tokens) - 1, 0.0) + step.reward
        ids = (
            []
            if step.done
            else obs_template.observation_tokens(tokenizer, template, step.observation, max_obs)[0]
        )
        if step.done or done[b] or not ids or len(ids) > W or n[b] + len(ids) >= T:
            row.finished, end[b] = True, True  # over, or no room for the observation and a reply
            continue
        obs[b] = ids
        row.segments.append(("observation", len(row.tokens), len(row.tokens) + len(ids)))
        row.tokens.extend(ids)
    return obs, end


def _result(rows: list[_Row], T: int, logprobs, pad_id: int) -> Episodes:
    B = len(rows)
    out = {k: np.zeros((B, T), np.int32) for k in ("sampled", "observation")}
    tokens = np.full((B, T), pad_id, np.int32)
    rewards = np.zeros((B, T), np.float32)
    for b, row in enumerate(rows):
        tokens[b, : len(row.tokens)] = row.tokens
        for kind, s, e in row.segments:
            out[kind][b, s:e] = 1
        for i, r in row.rewards.items():
            rewards[b, i] += r
    count = lambda f: np.array([getattr(r, f) for r in rows])
    return Episodes(
        tokens=tokens,
        sampled=out["sampled"],
        observation=out["observation"],
        logprobs=np.where(out["sampled"] == 1, logprobs, 0.0).astype(np.float32),
        turn_rewards=rewards,
        lengths=np.array([len(r.tokens) for r in rows], np.int32),
        turns=count("turns"),
        tool_calls=count("tool_calls"),
        tool_errors=count("tool_errors"),
        tool_seconds=count("tool_seconds").astype(np.float64),
        segments=[list(r.segments) for r in rows],
    )


def _stops(stop_ids: Sequence[Sequence[int]] | Sequence[int], B: int) -> np.ndarray:
    per_row = stop_ids if stop_ids and isinstance(stop_ids[0], Sequence) else [stop_ids] * B
    if len(per_row) != B:
        raise ValueError(f"stop_ids has {len(per_row)} rows for {B} prompts")
    L = max(1, max(len(s) for s in per_row))
    out = np.full((B, L), -1, np.int32)
    for b, s in enumerate(per_row):
        if len(s):
            out[b, L - len(s) :] = s
    return out


def run_episodes(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    episodes: Sequence[Episode],
    *,
    stop_ids,
    max_tokens: int,
    max_tool_output_tokens: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    template: obs_template.ObservationTemplate = obs_template.PLAIN,
    threads: int = 0,
) -> Episodes:
    """Runs one episode per prompt to the end (see the module docstring).

    Args:
      model: a `models.Model` (params and config).
      tokenizer: encodes observations and decodes turns.
      prompts: token ids per row (left-padded here).
      episodes: one fresh `envs.Episode` per row.
      stop_ids: the token ids that end a turn for the host (`</tool_call>`), one list for all
        rows or one per row.
      max_tokens: T, the transcript budget per row (sampled + observation tokens).
      max_tool_output_tokens: cap on an observation's content tokens; the observation chunk is
        this plus the template's wrapper and the cut mark.
      rng: the episode key; temperature, top_k, top_p, eos_id, pad_id as in `sampling`.
      template: how an observation is wrapped (`envs.template.from_tokenizer`).
      threads: step up to this many episodes at once (tool calls in parallel); 0: one by one.
    """
    B = len(prompts)
    if len(episodes) != B:
        raise ValueError(f"{len(episodes)} episodes for {B} prompts")
    wrap = obs_template.observation_tokens(tokenizer, template, "", 1)[0]
    W = len(wrap) + max_tool_output_tokens + len(tokenizer.encode(obs_template.CUT_MARK))
    ids, mask = sampling.left_pad(prompts, pad_id)
    if ids.shape[1] + max_tokens + W > model.config.max_seq_len:
        raise ValueError(
            f"prompt bucket {ids.shape[1]} + max_tokens {max_tokens} + observation chunk {W} "
            f"exceeds max_seq_len={model.config.max_seq_len}"
        )
    draws = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    draws.update(eos_id=eos_id, pad_id=int(pad_id))
    state = sampling_turns.start_jit(
        model.params, model.config, jnp.asarray(ids), jnp.asarray(mask),
        jnp.asarray(_stops(stop_ids, B)), rng, max_tokens=max_tokens, chunk=W, **draws,
    )  # fmt: skip
    rows = [_Row(episode=e) for e in episodes]
    pool = cf.ThreadPoolExecutor(threads) if threads else None
    try:
        for round_ in range(max_tokens + 1):  # every round adds at least one token
            get = (state.tokens_BT, state.n_B, state.sampled_BT, state.stopped_B, state.done_B)
            tokens, n, sampled, stopped, done = jax.device_get(get)
            _absorb(rows, tokens, n, sampled, round_)
            obs, end = _round(rows, tokens, n, stopped, done, tokenizer, template,
                              (max_tool_output_tokens, max_tokens, W), pool)  # fmt: skip
            if all(r.finished for r in rows):
                break
            obs_BW = np.full((B, W), pad_id, np.int32)
            for b, o in enumerate(obs):
                obs_BW[b, : len(o)] = o
            obs_len = np.array([len(o) for o in obs], np.int32)
            state = sampling_turns.resume_jit(
                model.params, model.config, state, jnp.asarray(obs_BW), jnp.asarray(obs_len),
                jnp.asarray(end), rng, **draws,
            )  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown()
    _absorb(rows, *jax.device_get((state.tokens_BT, state.n_B, state.sampled_BT)), -1)
    return _result(rows, max_tokens, np.asarray(jax.device_get(state.logprobs_BT)), pad_id)


def to_rollout(ep: Episodes, prompt_ids_BP: np.ndarray, prompt_mask_BP: np.ndarray):
    """The episodes as the trainer's `Rollout` plus their turn rewards as dense rewards
    `[B, T]`: the transcript is the completion, attended up to its length, and the loss mask
    is the sampled tokens only (`Rollout.loss_mask_BT`), so observation tokens are context
    with no loss, KL or entropy term. Turn rewards sit on each turn's last sampled token, which
    the estimators read as token rewards (GAE, REINFORCE++) or sum per row (outcome
    estimators, see `algorithms.advantages`)."""
    T = ep.tokens.shape[1]
    attn = (np.arange(T)[None, :] < ep.lengths[:, None]).astype(np.int32)
    rollout = Rollout(
        tokens_BL=np.concatenate([prompt_ids_BP, ep.tokens], axis=1).astype(np.int32),
        attn_BL=np.concatenate([prompt_mask_BP, attn], axis=1).astype(np.int32),
        sampler_logp_BT=ep.logprobs.astype(np.float32),
        loss_mask_BT=ep.sampled.astype(np.int32),
    )
    return rollout, ep.turn_rewards.astype(np.float32)


def episode_metrics(ep: Episodes) -> dict[str, float]:
    """Means per episode of turns, tool calls, tool errors and tool seconds, and the share of
    observation tokens among transcript tokens."""
    total = max(int(ep.lengths.sum()), 1)
    return {
        "episodes/turns": float(np.mean(ep.turns)),
        "episodes/tool_calls": float(np.mean(ep.tool_calls)),
        "episodes/tool_errors": float(np.mean(ep.tool_errors)),
        "episodes/tool_seconds": float(np.mean(ep.tool_seconds)),
        "episodes/observation_share": float(ep.observation.sum()) / total,
    }
