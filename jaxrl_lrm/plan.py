"""Memory planning: the bytes per chip an RL run's config needs, before a machine is booked.

`plan(config, chips=..., hbm_gib=...)` returns a `Plan` with one row per thing on the device:
the policy's weights, the frozen reference (none with LoRA: it is the base with the adapters
off), PPO's value model, the adapters, the optimizer state (AdamW: two moments per trained
parameter), the gradients, the sampler's KV cache and the update's activations. Weights,
moments and the cache are counted exactly from their shapes, dtypes and the layouts the one
rules table (`sharding.RULES`) gives them on the config's mesh. Activations are the residuals
the update's own backward pass keeps: the differentiated forward (`completion_logprobs` of one
micro-batch's rows on one chip, with the config's `remat` and LoRA) is traced abstractly,
nothing is compiled or allocated, and every array it saves for the backward that is not a
parameter is counted, plus one layer's working set without remat (the layer the backward is
in). The peak is the resident state plus the larger of sampling (KV cache) and the update
(batch, gradients, activations); it fits when the peak is at most the chip's memory.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from jaxrl_lrm import algorithms, sharding
from jaxrl_lrm.config import load_config
from jaxrl_lrm.models import lora as lora_lib
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig, preset
from jaxrl_lrm.models.hf_config import config_from_hf
from jaxrl_lrm.train.update import completion_logprobs

GIB = 2**30
# Published per-chip HBM of the machines the README's table covers: (chips, bytes per chip).
HARDWARE = {
    "v4-8": (4, 32 * GIB),  # 4 chips, 32 GiB HBM2 each
    "v5e-8": (8, 16 * GIB),  # 8 chips, 16 GiB HBM2 each
    "v5p-8": (4, 95e9),  # 4 chips, 95 GB HBM2e each
    "h200": (1, 141e9),  # one NVIDIA H200, 141 GB HBM3e
}
ROWS = (
    "policy",
    "reference",
    "value model",
    "adapters",
    "optimizer state",
    "gradients",
    "KV cache",
    "update activations",
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Bytes per chip by row (`ROWS`), the phases' totals and the verdict."""

    rows: dict[str, float]
    batch: float  # the update's inputs (tokens, masks, log-probs) on one chip
    chips: int
    mesh: dict[str, int]
    hbm: float | None  # bytes per chip, None when unknown

    @property
    def resident(self) -> float:
        keep = ("policy", "reference", "value model", "adapters", "optimizer state")
        return sum(self.rows[k] for k in keep)

    @property
    def sampling(self) -> float:
        return self.resident + self.rows["KV cache"]

    @property
    def update(self) -> float:
        r = self.rows
        return self.resident + self.batch + r["gradients"] + r["update activations"]

    @property
    def peak(self) -> float:
        return max(self.sampling, self.update)

    @property
    def fits(self) -> bool | None:
        return None if self.hbm is None else self.peak <= self.hbm


def mesh_sizes(mesh_section, chips: int) -> dict[str, int]:
    """`{data, fsdp, tensor}` of `mesh_section` on `chips` chips (one axis may be -1)."""
    sizes = {k: getattr(mesh_section, k) for k in sharding.MESH_AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    free = [k for k, v in sizes.items() if v == -1]
    if free:
        if chips % fixed:
            raise ValueError(f"--chips {chips}: not divisible by the fixed mesh axes {sizes}")
        sizes[free[0]] = chips // fixed
    if math.prod(sizes.values()) != chips:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} chips; --chips {chips}")
    return sizes


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def sharded_bytes(shapes, axes, sizes: dict[str, int], itemsize: int) -> int:
    """Bytes on one chip of a tree of shapes laid out by their logical axes and the rules."""
    mesh = AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)
    leaves = jax.tree.leaves(shapes, is_leaf=_is_shape)
    axes_leaves = jax.tree.leaves(axes, is_leaf=sharding._is_axes)
    total = 0
    for shape, ax in zip(leaves, axes_leaves, strict=True):
        spec = sharding.logical_to_spec(ax, shape, mesh)
        split = math.prod(
            math.prod(sizes[a] for a in ((p,) if isinstance(p, str) else p))
            for p in spec
            if p is not None
        )
        total += math.prod(shape) // split * itemsize
    return total


def _itemsize(dtype: str) -> int:
    return jnp.dtype(dtype).itemsize


def _local_config(model: ModelConfig, tensor: int) -> ModelConfig:
    """The per-chip shapes of the activations: heads, KV heads and the MLP split over `tensor`
    where it divides them (as the rules table does)."""

    def split(n):
        return n // tensor if n % tensor == 0 else n

    return model.replace(
        n_heads=split(model.n_heads),
        n_kv_heads=split(model.n_kv_heads),
        mlp_dim=split(model.mlp_dim),
    )


