"""Plots of the demo's comparison (host code, matplotlib)."""

from __future__ import annotations

from pathlib import Path


def plot_comparison(summary: dict, out: Path) -> None:
    """Held-out greedy accuracy of GRPO and of the continued-SFT control over the same wall
    time, with the SFT starting point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
