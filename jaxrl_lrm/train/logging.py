"""Run logging on the host: `metrics.jsonl`, `samples.jsonl`, TensorBoard event files, optional
Weights & Biases, and the console (phases, a progress line per step, sample tables).

Everything here runs on values already on the host: the loop hands the logger step k's
metrics after it has fetched them (after step k+1 was dispatched) and the sample table the
host built while scoring, so logging adds no device synchronisation. The run plot is
`train/plots.py`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from jaxrl_lrm.train import wandb_sink

SAMPLE_TEXT_CHARS = 240  # console and TensorBoard cut prompts and completions to this length


def _keep_steps(path: Path, last: int) -> None:
    """Rewrites a JSONL of `{"step": k, ...}` records keeping one record per step `<= last`
    (the newest wins) and dropping torn lines (atomically: temporary file + rename)."""
    by_step = {}
    for r in read_metrics(path, skip_torn=True):
        if isinstance(r.get("step"), int) and r["step"] <= last:
            by_step[r["step"]] = r
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for step in sorted(by_step):
            f.write(json.dumps(by_step[step]) + "\n")
    os.replace(tmp, path)


def _short(text: str, n: int = SAMPLE_TEXT_CHARS) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def samples_markdown(step: int, rows: list[dict]) -> str:
    """A sample table as Markdown (TensorBoard's text plugin renders it)."""
    if not rows:
        return f"step {step}: no samples"
    cols = list(rows[0])

    def cell(v):
        v = f"{v:.3f}" if isinstance(v, float) else _short(v)
        return v.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def samples_console(step: int, rows: list[dict]) -> str:
    """A sample table for the console: each completion with its rewards, text cut short."""
    out = [f"samples at step {step}:"]
    for i, r in enumerate(rows):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float))
        out.append(f"  [{i}] {scores}")
        out.append(f"      prompt:     {_short(r.get('prompt', ''))!r}")
        out.append(f"      completion: {_short(r.get('completion', ''))!r}")
    return "\n".join(out)


class MetricsLogger:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard (and W&B).

    Opening an existing run directory keeps exactly one record for each step up to
    `resume_step` (the checkpoint the run resumes from; None or 0 for a fresh run) and drops
    the rest, in `metrics.jsonl` and `samples.jsonl` alike: records of later steps (written by a
    run that died before its next checkpoint, or whose newer checkpoints were found damaged)
    and a line torn by a kill mid-write. The resumed run then appends from `resume_step + 1`,
    so no step is lost or written twice.

    Args:
      run_dir: the run directory.
      total_steps: the run's `train.steps` (for the progress line).
      enabled: False logs nothing (processes other than 0, quiet runs).
      resume_step: the step the run resumes from.
      stream: the console (default stdout).
      wandb: `wandb_sink.WandbSettings` to mirror everything to W&B, or None.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        enabled: bool = True,
        resume_step: int | None = None,
        stream=None,
        wandb: wandb_sink.WandbSettings | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self._tb = None
        self._wandb = None
        self._open_line = False  # a tty progress line is waiting for its newline
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.samples_path):
            if path.exists():
                _keep_steps(path, resume_step or 0)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None
        if wandb is not None:
            self._wandb = wandb_sink.open_run(wandb, self.run_dir, resume_step or 0)

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
        if self._wandb is not None:
            wandb_sink.log_metrics(self._wandb, step, record)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Writes a table of sample completions: `samples.jsonl` (full text), TensorBoard text
        `samples`, W&B table `samples` and the console (text cut short)."""
        if not self.enabled:
            return
        with open(self.samples_path, "a") as f:
            f.write(json.dumps({"step": int(step), "samples": rows}) + "\n")
        if self._tb is not None:
            self._tb.add_text("samples", samples_markdown(step, rows), step)
            self._tb.flush()
        if self._wandb is not None:
            wandb_sink.log_samples(self._wandb, step, rows)
        self._write(samples_console(step, rows))

    def phase(self, text: str) -> None:
        """A console line saying what the run is doing (loading, compiling, ...), stamped with
        the seconds since the logger opened."""
        if self.enabled:
            self._write(f"[{time.monotonic() - self.start:7.1f}s] {text}")

    def _write(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

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
        if "tokens_per_s" in metrics:
            parts.append(f"{float(metrics['tokens_per_s']):.0f} tok/s")
        parts.append(f"eta {eta:.0f}s")
        line = " | ".join(parts)
        if self.tty:
            width = 24
            filled = int(width * step / max(self.total_steps, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}   ")
            self._open_line = step < self.total_steps
            if not self._open_line:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            wandb_sink.finish(self._wandb)
            self._wandb = None


def read_metrics(path: str | Path, *, skip_torn: bool = False) -> list[dict]:
    """The records of a `metrics.jsonl` (or `samples.jsonl`); with `skip_torn`, lines that are
    not JSON objects (a write cut short by a kill) are skipped instead of raising."""
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
