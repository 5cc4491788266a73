"""The data of one RL step, as registered dataclasses with shape-suffixed fields.

B = prompts x group size rows (whole groups contiguous: rows `[g*G, (g+1)*G)` share prompt g),
P = the padded prompt length, T = `sampling.max_new_tokens`, L = P + T. Optional fields are
`None` for the whole run (their presence is fixed by the config), never zero placeholders.
"""

from __future__ import annotations

import dataclasses

import jax


def _dataclass(cls):
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


@_dataclass
class Prompts:
    """Left-padded prompt ids, each prompt repeated G times."""

    ids_BP: jax.Array  # int32
    mask_BP: jax.Array  # int32, 0 for left padding


@_dataclass
class Rollout:
    """What the sampler produced, on the device."""

    tokens_BL: jax.Array  # int32: prompt then completion (pad after EOS)
    attn_BL: jax.Array  # int32: 1 for real tokens (prompt and completion up to EOS)
    sampler_logp_BT: jax.Array  # float32: the sampler's log-prob of each completion token
    # int32: multi-turn episodes, 1 for sampled tokens only (observation tokens are attended
    # but outside the loss, the KL and the entropy); None: every real completion token
    loss_mask_BT: jax.Array | None = None
    # float32: the log-prob under the top-k / top-p renormalised distribution the token was
    # drawn from (`sampling.logprob_mode: truncated` with a truncation; else None)
    sampler_trunc_logp_BT: jax.Array | None = None

    @property
    def completion_mask_BT(self) -> jax.Array:
        """The tokens the loss, the KL and the advantages see."""
        if self.loss_mask_BT is not None:
            return self.loss_mask_BT
        T = self.sampler_logp_BT.shape[1]
        return self.attn_BL[:, -T:]

    @property
    def behaviour_logp_BT(self) -> jax.Array:
        """The log-prob of each token under the distribution that drew it: the denominator of
        the behaviour-policy importance weight."""
        if self.sampler_trunc_logp_BT is not None:
            return self.sampler_trunc_logp_BT
        return self.sampler_logp_BT


@_dataclass
class Scored:
    """Device passes over a rollout, dispatched before the host scores it."""

    old_logp_BT: jax.Array | None  # the sampling policy, recomputed (None: one update per step)
    ref_logp_BT: jax.Array | None  # the reference (None: no KL term)
    values_BT: jax.Array | None  # PPO's value model (None: no value model)


@_dataclass
class Rewards:
    """What the host sends to the device: the only host-to-device transfer of a step."""

    rewards_B: jax.Array  # float32: weighted sum of the scalar reward functions
    dense_BT: jax.Array | None  # float32: token-level (dense, PRM) rewards, weighted
    keep_B: jax.Array | None = None  # float32: 0 for rows that only fill the batch (DAPO)


@_dataclass
class RolloutBatch:
    """The update's input: advantages and KL-in-reward are computed from it inside the
    jitted update."""

    rollout: Rollout
    scored: Scored
    rewards: Rewards
