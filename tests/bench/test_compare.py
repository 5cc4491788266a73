"""`bench compare`: same-run figures judged against a baseline with their noise bands, on
synthetic suite JSONs; and `bench suite` end to end on its smallest benchmark."""

import json

import pytest

from jaxrl_lrm.bench import __main__ as bench_main
from jaxrl_lrm.bench import compare, suite


def run_of(**benches):
    return {"benchmarks": {name: {"summary": s} for name, s in benches.items()}}


BASE = run_of(
    grpo_step_varied={"floor_ratio": 2.0, "vs_trl": 1.5, "pad_frac": 0.08, "step_s": 9.0},
    train_step={"mfu": 0.6},
)


def status(rows, bench, metric):
    (row,) = [r for r in rows if r["bench"] == bench and r["metric"] == metric]
    return row["status"]


def test_within_the_band_passes_and_beyond_it_is_flagged():
    # lower is better, relative band 30 %: 2.0 -> 2.59 is noise, 2.61 is a regression
    ok = compare.compare(run_of(grpo_step_varied={"floor_ratio": 2.59}), BASE)
    assert status(ok, "grpo_step_varied", "floor_ratio") == "ok"
    bad = compare.compare(run_of(grpo_step_varied={"floor_ratio": 2.61}), BASE)
    assert status(bad, "grpo_step_varied", "floor_ratio") == "WORSE"
    # higher is better: 1.5 / 1.3 = 1.154 is the limit
    for got, want in ((1.16, "ok"), (1.15, "WORSE"), (3.0, "ok")):
        rows = compare.compare(run_of(grpo_step_varied={"vs_trl": got}), BASE)
        assert status(rows, "grpo_step_varied", "vs_trl") == want, got


def test_improvements_never_flag_and_absolute_bands_add():
    new = run_of(
        grpo_step_varied={"floor_ratio": 1.0, "vs_trl": 2.0, "pad_frac": 0.109},
        train_step={"mfu": 0.9},
    )
    rows = compare.compare(new, BASE)
    assert status(rows, "grpo_step_varied", "pad_frac") == "ok"  # 0.08 + 0.03 absolute
    assert status(rows, "grpo_step_varied", "floor_ratio") == "ok"
    assert status(rows, "train_step", "mfu") == "ok"
    new["benchmarks"]["grpo_step_varied"]["summary"]["pad_frac"] = 0.111
    assert status(compare.compare(new, BASE), "grpo_step_varied", "pad_frac") == "WORSE"
    # absolute times are never judged
    assert all(r["metric"] != "step_s" for r in rows)


def test_band_scale_widens_every_band():
    new = run_of(grpo_step_varied={"floor_ratio": 2.9})
    assert status(compare.compare(new, BASE), "grpo_step_varied", "floor_ratio") == "WORSE"
    wide = compare.compare(new, BASE, band_scale=2.0)
    assert status(wide, "grpo_step_varied", "floor_ratio") == "ok"
    with pytest.raises(ValueError, match="band_scale=0"):
        compare.compare(new, BASE, band_scale=0)


def test_missing_null_and_failed_runs():
    new = run_of(grpo_step_varied={"floor_ratio": 2.0, "vs_trl": None})
    rows = compare.compare(new, BASE)
    assert status(rows, "grpo_step_varied", "vs_trl").startswith("skipped")  # no TRL here
    assert status(rows, "grpo_step_varied", "pad_frac") == "MISSING"  # lost a figure
    assert status(rows, "train_step", "*") == "MISSING"  # the benchmark did not run
    failed = {"benchmarks": {"train_step": {"error": "exit 1"}, **new["benchmarks"]}}
    assert status(compare.compare(failed, BASE), "train_step", "*") == "MISSING"
    # a baseline figure that is null or a baseline benchmark that failed holds nothing
    base = {"benchmarks": {"train_step": {"error": "exit 1"}}}
    assert compare.compare(new, base) == []
    with pytest.raises(ValueError, match="no 'benchmarks'"):
        compare.compare({"summary": {}}, BASE)


def test_compile_counts_must_not_grow():
    base = run_of(grpo_step_uniform={})
    base["benchmarks"]["grpo_step_uniform"]["compiled_versions"] = {"sample": 1, "update": 1}
    new = run_of(grpo_step_uniform={})
    new["benchmarks"]["grpo_step_uniform"]["compiled_versions"] = {"sample": 1, "update": 2}
    rows = compare.compare(new, base)
    assert status(rows, "grpo_step_uniform", "compiled_versions.sample") == "ok"
    assert status(rows, "grpo_step_uniform", "compiled_versions.update") == "WORSE"


def test_command_line_exit_status(tmp_path, capsys):
    base, good, bad = (tmp_path / f"{n}.json" for n in ("base", "good", "bad"))
    base.write_text(json.dumps(BASE))
    good.write_text(json.dumps(BASE))
    worse = json.loads(json.dumps(BASE))
    worse["benchmarks"]["train_step"]["summary"]["mfu"] = 0.3
    bad.write_text(json.dumps(worse))
    assert bench_main.main(["compare", str(good), str(base)]) == 0
    assert bench_main.main(["compare", str(bad), str(base)]) == 1
    assert "train_step.mfu" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a file"):
        bench_main.main(["compare", str(tmp_path / "nope.json"), str(base)])


def test_suite_writes_one_json_that_compare_reads(tmp_path):
    assert suite.main(["--out", str(tmp_path), "--only", "matmul", "--no-trl"]) == 0
    run = json.loads((tmp_path / "suite.json").read_text())
    assert set(run["benchmarks"]) == {"matmul"} and run["trl"] is False
    s = run["benchmarks"]["matmul"]["summary"]
    assert s["fp32_gflops"] > 0 and run["benchmarks"]["matmul"]["config"]["quick"] is True
    assert (tmp_path / "matmul.json").is_file()
    rows = compare.compare(run, run)
    assert [r["metric"] for r in rows] == ["bf16_over_fp32"] and not compare.flagged(rows)
    with pytest.raises(SystemExit, match="--only 'nope'"):
        suite.main(["--out", str(tmp_path), "--only", "nope"])
