"""Orbax checkpoints of a training run: array state (policy, optimizer, value model, ...) plus a
JSON record of the host state (step, data position, RNG seed), saved asynchronously.

`Checkpointer.restore` takes an abstract target (shapes, dtypes and shardings) so a resumed
run gets its arrays back placed on the mesh exactly as the fresh run placed them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """A thin face over `ocp.CheckpointManager` with two items: `state` and `meta`."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts an asynchronous save of `state` (a pytree of arrays) and `meta` (JSON)."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores `(state, meta, step)`; `target` gives the tree, shapes and shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {str(self.directory)!r} to restore")
        if step not in self.all_steps():
            raise ValueError(f"checkpoint step {step} not in {str(self.directory)!r}; "
                             f"available: {self.all_steps()}")
        abstract = jax.tree.map(_abstract, target)
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"]), step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _abstract(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def restore_state_only(path: str | Path, target: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores the array state of a checkpoint directory (the run's `checkpoints/`)."""
    ckpt = Checkpointer(path, async_save=False)
    try:
        state, _, step = ckpt.restore(target, step)
    finally:
        ckpt.close()
    return state, step
