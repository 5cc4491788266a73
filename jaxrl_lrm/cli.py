"""The `jaxrl-lrm` command: train | eval | export | plan | demo | config show.

    jaxrl-lrm train CONFIG.yaml [key.path=value ...] [--run-dir DIR] [--allow-config-change]
    jaxrl-lrm eval [CONFIG.yaml] --checkpoint RUN_DIR_OR_CHECKPOINTS [key.path=value ...]
    jaxrl-lrm export RUN_DIR_OR_CHECKPOINTS OUT_DIR [--force] [--format hf|peft]
    jaxrl-lrm plan CONFIG.yaml [--chips N] [--hbm-gib G] [key.path=value ...]
    jaxrl-lrm demo [--task addition|tools] [--seed N] [--run-dir DIR] [key.path=value ...]
    jaxrl-lrm config show CONFIG.yaml [key.path=value ...]   # the resolved config, as YAML

The working directory is put on `sys.path` (as `python -m` does), so `module:function`
references in a config (reward functions) find modules beside it.

Several hosts: every process runs the same command with `--coordinator-address HOST:PORT
--num-processes N --process-id I`. On a multi-host TPU slice no flag is needed: the TPU runtime's
environment is detected and `jax.distributed.initialize()` reads it (`--distributed` forces that
path elsewhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_CONFIGS = {"addition": DEMO_CONFIG, "tools": DEMO_CONFIG.with_name("demo_tools.yaml")}


def _add_distributed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator-address", help="HOST:PORT of process 0 (multi-host runs)")
    p.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    p.add_argument("--process-id", type=int, help="this process's index")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed from the environment (TPU pods)",
    )


def on_multihost_tpu(env=None) -> bool:
    """Whether this process is one worker of a multi-host TPU slice (the TPU VM runtime lists
    every worker in TPU_WORKER_HOSTNAMES)."""
    env = os.environ if env is None else env
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1


def _init_distributed(args) -> None:
    flags = (args.coordinator_address, args.num_processes, args.process_id)
    if any(f is not None for f in flags) or args.distributed or on_multihost_tpu():
        from jaxrl_lrm import sharding

        sharding.initialize_distributed(*flags)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxrl-lrm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) from a YAML config")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    t.add_argument("--run-dir", help="overrides run_dir")
    t.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run's checkpoints with a config other than its config.yaml",
    )
    _add_distributed(t)
    e = sub.add_parser("eval", help="evaluate a checkpoint on the config's held-out split")
    e.add_argument("config", nargs="?", help="the settings to evaluate with (default: the run's)")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", required=True, help="a run directory or its checkpoints/")
    e.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    e.add_argument("--out", help="write the metrics JSON here (default: next to the run)")
    _add_distributed(e)
    x = sub.add_parser("export", help="write a Hugging Face checkpoint from a run")
    x.add_argument("checkpoint", help="a run directory or its checkpoints/")
    x.add_argument("out_dir")
    x.add_argument("--step", type=int)
    x.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    x.add_argument(
        "--format",
        choices=("hf", "peft"),
        default="hf",
        help="hf: a Hugging Face checkpoint (LoRA merged); peft: a LoRA run's adapter directory",
    )
    c = sub.add_parser("config", help="show the resolved config").add_subparsers(
        dest="action", required=True
    )
    show = c.add_parser("show", help="print the resolved config (defaults, file, overrides)")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")
    m = sub.add_parser("plan", help="bytes per chip a config needs, and whether it fits")
    m.add_argument("config")
    m.add_argument("overrides", nargs="*")
    m.add_argument("--chips", type=int, help="chips (default: the mesh's, else this machine's)")
    m.add_argument("--hbm-gib", type=float, help="memory per chip in GiB")
    d = sub.add_parser("demo", help="the offline demo: SFT on imperfect data, then GRPO")
    d.add_argument("--run-dir", default=None)
    d.add_argument(
        "--task",
        choices=sorted(DEMO_CONFIGS),
        default="addition",
        help="addition (configs/demo.yaml) or tools: calculator use (configs/demo_tools.yaml)",
    )
    d.add_argument("--seed", type=int, default=None, help="the run's seed (default: the config's)")
    d.add_argument("overrides", nargs="*")
    return p


def evaluate_checkpoint(config_path: str | None, checkpoint: str, step: int | None, overrides=()):
    """`(metrics, samples, step, run_dir)`: the policy of `checkpoint` (a run directory or its
    `checkpoints/`) evaluated with the settings of the CONFIG given (its `eval.*`, data and
    reward functions; the run's own `config.yaml` when `config_path` is None); the model shape
    comes from the run's own config."""
    from jaxrl_lrm.config import load_config
    from jaxrl_lrm.train import rl_stage, stages

    run_dir = stages.run_dir_of(checkpoint)
    config_path = run_dir / "config.yaml" if config_path is None else config_path
    stage = load_config(run_dir / "config.yaml").stage
    if stage != "rl":
        raise ValueError(
            f"eval runs generation-based evaluation of RL policies; "
            f"{str(run_dir)!r} is a stage={stage!r} run (its held-out "
            "metrics are in its metrics.jsonl)"
        )
    # LoRA runs come back merged, so the evaluation's programs take whole models (rank 0)
    config = load_config(config_path, [*overrides, "model.lora.rank=0", "model.lora.path=null"])
    s = rl_stage.build(config)
    _, _, model, step = stages.restore_params(run_dir, step, mesh=s.mesh)
    metrics, samples = rl_stage.evaluate(s, model.params)
    return metrics, samples, step, run_dir


class _Elapsed(logging.Formatter):
    """Stamps each line with the seconds since the process started logging (the progress of a
    start: loading, compiling, the first step)."""

    def format(self, record):
        record.elapsed = record.relativeCreated / 1000
        return super().format(record)


def _train(args) -> int:
    from jaxrl_lrm.config import load_config

    _init_distributed(args)
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_config(args.config, overrides)
    if config.demo:
        from jaxrl_lrm.train.demo import run_demo

        run_demo(config)
        return 0
    from jaxrl_lrm.train import resume, stages

    latest = resume.latest_step(config.run_dir)  # checked before anything is built
    if not args.allow_config_change:
        resume.check_restart(config, config.run_dir, latest, allow_config_change=False)
    if finished := resume.finished_message(config, config.run_dir, latest):
        print(finished)
        return 0
    stages.train(config, allow_config_change=args.allow_config_change)
    return 0


def _export(args) -> None:
    from jaxrl_lrm.train import stages

    out = Path(args.out_dir)
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not args.force):
        what = "a file" if out.is_file() else f"not empty ({len(list(out.iterdir()))} entries)"
        raise ValueError(
            f"export: OUT_DIR {str(out)!r} is {what}; choose a new directory"
            + ("" if out.is_file() else " or pass --force to write into it")
        )
    run_dir = stages.run_dir_of(args.checkpoint)
    step = stages.export(run_dir, args.out_dir, args.step, format=args.format)
    print(f"exported step {step} of {run_dir} to {args.out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after options (`train C.yaml --run-dir D a.b=1`): argparse
    # stops collecting a positional list at the first option, so gather the rest here.
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.command == "eval" and args.config and "=" in args.config:  # no CONFIG, an override
        args.config, args.overrides = None, [args.config, *args.overrides]
    handler = logging.StreamHandler()
    handler.setFormatter(_Elapsed("%(levelname)s [%(elapsed)6.1fs] %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("absl", "orbax", "jax", "tensorboardX"):  # orbax logs every save at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if os.getcwd() not in sys.path:  # `module:function` references resolve as with python -m
        sys.path.insert(0, os.getcwd())
    log.info("jaxrl-lrm %s: starting (importing JAX)", args.command)
    from jaxrl_lrm.config import ConfigError, load_config, to_yaml

    try:
        if args.command == "train":
            return _train(args)
        elif args.command == "demo":
            overrides = list(args.overrides)
            if args.run_dir:
                overrides.append(f"run_dir={args.run_dir}")
            if args.seed is not None:
                overrides.append(f"seed={args.seed}")
            from jaxrl_lrm.train.demo import run_demo

            run_demo(load_config(DEMO_CONFIGS[args.task], overrides))
        elif args.command == "eval":
            _init_distributed(args)
            metrics, samples, step, run_dir = evaluate_checkpoint(
                args.config, args.checkpoint, args.step, args.overrides
            )
            metrics["step"] = step
            print(json.dumps(metrics, indent=2))
            for prompt, completion, ok in samples[:4]:
                print(f"{prompt!r} -> {completion!r} {'ok' if ok else 'wrong'}")
            out = Path(args.out) if args.out else run_dir / f"eval_step{step}.json"
            out.write_text(json.dumps(metrics, indent=2))
        elif args.command == "plan":
            from jaxrl_lrm import plan

            print(plan.main(args.config, args.overrides, args.chips, args.hbm_gib))
        elif args.command == "export":
            _export(args)
        elif args.command == "config":
            print(to_yaml(load_config(args.config, args.overrides)), end="")
    except (ConfigError, ValueError) as e:
        print(f"jaxrl-lrm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
