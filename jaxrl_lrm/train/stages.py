"""`jaxrl-lrm train` dispatch, and reading a finished run back (for `eval` and `export`).

The config's `stage` picks RL (`train.run_rl`) or an offline stage (`offline_stage.run`): SFT,
DPO or reward-model training. Every stage writes the same run directory layout: `config.yaml`,
`metrics.jsonl`, TensorBoard events and orbax `checkpoints/` holding the whole `TrainState`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jaxrl_lrm import algorithms, checkpoint, models, sharding
from jaxrl_lrm.config import DEFAULT_PRESET, Config, load_config
from jaxrl_lrm.models import lora, peft
from jaxrl_lrm.offline.reward_model import build_reward_model
from jaxrl_lrm.train import adapters, compile_cache, offline_stage, rl_stage, setup, wandb_sink
from jaxrl_lrm.train.loop import RunResult, run
from jaxrl_lrm.train.state import OptimizerConfig, init_state, make_optimizer

log = logging.getLogger(__name__)


def prepare(config: Config, run_dir: str | Path | None = None) -> None:
    """What a run does before building anything: fail at once on a missing optional dependency
    (`log.wandb`), and turn on the persistent compilation cache (`train.compile_cache`)."""
    if config.log.wandb:
        wandb_sink.require()
    run_dir = run_dir or config.run_dir
    path = compile_cache.enable(config.train.compile_cache, run_dir)
    log.info("%s run into %s; compilation cache: %s", config.stage, run_dir, path or "off")


def train(config: Config, **kwargs) -> RunResult:
    """Runs the stage the config names, into `config.run_dir` (kwargs go to the stage)."""
    prepare(config, kwargs.get("run_dir"))
    log.info("loading: tokenizer, model, data and programs of the %s stage", config.stage)
    if config.stage == "rl":
        s = rl_stage.build(
            config, mesh=kwargs.pop("mesh", None), init_params=kwargs.pop("init_params", None)
        )
        run_dir = kwargs.pop("run_dir", None) or config.run_dir
        return run(config, rl_stage.stage(s), run_dir, **kwargs)
    if config.stage in offline_stage.STAGES:
        return offline_stage.run(config, **kwargs)
    raise ValueError(
        f"stage={config.stage!r}: expected one of 'rl', "
        f"{', '.join(repr(k) for k in offline_stage.STAGES)}"
    )


def run_dir_of(path: str | Path) -> Path:
    """The run directory of `path` (a run directory or its `checkpoints/`)."""
    run_dir = Path(path)
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(
            f"run_dir={str(run_dir)!r}: no config.yaml in it; expected the run "
            "directory of a `jaxrl-lrm train` run"
        )
    return run_dir


def _state_target(config: Config, params, mesh, *, value_params=None):
    """A train state shaped like the run's checkpoints (only its layout matters)."""
    opt, _ = make_optimizer(OptimizerConfig.of(config.train, total_updates=1))
    vopt = opt if value_params is not None else None
    return init_state(
        params,
        optimizer=opt,
        mesh=mesh,
        seed=config.seed,
        value_params=value_params,
        value_optimizer=vopt,
    )


def restore_trained(
    run_dir: str | Path, step: int | None = None, *, mesh=None, overrides=()
) -> tuple[Config, object, models.Model, object, int]:
    """`(config, tokenizer, initial model, trained policy params, step)` of any stage's run.

    Rebuilds the initial model from the run's `config.yaml` (a reward model gets its value head;
    a PPO run's value model is restored beside it and dropped) and restores the checkpoint's
    policy parameters: the whole model's, or with LoRA its adapters (the initial model is then
    their base)."""
    run_dir = run_dir_of(run_dir)
    config = load_config(run_dir / "config.yaml", list(overrides))
    mesh = mesh or sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    if config.stage == "reward_model":
        tokenizer, model = build_reward_model(config, mesh)
    else:
        _, tokenizer, model = setup.build_model(config, mesh)
    trained, base = adapters.trainable(config, model.config, model.params, mesh)
    value = None
    if config.stage == "rl":
        value, _ = rl_stage.value_model(
            config, algorithms.resolve(config.algorithm), model, base, mesh
        )
    target = _state_target(config, trained, mesh, value_params=value)
    restored, step = checkpoint.restore_state_only(run_dir / "checkpoints", target, step)
    return config, tokenizer, model, restored.policy.params, step


def restore_params(
    run_dir: str | Path, step: int | None = None, *, mesh=None, overrides=()
) -> tuple[Config, object, models.Model, int]:
    """`(config, tokenizer, model, step)`: the trained policy of any stage's run directory (with
    LoRA the adapters merged into the base, `models.lora.merge`)."""
    config, tokenizer, model, trained, step = restore_trained(
        run_dir, step, mesh=mesh, overrides=overrides
    )
    spec = adapters.lora_config(config)
    if spec is not None:
        base, _ = adapters.split_head(model.params)
        trained = lora.merge(base, trained, spec.scale)
    return config, tokenizer, model.replace(params=trained), step


EXPORT_FORMATS = ("hf", "peft")


def export(
    run_dir: str | Path, out_dir: str | Path, step: int | None = None, *, format="hf"
) -> int:
    """Writes a run's model in `out_dir`; returns the step. `hf`: a Hugging Face checkpoint
    (with LoRA, the adapters merged; a reward model's scalar head goes to
    `value_head.safetensors` beside the backbone). `peft`: a LoRA run's adapters as a PEFT
    adapter directory, for `peft.PeftModel.from_pretrained` on the base model."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"export format={format!r}: expected one of {EXPORT_FORMATS}")
    if format == "peft":
        return _export_peft(run_dir, out_dir, step)
    _, tokenizer, model, step = restore_params(run_dir, step)
    if model.tokenizer is None:
        model = model.replace(tokenizer=tokenizer)
    if model.has_value_head:
        models.save_value_model(model, out_dir)
    else:
        models.save_pretrained(model, out_dir)
    return step


def _export_peft(run_dir, out_dir, step) -> int:
    config, _, model, trained, step = restore_trained(run_dir, step)
    spec = adapters.lora_config(config)
    if spec is None:
        raise ValueError(
            f"export --format peft: {run_dir} trained the whole model (model.lora.rank=0); "
            "expected a LoRA run (use --format hf)"
        )
    if "value_head" in trained:
        raise ValueError(
            "export --format peft: a reward model's value head is not a LoRA adapter; "
            "use --format hf"
        )
    base = config.model.path or config.model.preset or DEFAULT_PRESET
    peft.save_adapter(trained, spec, model.config, out_dir, base_model=base)
    return step
