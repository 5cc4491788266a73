"""`python -m jaxrl_lrm.bench NAME [--quick] [--out FILE.json]`.

Each benchmark lives in `jaxrl_lrm/bench/<name>.py` and exposes `run(quick: bool) -> dict`
returning at least a `"summary"` dict; this entry point prints it and writes `--out`. A module
with a `main(argv) -> int` instead (`suite`, `compare`) is a command of its own and gets the
remaining arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

import jaxrl_lrm.bench as _pkg


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in names:
        mod = importlib.import_module(f"jaxrl_lrm.bench.{argv[0]}")
        if hasattr(mod, "main"):
            return mod.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m jaxrl_lrm.bench")
    parser.add_argument("name", help=f"one of {names}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--out", help="write the raw results as JSON here")
    args, extra = parser.parse_known_args(argv)
    if args.name not in names:
        parser.error(f"unknown benchmark {args.name!r}; expected one of {names}")
    mod = importlib.import_module(f"jaxrl_lrm.bench.{args.name}")
    result = mod.run(quick=args.quick, extra_args=extra)
    if "summary" not in result:
        raise RuntimeError(f"benchmark {args.name!r} returned no 'summary'")
    print("summary: " + json.dumps(result["summary"], sort_keys=True))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
