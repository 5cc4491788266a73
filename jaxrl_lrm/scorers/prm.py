"""A process reward model (PRM) as a reward function, on the trainer's mesh.

`sigmoid(transformer.value_head)` at the last token of every reasoning step (steps from
`rewards.dense.split_steps`) of `encode(prompt) + encode(completion)` is that step's score;
`rewards.dense.step_token_rewards` puts the scores on completion tokens, and a `min` / `last`
/ `mean` reduction gives one outcome reward per completion.

`prm_from_checkpoint` loads a `models.value_model` directory once, on first use (onto `mesh`
when one is bound), like `scorers.reward_model.reward_model_from_checkpoint`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxrl_lrm.rewards.dense import split_steps, step_token_rewards
from jaxrl_lrm.scorers._common import (
    LazyCheckpointReward,
    as_tokenizer,
    check_batch,
    check_value_model,
    positive_int,
    sequence_values,
    tokenize_with_offsets,
    values_fn,
)

REDUCTIONS = ("min", "last", "mean")
SPLIT_MODES = ("blank_line", "newline", "step_marker")
_JOINERS = {"blank_line": "\n\n", "newline": "\n", "step_marker": "\n"}
_REDUCE = {"min": np.min, "last": lambda s: s[-1], "mean": np.mean}


@dataclasses.dataclass(frozen=True)
class PRMResult:
    """One completion's process-reward scores.

    Attributes:
      steps: `(start_char, end_char)` of each step in the completion.
      step_scores: float32 [K], `sigmoid(head)` at each step's last token.
      token_rewards: float32 [T], the step scores on the completion's tokens
        (`rewards.dense.step_token_rewards`).
      positions: [K] index of each step's last token in `encode(prompt) + encode(completion)`.
    """

    steps: list[tuple[int, int]]
    step_scores: np.ndarray
    token_rewards: np.ndarray
    positions: np.ndarray


class PRMScorer:
    """Process reward model: one score in (0, 1) per reasoning step.

    Step k's score is `sigmoid(head(h_t))` with t the last token of step k in
    `encode(prompt) + encode(completion)` (the PRM800K / Math-Shepherd convention of reading
    the PRM at the step's end). As a reward function it returns the `reduction` of the step
    scores: `"min"` (a solution is as good as its worst step, Lightman et al. 2023), `"last"`,
    or `"mean"`; a completion with no steps gets `empty_score`. A prompt that would push the
    sequence past `max_seq_len` loses tokens from its start; a completion that alone exceeds
    it raises `ValueError`.

    Args:
      model: a `Model` with a value head trained as a PRM (on `mesh` when one is given).
      tokenizer: defaults to `model.tokenizer`; must report offsets (`tokenize_with_offsets`).
      mesh: the trainer's mesh; batches are placed on it with `sharding.shard_batch`.
      step_splitter: a `split_steps` mode: "blank_line", "newline" or "step_marker".
      reduction: "min", "last" or "mean".
      batch_size: rows per jitted forward.
      empty_score: the reward of a completion with no steps.
      bucket_sizes: length buckets (default powers of two >= 16).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        mesh=None,
        step_splitter: str = "blank_line",
        reduction: str = "min",
        batch_size: int = 8,
        empty_score: float = 0.0,
        bucket_sizes: Sequence[int] | None = None,
    ):
        check_value_model(model, "a PRM")
        if step_splitter not in SPLIT_MODES:
            raise ValueError(f"step_splitter={step_splitter!r}: expected one of {SPLIT_MODES}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
        self.model, self.mesh = model, mesh
        self.tokenizer = as_tokenizer(model.tokenizer if tokenizer is None else tokenizer)
        self.step_splitter, self.reduction = step_splitter, reduction
        self.batch_size = positive_int("batch_size", batch_size)
        self.empty_score = float(empty_score)
        self.bucket_sizes = bucket_sizes
        self.forward = values_fn(model.config)

    def step_positions(self, prompt: str, completion: str):
        """`(sequence ids, step spans, completion offsets, step-end positions in the sequence)`."""
        prompt_ids = self.tokenizer.encode(prompt)
        comp_ids, offsets = tokenize_with_offsets(self.tokenizer, completion)
        limit = self.model.config.max_seq_len
        if len(comp_ids) > limit:
            raise ValueError(
                f"completion has {len(comp_ids)} tokens: expected at most "
                f"max_seq_len={limit} to score its steps"
            )
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(comp_ids) - limit) :]
        spans = split_steps(completion, mode=self.step_splitter)
        offs = np.asarray(offsets, np.int64).reshape(-1, 2)
        real = offs[:, 1] > offs[:, 0]
        positions = []
        for start, end in spans:  # the same "last overlapping token" rule as step_token_rewards
            hits = np.nonzero(real & (offs[:, 0] < end) & (offs[:, 1] > start))[0]
            if hits.size == 0:
                raise ValueError(f"step at characters [{start}, {end}) overlaps no token")
            positions.append(len(prompt_ids) + int(hits[-1]))
        return prompt_ids + comp_ids, spans, offsets, np.asarray(positions, np.int64)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[PRMResult]:
        """Per-step scores and token-level rewards for every completion."""
        check_batch(prompts, completions)
        encoded = [self.step_positions(p, c) for p, c in zip(prompts, completions)]
        todo = [i for i, e in enumerate(encoded) if len(e[0]) > 0 and len(e[3]) > 0]
        values = (
            sequence_values(
                self.model,
                [encoded[i][0] for i in todo],
                batch_size=self.batch_size,
                bucket_sizes=self.bucket_sizes,
                mesh=self.mesh,
                forward=self.forward,
            )
            if todo
            else []
        )
        by_row = dict(zip(todo, values))
        results = []
        for i, (_, spans, offsets, positions) in enumerate(encoded):
            if i in by_row:
                head = by_row[i][positions].astype(np.float64)
                scores = (1.0 / (1.0 + np.exp(-head))).astype(np.float32)
            else:
                scores = np.zeros(0, np.float32)
            rewards = step_token_rewards(completions[i], offsets, scores, mode=self.step_splitter)
            results.append(PRMResult(spans, scores, rewards, positions))
        return results

    def step_scorer(self, prompt: str, steps: Sequence[str]) -> list[float]:
        """The `rewards.dense` extension point: `(prompt, steps) -> one score per step`.

        The steps are joined back into a completion with the splitter's separator.
        """
        completion = _JOINERS[self.step_splitter].join(steps)
        result = self.score([prompt], [completion])[0]
        if len(result.step_scores) != len(steps):
            raise ValueError(
                f"{len(steps)} steps re-split into {len(result.step_scores)} under "
                f"step_splitter={self.step_splitter!r}: expected the same count"
            )
        return [float(s) for s in result.step_scores]

    def as_token_level(self) -> Callable:
        """This PRM as a token-level reward function (`rewards.dense.TokenLevelReward`): per
        completion, `[(step_end_char, step_score) for each step]`, which the trainer places on
        the token ending each step and feeds to GAE / REINFORCE++ as dense rewards."""

        def prm_token_level(prompts: list[str], completions: list[str], **_):
            return [
                [(int(end), float(s)) for (_, end), s in zip(r.steps, r.step_scores)]
                for r in self.score(prompts, completions)
            ]

        prm_token_level.token_level = True
        return prm_token_level

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        return [
            self.empty_score
            if r.step_scores.size == 0
            else float(_REDUCE[self.reduction](r.step_scores))
            for r in self.score(prompts, completions)
        ]


prm_from_checkpoint = LazyCheckpointReward(
    "prm_from_checkpoint",
    PRMScorer,
    ("step_splitter", "reduction", "batch_size", "empty_score", "bucket_sizes"),
    module=__name__,
)
