"""The host side of an RL step: prompts to ids, sampled ids to text, text to rewards.

Nothing here is jitted. Token-level reward functions (`rewards.dense.TokenLevelReward`, PRMs)
run in this process; their `(char_end, reward)` pairs land on the completion token holding
character `char_end - 1` (`rewards.dense.char_rewards_to_tokens`). Scalar ones go to the
`RewardExecutor`'s pool with timeouts.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable

import numpy as np

from jaxrl_lrm import sampling
from jaxrl_lrm.algorithms import zero_variance_group_frac
from jaxrl_lrm.data.templates import render_prompt
from jaxrl_lrm.rewards.dense import char_rewards_to_tokens, is_token_level
from jaxrl_lrm.rewards.executor import RewardFunctionError

log = logging.getLogger(__name__)

RewardFn = tuple[str, Callable, float]  # (name, fn, weight)


@dataclasses.dataclass(frozen=True)
class Text:
    """Tokenizer and template of a run: prompts to ids and ids to text."""

    tokenizer: object
    template: str
    prompt_len: int
    system: str | None = None  # `data.system`
    truncate: bool = False  # keep an overlong prompt's last `prompt_len` tokens

    def render(self, question: str | list[dict]) -> str:
        return render_prompt(question, self.tokenizer, self.template, self.system)

    def prompt_length(self, row: dict) -> int:
        """Tokens of `row`'s prompt after the template (what `data.overlong` measures)."""
        return len(self.tokenizer.encode(self.render(row["prompt"])))

    def encode(self, rows: list[dict], repeat: int = 1) -> tuple[list[str], np.ndarray, np.ndarray]:
        """`(prompt texts, ids [N*repeat, P], mask [N*repeat, P])`, left-padded to P, each
        row repeated `repeat` times (a group)."""
        texts = [self.render(r["prompt"]) for r in rows]
        ids = [self.tokenizer.encode(t) for t in texts]
        if self.truncate:
            ids = [i[-self.prompt_len :] for i in ids]
        for t, i in zip(texts, ids):
            if len(i) > self.prompt_len:
                raise ValueError(
                    f"prompt of {len(i)} tokens exceeds data.max_prompt_len="
                    f"{self.prompt_len}: {t[:80]!r}"
                )
        ids_NP, mask_NP = sampling.left_pad(
            ids, self.tokenizer.pad_id, bucket_sizes=[self.prompt_len]
        )
        return (
            [t for t in texts for _ in range(repeat)],
            np.repeat(ids_NP, repeat, axis=0),
            np.repeat(mask_NP, repeat, axis=0),
        )

    def decode(self, tokens_NT: np.ndarray, mask_NT: np.ndarray) -> list[str]:
        # A model's vocabulary is often padded past the tokenizer's (Qwen: 151,936 embeddings
        # for 151,665 tokens); ids with no text decode to nothing.
        n = self.tokenizer.vocab_size
        return [
            self.tokenizer.decode([int(t) for t, m in zip(row, mrow) if m and t < n])
            for row, mrow in zip(tokens_NT, mask_NT)
        ]


@dataclasses.dataclass
class Scores:
    """Rewards of one batch of completions, on the host (this process's rows)."""

    total_N: np.ndarray  # weighted sum of the scalar functions
    dense_NT: np.ndarray | None  # weighted token-level rewards (None: none configured)
    per_fn: dict[str, np.ndarray]  # unweighted, per function (token-level: row sums)
    stats: dict[str, float]  # errors / timeouts per function
    completions: list[str]
    prompts: list[str] = dataclasses.field(default_factory=list)  # rendered, one per completion

    @property
    def outcome_N(self) -> np.ndarray:
        """The reward a group baseline sees: `total` plus each row's dense-reward sum."""
        return self.total_N if self.dense_NT is None else self.total_N + self.dense_NT.sum(1)


def split_reward_fns(fns: list[RewardFn]) -> tuple[list[RewardFn], list[RewardFn]]:
    """`(scalar, token_level)` reward functions."""
    return ([f for f in fns if not is_token_level(f[1])], [f for f in fns if is_token_level(f[1])])


def columns(rows: list[dict], group: int, smask_NT: np.ndarray) -> dict[str, list]:
    """The dataset's other fields per completion, plus `group_size` and `completion_lengths`."""
    cols = {k: [r.get(k) for r in rows for _ in range(group)] for k in rows[0] if k != "prompt"}
    cols["group_size"] = [group] * len(smask_NT)
    cols["completion_lengths"] = [int(m.sum()) for m in smask_NT]
    return cols


_LOGGED: set[str] = set()


