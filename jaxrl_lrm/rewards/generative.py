"""Deprecated alias of `jaxrl_lrm.scorers.judge` (the score parsing is `rewards.rubric`).

Kept for one release so that `jaxrl_lrm.rewards.generative:llm_judge_from_checkpoint` in
configs and `from jaxrl_lrm.rewards.generative import ...` keep working. This module and
`rewards/model_based.py` are the only ones in `rewards/` that import JAX (through `scorers`),
and only when imported explicitly: `import jaxrl_lrm.rewards` does not load them.
"""

import warnings

from jaxrl_lrm.rewards.rubric import (  # noqa: F401
    DEFAULT_TEMPLATE,
    REFERENCE_SECTION,
    TEMPLATE_FIELDS,
    parse_score,
)
from jaxrl_lrm.scorers._common import LazyCheckpointReward, as_tokenizer  # noqa: F401
from jaxrl_lrm.scorers.judge import LLMJudge, llm_judge_from_checkpoint  # noqa: F401

warnings.warn(
    "jaxrl_lrm.rewards.generative is deprecated: use jaxrl_lrm.scorers.judge "
    "(parse_score: jaxrl_lrm.rewards.rubric)",
    DeprecationWarning,
    stacklevel=2,
)
