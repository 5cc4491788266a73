"""The offline demo: what RL with a verifiable reward does that more supervised training cannot.

1. SFT a small model on worked answers of which a large share are systematically wrong
   (carries dropped), until greedy accuracy plateaus.
2. From that checkpoint, (a) continue SFT on the same data (the control) and (b) run GRPO with
   the verifiable reward, for the same wall time.
3. Print the before / control / after table with sample completions, write `demo_summary.json`
   and the plot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxrl_lrm.config import Config, save_config
from jaxrl_lrm.rl import setup, sft, trainer
from jaxrl_lrm.rl.logging import MetricsLogger, plot_run


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


def run_demo(config: Config, run_dir: str | Path | None = None, *, out=print) -> dict:
    """Runs the three stages and returns the summary written to `demo_summary.json`."""
    t_start = time.monotonic()
    run_dir = fresh_dir(Path(run_dir or config.run_dir))
    out(f"[demo] run directory: {run_dir}")
    save_config(config, run_dir / "config.yaml")
    session = trainer.Session(config)
    if session.task is None or session.task.sft_examples is None:
        raise ValueError(f"the demo needs a task with SFT data; data.task={config.data.task!r}")
    c = config
    eval_rows = session.eval_subset()
    pairs = session.task.sft_examples(c.sft.batch_size * 200, c.seed + 7)
    data = sft.encode_pairs(pairs, session.tokenizer, session.prompt_len, session.max_new,
                            render=session.render)
    n_evals = max(c.train.steps // max(c.train.eval_every, 1), 1)

    def greedy_acc(params) -> float:
        return session.evaluate(params, rows=eval_rows)[0]["eval/accuracy"]

    # ---- 1. SFT warm-up
    out(f"[demo] SFT: {c.sft.steps} steps of {c.sft.batch_size} examples "
        f"({c.data.task_args}, {int(100 * c.data.task_args.get('wrong_frac', 0.6))}% with "
        "carries dropped)")
    sft_log = MetricsLogger(run_dir / "sft", total_steps=c.sft.steps, stream=_Null())
    state, optimizer, _ = trainer.make_train_state(
        session, setup.frozen_copy(session.policy.params), c.sft.steps, c.sft.lr)
    t0 = time.monotonic()
    state, _ = sft.run_sft(state, optimizer, data, config=session.model_config,
                           mesh=session.mesh, batch_size=c.sft.batch_size, seed=c.seed,
                           max_steps=c.sft.steps,
                           on_step=lambda i, st, m: sft_log.log(i, jax.device_get(m))
                           if i % 50 == 0 else None)
    sft_seconds = time.monotonic() - t0
    sft_params = setup.frozen_copy(state.params)
    sft_acc = greedy_acc(sft_params)
    out(f"[demo] after SFT ({sft_seconds:.0f}s): held-out greedy accuracy {sft_acc:.1%}")

    # ---- 2b. GRPO from the SFT checkpoint
    out(f"[demo] GRPO: {c.train.steps} steps of {c.train.prompts_per_step} prompts x "
        f"{c.algorithm.group_size} samples, verifiable reward")
    t0 = time.monotonic()
    result = trainer.train(config, run_dir=run_dir / "rl", session=session,
                           init_params=setup.frozen_copy(sft_params))
    rl_seconds = time.monotonic() - t0
    rl_evals = [h["eval/accuracy"] for h in result.history if "eval/accuracy" in h]
    rl_acc = _mean_last(rl_evals)
    out(f"[demo] after GRPO ({rl_seconds:.0f}s): accuracy {rl_acc:.1%} "
        f"(mean of the last {min(3, len(rl_evals))} evals; evals {[round(a, 3) for a in rl_evals]})")

    # ---- 2a. the control: continued SFT for the same wall time, evaluated as often
    control_seconds = c.sft.control_seconds or rl_seconds
    ctrl_state, ctrl_opt, _ = trainer.make_train_state(
        session, setup.frozen_copy(sft_params), 10**6, c.sft.lr)
    ctrl_evals: list[float] = []
    slice_s = control_seconds / n_evals
    t0 = time.monotonic()
    for _ in range(n_evals):
        ctrl_state, _ = sft.run_sft(ctrl_state, ctrl_opt, data, config=session.model_config,
                                    mesh=session.mesh, batch_size=c.sft.batch_size,
                                    seed=c.seed + 1 + len(ctrl_evals), max_seconds=slice_s)
        ctrl_evals.append(greedy_acc(ctrl_state.params))
    control_acc = _mean_last(ctrl_evals)
    out(f"[demo] control, continued SFT ({time.monotonic() - t0:.0f}s): accuracy "
        f"{control_acc:.1%} (evals {[round(a, 3) for a in ctrl_evals]})")

    # ---- 3. report
    _, samples = session.evaluate(result.params, rows=eval_rows[:4])
    _, sft_samples = session.evaluate(sft_params, rows=eval_rows[:4])
    summary = {
        "run_dir": str(run_dir),
        "sft_accuracy": sft_acc, "control_accuracy": control_acc, "rl_accuracy": rl_acc,
        "rl_gain_points": 100 * (rl_acc - sft_acc),
        "rl_vs_control_points": 100 * (rl_acc - control_acc),
        "rl_evals": rl_evals, "control_evals": ctrl_evals,
        "sft_seconds": sft_seconds, "rl_seconds": rl_seconds,
        "control_seconds": control_seconds, "seconds": time.monotonic() - t_start,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    with open(run_dir / "demo_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    plot_run(run_dir / "rl", run_dir / "reward.png")
    plot_comparison(summary, run_dir / "demo.png")
    out("")
    out("| stage | held-out greedy accuracy |")
    out("|---|---|")
    out(f"| after SFT on imperfect data (start of RL) | {sft_acc:.1%} |")
    out(f"| control: SFT continued for the same time | {control_acc:.1%} |")
    out(f"| GRPO with the verifiable reward | {rl_acc:.1%} |")
    out("")
    for (prompt, before, _), (_, after, ok) in zip(sft_samples, samples):
        out(f"  {prompt!s:>10} SFT -> {before!r:8}  GRPO -> {after!r:8} {'ok' if ok else 'wrong'}")
    out(f"\n[demo] {summary['seconds']:.0f}s in all; summary in {run_dir / 'demo_summary.json'}")
    return summary


def plot_comparison(summary: dict, out: Path) -> None:
    """Held-out greedy accuracy of GRPO and of the continued-SFT control over the same wall
    time, with the SFT starting point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, seconds, label in (("rl_evals", "rl_seconds", "GRPO, verifiable reward"),
                                ("control_evals", "control_seconds", "control: more SFT")):
        ys = summary[key]
        xs = [summary[seconds] * (i + 1) / len(ys) for i in range(len(ys))]
        ax.plot(xs, ys, "o-", label=label)
    ax.axhline(summary["sft_accuracy"], color="gray", ls="--", label="after SFT (start)")
    ax.set_xlabel("seconds of training after SFT")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


class _Null:
    def write(self, _):
        pass

    def flush(self):
        pass
