"""What restarting an existing run directory may do.

A run directory with checkpoints resumes only with the config it was written with: a changed
config (group size, max tokens, learning rate, ...) would silently continue a different run,
so it is refused unless explicitly allowed (`--allow-config-change`), which lists the changes.
A run that has already reached `train.steps` says so and trains nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jaxrl_lrm.checkpoint import Checkpointer
from jaxrl_lrm.config import Config, ConfigError, differences, load_config

log = logging.getLogger(__name__)

IGNORED = ("run_dir",)  # where the run lives, not what it does


def config_changes(config: Config, run_dir: str | Path) -> list[str]:
    """`key: old -> new` for each key of `config` that differs from the run's `config.yaml`
    (none when there is no `config.yaml`)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    try:
        old = load_config(path)
    except ConfigError as e:
        return [f"{path} no longer loads ({e})"]
    return [d for d in differences(old, config) if d.split(":")[0] not in IGNORED]


def check_restart(
    config: Config, run_dir: str | Path, latest_step: int | None, *, allow_config_change: bool
) -> list[str]:
    """Raises a `ConfigError` when `run_dir` holds checkpoints (`latest_step` is not None)
    written with a config other than `config`, unless `allow_config_change`; returns the
    changes (logged when allowed)."""
    if latest_step is None:
        return []
    changes = config_changes(config, run_dir)
    if changes and not allow_config_change:
        raise ConfigError(
            f"run_dir={str(run_dir)!r} holds checkpoints up to step {latest_step} written with "
            "a different config:\n  " + "\n  ".join(changes) + "\nresume with the same config, "
            "pass --allow-config-change to continue with the new one, or choose a new run_dir"
        )
    if changes:
        log.warning("resuming %s with a changed config:\n  %s", run_dir, "\n  ".join(changes))
    return changes


def finished_message(config: Config, run_dir: str | Path, latest_step: int | None) -> str | None:
    """A message when the newest checkpoint already is the run's last step, else None."""
    if latest_step is None or latest_step < config.train.steps:
        return None
    return (
        f"{run_dir} already finished: its newest checkpoint is step {latest_step} of "
        f"train.steps={config.train.steps}; nothing to train (raise train.steps, with "
        "--allow-config-change, to train further)"
    )


def latest_step(run_dir: str | Path) -> int | None:
    """The newest checkpoint step in `run_dir/checkpoints`, None when there is none."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return None
    ckpt = Checkpointer(directory, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()
