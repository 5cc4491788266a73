"""LoRA in a run (`model.lora.*`): which parameters a stage trains and which stay frozen.

With `model.lora.rank > 0` every stage trains adapters (`models.lora`) instead of the whole
model: the train state's `ModelState.params` are the adapters (plus a value or reward model's
head, which is new and trained in full) and the optimizer holds state for those alone; the base
weights are the programs' frozen `state.Bases`, and the reference policy is the same base
arrays with the adapters off. Checkpoints therefore hold the adapters and their optimizer
state only; the base is rebuilt from `model.path` / `model.preset` on resume and export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lrm import sharding
from jaxrl_lrm.models import lora, peft
from jaxrl_lrm.models.config import ModelConfig
from jaxrl_lrm.train.state import Bases

POLICY_SALT, VALUE_SALT = 0x10A, 0x10B  # fold_in(key(seed), salt): the adapters' A init


def lora_config(config) -> lora.LoraConfig | None:
    """The run's `models.lora.LoraConfig` from `model.lora`, or None when `rank` is 0."""
    s = config.model.lora
    if s.rank == 0:
        return None
    return lora.LoraConfig(rank=s.rank, alpha=float(s.alpha), targets=tuple(s.targets))


def adapter_shardings(model_config: ModelConfig, spec: lora.LoraConfig, mesh):
    """The adapters' NamedShardings by the rules table (`sharding.RULES`)."""
    return sharding.tree_shardings(
        lora.adapter_axes(model_config, spec), lora.adapter_shapes(model_config, spec), mesh
    )


def init_adapters(config, model_config: ModelConfig, spec: lora.LoraConfig, mesh, salt: int):
    """Fresh adapters (A random, B zero) created on the mesh by the rules, or those of the PEFT
    adapter directory `model.lora.path` for the policy."""
    sh = adapter_shardings(model_config, spec, mesh)
    if salt == POLICY_SALT and config.model.lora.path is not None:
        adapters, _ = peft.load_adapter(config.model.lora.path, model_config, expect=spec)
        return jax.device_put(adapters, sh)
    key = jax.random.fold_in(jax.random.key(config.seed), salt)
    return jax.jit(lambda k: lora.init_adapters(model_config, spec, k), out_shardings=sh)(key)


def split_head(params: dict) -> tuple[dict, dict | None]:
    """`(backbone, value_head or None)` of a parameter tree."""
    backbone = {k: v for k, v in params.items() if k != "value_head"}
    return backbone, params.get("value_head")


def trainable(config, model_config: ModelConfig, params: dict, mesh, *, salt=POLICY_SALT):
    """`(trained, base)` of a model whose initial parameters are `params`: the whole `params`
    and None in full fine-tuning; with LoRA its adapters (with `params`' value head, when it
    has one, trained too) and its backbone, frozen."""
    spec = lora_config(config)
    if spec is None:
        return params, None
    backbone, head = split_head(params)
    adapters = init_adapters(config, model_config, spec, mesh, salt)
    if head is not None:
        adapters = {**adapters, "value_head": jax.tree.map(lambda x: x.astype(jnp.float32), head)}
    return adapters, backbone


def bases(config, policy_base, value_base=None) -> Bases:
    """The programs' `Bases` (all None in full fine-tuning)."""
    spec = lora_config(config)
    return Bases(policy_base, value_base, 1.0 if spec is None else spec.scale)