def residual_bytes(model: ModelConfig, rows: int, length: int, prompt_len: int, lora=None) -> int:
    """Bytes the backward of `completion_logprobs` keeps for `rows x length` tokens: every
    residual of the traced vjp that is not one of its inputs (the weights are counted apart)."""
    dtype = jnp.dtype(model.dtype)
    params = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, dtype), transformer.param_shapes(model), is_leaf=_is_shape
    )
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    if lora is None:
        trained, frozen = params, None
    else:
        trained = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
            lora_lib.adapter_shapes(model, lora),
            is_leaf=_is_shape,
        )
        frozen = params

    def loss(trained, frozen, tokens):
        p = trained if frozen is None else lora_lib.apply(frozen, trained, lora.scale)
        logp, ent = completion_logprobs(p, model, tokens, jnp.ones_like(tokens), prompt_len)
        return jnp.sum(logp) + jnp.sum(ent)

    def vjp(trained, frozen, tokens):
        return jax.vjp(lambda t: loss(t, frozen, tokens), trained)[1]

    closed, out = jax.make_jaxpr(vjp, return_shape=True)(trained, frozen, tokens)
    jaxpr = closed.jaxpr
    n_res = len(jax.tree.leaves(out))
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    seen, total = set(), 0
    for v in jaxpr.outvars[len(jaxpr.outvars) - n_res :]:
        if isinstance(v, jax.extend.core.Literal) or v in inputs or v in seen:
            continue
        seen.add(v)
        total += math.prod(v.aval.shape) * v.aval.dtype.itemsize
    return total


# The backward's working set, as a fraction of one layer's residuals without remat: the layer
# being differentiated holds its (recomputed) residuals while its gradients are made, and
# frees them as it goes. Measured on XLA:CPU (docs/memory.md); the one calibrated constant.
WORKING_SET = 0.75


def activation_bytes(model, rows, length, prompt_len, lora=None) -> int:
    """The update's activations on one chip: the residuals under `model.remat`, plus the
    working set of the layer being differentiated (`WORKING_SET` of one layer's residuals
    without remat)."""
    one = model.replace(n_layers=1, remat="none")
    saved = residual_bytes(model, rows, length, prompt_len, lora)
    return int(saved + WORKING_SET * residual_bytes(one, rows, length, prompt_len, lora))


def lora_of(config):
    """The config's `lora.LoraConfig`, or None for full fine-tuning (no section, or rank 0)."""
    section = getattr(config.model, "lora", None)
    if section is None or section.rank == 0:
        return None
    return lora_lib.LoraConfig(rank=section.rank, alpha=section.alpha, targets=section.targets)


def model_config(config) -> ModelConfig:
    """The run's `ModelConfig` without loading weights: the preset with `model.overrides`
    (the preset's vocabulary unless overridden), or a checkpoint's `config.json`."""
    m = config.model
    if m.path is not None:
        import transformers

        base = config_from_hf(transformers.AutoConfig.from_pretrained(m.path), dtype=m.dtype)
        return base.replace(remat=m.remat)
    return preset(m.preset, **{**m.overrides, "dtype": m.dtype, "remat": m.remat})


_FROM_CONFIG = object()


