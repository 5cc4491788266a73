"""One RL step's data: sample groups, score them on the host, (DAPO) keep the groups with
mixed rewards, then build the update batch with reference / old-policy log-probs, values and
advantages.

Overlap: the reference and old-policy log-prob passes are dispatched to the device right after
sampling and run while the host decodes and scores rewards (with DAPO's dynamic sampling they
wait for the selection instead, since they are computed only for the groups kept).

Dense rewards: reward functions with `token_level = True` (`rewards.dense.TokenLevelReward`)
skip the executor's pool and run here, in-process; their `(char_end, reward)` pairs land on the
completion token holding character `char_end - 1` (`rewards.dense.char_rewards_to_tokens`),
weighted, as `Rollout.dense_NT`, which `algorithms.advantages(token_rewards_BT=...)` consumes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import numpy as np

from jaxrl_lrm import algorithms, sharding
from jaxrl_lrm.rewards.dense import char_rewards_to_tokens


@dataclasses.dataclass
class Rollout:
    """Sampled and scored groups, on the host (rows of this process only)."""

    texts: list[str]  # prompt text per row
    ids_NP: np.ndarray
    mask_NP: np.ndarray
    toks_NT: np.ndarray
    smask_NT: np.ndarray
    slogp_NT: np.ndarray
    completions: list[str]
    total: np.ndarray  # [N] weighted reward
    per_fn: dict  # name -> [N]
    rstats: dict
    dev: dict | None = None  # tokens_BL / attn_BL on the device
    pending: dict | None = None  # device log-probs dispatched before scoring
    dense_NT: np.ndarray | None = None  # weighted token-level rewards; None: none configured

    def take(self, idx: np.ndarray) -> Rollout:
        return Rollout(
            texts=[self.texts[i] for i in idx], ids_NP=self.ids_NP[idx],
            mask_NP=self.mask_NP[idx], toks_NT=self.toks_NT[idx], smask_NT=self.smask_NT[idx],
            slogp_NT=self.slogp_NT[idx], completions=[self.completions[i] for i in idx],
            total=self.total[idx], per_fn={k: v[idx] for k, v in self.per_fn.items()},
            rstats=self.rstats, dense_NT=None if self.dense_NT is None else self.dense_NT[idx])

    @property
    def outcome(self) -> np.ndarray:
        """[N] the reward a group baseline sees: `total` plus each row's dense-reward sum."""
        if self.dense_NT is None:
            return self.total
        return self.total + self.dense_NT.sum(axis=1)


def _columns(rows: list[dict], group: int) -> dict:
    keys = [k for k in rows[0] if k != "prompt"]
    return {k: [r.get(k) for r in rows for _ in range(group)] for k in keys}


def _concat(parts: list[Rollout]) -> Rollout:
    if len(parts) == 1:
        return parts[0]
    cat = np.concatenate
    return Rollout(
        texts=sum((p.texts for p in parts), []), ids_NP=cat([p.ids_NP for p in parts]),
        mask_NP=cat([p.mask_NP for p in parts]), toks_NT=cat([p.toks_NT for p in parts]),
        smask_NT=cat([p.smask_NT for p in parts]), slogp_NT=cat([p.slogp_NT for p in parts]),
        completions=sum((p.completions for p in parts), []),
        total=cat([p.total for p in parts]),
        per_fn={k: cat([p.per_fn[k] for p in parts]) for k in parts[0].per_fn},
        rstats={k: sum(p.rstats.get(k, 0.0) for p in parts) for k in parts[0].rstats},
        dense_NT=None if parts[0].dense_NT is None else cat([p.dense_NT for p in parts]))


_LOGGED: set[str] = set()
log = logging.getLogger(__name__)


