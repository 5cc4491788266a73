"""`Model`: a config plus its parameter pytree (and, when loaded from disk, its tokenizer)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_lrm import sharding
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig, preset


@dataclasses.dataclass(frozen=True)
class Model:
    """A decoder-only LM. `params` is the only array data; `config` and `tokenizer` are static.

    Registered as a pytree, so `jax.tree.map` and `jax.device_put` act on `params` alone.
    `params` may hold a `value_head` entry (a value or reward model).
    """

    config: ModelConfig
    params: dict
    tokenizer: Any = None

    @property
    def has_value_head(self) -> bool:
        return "value_head" in self.params

    def replace(self, **kw: Any) -> Model:
        return dataclasses.replace(self, **kw)


jax.tree_util.register_dataclass(Model, data_fields=["params"], meta_fields=["config", "tokenizer"])


def init(
    config: ModelConfig | str,
    rng: jax.Array | int = 0,
    *,
    value_head: bool = False,
    mesh=None,
    tokenizer=None,
) -> Model:
    """A randomly initialised model from a config or preset name, sharded on `mesh` if given."""
    if isinstance(config, str):
        config = preset(config)
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    params = _init_fn(config, value_head, mesh)(rng)
    return Model(config=config, params=params, tokenizer=tokenizer)


@functools.lru_cache(maxsize=16)
def _init_fn(config: ModelConfig, value_head: bool, mesh):
    """The jitted initialiser for one config (compiled once per process, not once per call);
    with a mesh, parameters are created already sharded, never whole on one device."""
    shardings = None
    if mesh is not None:
        shardings = sharding.param_shardings(config, mesh, value_head=value_head)
    return jax.jit(
        lambda r: transformer.init_params(config, r, value_head=value_head), out_shardings=shardings
    )


def with_value_head(model: Model, rng: jax.Array | int = 0) -> Model:
    """The same backbone with a fresh (zero) scalar head: a value or reward model."""
    del rng  # the head starts at zero so the initial values are exactly 0
    d = model.config.d_model
    dtype = jnp.dtype(model.config.dtype)
    head = {"w": jnp.zeros((d,), dtype), "b": jnp.zeros((), dtype)}
    return model.replace(params={**model.params, "value_head": head})


def logits(model: Model, tokens) -> jax.Array:
    """Full causal forward pass over `tokens[B,T]` (no padding): float32 logits `[B,T,V]`."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens has shape {tokens.shape}: expected [B, T]")
    return _logits_jit(model.params, tokens, model.config)


_logits_jit = jax.jit(
    lambda params, tokens, config: transformer.forward(params, config, tokens)[0], static_argnums=2
)