def dense_rewards(
    tokenizer,
    toks_NT: np.ndarray,
    smask_NT: np.ndarray,
    completions: list[str],
    prompts: list[str],
    cols: dict,
    token_fns: list[RewardFn],
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float], dict[str, str]]:
    """Token-level rewards: `(dense_NT float32, {name: [N] row sums}, {"errors/<name>": n},
    {name: traceback})`.

    Each `(name, fn, weight)` is called as `fn(prompts, completions, **cols)`; its pairs are
    placed on the completion's tokens (over the ids `Text.decode` keeps: masked and inside the
    tokenizer's vocabulary) and `weight * reward` is added. A function that raises gives 0 for
    the batch, counted and logged once; one that returns the wrong number of rows raises
    `RewardFunctionError`."""
    N = len(completions)
    dense = np.zeros(toks_NT.shape, np.float32)
    per_fn, errors, tracebacks = {}, {}, {}
    keep_NT = (smask_NT != 0) & (toks_NT < tokenizer.vocab_size)
    for name, fn, weight in token_fns:
        try:
            out = fn(prompts, completions, **cols)
        except (Exception, SystemExit):
            errors[f"errors/{name}"] = float(N)
            tracebacks[name] = traceback.format_exc()
            if name not in _LOGGED:
                _LOGGED.add(name)
                log.exception("token-level reward function %r raised (logged once)", name)
            per_fn[name] = np.zeros(N, np.float32)
            continue
        if not hasattr(out, "__len__") or len(out) != N:
            raise RewardFunctionError(
                f"token-level reward function {name!r} returned {out!r:.200} for {N} "
                "completions; expected one list of (char_end, reward) pairs per completion"
            )
        sums = np.zeros(N, np.float32)
        for i, pairs in enumerate(out):
            if pairs:
                cols_i = np.flatnonzero(keep_NT[i])
                r = char_rewards_to_tokens(tokenizer, [int(t) for t in toks_NT[i, cols_i]], pairs)
                dense[i, cols_i] += np.float32(weight) * r
                sums[i] = r.sum()
        per_fn[name] = sums
    return dense, per_fn, errors, tracebacks


@dataclasses.dataclass
class RewardGuard:
    """Stops a run whose reward function keeps failing: more than `max_error_frac` of a
    scored batch's samples raising or timing out, in `max_bad_steps` batches in a row."""

    max_error_frac: float
    max_bad_steps: int
    streaks: dict[str, int] = dataclasses.field(default_factory=dict)

    def check(self, stats: dict[str, float], n: int, tracebacks: dict[str, str]) -> None:
        names = {k.split("/", 1)[1] for k in stats if k.startswith(("errors/", "timeouts/"))}
        for name in sorted(names):
            errors, timeouts = stats.get(f"errors/{name}", 0.0), stats.get(f"timeouts/{name}", 0.0)
            bad = (errors + timeouts) > self.max_error_frac * n
            self.streaks[name] = self.streaks.get(name, 0) + 1 if bad else 0
            if self.streaks[name] >= self.max_bad_steps:
                tb = tracebacks.get(name) or "(no traceback: its calls timed out)"
                raise RewardFunctionError(
                    f"reward function {name!r} failed on {errors + timeouts:.0f} of {n} samples "
                    f"({errors:.0f} errors, {timeouts:.0f} timeouts), more than "
                    f"rewards.max_error_frac={self.max_error_frac} of them, in "
                    f"{self.streaks[name]} scored batches in a row "
                    f"(rewards.max_bad_steps={self.max_bad_steps}); stopping. Its last "
                    f"traceback:\n{tb}"
                )


def score(
    text: Text,
    executor,
    token_fns: list[RewardFn],
    rows: list[dict],
    group: int,
    prompts: list[str],
    toks_NT: np.ndarray,
    smask_NT: np.ndarray,
    guard: RewardGuard | None = None,
) -> Scores:
    """Decodes completions and scores them with every reward function (`guard` stops a run
    whose functions keep failing)."""
    completions = text.decode(toks_NT, smask_NT)
    cols = columns(rows, group, smask_NT)
    tracebacks = {}
    if executor is not None:
        total, per_fn, stats = executor.score(prompts, completions, cols)
        tracebacks = dict(executor.tracebacks)
    else:  # only token-level rewards are configured
        total, per_fn, stats = np.zeros(len(prompts), np.float32), {}, {}
    dense = None
    if token_fns:
        dense, sums, errors, dense_tbs = dense_rewards(
            text.tokenizer, toks_NT, smask_NT, completions, prompts, cols, token_fns
        )
        per_fn = {**per_fn, **sums}
        stats = {**stats, **errors}
        tracebacks.update(dense_tbs)
    if guard is not None:
        guard.check(stats, len(completions), tracebacks)
    return Scores(
        total_N=np.asarray(total, np.float32),
        dense_NT=dense,
        per_fn=dict(per_fn),
        stats=dict(stats),
        completions=completions,
        prompts=list(prompts),
    )


def sample_table(s: Scores, n: int) -> list[dict]:
    """The first `n` completions of a scored batch as rows for the logs: `prompt` (as rendered
    for the model), `completion`, `reward` (the weighted total the update sees) and each reward
    function's own value (unweighted; token-level functions: the row's sum)."""
    rows = []
    for i in range(min(n, len(s.completions))):
        row = {"prompt": s.prompts[i] if s.prompts else "", "completion": s.completions[i]}
        row["reward"] = float(s.outcome_N[i])
        row.update({name: float(v[i]) for name, v in s.per_fn.items()})
        rows.append(row)
    return rows


def reward_metrics(s: Scores, smask_NT: np.ndarray, group: int) -> dict[str, float]:
    """Host metrics of a scored batch."""
    lengths = smask_NT.sum(axis=1)
    out = {
        "reward/mean": float(np.mean(s.total_N)),
        "reward/std": float(np.std(s.total_N)),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "groups/zero_variance_frac": zero_variance_group_frac(s.outcome_N, group),
        **{f"reward/{k}": float(np.mean(v)) for k, v in s.per_fn.items()},
        **{f"reward_{k}": float(v) for k, v in s.stats.items() if k != "time_s"},
    }
    if s.dense_NT is not None:
        out["reward/dense_mean"] = float(np.mean(s.dense_NT.sum(axis=1)))
    return out
