"""The run plot: one panel per logged quantity, each on axes fitted to its data."""

import json

import pytest

from jaxrl_lrm.train.plots import PANELS, plot_run, run_figure


def _records(n=6):
    """A DAPO-like run: rewards in [-1, -0.4], a tiny KL, long responses, evals every 3."""
    out = []
    for s in range(1, n + 1):
        r = {
            "step": s,
            "reward/mean": -1.0 + 0.1 * s,
            "kl/mean": 1e-4 * s,
            "entropy/mean": 2.0 - 0.1 * s,
            "response_length/mean": 300.0 + 10 * s,
            "clip/frac": 0.01 * s,
        }
        if s % 3 == 0:
            r["eval/accuracy"] = 0.1 * s
        out.append(r)
    return out


def _axes(fig):
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def test_every_quantity_gets_a_panel_fitted_to_its_data():
    records = _records()
    axes = _axes(run_figure(records))
    assert set(axes) == {t for t, _ in PANELS if t != "loss"}
    for title, keys in PANELS:
        if title not in axes:
            continue
        ys = [r[k] for r in records for k in keys if k in r]
        lo, hi = axes[title].get_ylim()
        span = max(ys) - min(ys)
        # the data fills the axis: limits enclose it with at most a small margin each side
        assert lo <= min(ys) and hi >= max(ys), title
        assert (hi - lo) <= 1.5 * span, (title, lo, hi, min(ys), max(ys))


def test_negative_rewards_are_drawn():
    """Today's failure: y fixed to [0, 1] hides a DAPO run whose rewards are all negative."""
    lo, hi = _axes(run_figure(_records()))["reward"].get_ylim()
    assert lo <= -0.9 and hi < 0


def test_offline_runs_plot_their_loss_and_empty_runs_nothing(tmp_path):
    axes = _axes(run_figure([{"step": 1, "sft/loss": 3.0}, {"step": 2, "sft/loss": 2.5}]))
    assert set(axes) == {"loss"}
    assert run_figure([{"step": 1, "time/step_s": 0.1}]) is None
    assert plot_run(tmp_path) is None  # no metrics.jsonl


def test_plot_run_writes_run_png(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for r in _records():
            f.write(json.dumps(r) + "\n")
        f.write('{"step": 7, "reward/m')  # a torn last line (a killed run) is skipped
    out = plot_run(tmp_path)
    assert out == tmp_path / "run.png" and out.stat().st_size > 1000


@pytest.mark.parametrize("value", [0.5, -3.0])
def test_a_constant_series_still_gets_a_visible_range(value):
    ax = _axes(run_figure([{"step": s, "reward/mean": value} for s in (1, 2)]))["reward"]
    lo, hi = ax.get_ylim()
    assert lo < value < hi
