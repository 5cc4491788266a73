"""Run logging on the host: `metrics.jsonl`, TensorBoard event files, a progress line per step,
and a PNG plot of reward and eval accuracy at the end."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


class MetricsLogger:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard.

    Opening an existing run directory appends (a resumed run keeps its history); records of
    steps after `resume_step` (written by a run that died before its next checkpoint) are
    dropped first so the file never holds a step twice.
    """

    def __init__(self, run_dir: str | Path, *, total_steps: int, enabled: bool = True,
                 resume_step: int | None = None, stream=None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [r for r in read_metrics(self.path)
                    if resume_step is not None and r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                for r in keep:
                    f.write(json.dumps(r) + "\n")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def progress(self, step: int, metrics: dict, steps_this_run: int, done_this_run: int) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        per_step = elapsed / max(done_this_run, 1)
        eta = per_step * max(steps_this_run - done_this_run, 0)
        parts = [f"step {step}/{self.total_steps}"]
        for key, label in (("reward/mean", "reward"), ("kl/mean", "kl"),
                           ("eval/accuracy", "eval_acc"), ("sft/loss", "loss")):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.3f}")
        parts.append(f"{metrics.get('time/step_s', per_step):.2f}s/step")
        parts.append(f"eta {eta:.0f}s")
        line = " | ".join(parts)
        if self.tty:
            width = 24
            filled = int(width * step / max(self.total_steps, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}   ")
            if step >= self.total_steps:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Writes `reward.png`: reward/mean and eval/accuracy over steps. None if nothing to plot."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("reward/mean", "-"), ("eval/accuracy", "o-")):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label=key)
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(run_dir.name)
    out = Path(out) if out else run_dir / "reward.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
