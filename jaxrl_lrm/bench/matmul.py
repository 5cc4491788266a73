"""The roofline reference: `python -m jaxrl_lrm.bench matmul [--quick] [--n N]`.

- `fp32_gflops`, `bf16_gflops`: a jitted square `n x n` matmul (2 n^3 FLOPs), median of
  repeats, compile excluded.
- `copy_gbps`: bytes read + written per second by a donated in-place `x + 1` over a buffer past
  the last-level cache (256 MiB; 64 MiB with `--quick`).
"""

from __future__ import annotations

import argparse

from jaxrl_lrm.bench import _util


def run(quick: bool = False, extra_args: list[str] | None = None) -> dict:
    """Measures the device's matmul FLOP/s and copy bandwidth; returns `{"summary": ...}`."""
    parser = argparse.ArgumentParser(prog="bench matmul")
    parser.add_argument("--n", type=int, default=512 if quick else 1024)
    parser.add_argument("--repeats", type=int, default=3 if quick else 7)
    parser.add_argument("--copy-mib", type=int, default=64 if quick else 256)
    args = parser.parse_args(extra_args or [])
    summary = {
        "fp32_gflops": _util.matmul_gflops(args.n, "float32", args.repeats),
        "bf16_gflops": _util.matmul_gflops(args.n, "bfloat16", args.repeats),
        "copy_gbps": _util.copy_gbps(args.copy_mib, args.repeats),
    }
    summary["bf16_over_fp32"] = summary["bf16_gflops"] / summary["fp32_gflops"]
    _util.print_table(summary, f"matmul n={args.n}, copy {args.copy_mib} MiB")
    return {"summary": summary, "config": vars(args) | {"quick": quick}, "machine": _util.machine()}