def plan(
    config,
    *,
    chips: int,
    hbm_gib: float | None = None,
    hbm_bytes: float | None = None,
    lora=_FROM_CONFIG,
):
    """The `Plan` of an RL config on `chips` chips of `hbm_gib` GiB (or `hbm_bytes`) each;
    `lora` (a `lora.LoraConfig` or None) replaces the config's adapters."""
    if chips < 1:
        raise ValueError(f"--chips {chips}: expected a positive number of chips")
    sizes = mesh_sizes(config.mesh, chips)
    model = model_config(config)
    lora = lora_of(config) if lora is _FROM_CONFIG else lora
    spec = algorithms.resolve(config.algorithm)
    dt, item = model.dtype, _itemsize(model.dtype)
    weights = sharded_bytes(model.param_shapes(), model.param_axes(), sizes, item)
    adapters = 0
    if lora is not None:
        shapes, axes = lora_lib.adapter_shapes(model, lora), lora_lib.adapter_axes(model, lora)
        adapters = sharded_bytes(shapes, axes, sizes, 4)
    trained = weights if lora is None else adapters
    ref_item = _itemsize(config.model.ref_dtype or dt)
    reference = 0
    if spec.beta > 0 and lora is None:  # with LoRA the reference is the base, adapters off
        reference = weights // item * ref_item
    value = value_trained = 0
    if spec.uses_value:  # a second model: its own weights (or adapters) and head
        head = sharded_bytes({"w": (model.d_model,), "b": ()}, {"w": ("embed",), "b": ()}, sizes, 4)
        value = (weights if lora is None else 0) + head
        value_trained = (weights if lora is None else adapters) + head
        adapters += 0 if lora is None else adapters
    t = config.train
    rows = config.train.prompts_per_step * spec.group_size
    shards = sizes["data"] * sizes["fsdp"]
    local_rows = max(1, -(-rows // (t.minibatches * t.micro_batches) // shards))
    P, T = config.data.max_prompt_len, config.sampling.max_new_tokens
    cache_shape = (model.n_layers, rows, P + T, model.n_kv_heads, model.head_dim)
    kv = 2 * sharded_bytes(cache_shape, sharding.CACHE_AXES, sizes, item)
    local = _local_config(model, sizes["tensor"])
    acts = activation_bytes(local, local_rows, P + T, P, lora)
    # tokens, attention mask (int32, [B, P+T]); sampler / reference / old log-probs, advantages
    # and masks (float32, [B, T]); on each chip its rows of the whole step
    batch = -(-rows // shards) * (2 * 4 * (P + T) + 6 * 4 * T)
    hbm = hbm_bytes if hbm_bytes is not None else (None if hbm_gib is None else hbm_gib * GIB)
    return Plan(
        rows={
            "policy": float(weights),
            "reference": float(reference),
            "value model": float(value),
            "adapters": float(adapters),
            "optimizer state": float(2 * (trained + value_trained)),
            "gradients": float(trained * (2 if t.micro_batches > 1 else 1)),
            "KV cache": float(kv),
            "update activations": float(acts),
        },
        batch=float(batch),
        chips=chips,
        mesh=sizes,
        hbm=hbm,
    )


def format_plan(p: Plan, title: str = "") -> str:
    """The plan as a Markdown table per chip (GiB, or MiB below 1 GiB), with the verdict."""
    unit, div = ("GiB", GIB) if p.peak >= GIB else ("MiB", 2**20)
    mesh = " x ".join(f"{k} {v}" for k, v in p.mesh.items())
    lines = [title] if title else []
    lines += [
        f"{p.chips} chips, mesh {mesh}; {unit} per chip",
        "",
        f"| part | {unit} |",
        "|---|---|",
    ]
    table = {
        **p.rows,
        "update batch": p.batch,
        "**sampling peak** (resident + KV cache)": p.sampling,
        "**update peak** (resident + batch + gradients + activations)": p.update,
    }
    lines += [f"| {k} | {v / div:.3f} |" for k, v in table.items()]
    if p.hbm is None:
        lines.append(f"\npeak {p.peak / div:.2f} {unit} per chip (give --hbm-gib for a verdict)")
    else:
        verdict = "fits" if p.fits else "does not fit"
        lines.append(f"\npeak {p.peak / GIB:.2f} of {p.hbm / GIB:.2f} GiB per chip: {verdict}")
    return "\n".join(lines)


def main(config_path: str, overrides, chips: int | None, hbm_gib: float | None) -> str:
    """`jaxrl-lrm plan`: the table for a config file (chips: the mesh's, else this machine's
    device count; memory: `--hbm-gib`, else what the device reports, if it does)."""
    config = load_config(config_path, list(overrides))
    fixed = [getattr(config.mesh, a) for a in sharding.MESH_AXES]
    if chips is None:
        chips = math.prod(fixed) if -1 not in fixed else jax.device_count()
    if hbm_gib is None:
        stats = jax.devices()[0].memory_stats() or {}
        hbm_gib = stats["bytes_limit"] / GIB if "bytes_limit" in stats else None
    p = plan(config, chips=chips, hbm_gib=hbm_gib)
    return format_plan(p, f"plan of {config_path} ({model_config(config).num_params:,} parameters)")


FIT_PRESETS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-8b")
# The run the fit table plans: GRPO (k3 KL, so a reference), bfloat16 weights, full remat,
# 16 prompts x 16 completions of 512 + 2048 tokens per step in 16 micro-batches, FSDP over all
# chips.
FIT_RUN = [
    "model.dtype=bfloat16",
    "model.remat=full",
    "train.prompts_per_step=16",
    "algorithm.group_size=16",
    "train.micro_batches=16",
    "data.max_prompt_len=512",
    "sampling.max_new_tokens=2048",
    "mesh.fsdp=-1",
]


def fit_table(presets=FIT_PRESETS, hardware=HARDWARE, rank: int = 16) -> str:
    """What fits: a Markdown table of peak GiB per chip, full fine-tuning / LoRA rank `rank`
    on every attention and MLP projection, for `FIT_RUN` on each machine."""
    head = "| model | " + " | ".join(hardware) + " |"
    lines = [head, "|---" * (len(hardware) + 1) + "|"]
    adapters = lora_lib.LoraConfig(rank=rank, alpha=2.0 * rank)
    for name in presets:
        config = load_config(None, [f"model.preset={name}", *FIT_RUN])
        cells = []
        for chips, hbm in hardware.values():
            both = [plan(config, chips=chips, hbm_bytes=hbm, lora=lr) for lr in (None, adapters)]
            cells.append(" / ".join(_cell(p) for p in both))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(p: Plan) -> str:
    return f"{p.peak / GIB:.1f} {'fits' if p.fits else 'does not fit'}"


if __name__ == "__main__":
    print(fit_table())
