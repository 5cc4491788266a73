"""Run logging on the host (metrics.jsonl, TensorBoard, progress, plots)."""

from jaxrl_lrm.rl.logging import MetricsLogger, plot_run, read_metrics

__all__ = ["MetricsLogger", "plot_run", "read_metrics"]
