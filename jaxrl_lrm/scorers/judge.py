"""Generative reward: an LLM judge that reads a rubric prompt and writes a score.

`LLMJudge` formats one rubric prompt per (prompt, completion[, reference answer]) with
`rewards.rubric.format_rubric`, generates the judge's reply with `sampling.generate` (greedy
by default) in batches, on the trainer's mesh when one is given, and parses a score from it
with `rewards.rubric.parse_score` (re-exported here): the last `Score: N` or
`<score>N</score>`, clamped to the judge's `scale` and normalised to [0, 1]. A reply with no
score gives `unparseable_score` (default 0.0) and is counted in `judge.stats["unparseable"]`.

The judge runs JAX: call it in-process on the trainer's host (`rewards.num_workers: 0`), not
in the reward executor's worker processes (each would load its own copy of the judge and
compete with the trainer for the accelerator).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxrl_lrm import sampling
from jaxrl_lrm.rewards.rubric import (
    DEFAULT_TEMPLATE,
    REFERENCE_SECTION,
    TEMPLATE_FIELDS,
    check_template,
    format_rubric,
    parse_score,
    template_fields,
)
from jaxrl_lrm.scorers._common import LazyCheckpointReward, as_tokenizer, positive_int

__all__ = [
    "DEFAULT_TEMPLATE",
    "REFERENCE_SECTION",
    "TEMPLATE_FIELDS",
    "LLMJudge",
    "llm_judge_from_checkpoint",
    "parse_score",
]


class LLMJudge:
    """A judge model as a reward function `(prompts, completions, **columns) -> [0, 1] scores`.

    Args:
      model: the judge `Model` (no value head needed; on `mesh` when one is given).
      tokenizer: defaults to `model.tokenizer`.
      mesh: the trainer's mesh, passed to `sampling.generate`.
      template: the rubric, a `str.format` template over `TEMPLATE_FIELDS`; `{reference}` is
        the row's `reference_column` value and `{reference_section}` is `REFERENCE_SECTION`
        filled with it (empty when the column is absent or the value is None).
      reference_column: the dataset column holding reference answers.
      scale: `(low, high)` of the rubric's scale.
      batch_size: rubric prompts per `generate` call.
      max_new_tokens: the judge's reply budget.
      temperature, top_k, top_p: sampling; `temperature=0.0` (the default) is greedy.
      seed: the sampling seed (each call folds in a call counter).
      unparseable_score: the reward of a reply with no score.
      use_chat_template: wrap the rubric as one user message when the tokenizer has a chat
        template.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        mesh=None,
        template: str = DEFAULT_TEMPLATE,
        reference_column: str = "answer",
        scale: Sequence[float] = (0, 10),
        batch_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        unparseable_score: float = 0.0,
        use_chat_template: bool = True,
    ):
        self.model, self.mesh = model, mesh
        self.tokenizer = as_tokenizer(model.tokenizer if tokenizer is None else tokenizer)
        self.template = check_template(template)
        self.reference_column = reference_column
        if len(scale) != 2 or not all(np.isfinite(x) for x in scale) or not scale[0] < scale[1]:
            raise ValueError(f"scale={tuple(scale)!r}: expected (low, high) with low < high")
        self.scale = (float(scale[0]), float(scale[1]))
        self.batch_size = positive_int("batch_size", batch_size)
        self.max_new_tokens = positive_int("max_new_tokens", max_new_tokens)
        self.sampling = {
            "temperature": float(temperature),
            "top_k": int(top_k),
            "top_p": float(top_p),
        }
        self.seed = seed
        self.unparseable_score = float(unparseable_score)
        self.use_chat_template = use_chat_template
        self.stats = {"calls": 0, "judged": 0, "unparseable": 0}

    def format_prompt(self, prompt: str, completion: str, reference=None) -> str:
        """The rubric text for one row (before any chat template)."""
        return format_rubric(self.template, prompt, completion, reference, scale=self.scale)

    def _encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        if self.use_chat_template and tok.chat_template is not None:
            text = tok.apply_chat_template([{"role": "user", "content": text}])
        return tok.encode(text)

    def _references(self, n: int, columns: dict) -> list:
        refs = columns.get(self.reference_column)
        if refs is None:
            if "reference" in template_fields(self.template):
                raise ValueError(
                    f"template uses {{reference}} but the column "
                    f"{self.reference_column!r} was not passed"
                )
            return [None] * n
        if len(refs) != n:
            raise ValueError(
                f"column {self.reference_column!r} has {len(refs)} entries for "
                f"{n} completions: expected one per completion"
            )
        return list(refs)

    def judgements(
        self, prompts: Sequence[str], completions: Sequence[str], **columns
    ) -> list[str]:
        """The judge's raw replies, one per completion."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"got {len(prompts)} prompts for {len(completions)} completions: "
                "expected one prompt per completion"
            )
        refs = self._references(len(prompts), columns)
        ids = [
            self._encode(self.format_prompt(p, c, r)) for p, c, r in zip(prompts, completions, refs)
        ]
        limit = self.model.config.max_seq_len - self.max_new_tokens
        for i, x in enumerate(ids):
            if len(x) > limit:
                raise ValueError(
                    f"judge prompt {i} has {len(x)} tokens: with max_new_tokens="
                    f"{self.max_new_tokens} expected at most {limit} "
                    f"(max_seq_len={self.model.config.max_seq_len})"
                )
        rng = jax.random.fold_in(jax.random.key(self.seed), self.stats["calls"])
        self.stats["calls"] += 1
        replies = []
        for lo in range(0, len(ids), self.batch_size):
            gen = sampling.generate(
                self.model,
                ids[lo : lo + self.batch_size],
                max_new_tokens=self.max_new_tokens,
                rng=jax.random.fold_in(rng, lo),
                eos_id=self.tokenizer.eos_id,
                pad_id=self.tokenizer.pad_id,
                mesh=self.mesh,
                **self.sampling,
            )
            for tokens, mask in zip(gen.tokens, gen.mask):
                replies.append(self.tokenizer.decode(tokens[np.asarray(mask) == 1]))
        return replies

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        scores = []
        for reply in self.judgements(prompts, completions, **columns):
            score = parse_score(reply, scale=self.scale)
            self.stats["judged"] += 1
            if score is None:
                self.stats["unparseable"] += 1
                score = self.unparseable_score
            scores.append(float(score))
        return scores


llm_judge_from_checkpoint = LazyCheckpointReward(
    "llm_judge_from_checkpoint",
    LLMJudge,
    (
        "template",
        "reference_column",
        "scale",
        "batch_size",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "unparseable_score",
        "use_chat_template",
    ),
    module=__name__,
    value_head=False,
)
