"""User policy losses for `algorithm.loss` tests (importable as `custom_losses:NAME`)."""

import jax.numpy as jnp

from jaxrl_lrm import losses


def reinforce(logp, old_logp, advantages, mask, *, agg, max_len, denom):
    """Plain REINFORCE, `-A * logp` per token, with one extra metric."""
    loss = losses.aggregate(-advantages * logp, mask, agg, max_len=max_len, denom=denom)
    return loss, {"logp_mean": losses.masked_mean(logp, mask)}


def negated_policy_loss(logp, old_logp, advantages, mask, **kwargs):
    """Minus the built-in clipped surrogate: the first Adam step is exactly the opposite."""
    loss, metrics = losses.policy_loss(logp, old_logp, advantages, mask, **kwargs)
    return -loss, metrics


def without_clip(logp, old_logp, advantages, mask, *, agg, max_len, denom):
    return reinforce(logp, old_logp, advantages, mask, agg=agg, max_len=max_len, denom=denom)


def three_arrays(logp, old_logp, advantages):
    return jnp.sum(logp), {}


def without_denom(logp, old_logp, advantages, mask, *, agg, max_len):
    return losses.aggregate(-advantages * logp, mask, agg, max_len=max_len), {}


def needs_beta(logp, old_logp, advantages, mask, *, agg, max_len, denom, beta):
    return jnp.sum(logp) * beta, {}


def scalar_only(logp, old_logp, advantages, mask, *, agg, max_len, denom):
    return jnp.sum(logp)


NOT_A_FUNCTION = 3


def ones_fraction(prompts, completions, **_):
    """A reward that varies between samples: the share of '1' characters."""
    return [c.count("1") / max(len(c), 1) for c in completions]
