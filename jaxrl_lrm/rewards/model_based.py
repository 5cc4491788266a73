"""Deprecated alias of `jaxrl_lrm.scorers.reward_model` and `jaxrl_lrm.scorers.prm`.

Kept for one release so that `jaxrl_lrm.rewards.model_based:reward_model_from_checkpoint` in
configs and `from jaxrl_lrm.rewards.model_based import ...` keep working. This module and
`rewards/generative.py` are the only ones in `rewards/` that import JAX (through `scorers`),
and only when imported explicitly: `import jaxrl_lrm.rewards` does not load them.
"""

import warnings

from jaxrl_lrm.scorers._common import (  # noqa: F401
    LazyCheckpointReward,
    as_tokenizer,
    load_backbone,
    sequence_values,
    token_offsets,
    tokenize_with_offsets,
)
from jaxrl_lrm.scorers.prm import REDUCTIONS, SPLIT_MODES, PRMResult, PRMScorer, prm_from_checkpoint  # noqa: F401
from jaxrl_lrm.scorers.reward_model import (  # noqa: F401
    RewardModelScorer,
    load_reward_model,
    reward_model_from_checkpoint,
    save_reward_model,
)

warnings.warn(
    "jaxrl_lrm.rewards.model_based is deprecated: use jaxrl_lrm.scorers.reward_model "
    "and jaxrl_lrm.scorers.prm",
    DeprecationWarning,
    stacklevel=2,
)
