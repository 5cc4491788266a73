"""LoRA adapters over the params pytree: shapes, logical axes, initialisation, and the two ways
of using them, factored (`apply`) and merged (`merge`).

A target projection `W [L, *in, *out]` (our `[in, out]` layout, see `models.param_axes`) gets
`A [L, *in, r]` and `B [L, r, *out]`, and the adapted weight is `W + (alpha / r) * A @ B`
(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; PEFT's `scaling`).
`A` starts as PEFT's `kaiming_uniform_(a=sqrt(5))`, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, and
`B` at zero, so the adapted model at step 0 is the base model exactly.

An adapter tree mirrors the parameter tree: `{"layers": {"wq": {"lora_a": A, "lora_b": B},
...}}`; any other array in it (a value model's fresh `value_head`) is trained too and replaces
or extends the base's entry. Adapters are float32 whatever the base dtype. The base is never
copied: `apply` returns a tree whose targets are `LoRAWeight(w, a, b)` nodes that the
transformer's projections read as `x @ w + scale * (x @ a) @ b`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxrl_lrm.models.config import ModelConfig, param_axes, param_shapes

TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
# axes of each target's weight (after `layers`) that the projection contracts
N_IN = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}
RANK_AXIS = "lora_rank"  # the logical axis of the adapters' rank dimension (sharding.RULES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Which projections get adapters, of what rank, with what `alpha` (`scale = alpha / rank`)."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"lora rank={self.rank!r}: expected a positive integer")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ValueError(f"lora alpha={self.alpha!r}: expected a positive number")
        check_targets(self.targets)

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


def check_targets(targets) -> tuple[str, ...]:
    """`targets` as a tuple, or a ValueError naming what is wrong."""
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if not targets or bad or len(set(targets)) != len(targets):
        raise ValueError(
            f"lora targets={list(targets)!r}: expected a non-empty subset of {list(TARGETS)} "
            "without repeats"
        )
    return targets


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoRAWeight:
    """A projection with its adapter, in factored form: `x @ w + scale * (x @ a) @ b`. Built by
    `apply` inside a program (never stored); layer-stacked like the weight it wraps."""

    w: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = dataclasses.field(metadata=dict(static=True))


def _split(config: ModelConfig, name: str):
    """`(in_axes, out_axes, in_shape, out_shape)` of target `name` (after the layers axis)."""
    axes = param_axes(config)["layers"][name][1:]
    shape = param_shapes(config)["layers"][name][1:]
    n = N_IN[name]
    return axes[:n], axes[n:], shape[:n], shape[n:]


def adapter_axes(config: ModelConfig, lora: LoraConfig) -> dict:
    """Logical axes of every adapter array (the tree `init_adapters` returns)."""
    out = {}
    for t in lora.targets:
        ins, outs, _, _ = _split(config, t)
        out[t] = {"lora_a": ("layers", *ins, RANK_AXIS), "lora_b": ("layers", RANK_AXIS, *outs)}
    return {"layers": out}


def adapter_shapes(config: ModelConfig, lora: LoraConfig) -> dict:
    """Shapes of every adapter array (same tree as `adapter_axes`)."""
    L, r, out = config.n_layers, lora.rank, {}
    for t in lora.targets:
        _, _, ins, outs = _split(config, t)
        out[t] = {"lora_a": (L, *ins, r), "lora_b": (L, r, *outs)}
    return {"layers": out}


def num_params(config: ModelConfig, lora: LoraConfig) -> int:
    """Number of adapter parameters."""
    shapes = jax.tree.leaves(adapter_shapes(config, lora), is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(s) for s in shapes)


def init_adapters(config: ModelConfig, lora: LoraConfig, rng: jax.Array) -> dict:
    """Fresh float32 adapters: `A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, `B = 0`."""
    shapes = adapter_shapes(config, lora)["layers"]
    keys = jax.random.split(rng, len(lora.targets))
    out = {}
    for key, t in zip(keys, lora.targets):
        a_shape, b_shape = shapes[t]["lora_a"], shapes[t]["lora_b"]
        bound = 1.0 / math.sqrt(math.prod(a_shape[1:-1]))
        out[t] = {
            "lora_a": jax.random.uniform(key, a_shape, jnp.float32, -bound, bound),
            "lora_b": jnp.zeros(b_shape, jnp.float32),
        }
    return {"layers": out}


def _is_pair(x) -> bool:
    return isinstance(x, dict) and set(x) == {"lora_a", "lora_b"}


def _combine(base, adapters, leaf_fn, path: str = ""):
    """`base` with every adapter pair at a path replaced by `leaf_fn(w, a, b)` and every other
    adapter-tree array put in place of (or beside) the base's entry."""
    if not isinstance(adapters, dict):
        return adapters
    if not isinstance(base, dict):
        raise ValueError(f"adapters at {path or '<root>'}: the base has no subtree there")
    out = dict(base)
    for k, v in adapters.items():
        where = f"{path}/{k}"
        if _is_pair(v):
            if k not in base or isinstance(base[k], dict):
                raise ValueError(f"adapter {where}: the base has no weight there")
            out[k] = leaf_fn(base[k], v["lora_a"], v["lora_b"])
        else:
            out[k] = _combine(base.get(k, {}), v, leaf_fn, where)
    return out


def apply(base: dict, adapters: dict, scale: float) -> dict:
    """The adapted parameters in factored form (no weight is copied or merged): each target
    becomes a `LoRAWeight`, which every forward pass of `models.transformer` accepts."""
    return _combine(base, adapters, lambda w, a, b: LoRAWeight(w, a, b, float(scale)))


def delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """`scale * A @ B` as a float32 `[L, *in, *out]` update of the weight."""
    L, r = a.shape[0], a.shape[-1]
    ab = jnp.einsum(
        "lir,lro->lio", a.reshape(L, -1, r), b.reshape(L, r, -1), preferred_element_type=jnp.float32
    )
    return scale * ab.reshape(*a.shape[:-1], *b.shape[2:])


def merge(base: dict, adapters: dict, scale: float) -> dict:
    """Plain parameters with the adapters folded in: `W + scale * A @ B` at every target (in
    float32, cast back to the weight's dtype); what sampling and the merged export use."""

    def fold(w, a, b):
        return (w.astype(jnp.float32) + delta(a, b, scale)).astype(w.dtype)

    return _combine(base, adapters, fold)


def project(project_fn, x, w: LoRAWeight, n_in: int):
    """`x @ w.w + scale * (x @ w.a) @ w.b` with `project_fn(x, weight, n_in)` doing each
    product; the adapter path in float32, added in the activations' dtype."""
    y = project_fn(x, w.w, n_in)
    h = project_fn(x.astype(jnp.float32), w.a, n_in)
    return y + (w.scale * project_fn(h, w.b, 1)).astype(y.dtype)
