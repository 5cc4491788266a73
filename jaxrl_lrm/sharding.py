"""The one place that knows about device meshes: mesh construction, the logical-axis rules
table, and placing parameters, caches and batches.

Models name logical axes only (`models.param_axes`); `RULES` maps each logical axis to mesh
axes. This module knows nothing of the models: it maps trees of logical axes (and shapes) to
shardings, and `models` calls it, never the other way round. A mesh axis is used for a
dimension only when it divides it (a 2-way `tensor` axis on a model with one KV head leaves
that dimension replicated instead of failing), so the same rules serve a 1-CPU test and a pod
slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (tuple: sharded over their product, in order). One table for
# parameters, activations and the KV cache.
RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "layers": (),
    "norm": (),
    "lora_rank": (),  # LoRA adapters: A [layers, *in, lora_rank], B [layers, lora_rank, *out]
    # activations and batches
    "batch": ("data", "fsdp"),
    "length": (),
    "act_embed": (),
    "act_vocab": ("tensor",),
    # KV cache [layers, batch, length, kv_heads, head_dim]
    "cache_layers": (),
    "cache_batch": ("data", "fsdp"),
    "cache_length": (),
    "cache_kv_heads": ("tensor",),
    "cache_head_dim": (),
}

CACHE_AXES = ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim")


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `(data, fsdp, tensor)` mesh over all (or the given) devices.

    One axis may be -1 and takes the devices the others leave. Axis types are `Auto`: shardings
    are given at jit boundaries and propagated by the compiler (the classic GSPMD model), which
    is what every jitted function here is written for.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{name}={size!r}: expected a positive integer or -1")
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh axes {free} are all -1: at most one axis may take the rest")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if not free and fixed < n:  # a smaller mesh than the machine: take the first devices
        devices, n = devices[:fixed], fixed
    if free:
        if n % fixed:
            raise ValueError(f"{n} devices cannot be split by the fixed mesh axes {sizes}")
        sizes[free[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {n}")
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: dict | None = None,
) -> PartitionSpec:
    """The PartitionSpec the rules give a tensor with these logical axes.

    With `shape` and `mesh`, mesh axes that do not divide a dimension (or are already used by an
    earlier dimension) are dropped, leaving that part replicated.
    """
    rules = RULES if rules is None else rules
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        chosen = []
        for mesh_axis in rules[name]:
            if mesh_axis in used:
                continue
            if mesh is not None and shape is not None:
                size = mesh.shape[mesh_axis]
                if shape[i] % (size * math.prod(mesh.shape[a] for a in chosen)):
                    continue
            chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return PartitionSpec(*spec)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, str | None) for a in x)


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules: dict | None = None):
    """NamedShardings for a pytree of logical axes and a matching pytree of shapes."""
    return jax.tree.map(
        lambda axes, shape: NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules)),
        axes_tree,
        shapes_tree,
        is_leaf=_is_axes,
    )


def param_shardings(
    model_config, mesh: Mesh, *, value_head: bool = False, rules: dict | None = None
):
    """NamedShardings of a model's parameters by the rules.

    Args:
      model_config: anything that names its parameters' logical axes and shapes as two
        matching trees, `param_axes(value_head=...)` and `param_shapes(value_head=...)`
        (a `models.ModelConfig`).
      mesh: the device mesh.
      value_head: include the scalar value head's parameters.
      rules: a logical-axis table other than `RULES`.
    """
    axes = model_config.param_axes(value_head=value_head)
    shapes = model_config.param_shapes(value_head=value_head)
    return tree_shardings(axes, shapes, mesh, rules)


def shard_params(params, config, mesh: Mesh, rules: dict | None = None):
    """Places a parameter pytree on `mesh` by the rules."""
    shardings = param_shardings(config, mesh, value_head="value_head" in params, rules=rules)
    return jax.device_put(params, shardings)


def shard_model(model, mesh: Mesh, rules: dict | None = None):
    """A `models.Model` with its parameters placed on `mesh`."""
    return model.replace(params=shard_params(model.params, model.config, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: dict | None = None) -> NamedSharding:
    """Sharding of a `[B, ...]` batch array: batch over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules=rules))


def batch_spec_for(shape: Sequence[int], mesh: Mesh, rules: dict | None = None) -> NamedSharding:
    """Like `batch_sharding` but drops mesh axes that do not divide the batch dimension."""
    axes = ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def shard_batch(batch, mesh: Mesh, rules: dict | None = None):
    """Places a batch pytree on the mesh, leading (row) axis over (data, fsdp).

    Host arrays are this process's rows: with one process they are the whole batch; with
    several, the global batch concatenates every process's rows in process order
    (`jax.make_array_from_process_local_data`). Arrays that are already global (not fully
    addressable: outputs of jitted functions on a multi-host mesh) are passed through.
    """
    nproc = jax.process_count()

    def place(x):
        if x is None:
            return None
        if np.ndim(x) == 0:
            return jax.device_put(x, replicated(mesh))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        if nproc == 1:
            return jax.device_put(x, batch_spec_for(np.shape(x), mesh, rules))
        local = np.asarray(x)
        global_shape = (local.shape[0] * nproc, *local.shape[1:])
        return jax.make_array_from_process_local_data(
            batch_spec_for(global_shape, mesh, rules), local, global_shape
        )

    return jax.tree.map(place, batch)


def host_rows(x) -> np.ndarray:
    """This process's rows of a batch array, as NumPy (the inverse of `shard_batch`)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(
        multihost_utils.global_array_to_host_local_array(x, x.sharding.mesh, x.sharding.spec)
    )


def cache_sharding(cache_shape: Sequence[int], mesh: Mesh, rules: dict | None = None):
    """Sharding of one `[L, B, S, K, H]` KV-cache array."""
    return NamedSharding(mesh, logical_to_spec(CACHE_AXES, cache_shape, mesh, rules))


def on_mesh(tree, mesh: Mesh):
    """Every leaf that is not already laid out on `mesh` (scalars such as step counters,
    freshly created on one device) placed replicated on it, so that jitted functions see the
    same input shardings on every call and compile once."""

    def place(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return x
        return jax.device_put(x, replicated(mesh))

    return jax.tree.map(place, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Multi-host start-up: `jax.distributed.initialize` with explicit values, or from the
    environment on a TPU pod when none are given. Call once, before any other JAX work."""
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "--coordinator-address, --num-processes and --process-id go together; "
            f"got coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}"
        )
    if all(given):
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    else:
        jax.distributed.initialize()
