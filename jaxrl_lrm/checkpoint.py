"""Orbax checkpoints of a training run: array state (policy, optimizer, value model, ...) plus a
JSON record of the host state (step, data position, RNG seed), saved asynchronously, each step
carrying a checksum manifest that a restore verifies.

What is checksummed, when, where:

- At `save`, before orbax starts its write, every leaf of the state gets a 64-bit checksum
  computed on its devices by one small jitted reduction: two sums (mod 2**32) of a 32-bit mix
  of each word of the leaf's bytes keyed by the word's global position. The sums are exact and
  order-free, so the value is the same however the array is sharded (a run restored onto
  another mesh, each host of a multi-host run) and no array is gathered to a host for it. The
  same pass checks the floating-point leaves for NaN / inf: a non-finite state is refused
  (`NonFiniteStateError`) before anything is written.
- The manifest (format, step, per-leaf shape, dtype and checksum, SHA-256 of the canonical
  `meta` JSON) is a third orbax item, `checksums` (`<step>/checksums/`), written in the same
  orbax save as the arrays. Orbax commits a step as a whole (temporary directory, renamed when
  every item is finished), so the manifest exists exactly when the step is complete, also with
  asynchronous saves: there is nothing to write after the background write ends, and a kill at
  any moment leaves either a complete step with its manifest or no step. A step without a
  readable manifest (an older format, a deleted file) counts as incomplete.
- `restore` reads the manifest, restores the arrays with the dtypes the manifest records,
  recomputes the checksums on the restored arrays and compares them leaf by leaf (and the
  meta's SHA-256). Any problem (checksum mismatch, a truncated or missing file, garbage
  metadata, an orbax / tensorstore error) makes the step damaged: the newest intact step is
  used with a warning naming each damaged step and its problem; damaged steps newer than it are
  moved aside to `<step>.damaged` so the run can write those steps again. With no intact step,
  `CheckpointError` lists every step and what was wrong with it.

`Checkpointer.restore` takes an abstract target (shapes, dtypes and shardings) so a resumed
run gets its arrays back placed on the mesh exactly as the fresh run placed them.

A step may also carry `extra` arrays besides the state (an asynchronous run's batch in flight,
`train/async_rl.py`): a fourth orbax item, `extra`, checksummed in the same manifest
(`extra_leaves`) and verified with the state; a step saved without them restores them as None.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrl_lrm.checksums import all_finite, meta_digest, summaries

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "NonFiniteStateError",
    "all_finite",
    "restore_state_only",
]

log = logging.getLogger(__name__)

MANIFEST_ITEM = "checksums"
MANIFEST_FORMAT = 1
EXTRA_ITEM = "extra"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, or no intact checkpoint to restore."""


class NonFiniteStateError(CheckpointError):
    """A state with NaN or inf in a floating-point leaf; nothing was written.

    Attributes:
      step: the step that was to be saved.
      leaves: the key paths of the non-finite leaves.
    """

    def __init__(self, message: str, *, step: int, leaves: list[str]):
        super().__init__(message)
        self.step = step
        self.leaves = leaves


