"""A Bradley-Terry reward model (RM) as a reward function, on the trainer's mesh.

`prompt + completion` (re-tokenised: `encode(prompt) + encode(completion)`) runs through the
backbone and `transformer.value_head` at the last real token is the sequence's score. Batches
are left-padded to a fixed batch size and a power-of-two length bucket, so the scorer's jitted
forward (made once per scorer) serves every call of the same bucket.

`reward_model_from_checkpoint` is the config-facing face: a reward function that takes
`path=` (bound from `rewards.functions[*].args`) and loads the checkpoint once, on first use,
onto `mesh` when one is bound. The checkpoint is a `models.value_model` directory
(`save_value_model`: backbone + `value_head.safetensors`), e.g. an export of the
`reward_model` training stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrl_lrm.models.value_model import load_value_model, save_value_model
from jaxrl_lrm.scorers._common import (
    LazyCheckpointReward,
    as_tokenizer,
    check_batch,
    check_value_model,
    positive_int,
    sequence_values,
    values_fn,
)

# One checkpoint format for every value-head model (`models.value_model`); the old names stay
# as aliases.
save_reward_model = save_value_model
load_reward_model = load_value_model


class RewardModelScorer:
    """Bradley-Terry reward model as a reward function.

    `reward = scale * (head(h_last) - shift)` where `h_last` is the final hidden state at the
    last token of `encode(prompt) + encode(completion)` (the score a Bradley-Terry RM is
    trained on: `P(a > b) = sigmoid(r_a - r_b)`). Set `shift` to the RM's mean score and
    `scale` to one over its standard deviation to put rewards on a unit scale. Sequences
    longer than `max_seq_len` keep their last `max_seq_len` tokens (counted in
    `stats["truncated"]`).

    Args:
      model: a `Model` with a value head (on `mesh` when one is given).
      tokenizer: defaults to `model.tokenizer`.
      mesh: the trainer's mesh; batches are placed on it with `sharding.shard_batch`.
      batch_size: rows per jitted forward.
      scale, shift: the affine normalisation above.
      append_eos: score at an EOS token appended to the completion (how the `reward_model`
        training stage reads its RM: prompt + completion + EOS).
      bucket_sizes: length buckets (default powers of two >= 16).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        mesh=None,
        batch_size: int = 8,
        scale: float = 1.0,
        shift: float = 0.0,
        append_eos: bool = False,
        bucket_sizes: Sequence[int] | None = None,
    ):
        check_value_model(model, "a reward model")
        self.model, self.mesh = model, mesh
        self.tokenizer = as_tokenizer(model.tokenizer if tokenizer is None else tokenizer)
        self.batch_size = positive_int("batch_size", batch_size)
        for name, v in (("scale", scale), ("shift", shift)):
            if not isinstance(v, int | float) or not np.isfinite(v):
                raise ValueError(f"{name}={v!r}: expected a finite number")
        self.scale, self.shift = float(scale), float(shift)
        self.suffix = [self.tokenizer.eos_id] if append_eos else []
        self.bucket_sizes = bucket_sizes
        self.forward = values_fn(model.config)
        self.stats = {"scored": 0, "truncated": 0}

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Unnormalised head outputs at the last token, float32 [N]."""
        check_batch(prompts, completions)
        limit = self.model.config.max_seq_len
        seqs = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            seq = self.tokenizer.encode(p) + self.tokenizer.encode(c) + self.suffix
            if not seq:
                raise ValueError(
                    f"prompts[{i}] and completions[{i}] are both empty: "
                    "expected at least one token to score"
                )
            self.stats["truncated"] += len(seq) > limit
            seqs.append(seq[-limit:])
        if not seqs:
            return np.zeros(0, np.float32)
        values = sequence_values(
            self.model,
            seqs,
            batch_size=self.batch_size,
            bucket_sizes=self.bucket_sizes,
            mesh=self.mesh,
            forward=self.forward,
        )
        self.stats["scored"] += len(seqs)
        return np.array([v[-1] for v in values], np.float32)

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        raw = self.raw_scores(prompts, completions)
        return [float(self.scale * (r - self.shift)) for r in raw]


reward_model_from_checkpoint = LazyCheckpointReward(
    "reward_model_from_checkpoint",
    RewardModelScorer,
    ("batch_size", "scale", "shift", "append_eos", "bucket_sizes"),
    module=__name__,
)
