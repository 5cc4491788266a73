"""`jaxrl-lrm train` dispatch: the config's `stage` picks RL, SFT, DPO or reward-model training."""

from __future__ import annotations

from jaxrl_lrm.config import Config


def run(config: Config):
    """Runs the stage the config names, into `config.run_dir`."""
    if config.stage == "rl":
        from jaxrl_lrm.rl import trainer

        return trainer.train(config)
    raise ValueError(f"stage={config.stage!r} is not available yet; expected 'rl'")