# ----------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """A thin face over `ocp.CheckpointManager`: items `state`, `meta` and their checksums.

    Args:
      directory: the run's `checkpoints/`; created if missing. Unless `read_only`, a file is
        written and removed there at once, so an unwritable directory fails here, not later.
      max_to_keep: the newest steps kept.
      async_save: write in the background (`save` returns once the arrays are copied).
      read_only: only restore (evaluation, export of a run whose directory is read-only).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self._saving: int | None = None  # the step whose save may still be running
        if not read_only:
            _check_writable(self.directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else max_to_keep,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=async_save,
            ),
            item_names=("state", "meta", MANIFEST_ITEM, EXTRA_ITEM),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, step: int, state: Any, meta: dict, *, extra: Any = None, force: bool = False
    ) -> bool:
        """Starts an asynchronous save of `state` (a pytree of arrays), `meta` (JSON), `extra`
        (a pytree of arrays, or None) and their checksum manifest.

        Raises:
          NonFiniteStateError: a floating-point leaf of `state` holds NaN or inf.
          CheckpointError: the directory cannot be written, or the previous save failed.
        """
        if self.read_only:
            raise CheckpointError(
                f"checkpoints in {str(self.directory)!r} were opened read-only; cannot save"
            )
        self._settle()
        # orbax creates the step directory in its background thread, where a failure is only
        # logged (and waited on for minutes): probe here so it is an error at once
        _check_writable(self.directory)
        summary = summaries(state)
        bad = [name for name, (finite, *_) in summary.items() if not finite]
        if bad:
            raise NonFiniteStateError(
                f"refusing to save checkpoint step {step} in {str(self.directory)!r}: NaN or "
                f"inf in {len(bad)} of {len(summary)} leaves ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}); nothing was written",
                step=step,
                leaves=bad,
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": int(step),
            "meta_sha256": meta_digest(meta),
            "leaves": _entries(summary),
        }
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if extra is not None:
            manifest["extra_leaves"] = _entries(summaries(extra))
            items[EXTRA_ITEM] = ocp.args.StandardSave(extra)
        args = ocp.args.Composite(**items, **{MANIFEST_ITEM: ocp.args.JsonSave(manifest)})
        try:
            saved = self.manager.save(step, args=args, force=force)
        except OSError as e:
            raise CheckpointError(
                f"could not write checkpoint step {step} in {str(self.directory)!r}: {e}"
            ) from e
        if saved:
            self._saving = int(step)
        return saved

    def restore(
        self, target: Any, step: int | None = None, *, extra: Any = None
    ) -> tuple[Any, dict, int] | tuple[Any, dict, int, Any]:
        """Restores `(state, meta, step)`, verified against the step's checksums; with an
        `extra` target, `(state, meta, step, extra arrays or None)`.

        Args:
          target: the state's tree, shapes, dtypes and shardings (arrays or
            `jax.ShapeDtypeStruct`s).
          step: the step to restore; None for the newest intact one (older ones are tried,
            with a warning, when newer ones are damaged).
          extra: the tree, shapes, dtypes and shardings of the step's `extra` arrays (None
            when the step was saved without them).

        Raises:
          CheckpointError: no checkpoint; no intact one (every step and its problem); or, with
            an explicit `step`, that step missing or damaged.
        """
        where = repr(str(self.directory))
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {where} to restore")
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"checkpoint step {step} not in {where}; available: {sorted(steps)}"
                )
            try:
                state, meta, more = self._restore_verified(step, target, extra)
            except _Damaged as e:
                raise CheckpointError(
                    f"checkpoint step {step} in {where} is damaged: {e}"
                ) from e.__cause__
            return (state, meta, step) if extra is None else (state, meta, step, more)
        damaged = []
        for s in steps:
            try:
                state, meta, more = self._restore_verified(s, target, extra)
            except _Damaged as e:
                damaged.append((s, str(e)))
                log.warning(
                    "checkpoint step %d in %s is damaged (%s); trying an older one", s, where, e
                )
                continue
            if damaged:
                log.warning(
                    "resuming from checkpoint step %d in %s; damaged newer steps: %s",
                    s,
                    where,
                    "; ".join(f"step {d}: {why}" for d, why in damaged),
                )
                self._set_aside([d for d, _ in damaged])
            return (state, meta, s) if extra is None else (state, meta, s, more)
        raise CheckpointError(
            f"no intact checkpoint in {where}: "
            + "; ".join(f"step {s}: {why}" for s, why in damaged)
        )

    def _restore_verified(self, step: int, target: Any, extra: Any) -> tuple[Any, dict, Any]:
        try:
            manifest = self.manager.restore(
                step, args=ocp.args.Composite(**{MANIFEST_ITEM: ocp.args.JsonRestore()})
            )[MANIFEST_ITEM]
        except Exception as e:  # orbax / tensorstore / json raise many kinds
            raise _Damaged(f"checksum manifest missing or unreadable ({_brief(e)})") from e
        leaves = _manifest_leaves(manifest, step)
        extra_leaves = manifest.get("extra_leaves") if extra is not None else None
        items = {
            "state": ocp.args.StandardRestore(_abstract(target, leaves)),
            "meta": ocp.args.JsonRestore(),
        }
        if extra_leaves is not None:
            items[EXTRA_ITEM] = ocp.args.StandardRestore(_abstract(extra, extra_leaves))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
            state, meta = out["state"], dict(out["meta"])
        except Exception as e:
            raise _Damaged(f"arrays or meta unreadable ({_brief(e)})") from e
        _verify(state, leaves)
        if meta_digest(meta) != manifest.get("meta_sha256"):
            raise _Damaged("checksum mismatch in meta")
        more = None
        if extra_leaves is not None:
            more = _cast(extra, _verify(out[EXTRA_ITEM], extra_leaves, what="extra "))
        return _cast(target, state), meta, more

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged steps to `<step>.damaged` (kept for inspection, out of orbax's view)
        so the resumed run can save those steps again."""
        if self.read_only:
            return
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                dst = self.directory / f"{s}.damaged"
                n = 1
                while dst.exists():
                    n += 1
                    dst = self.directory / f"{s}.damaged{n}"
                try:
                    src.rename(dst)
                    log.warning("moved damaged checkpoint step %d to %s", s, dst)
                except OSError as e:
                    raise CheckpointError(
                        f"could not move damaged checkpoint step {s} in "
                        f"{str(self.directory)!r} aside: {e}"
                    ) from e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxrl_lrm.checkpoint.set_aside")
        self.manager.reload()

    def _settle(self) -> None:
        """Waits for the running save; raises if it did not commit its step (orbax only logs
        errors of its background write)."""
        step, self._saving = self._saving, None
        try:
            self.manager.wait_until_finished()
            error = None
        except Exception as e:
            error = e
        if error is None and (step is None or (self.directory / str(step)).is_dir()):
            return
        self.manager.reload()
        why = _brief(error) if error is not None else "see the errors logged above"
        raise CheckpointError(
            f"saving checkpoint step {step} in {str(self.directory)!r} failed ({why}); the "
            f"newest complete one is step {self.latest_step()}"
        ) from error

    def wait(self) -> None:
        """Waits for the running save. Raises `CheckpointError` if it failed."""
        self._settle()

    def close(self) -> None:
        """Waits for the running save and releases orbax's threads. Raises `CheckpointError`
        (after releasing them) if that save failed."""
        try:
            self._settle()
        finally:
            self.manager.close()


class _Damaged(Exception):
    """One step's problem, as the message a user reads."""


def _entries(summary: dict) -> dict:
    return {
        name: {"shape": shape, "dtype": dtype, "checksum": h}
        for name, (_, h, shape, dtype) in summary.items()
    }


def _abstract(target: Any, leaves: dict) -> Any:
    """`target` as `ShapeDtypeStruct`s of the saved dtypes, checked against the manifest."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    abstract = []
    for path, x in flat:
        name = jax.tree_util.keystr(path)
        if name not in leaves:
            raise _Damaged(f"leaf {name} is not in the checksum manifest")
        entry = leaves[name]
        if list(np.shape(x)) != list(entry["shape"]):
            raise _Damaged(
                f"leaf {name} has shape {tuple(entry['shape'])} in the "
                f"checkpoint, the target wants {tuple(np.shape(x))}"
            )
        sharding = getattr(x, "sharding", None)
        abstract.append(
            jax.ShapeDtypeStruct(x.shape, jnp.dtype(entry["dtype"]), sharding=sharding)
            if sharding
            else x
        )
    return jax.tree.unflatten(treedef, abstract)


def _verify(tree: Any, leaves: dict, what: str = "") -> Any:
    """`tree`, once its checksums equal the manifest's."""
    got = summaries(tree)
    wrong = [n for n in got if got[n][1] != leaves[n]["checksum"]]
    if wrong:
        raise _Damaged(
            f"checksum mismatch in {len(wrong)} of {len(got)} {what}leaves "
            f"({', '.join(wrong[:5])}{', ...' if len(wrong) > 5 else ''})"
        )
    return tree


def _cast(target: Any, tree: Any) -> Any:
    """`tree` cast to the target's dtypes where they differ from the saved ones."""
    flat, treedef = jax.tree.flatten(target)
    return jax.tree.unflatten(
        treedef,
        [
            y.astype(x.dtype) if hasattr(x, "dtype") and y.dtype != x.dtype else y
            for x, y in zip(flat, jax.tree.leaves(tree))
        ],
    )


def _manifest_leaves(manifest: Any, step: int) -> dict:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("leaves"), dict):
        raise _Damaged("checksum manifest is malformed")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise _Damaged(
            f"checksum manifest has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
        )
    if manifest.get("step") != step:
        raise _Damaged(f"checksum manifest is for step {manifest.get('step')!r}")
    return manifest["leaves"]


def _brief(e: BaseException) -> str:
    text = " ".join(str(e).split()).split(" See full TensorStore details")[0] or "no message"
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _check_writable(directory: Path) -> None:
    probe = directory / f".write-probe-{os.getpid()}-{jax.process_index()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(
            f"checkpoint directory {str(directory)!r} is not writable: {e}"
        ) from e


def restore_state_only(path: str | Path, target: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores the array state of a checkpoint directory (the run's `checkpoints/`)."""
    ckpt = Checkpointer(path, async_save=False, read_only=True)
    try:
        state, _, step = ckpt.restore(target, step)
    finally:
        ckpt.close()
    return state, step
