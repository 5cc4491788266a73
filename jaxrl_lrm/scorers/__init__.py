"""Model-based rewards on the trainer's mesh: reward model, process reward model, LLM judge.

Each scorer is a reward function `fn(prompts, completions, **columns) -> list[float]` that runs
a model with JAX: `reward_model.RewardModelScorer`, `prm.PRMScorer`, `judge.LLMJudge`. Each makes
its jitted forward once, in its constructor, and takes the trainer's `mesh` (batches placed
with `sharding.shard_batch`; params loaded onto it). The `*_from_checkpoint` faces load a
checkpoint lazily for `rewards.functions` entries. Their host halves (step splitting, the
judge's rubric and score parsing) live in `jaxrl_lrm.rewards`, which imports no JAX.
"""

from jaxrl_lrm.scorers._common import (
    LazyCheckpointReward,
    as_tokenizer,
    load_backbone,
    sequence_values,
    token_offsets,
    tokenize_with_offsets,
)
from jaxrl_lrm.scorers.judge import LLMJudge, llm_judge_from_checkpoint, parse_score
from jaxrl_lrm.scorers.prm import PRMResult, PRMScorer, prm_from_checkpoint
from jaxrl_lrm.scorers.reward_model import RewardModelScorer, reward_model_from_checkpoint

__all__ = [
    "LLMJudge",
    "LazyCheckpointReward",
    "PRMResult",
    "PRMScorer",
    "RewardModelScorer",
    "as_tokenizer",
    "llm_judge_from_checkpoint",
    "load_backbone",
    "parse_score",
    "prm_from_checkpoint",
    "reward_model_from_checkpoint",
    "sequence_values",
    "token_offsets",
    "tokenize_with_offsets",
]
