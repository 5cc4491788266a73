"""The offline demo: what RL with a verifiable reward does that more supervised training cannot.

1. SFT a small model on worked answers of which a large share are systematically wrong
   (carries dropped), until greedy accuracy plateaus.
2. From that checkpoint, (a) continue SFT on the same data (the control) and (b) run GRPO with
   the verifiable reward, for the same wall time.
3. Print the before / control / after table with sample completions, write `demo_summary.json`
   and the plots.

Every stage runs through the one loop (`train.loop.run`); the RL run's compiled programs serve
every evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxrl_lrm.config import Config, EnvSection, save_config
from jaxrl_lrm.offline import data as offline_data
from jaxrl_lrm.offline import sft
from jaxrl_lrm.train import loop, offline_stage, rl_stage, stages
from jaxrl_lrm.train.plots import plot_comparison, plot_run


def fresh_dir(path: Path) -> Path:
    """`path` if it is new or empty, else the first free `path-2`, `path-3`, ...: the demo
    compares stages from one fresh start, so it never resumes (or overwrites) an earlier run."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _mean_last(values: list[float], n: int = 3) -> float:
    return float(np.mean(values[-n:])) if values else float("nan")


def _sft_config(config: Config, steps: int) -> Config:
    c = config
    return dataclasses.replace(
        c,
        stage="sft",
        env=EnvSection(),  # SFT trains on the traces' text; episodes are RL's
        train=dataclasses.replace(
            c.train,
            steps=steps,
            prompts_per_step=c.sft.batch_size,
            lr=c.sft.lr,
            eval_every=0,
            checkpoint_every=0,
            micro_batches=1,
        ),
    )


def _sft_stage(
    config: Config, s: rl_stage.RLSetup, params, data: dict, *, steps: int, seed: int
) -> loop.Stage:
    mc = s.model_config
    objective = offline_stage.Objective(
        loss=lambda p, _, b, d: sft.sft_loss(p, mc, b, d),
        denominators=sft.target_denominators,
        eval_terms=None,
        summarize=None,
    )
    return offline_stage.make_stage(
        _sft_config(config, steps),
        objective,
        mesh=s.mesh,
        params=params,
        train_data=data,
        eval_data=None,
        name="sft",
        seed=seed,
    )


def _control(
    config: Config, s, sft_params, data, seconds: float, n_evals: int, accuracy, run_dir: Path
):
    """Continued SFT for `seconds`, evaluated `n_evals` times at equal intervals."""
    stage = _sft_stage(config, s, sft_params, data, steps=10**6, seed=config.seed + 1)
    cfg, evals = _sft_config(config, 10**6), []
    for _ in range(n_evals):
        result = loop.run(
            cfg, stage, run_dir, max_seconds=seconds / n_evals, quiet=True, checkpoints=False
        )
        stage.state = result.state
        evals.append(accuracy(result.state.params))
    return evals


def _sft_data(s: rl_stage.RLSetup) -> dict:
    c = s.config
    pairs = s.task.sft_examples(c.sft.batch_size * 200, c.seed + 7)
    return offline_data.encode_pairs(
        pairs,
        s.text.tokenizer,
        c.data.max_prompt_len,
        c.sampling.max_new_tokens,
        render=s.text.render,
    )


def _warmup(s: rl_stage.RLSetup, data: dict, run_dir: Path, out) -> tuple[object, float]:
    """Stage 1: SFT on the imperfect worked answers; `(params, seconds)`."""
    c = s.config
    out(f"[demo] SFT: {c.sft.steps} steps of {c.sft.batch_size} examples ({c.data.task_args})")
    t0 = time.monotonic()
    result = loop.run(
        _sft_config(c, c.sft.steps),
        _sft_stage(c, s, s.state.params, data, steps=c.sft.steps, seed=c.seed),
        run_dir / "sft",
        quiet=True,
        checkpoints=False,
    )
    return result.state.params, time.monotonic() - t0


def _grpo(s: rl_stage.RLSetup, sft_params, run_dir: Path, out):
    """Stage 2b: GRPO from the SFT model; `(result, evals, seconds)`."""
    c = s.config
    out(
        f"[demo] GRPO: {c.train.steps} steps of {c.train.prompts_per_step} prompts x "
        f"{c.algorithm.group_size} samples, verifiable reward"
    )
    t0 = time.monotonic()
    result = loop.run(c, rl_stage.stage(rl_stage.with_params(s, sft_params)), run_dir / "rl")
    evals = [h["eval/accuracy"] for h in result.history if "eval/accuracy" in h]
    return result, evals, time.monotonic() - t0