def dense_rewards(tokenizer, toks_NT: np.ndarray, smask_NT: np.ndarray, completions: list[str],
                  prompts: list[str], columns: dict, token_fns: list
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Token-level rewards of a batch: `(dense_NT [N, T] float32, {name: [N] row sums},
    {"errors/<name>": count})`. A function that raises (or returns the wrong number of rows)
    gives 0 for the batch, is counted and logged once with its traceback, like a failing scalar
    reward in the executor.

    Each `(name, fn, weight)` is called as `fn(prompts, completions, **columns)`; its pairs are
    placed on the completion's tokens (`char_rewards_to_tokens`, over the ids `Session.decode`
    keeps: masked and inside the tokenizer's vocabulary) and `weight * reward` is added to
    `dense_NT`; the per-function sums are unweighted. Zero where the mask is 0.

    """
    N = len(completions)
    dense = np.zeros(toks_NT.shape, np.float32)
    per_fn = {}
    keep_NT = (smask_NT != 0) & (toks_NT < tokenizer.vocab_size)
    errors = {}
    for name, fn, weight in token_fns:
        try:
            out = fn(prompts, completions, **columns)
            if len(out) != N:
                raise ValueError(f"token-level reward {name!r} returned {len(out)} entries for "
                                 f"{N} completions: expected one list of (char_end, reward) per "
                                 "completion")
        except Exception:  # like the executor: 0 for the batch, counted, logged once
            errors[f"errors/{name}"] = float(N)
            if name not in _LOGGED:
                _LOGGED.add(name)
                log.exception("token-level reward function %r raised (logged once)", name)
            per_fn[name] = np.zeros(N, np.float32)
            continue
        sums = np.zeros(N, np.float32)
        for i, pairs in enumerate(out):
            if not pairs:
                continue
            cols = np.flatnonzero(keep_NT[i])
            r = char_rewards_to_tokens(tokenizer, [int(t) for t in toks_NT[i, cols]], pairs)
            dense[i, cols] += np.float32(weight) * r
            sums[i] = r.sum()
        per_fn[name] = sums
    return dense, per_fn, errors


def _device_tokens(session, r: Rollout) -> dict:
    tokens = np.concatenate([r.ids_NP, r.toks_NT], axis=1)
    attn = np.concatenate([r.mask_NP, r.smask_NT], axis=1)
    return sharding.shard_batch({"tokens_BL": tokens, "attn_BL": attn}, session.mesh)


def _dispatch(session, dev: dict, state, ref_params, value_params, need_old: bool) -> dict:
    out = {}
    if ref_params is not None:
        out["ref"] = session.logprob_fn(ref_params, dev["tokens_BL"], dev["attn_BL"])
    if need_old:
        out["old"] = session.logprob_fn(state.params, dev["tokens_BL"], dev["attn_BL"])
    if value_params is not None:
        out["values"] = session.value_fn(value_params, dev["tokens_BL"], dev["attn_BL"])
    return out


def sample_and_score(session, params, rows: list[dict], rng, executor, timings: dict,
                     dispatch=None) -> Rollout:
    """Samples G completions per prompt and scores them. `dispatch(dev)` is called with the
    device token arrays between sampling and scoring (device work that overlaps scoring)."""
    G = session.spec.group_size
    t0 = time.monotonic()
    texts, ids_BP, mask_BP = session.encode_prompts(rows)
    ids_NP, mask_NP = np.repeat(ids_BP, G, axis=0), np.repeat(mask_BP, G, axis=0)
    inp = sharding.shard_batch({"ids": ids_NP, "mask": mask_NP}, session.mesh)
    toks, slogp, smask = session.sample_fn(params, inp["ids"], inp["mask"], rng,
                                           float(session.config.sampling.temperature))
    toks_h, smask_h = sharding.host_rows(toks), sharding.host_rows(smask)
    timings["time/sample_s"] = timings.get("time/sample_s", 0.0) + time.monotonic() - t0
    r = Rollout(texts=[t for t in texts for _ in range(G)], ids_NP=ids_NP, mask_NP=mask_NP,
                toks_NT=toks_h, smask_NT=smask_h, slogp_NT=sharding.host_rows(slogp),
                completions=[], total=np.zeros(0), per_fn={}, rstats={})
    if dispatch is not None:
        r.dev = _device_tokens(session, r)
        r.pending = dispatch(r.dev)
    t1 = time.monotonic()
    r.completions = session.decode(toks_h, smask_h)
    cols = _columns(rows, G)
    cols["group_size"] = [G] * len(r.completions)
    cols["completion_lengths"] = [int(m.sum()) for m in smask_h]
    if executor is not None:
        r.total, r.per_fn, r.rstats = executor.score(r.texts, r.completions, cols)
    else:  # only token-level rewards are configured
        r.total, r.per_fn, r.rstats = np.zeros(len(r.texts), np.float32), {}, {}
    if session.token_reward_fns:
        r.dense_NT, sums, errors = dense_rewards(session.tokenizer, toks_h, smask_h,
                                                 r.completions, r.texts, cols,
                                                 session.token_reward_fns)
        r.per_fn |= sums
        r.rstats = {**r.rstats, **errors}
    timings["time/reward_s"] = timings.get("time/reward_s", 0.0) + time.monotonic() - t1
    return r


def select_mixed_groups(parts: list[Rollout], n_groups: int, G: int) -> tuple[Rollout, int]:
    """DAPO dynamic sampling: the first `n_groups` groups whose rewards are not all equal; when
    there are fewer, the batch is filled with uniform groups (their advantages are exactly 0,
    so they add nothing to the gradient but keep the batch shape static)."""
    r = _concat(parts)
    g = r.outcome.reshape(-1, G)
    mixed = np.flatnonzero(~np.all(g == g[:, :1], axis=1))
    uniform = np.flatnonzero(np.all(g == g[:, :1], axis=1))
    chosen = np.concatenate([mixed[:n_groups], uniform[: max(0, n_groups - len(mixed))]])
    idx = (np.sort(chosen)[:, None] * G + np.arange(G)).reshape(-1)
    return r.take(idx), min(len(mixed), n_groups)


@functools.partial(jax.jit, static_argnums=0)
def _advantages(spec, rewards_B, mask_BT, kl_BT, values_BT, beta, token_rewards_BT=None):
    return algorithms.advantages(spec, rewards_B, mask_BT, kl_BT=kl_BT, values_BT=values_BT,
                                 beta=beta, token_rewards_BT=token_rewards_BT)


def rl_step_batch(session, state, ref_params, rows: list[dict], step: int, executor,
                  need_old: bool, *, value_params=None, kl_coef: float | None = None,
                  next_rows=None):
    """Everything of one RL step before the update.

    Returns `(batch, value_batch or None, metrics, samples)`: the policy-update batch on the
    mesh, PPO's value batch, host metrics, and a few (prompt, completion, reward) samples.
    `next_rows()` supplies more prompts for DAPO's dynamic sampling.
    """
    spec, G, c = session.spec, session.spec.group_size, session.config
    timings: dict = {}
    dynamic = spec.dynamic_sampling and next_rows is not None

    def dispatch(dev):
        return _dispatch(session, dev, state, ref_params, value_params, need_old)

    rng = jax.random.fold_in(session.base_rng, step)
    parts = [sample_and_score(session, state.params, rows, rng, executor, timings,
                              None if dynamic else dispatch)]
    metrics: dict = {}
    if dynamic:
        rounds = 1
        _, n_mixed = select_mixed_groups(parts, len(rows), G)
        while n_mixed < len(rows) and rounds < spec_max_rounds(c):
            rng_r = jax.random.fold_in(rng, rounds)
            parts.append(sample_and_score(session, state.params, next_rows(), rng_r, executor,
                                          timings))
            rounds += 1
            _, n_mixed = select_mixed_groups(parts, len(rows), G)
        r, n_mixed = select_mixed_groups(parts, len(rows), G)
        r.dev = _device_tokens(session, r)
        r.pending = dispatch(r.dev)
        metrics |= {"dapo/gen_rounds": float(rounds),
                    "dapo/mixed_group_frac": n_mixed / len(rows)}
    else:
        r = parts[0]
    pend = r.pending
    mask_BT = r.smask_NT.astype(np.float32)
    kl_BT = values_BT = None
    if spec.kl_in_reward and ref_params is not None:
        base = pend["old"] if "old" in pend else session.logprob_fn(
            state.params, r.dev["tokens_BL"], r.dev["attn_BL"])
        kl_BT = sharding.host_rows(base) - sharding.host_rows(pend["ref"])
    if "values" in pend:
        values_BT = sharding.host_rows(pend["values"])
    beta = spec.beta if kl_coef is None else kl_coef
    # Advantages from this host's rows: whole groups live on one host, so group baselines are
    # exact; batch-level whitening (REINFORCE++, PPO) is per host on multi-host runs.
    out = _advantages(spec, r.total, mask_BT, kl_BT, values_BT, np.float32(beta), r.dense_NT)
    adv, returns = (out if isinstance(out, tuple) else (out, None))
    batch = {**r.dev, "mask_BT": mask_BT, "adv": np.asarray(adv),
             "old_logp_BT": pend.get("old"), "sampler_logp_BT": r.slogp_NT,
             "ref_logp_BT": pend["ref"] if "ref" in pend else np.zeros_like(mask_BT)}
    value_batch = None
    if returns is not None:
        value_batch = sharding.shard_batch(
            {**r.dev, "mask_BT": mask_BT, "old_values_BT": values_BT,
             "returns_BT": np.asarray(returns)}, session.mesh)
        metrics["value/mean"] = float((values_BT * mask_BT).sum() / max(mask_BT.sum(), 1))
    if kl_BT is not None:
        metrics["kl/seq_sum"] = float(np.mean((kl_BT * mask_BT).sum(axis=1)))
    lengths = r.smask_NT.sum(axis=1)
    metrics |= {"reward/mean": float(np.mean(r.total)), "reward/std": float(np.std(r.total)),
                "response_length/mean": float(lengths.mean()),
                "response_length/max": float(lengths.max()),
                "groups/zero_variance_frac": algorithms.zero_variance_group_frac(r.outcome, G),
                **{f"reward/{k}": float(np.mean(v)) for k, v in r.per_fn.items()},
                **{f"reward_{k}": float(v) for k, v in r.rstats.items() if k != "time_s"},
                **timings}
    if r.dense_NT is not None:
        metrics["reward/dense_mean"] = float(np.mean(r.dense_NT.sum(axis=1)))
    samples = list(zip(r.texts[::G][:2], r.completions[::G][:2], r.total[::G][:2]))
    return sharding.shard_batch(batch, session.mesh), value_batch, metrics, samples


def spec_max_rounds(config) -> int:
    return config.algorithm.max_gen_rounds
