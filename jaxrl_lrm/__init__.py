"""jaxrl_lrm: JAX/TPU-native RL fine-tuning for large reasoning models."""

__version__ = "0.1.0"