def run_demo(config: Config, run_dir: str | Path | None = None, *, out=print) -> dict:
    """Runs the three stages and returns the summary written to `demo_summary.json`."""
    t_start = time.monotonic()
    run_dir = fresh_dir(Path(run_dir or config.run_dir))
    stages.prepare(config, run_dir)
    out(f"[demo] run directory: {run_dir}")
    save_config(config, run_dir / "config.yaml")
    c = config
    s = rl_stage.build(config)
    if s.task is None or s.task.sft_examples is None:
        raise ValueError(f"the demo needs a task with SFT data; data.task={c.data.task!r}")
    eval_rows, data = s.eval_subset(), _sft_data(s)

    def accuracy(params) -> float:
        return rl_stage.evaluate(s, params, rows=eval_rows)[0]["eval/accuracy"]

    sft_params, sft_seconds = _warmup(s, data, run_dir, out)
    sft_acc = accuracy(sft_params)
    out(f"[demo] after SFT ({sft_seconds:.0f}s): held-out greedy accuracy {sft_acc:.1%}")
    result, rl_evals, rl_seconds = _grpo(s, sft_params, run_dir, out)
    rl_acc = _mean_last(rl_evals)
    out(
        f"[demo] after GRPO ({rl_seconds:.0f}s): accuracy {rl_acc:.1%} (mean of the last "
        f"{min(3, len(rl_evals))} evals; evals {[round(a, 3) for a in rl_evals]})"
    )
    control_seconds = c.sft.control_seconds or rl_seconds
    n_evals = max(c.train.steps // max(c.train.eval_every, 1), 1)
    t0 = time.monotonic()
    ctrl_evals = _control(
        c, s, sft_params, data, control_seconds, n_evals, accuracy, run_dir / "control"
    )
    control_acc = _mean_last(ctrl_evals)
    out(
        f"[demo] control, continued SFT ({time.monotonic() - t0:.0f}s): accuracy "
        f"{control_acc:.1%} (evals {[round(a, 3) for a in ctrl_evals]})"
    )
    summary = {
        "run_dir": str(run_dir),
        "sft_accuracy": sft_acc,
        "control_accuracy": control_acc,
        "rl_accuracy": rl_acc,
        "rl_gain_points": 100 * (rl_acc - sft_acc),
        "rl_vs_control_points": 100 * (rl_acc - control_acc),
        "rl_evals": rl_evals,
        "control_evals": ctrl_evals,
        "sft_seconds": sft_seconds,
        "rl_seconds": rl_seconds,
        "control_seconds": control_seconds,
        "seconds": time.monotonic() - t_start,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    if s.env is not None:  # the tool-use demo: how often greedy episodes call a tool
        for name, params in (("sft", sft_params), ("rl", result.state.params)):
            metrics = rl_stage.evaluate(s, params, rows=eval_rows)[0]
            summary[f"{name}_tool_call_rate"] = metrics["eval/tool_call_rate"]
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    plot_run(run_dir / "rl", run_dir / "run.png")
    plot_comparison(summary, run_dir / "demo.png")
    _report(out, s, summary, sft_params, result.state.params, eval_rows[:4])
    return summary


def _report(out, s, summary: dict, sft_params, rl_params, rows) -> None:
    _, samples = rl_stage.evaluate(s, rl_params, rows=rows)
    _, sft_samples = rl_stage.evaluate(s, sft_params, rows=rows)
    out("")
    out("| stage | held-out greedy accuracy |")
    out("|---|---|")
    out(f"| after SFT on imperfect data (start of RL) | {summary['sft_accuracy']:.1%} |")
    out(f"| control: SFT continued for the same time | {summary['control_accuracy']:.1%} |")
    out(f"| GRPO with the verifiable reward | {summary['rl_accuracy']:.1%} |")
    out("")
    for (prompt, before, _), (_, after, ok) in zip(sft_samples, samples):
        out(f"  {prompt!s:>10} SFT -> {before!r:8}  GRPO -> {after!r:8} {'ok' if ok else 'wrong'}")
    out(
        f"\n[demo] {summary['seconds']:.0f}s in all; summary in "
        f"{Path(summary['run_dir']) / 'demo_summary.json'}"
    )
