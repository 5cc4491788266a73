"""Loss library: pure, jit-able functions on arrays (see docs/losses.md).

`from jaxrl_lrm import losses` gives one flat namespace; the submodules are an implementation
detail.
"""

from jaxrl_lrm.losses._masking import Denominators, aggregate, masked_mean, masked_var, whiten
from jaxrl_lrm.losses.advantages import (
    gae,
    group_advantages,
    outcome_token_rewards,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reinforce_pp_returns,
    rloo_advantages,
)
from jaxrl_lrm.losses.kl import AdaptiveKLController, AdaptiveKLState, kl_penalty
from jaxrl_lrm.losses.logprobs import (
    chunked_token_logprobs,
    entropy,
    sampled_logprobs,
    token_logprobs,
)
from jaxrl_lrm.losses.microbatch import split_rows, summed_value_and_grad
from jaxrl_lrm.losses.policy import (
    cispo_loss,
    dpo_loss,
    logprob_mismatch,
    policy_loss,
    truncated_importance_weights,
    value_loss,
)

__all__ = [
    "AdaptiveKLController",
    "AdaptiveKLState",
    "Denominators",
    "aggregate",
    "chunked_token_logprobs",
    "cispo_loss",
    "dpo_loss",
    "entropy",
    "gae",
    "group_advantages",
    "kl_penalty",
    "logprob_mismatch",
    "masked_mean",
    "masked_var",
    "outcome_token_rewards",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "reinforce_pp_returns",
    "rloo_advantages",
    "sampled_logprobs",
    "split_rows",
    "summed_value_and_grad",
    "token_logprobs",
    "truncated_importance_weights",
    "value_loss",
    "whiten",
]
