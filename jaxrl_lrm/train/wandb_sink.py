"""Weights & Biases as an optional mirror of a run's logs (`log.wandb: true`).

`wandb` is an optional dependency (`pip install 'jaxrl-lrm[wandb]'`); `require()` fails at once,
before anything is built, when it is enabled but not installed. The W&B run's id is kept in
`<run_dir>/wandb_id`, so a resumed run continues the same W&B run (W&B drops records of steps it
has already seen, e.g. those logged after the checkpoint a run resumes from). `WANDB_MODE`,
`WANDB_API_KEY` and the other `WANDB_*` variables are read by `wandb` itself (`WANDB_MODE=offline`
writes the run under `<run_dir>/wandb/` for a later `wandb sync`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import uuid
from pathlib import Path

from jaxrl_lrm.config import Config, ConfigError, to_dict


@dataclasses.dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None = None
    config: dict = dataclasses.field(default_factory=dict)  # the run's resolved config


def settings(config: Config) -> WandbSettings | None:
    """The W&B settings of a run's config (`log.wandb*`), or None when W&B is off."""
    if not config.log.wandb:
        return None
    return WandbSettings(
        project=config.log.wandb_project, entity=config.log.wandb_entity, config=to_dict(config)
    )


def require() -> None:
    """Raises `ConfigError` when `wandb` cannot be imported."""
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "log.wandb=True: the wandb package is not installed; install it with "
            "`pip install 'jaxrl-lrm[wandb]'` (or `pip install wandb`), or set log.wandb=false"
        )


def open_run(settings: WandbSettings, run_dir: Path, resume_step: int):
    """Starts (or, for a resumed run, continues) the W&B run of `run_dir`."""
    require()
    import wandb

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(
        project=settings.project,
        entity=settings.entity,
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=settings.config,
    )


def log_metrics(run, step: int, record: dict) -> None:
    run.log({k: v for k, v in record.items() if k != "step" and isinstance(v, float)}, step=step)


def log_samples(run, step: int, rows: list[dict]) -> None:
    import wandb

    cols = list(rows[0]) if rows else ["prompt", "completion", "reward"]
    data = [[r.get(c) for c in cols] for r in rows]
    run.log({"samples": wandb.Table(columns=cols, data=data)}, step=step)


def finish(run) -> None:
    run.finish()
