"""Regression check of two suite runs: `python -m jaxrl_lrm.bench compare NEW.json
BASELINE.json [--band-scale X]`.

Compares the *same-run* figures of two `bench suite` JSONs (ratios measured inside one run:
FLOP-floor ratios, MFU against the run's own matmul peak, the TRL ratio, the pad share, the
compile counts), never absolute times, which drift with the machine's load. Each figure has a
direction and a noise band (`METRICS`): a relative band `r` flags a lower-is-better figure that
rose above `base x (1 + r)` (a higher-is-better one that fell below `base / (1 + r)`); an
absolute band `a` (fractions such as `pad_frac`) flags `new > base + a`. Figures absent from
the baseline (or null in either run: no TRL installed) are skipped; a figure the baseline has
and the new run lost is flagged. Exit status 1 when anything is flagged.

The bands come from repeated `--quick` runs on the 2-vCPU machine shared with other jobs
(docs/benchmarks.md): time ratios moved by up to ~20 % between runs, so their band is 30 %;
`--band-scale` widens or narrows every band at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib


@dataclasses.dataclass(frozen=True)
class Metric:
    """How one summary figure is judged: `better` is "lower" or "higher"; `rel` a relative
    band or `abs` an absolute one (exactly one of them)."""

    better: str
    rel: float | None = None
    abs: float | None = None

    def __post_init__(self):
        if self.better not in ("lower", "higher"):
            raise ValueError(f"better={self.better!r}: expected 'lower' or 'higher'")
        if (self.rel is None) == (self.abs is None):
            raise ValueError(f"rel={self.rel!r}, abs={self.abs!r}: expected exactly one band")


_TIME = 0.30  # time ratios of one run against another on the shared machine
_GRPO = {
    "floor_ratio": Metric("lower", rel=_TIME),
    "vs_trl": Metric("higher", rel=_TIME),
    "host_exposed_frac": Metric("lower", abs=0.05),
    "pad_frac": Metric("lower", abs=0.03),
    "decode_vs_floor": Metric("lower", rel=_TIME),
}
METRICS: dict[str, dict[str, Metric]] = {
    "matmul": {"bf16_over_fp32": Metric("higher", rel=_TIME)},
    "sampling": {
        "speedup_vs_nocache": Metric("higher", rel=_TIME),
        "decode_step_vs_floor": Metric("lower", rel=_TIME),
    },
    "train_step": {"mfu": Metric("higher", rel=_TIME)},
    "grpo_step_uniform": _GRPO,
    "grpo_step_varied": _GRPO,
    "rewards": {"math_agreement": Metric("higher", abs=0.0)},
}
# Counts that must not grow at all: executables compiled per program.
COUNTS = ("compiled_versions",)


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def judge(metric: Metric, new: float, base: float, scale: float = 1.0) -> tuple[bool, float]:
    """`(worse, limit)`: whether `new` is worse than `base` beyond the band, and the limit."""
    sign = 1.0 if metric.better == "lower" else -1.0
    if metric.abs is not None:
        limit = base + sign * metric.abs * scale
    else:
        factor = 1.0 + metric.rel * scale
        limit = base * factor if sign > 0 else base / factor
    return (new > limit if sign > 0 else new < limit), limit


def _rows_of(name: str, new: dict, base: dict, scale: float) -> list[dict]:
    rows = []
    new_s, base_s = new.get("summary") or {}, base.get("summary") or {}
    for key, metric in METRICS.get(name, {}).items():
        b, n = base_s.get(key), new_s.get(key)
        row = {"bench": name, "metric": key, "base": b, "new": n, "status": "ok"}
        if not _finite(b):
            row["status"] = "skipped (not in the baseline)"
        elif key not in new_s:
            row["status"] = "MISSING"
        elif not _finite(n):
            row["status"] = "skipped (null in the new run)"
        else:
            worse, row["limit"] = judge(metric, n, b, scale)
            row["status"] = "WORSE" if worse else "ok"
        rows.append(row)
    for key in COUNTS:
        b, n = base.get(key), new.get(key)
        if isinstance(b, dict) and isinstance(n, dict):
            for prog, count in sorted(b.items()):
                got = n.get(prog)
                bad = got is None or got > count
                rows.append(
                    {
                        "bench": name,
                        "metric": f"{key}.{prog}",
                        "base": count,
                        "new": got,
                        "status": "WORSE" if bad else "ok",
                    }
                )
    return rows


def compare(new: dict, base: dict, band_scale: float = 1.0) -> list[dict]:
    """One row per judged figure: `{"bench", "metric", "base", "new", "status"[, "limit"]}`,
    status "ok", "WORSE", "MISSING" or "skipped (...)"."""
    if not _finite(band_scale) or band_scale <= 0:
        raise ValueError(f"band_scale={band_scale!r}: expected a positive number")
    for label, run in (("new", new), ("baseline", base)):
        if not isinstance(run.get("benchmarks"), dict):
            raise ValueError(f"the {label} JSON has no 'benchmarks' dict: not a bench suite run")
    rows = []
    for name, base_run in sorted(base["benchmarks"].items()):
        new_run = new["benchmarks"].get(name)
        if not isinstance(base_run, dict) or "summary" not in base_run:
            continue  # failed in the baseline: nothing to hold the new run to
        if not isinstance(new_run, dict) or "summary" not in new_run:
            rows.append({"bench": name, "metric": "*", "base": "ran", "new": None})
            rows[-1]["status"] = "MISSING"
            continue
        rows.extend(_rows_of(name, new_run, base_run, band_scale))
    return rows


def flagged(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] in ("WORSE", "MISSING")]


def _load(path: str) -> dict:
    p = pathlib.Path(path)
    if not p.is_file():
        raise SystemExit(f"compare: {path!r} is not a file (expected a bench suite JSON)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"compare: {path!r} is not valid JSON: {e}") from None


def _fmt(x) -> str:
    return f"{x:.4g}" if _finite(x) else str(x)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrl_lrm.bench compare")
    p.add_argument("new", help="the suite JSON to check")
    p.add_argument("baseline", help="the suite JSON to hold it to")
    p.add_argument("--band-scale", type=float, default=1.0, help="multiplies every noise band")
    a = p.parse_args(argv)
    rows = compare(_load(a.new), _load(a.baseline), a.band_scale)
    for r in rows:
        limit = f" (limit {_fmt(r['limit'])})" if "limit" in r else ""
        print(
            f"  {r['bench'] + '.' + r['metric']:<44}{_fmt(r['base']):>10} -> "
            f"{_fmt(r['new']):<10} {r['status']}{limit}"
        )
    bad = flagged(rows)
    print(f"compare: {len(bad)} of {len(rows)} figures worse than the baseline beyond noise")
    return 1 if bad else 0
