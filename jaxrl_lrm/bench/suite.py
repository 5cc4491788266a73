"""The regression suite: `python -m jaxrl_lrm.bench suite --out DIR [--only a,b] [--no-trl]`.

Runs every benchmark in its `--quick` form, each in a fresh process (one benchmark's JAX state,
threads or crash cannot touch the next), `grpo_step` twice (`--lengths uniform`, and
`--lengths varied --pack-rows 1`: packing, the configuration for varied lengths; both with
`--vs-trl` when TRL is importable and `--no-trl` is not given), and
writes each result to `DIR/NAME.json` and all of them, with the machine, the date and the
commit, to `DIR/suite.json`: the file `bench compare` reads. A benchmark that fails is
recorded with its exit status and the tail of its stderr, and the suite goes on; the exit
status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

# name in the suite -> (benchmark module, its extra arguments)
SUITE: dict[str, tuple[str, list[str]]] = {
    "matmul": ("matmul", []),
    "sampling": ("sampling", []),
    "train_step": ("train_step", []),
    "grpo_step_uniform": ("grpo_step", ["--lengths", "uniform"]),
    "grpo_step_varied": ("grpo_step", ["--lengths", "varied", "--pack-rows", "1"]),
    "memory": ("memory", []),
    "rewards": ("rewards", []),
}
PEER_RUNS = ("grpo_step_uniform", "grpo_step_varied")


def _commit() -> str | None:
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _run_one(module: str, args: list[str], out: pathlib.Path, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "jaxrl_lrm.bench", module, "--quick", "--out", str(out), *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s", "command": cmd}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:], "command": cmd}
    result = json.loads(out.read_text())
    result["suite_wall_s"] = wall
    result["command"] = cmd[1:]
    return result


def _selected(only: str | None) -> list[str]:
    if only is None:
        return list(SUITE)
    names = [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in SUITE]
    if bad or not names:
        raise SystemExit(f"suite: --only {only!r}: expected names from {list(SUITE)}")
    return names


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrl_lrm.bench suite")
    p.add_argument("--out", required=True, help="directory for NAME.json and suite.json")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(SUITE))
    p.add_argument("--no-trl", action="store_true", help="skip the TRL peer even if installed")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per benchmark")
    a = p.parse_args(argv)
    names = _selected(a.only)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    trl = not a.no_trl and importlib.util.find_spec("trl") is not None
    results = {}
    for name in names:
        module, args = SUITE[name]
        args = args + (["--vs-trl"] if trl and name in PEER_RUNS else [])
        print(f"suite: {name} ...", flush=True)
        results[name] = _run_one(module, args, out / f"{name}.json", a.timeout_s)
        print(f"  {json.dumps(results[name].get('summary', results[name]))[:600]}", flush=True)
    suite = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "trl": trl,
        "benchmarks": results,
    }
    (out / "suite.json").write_text(json.dumps(suite, indent=2, sort_keys=True, default=str))
    failed = [n for n, r in results.items() if "error" in r]
    print(f"suite: wrote {out / 'suite.json'}; failed: {failed or 'none'}")
    return 1 if failed else 0
