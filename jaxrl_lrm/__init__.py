"""jaxrl_lrm: JAX/TPU-native RL fine-tuning for large reasoning models.

Library entry points: `jaxrl_lrm.losses` (pure loss and advantage functions),
`jaxrl_lrm.rewards` (host-side reward functions), `jaxrl_lrm.models`, `jaxrl_lrm.sampling`.
"""

__version__ = "0.1.0"
