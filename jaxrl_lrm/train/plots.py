"""Plots of a run (host code, matplotlib): the run plot and the demo's comparison."""

from __future__ import annotations

from pathlib import Path

from jaxrl_lrm.train.logging import read_metrics

# (title, metric keys drawn on that panel); a panel is drawn when any of its keys was logged.
PANELS = (
    ("reward", ("reward/mean",)),
    ("eval accuracy", ("eval/accuracy",)),
    ("KL to the reference", ("kl/mean",)),
    ("entropy", ("entropy/mean",)),
    ("response length (tokens)", ("response_length/mean", "response_length/max")),
    ("clip fraction", ("clip/frac",)),
    ("loss", ("sft/loss", "dpo/loss", "rm/loss", "eval/loss")),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return ([p[0] for p in pts], [p[1] for p in pts])


def run_figure(records: list[dict], title: str = ""):
    """The run plot of `metrics.jsonl` records, or None when no panel has data: one panel per
    `PANELS` entry logged, each on axes fitted to its data (matplotlib's autoscaling with a
    margin: DAPO's negative rewards, a KL of 1e-4 and a length of 300 tokens all fill their
    panels)."""
    panels = [(t, keys) for t, keys in PANELS if any(_series(records, k)[0] for k in keys)]
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, "o-" if len(xs) < 20 else "-", ms=3, label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.relim()
        ax.autoscale_view()
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Writes `run.png` (or `out`) from the run's `metrics.jsonl`; None if nothing to plot."""
    run_dir = Path(run_dir)
    fig = run_figure(read_metrics(run_dir / "metrics.jsonl", skip_torn=True), run_dir.name)
    if fig is None:
        return None
    out = Path(out) if out else run_dir / "run.png"
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def plot_comparison(summary: dict, out: Path) -> None:
    """Held-out greedy accuracy of GRPO and of the continued-SFT control over the same wall
    time, with the SFT starting point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, seconds, label in (
        ("rl_evals", "rl_seconds", "GRPO, verifiable reward"),
        ("control_evals", "control_seconds", "control: more SFT"),
    ):
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
