"""Run logging on the host: `metrics.jsonl`, TensorBoard event files, a progress line per step,
and a PNG plot of reward and eval accuracy at the end."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path


class MetricsLogger:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard.

    Opening an existing run directory keeps exactly one record for each step up to
    `resume_step` (the checkpoint the run resumes from; None or 0 for a fresh run) and drops
    the rest: records of later steps (written by a run that died before its next checkpoint, or
    whose newer checkpoints were found damaged) and a line torn by a kill mid-write. The resumed
    run then appends from `resume_step + 1`, so no step is lost or written twice. The file is
    rewritten atomically (temporary file + rename).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        enabled: bool = True,
        resume_step: int | None = None,
        stream=None,
    ):
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
            last = resume_step or 0
            by_step = {}  # the newest record of a step wins
            for r in read_metrics(self.path, skip_torn=True):
                if isinstance(r.get("step"), int) and r["step"] <= last:
                    by_step[r["step"]] = r
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                for step in sorted(by_step):
                    f.write(json.dumps(by_step[step]) + "\n")
            os.replace(tmp, self.path)
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
        for key, label in (
            ("reward/mean", "reward"),
            ("kl/mean", "kl"),
            ("eval/accuracy", "eval_acc"),
            ("sft/loss", "loss"),
        ):
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


def read_metrics(path: str | Path, *, skip_torn: bool = False) -> list[dict]:
    """The records of a `metrics.jsonl`; with `skip_torn`, lines that are not JSON objects
    (a write cut short by a kill) are skipped instead of raising."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if not skip_torn:
                    raise
                continue
            if isinstance(record, dict) or not skip_torn:
                out.append(record)
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
