"""Decoder-only transformers (Llama 3 / Qwen2 / Qwen3) as config + parameter pytrees."""

from jaxrl_lrm.models.config import PRESETS, ModelConfig, param_shapes, preset
from jaxrl_lrm.models.hf import load_pretrained, save_pretrained
from jaxrl_lrm.models.model import Model, init, logits, with_value_head
from jaxrl_lrm.models.transformer import (
    forward,
    forward_hidden,
    init_cache,
    output_embedding,
    param_axes,
    value_head,
)
from jaxrl_lrm.models.value_model import load_value_model, save_value_model

__all__ = [
    "PRESETS",
    "Model",
    "ModelConfig",
    "forward",
    "forward_hidden",
    "init",
    "init_cache",
    "load_pretrained",
    "load_value_model",
    "logits",
    "output_embedding",
    "param_axes",
    "param_shapes",
    "preset",
    "save_pretrained",
    "save_value_model",
    "value_head",
    "with_value_head",
]
