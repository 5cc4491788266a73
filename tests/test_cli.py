"""The `jaxrl-lrm` command around a run: `config show`, `module:function` rewards found in the
working directory, resume refused on a changed config (unless `--allow-config-change`), a
finished run left alone, and `export` refusing a non-empty directory (unless `--force`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import yaml

from jaxrl_lrm import cli
from jaxrl_lrm.config import ConfigError, load_config, to_yaml
from jaxrl_lrm.train import resume, stages

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
TINY = ["train.steps=2", "train.checkpoint_every=0", "train.eval_every=0", "eval.num_prompts=4"]
REWARD = "def fn(prompts, completions, **columns):\n    return [0.75] * len(completions)\n"


def test_config_show_prints_the_resolved_config(capsys):
    assert cli.main(["config", "show", SMOKE, "train.steps=9", "algorithm.name=rloo"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    config = load_config(SMOKE, ["train.steps=9", "algorithm.name=rloo"])
    assert shown["train"]["steps"] == 9 and shown["train"]["lr"] == config.train.lr
    assert shown["model"]["overrides"]["d_model"] == 32  # from the file
    assert shown["sampling"]["top_p"] == 1.0  # a default the file does not set
    assert load_config(None, [f"{k}={json.dumps(v)}" for k, v in shown.items()]) == config
    assert cli.main(["config", "show", SMOKE, "train.min_lr_ratio=-0.5"]) == 2
    assert "train.min_lr_ratio=-0.5: expected 0 <= x <= 1" in capsys.readouterr().err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding `mymod.py`, and a sys.path without it (as for a console
    script, whose sys.path[0] is its bin directory)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "mymod.py").write_text(REWARD)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "mymod", raising=False)
    return work


def test_the_entry_point_puts_the_working_directory_on_sys_path(workdir, capsys):
    from jaxrl_lrm.train import setup

    config = load_config(SMOKE, ["rewards.functions=[mymod:fn]"])
    with pytest.raises(ValueError, match="reward fn 'mymod:fn' cannot be imported"):
        setup.build_rewards(config, None)
    assert cli.main(["config", "show", SMOKE]) == 0
    assert sys.path[0] == str(workdir)
    ((name, fn, weight),) = setup.build_rewards(config, None)
    assert fn(["p"], ["c", "d"]) == [0.75, 0.75] and weight == 1.0


def _fake_run(tmp_path, monkeypatch, step: int) -> tuple[Path, list[str]]:
    """A run directory whose config.yaml is TINY's and whose newest checkpoint is `step`."""
    run_dir = tmp_path / "run"
    args = ["train", SMOKE, *TINY, "--run-dir", str(run_dir)]
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(load_config(SMOKE, [*TINY, f"run_dir={run_dir}"])))
    monkeypatch.setattr(resume, "latest_step", lambda d: step if Path(d) == run_dir else None)
    monkeypatch.setattr(stages, "train", lambda *a, **k: pytest.fail("must not train"))
    return run_dir, args


def test_resume_with_a_changed_config_is_refused(tmp_path, monkeypatch, capsys):
    run_dir, args = _fake_run(tmp_path, monkeypatch, step=1)
    saved = (run_dir / "config.yaml").read_text()
    assert cli.main([*args, "algorithm.group_size=2", "sampling.max_new_tokens=8"]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints up to step 1 written with a different config" in err
    assert "algorithm.group_size: 4 -> 2" in err and "sampling.max_new_tokens: 4 -> 8" in err
    assert "train.steps" not in err and "--allow-config-change" in err
    assert (run_dir / "config.yaml").read_text() == saved
    # the run directory may move (run_dir is not compared); no checkpoint: nothing to refuse
    changed = load_config(SMOKE, [*TINY, "train.lr=0.5", f"run_dir={run_dir}"])
    assert resume.check_restart(changed, run_dir, None, allow_config_change=False) == []
    assert resume.check_restart(changed, run_dir, 1, allow_config_change=True) == [
        "train.lr: 0.001 -> 0.5"
    ]


def test_a_finished_run_says_so_and_trains_nothing(tmp_path, monkeypatch, capsys):
    run_dir, args = _fake_run(tmp_path, monkeypatch, step=2)
    assert cli.main(args) == 0
    assert f"{run_dir} already finished: its newest checkpoint is step 2 of train.steps=2" in (
        capsys.readouterr().out
    )


def test_export_refuses_a_non_empty_directory(tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["export", str(tmp_path / "norun"), str(out)]) == 2
    assert (
        f"OUT_DIR {str(out)!r} is not empty (1 entries); choose a new directory or pass --force"
        in (capsys.readouterr().err)
    )
    assert cli.main(["export", str(tmp_path / "norun"), str(out), "--force"]) == 2
    assert "no config.yaml in it" in capsys.readouterr().err  # past the guard, to the run
    assert cli.main(["export", str(tmp_path / "norun"), str(out / "keep.txt")]) == 2
    assert "is a file; choose a new directory" in capsys.readouterr().err


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_restarting_a_run(tmp_path, workdir, capsys, caplog):
    # End to end: a reward `mymod:fn` in the working directory resolves through the console
    # entry point (`jaxrl_lrm.cli:main`), which puts the working directory on sys.path.
    run_dir = tmp_path / "run"
    args = ["train", SMOKE, *TINY, "rewards.functions=[mymod:fn]", "--run-dir", str(run_dir)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert [m["reward/mean"] for m in _metrics(run_dir)] == [0.75, 0.75]
    saved, metrics = (run_dir / "config.yaml").read_text(), _metrics(run_dir)

    # A changed config is refused before anything is built, and config.yaml is kept.
    assert cli.main([*args, "algorithm.group_size=2", "sampling.max_new_tokens=8"]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints up to step 2 written with a different config" in err
    assert "algorithm.group_size: 4 -> 2" in err and "sampling.max_new_tokens: 4 -> 8" in err
    assert "--allow-config-change" in err
    assert (run_dir / "config.yaml").read_text() == saved
    # ... and so it is by the library (`stages.train` / `loop.run`), after the build.
    changed = load_config(SMOKE, [*TINY, "rewards.functions=[mymod:fn]", f"run_dir={run_dir}"])
    with pytest.raises(ConfigError, match=r"train.lr: 0.001 -> 0.01"):
        stages.train(
            dataclasses.replace(changed, train=dataclasses.replace(changed.train, lr=0.01))
        )
    assert (run_dir / "config.yaml").read_text() == saved

    # The same config again: the run is finished, says so and trains nothing.
    assert cli.main(args) == 0
    assert "already finished: its newest checkpoint is step 2 of train.steps=2" in (
        capsys.readouterr().out
    )
    assert _metrics(run_dir) == metrics and (run_dir / "config.yaml").read_text() == saved

    # --allow-config-change continues with the new config and lists what changed.
    with caplog.at_level(logging.WARNING, logger="jaxrl_lrm.train.resume"):
        assert cli.main([*args, "train.steps=3", "--allow-config-change"]) == 0
    assert "train.steps: 2 -> 3" in caplog.text
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3]
    assert load_config(run_dir / "config.yaml").train.steps == 3

    # export refuses a non-empty directory unless --force
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["export", str(run_dir), str(out)]) == 2
    assert f"OUT_DIR {str(out)!r} is not empty (1 entries)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli.main(["export", str(run_dir), str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and (out / "keep.txt").read_text() == "mine"
    assert cli.main(["export", str(run_dir), str(tmp_path / "new")]) == 0  # a new directory
