"""tpu_scripts/*.sh: syntax, argument checking, and the exact gcloud commands they issue.

A fake `gcloud` on PATH appends its argv (one JSON list per call) to a log, so the commands are
checked without a cloud account. `DRY_RUN=1` must print the same commands, shell-quoted, that
a real run issues. For `launch.sh`, the fake also runs the `--command` of `ssh` locally in a
fake HOME with a fake `python3`, so the quoting of the remote command is checked end to end.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "tpu_scripts"
ALL = ["common.sh", "create.sh", "install.sh", "launch.sh", "logs.sh", "stop.sh", "teardown.sh"]
RUNNABLE = [s for s in ALL if s != "common.sh"]
ZONE = "us-central2-b"

FAKE_GCLOUD = """#!{python}
import json, os, subprocess, sys
with open(os.environ["GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SSH_EXEC") == "1" and "ssh" in sys.argv:
    cmd = [a for a in sys.argv if a.startswith("--command=")][0][len("--command="):]
    sys.exit(subprocess.call(["bash", "-c", cmd]))
"""

FAKE_PYTHON = """#!{python}
import json, os, sys
with open(os.environ["PYTHON_LOG"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, f)
print("fake trainer started")
"""


def _executable(path: Path, text: str) -> Path:
    # An absolute interpreter: a fake `python3` found through `env` would exec itself.
    path.write_text(text.replace("{python}", sys.executable, 1))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "gcloud", FAKE_GCLOUD)
    e = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PROJECT",
            "ZONE",
            "TPU_NAME",
            "ACCELERATOR_TYPE",
            "RUNTIME_VERSION",
            "REPO_URL",
            "BRANCH",
            "REMOTE_DIR",
            "LOG_DIR",
            "DRY_RUN",
            "GCLOUD",
        )
    }
    e.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        GCLOUD_LOG=str(tmp_path / "gcloud.log"),
        ZONE=ZONE,
        TMPDIR=str(tmp_path),
        LOCAL_PYTHON=sys.executable,  # launch.sh validates configs with it, here
    )
    return e


def _run(script: str, *args: str, env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _calls(env: dict) -> list[list[str]]:
    log = Path(env["GCLOUD_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _gcloud_lines(stdout: str) -> list[list[str]]:
    """The printed (DRY_RUN) gcloud commands as argv lists, without the leading `gcloud`."""
    return [shlex.split(ln)[1:] for ln in stdout.splitlines() if ln.startswith("gcloud ")]


def _dry_and_wet(script: str, *args: str, env: dict, **extra) -> list[list[str]]:
    """Runs `script` with DRY_RUN=1 and for real (fake gcloud): both must issue the same argv."""
    dry = _run(script, *args, env=env, DRY_RUN="1", **extra)
    assert dry.returncode == 0, dry.stderr
    assert _calls(env) == [], "DRY_RUN=1 must not call gcloud"
    wet = _run(script, *args, env=env, **extra)
    assert wet.returncode == 0, wet.stderr
    calls = _calls(env)
    assert _gcloud_lines(dry.stdout) == calls
    return calls


@pytest.mark.parametrize("script", ALL)
def test_bash_syntax(script):
    assert (SCRIPTS / script).is_file()
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


@pytest.mark.parametrize("script", ALL)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    subprocess.run(
        ["shellcheck", "-x", "-S", "warning", str(SCRIPTS / script)], check=True, cwd=SCRIPTS
    )


@pytest.mark.parametrize("script", RUNNABLE)
def test_help_and_strict_mode(script, env):
    text = (SCRIPTS / script).read_text()
    assert "set -euo pipefail" in text
    out = _run(script, "--help", env=env)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {script}")


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("create.sh", ["--bogus"], "unknown argument '--bogus'"),
        ("create.sh", ["--accelerator-type", "tpu32"], "accelerator type 'tpu32' is invalid"),
        ("create.sh", ["--name", "Bad_Name"], "TPU name 'Bad_Name' is invalid"),
        ("create.sh", ["--zone"], "--zone needs a value"),
        ("install.sh", [], "no repository"),
        ("launch.sh", [], "missing CONFIG"),
        ("launch.sh", ["configs/smoke.json"], "CONFIG 'configs/smoke.json' is not a .yaml"),
        ("launch.sh", ["configs/smoke.yaml", "steps"], "override 'steps' is not key.path=value"),
        ("logs.sh", ["--lines", "ten"], "--lines 'ten': expected a non-negative integer"),
        ("logs.sh", ["--worker", "w1"], "--worker 'w1': expected a worker index"),
        ("stop.sh", ["now"], "unknown argument 'now'"),
        ("teardown.sh", ["--force"], "unknown argument '--force'"),
    ],
)
def test_bad_arguments_exit_2_with_usage(script, args, message, env):
    out = _run(script, *args, env=env)
    assert out.returncode == 2
    assert message in out.stderr
    assert f"usage: {script}" in out.stderr
    assert _calls(env) == []


def test_missing_zone(env):
    out = _run("teardown.sh", env={**env, "ZONE": ""})
    assert out.returncode == 2 and "no zone" in out.stderr and _calls(env) == []


def test_create(env):
    calls = _dry_and_wet(
        "create.sh",
        "--spot",
        "--name",
        "pod1",
        "--project=my-proj",
        env=env,
        ACCELERATOR_TYPE="v5litepod-16",
    )
    assert calls == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "pod1",
            f"--zone={ZONE}",
            "--accelerator-type=v5litepod-16",
            "--version=tpu-ubuntu2204-base",
            "--spot",
            "--project=my-proj",
        ]
    ]


def test_create_queued(env):
    calls = _dry_and_wet(
        "create.sh",
        "--queued",
        "--accelerator-type",
        "v4-32",
        "--runtime-version",
        "tpu-vm-v4-base",
        env=env,
    )
    assert calls == [
        [
            "compute",
            "tpus",
            "queued-resources",
            "create",
            "jaxrl-lrm-qr",
            "--node-id=jaxrl-lrm",
            f"--zone={ZONE}",
            "--accelerator-type=v4-32",
            "--runtime-version=tpu-vm-v4-base",
        ]
    ]


def test_install_clone(env):
    calls = _dry_and_wet(
        "install.sh",
        "--repo-url",
        "https://example.com/me/jaxrl_lrm.git",
        "--branch",
        "dev",
        env=env,
    )
    assert len(calls) == 1
    argv = calls[0]
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "jaxrl-lrm"]
    assert f"--zone={ZONE}" in argv and "--worker=all" in argv
    remote = argv[-1].removeprefix("--command=")
    assert "git clone --branch dev https://example.com/me/jaxrl_lrm.git ~/jaxrl_lrm" in remote
    words = shlex.split(remote.replace(";", " ; "))
    assert "jax[tpu]>=0.10.2,<0.11" in words  # the spec survives the quoting as one word
    assert "pip install -q -e ~/jaxrl_lrm" in remote


def test_install_from_local_dry_run(env):
    out = _run("install.sh", "--from-local", env=env, DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("git -C ") and " archive " in lines[0]
    scp, ssh = _gcloud_lines(out.stdout)
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert "tar -xzf ~/jaxrl_lrm_src.tar.gz -C ~/jaxrl_lrm" in ssh[-1]
    assert _calls(env) == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown config key 'train.stepz'"),
        ("train.min_lr_ratio=-0.5", "train.min_lr_ratio=-0.5: expected 0 <= x <= 1"),
    ],
)
def test_launch_validates_the_config_before_touching_the_pod(env, override, message):
    for dry in ("1", "0"):
        out = _run("launch.sh", "configs/smoke.yaml", override, env=env, DRY_RUN=dry)
        assert out.returncode == 2, out.stderr
        assert "the config does not validate (nothing was sent to the pod)" in out.stderr
        assert message in out.stderr
        assert "gcloud" not in out.stdout and _calls(env) == []
    out = _run("launch.sh", "configs/missing.yaml", env=env)
    assert out.returncode == 2 and "does not exist" in out.stderr and _calls(env) == []
    # --skip-validate sends it anyway (the workers' trainer then refuses it)
    out = _run("launch.sh", "configs/smoke.yaml", override, "--skip-validate", env=env)
    assert out.returncode == 0, out.stderr
    assert override in _calls(env)[0][-1] and "--skip-validate" not in _calls(env)[0][-1]


def test_launch_runs_the_same_train_command_on_every_worker(env, tmp_path):
    home = tmp_path / "home"
    (home / "repo").mkdir(parents=True)
    fake_bin = tmp_path / "fakepy"
    fake_bin.mkdir()
    _executable(fake_bin / "python3", FAKE_PYTHON)
    extra = dict(
        HOME=str(home), PYTHON_LOG=str(tmp_path / "python.json"), PATH=f"{fake_bin}:{env['PATH']}"
    )
    overrides = ["train.steps=3", "run_dir=/mnt/runs/run one", "mesh.fsdp=-1"]
    calls = _dry_and_wet(
        "launch.sh",
        "configs/smoke.yaml",
        *overrides,
        "--remote-dir",
        "repo",
        "--name",
        "pod1",
        env=env,
        **extra,
    )
    (argv,) = calls
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod1"]
    assert f"--zone={ZONE}" in argv and "--worker=all" in argv
    remote = argv[-1].removeprefix("--command=")
    assert "nohup python3 -m jaxrl_lrm train configs/smoke.yaml" in remote
    assert "--distributed" in remote and "train-$(hostname).log" in remote
    # Execute the remote command here (in the fake HOME) and check what the trainer received.
    Path(env["GCLOUD_LOG"]).unlink()
    run = _run(
        "launch.sh",
        "configs/smoke.yaml",
        *overrides,
        "--remote-dir",
        "repo",
        "--name",
        "pod1",
        env=env,
        FAKE_SSH_EXEC="1",
        **extra,
    )
    assert run.returncode == 0, run.stderr
    assert "started pid" in run.stdout
    log_dir = home / "jaxrl_lrm_logs"
    for _ in range(100):  # the trainer runs in the background (nohup ... &)
        if (tmp_path / "python.json").exists() and list(log_dir.glob("train-*.log")):
            break
        subprocess.run(["sleep", "0.05"])
    got = json.loads((tmp_path / "python.json").read_text())
    assert got["argv"] == [
        "-m",
        "jaxrl_lrm",
        "train",
        "configs/smoke.yaml",
        *overrides,
        "--distributed",
    ]
    assert Path(got["cwd"]) == home / "repo"
    (log,) = list(log_dir.glob("train-*.log"))
    assert log.name == f"train-{os.uname().nodename}.log"


def test_logs(env):
    calls = _dry_and_wet("logs.sh", "--lines", "50", env=env)
    assert calls == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            "jaxrl-lrm",
            f"--zone={ZONE}",
            "--worker=all",
            "--command=tail -n 50 ~/jaxrl_lrm_logs/*.log",
        ]
    ]


def test_logs_follow_one_worker(env):
    calls = _dry_and_wet("logs.sh", "--follow", "--worker", "3", env=env)
    assert calls[0][-2:] == ["--worker=3", "--command=tail -n 20 -F ~/jaxrl_lrm_logs/*.log"]


def test_logs_fetch(env, tmp_path):
    dest = tmp_path / "fetched"
    calls = _dry_and_wet("logs.sh", "--fetch", str(dest), env=env)
    assert calls == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "scp",
            "jaxrl-lrm:jaxrl_lrm_logs/*.log",
            f"{dest}/",
            f"--zone={ZONE}",
            "--worker=all",
        ]
    ]
    assert dest.is_dir()


def test_stop(env):
    (argv,) = _dry_and_wet("stop.sh", env=env)
    assert "--worker=all" in argv
    assert "pkill -TERM -f '[p]ython3 -m jaxrl_lrm train'" in argv[-1]


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], ["compute", "tpus", "tpu-vm", "delete", "jaxrl-lrm", f"--zone={ZONE}"]),
        (
            ["--yes"],
            ["compute", "tpus", "tpu-vm", "delete", "jaxrl-lrm", f"--zone={ZONE}", "--quiet"],
        ),
        (
            ["--queued", "--yes"],
            [
                "compute",
                "tpus",
                "queued-resources",
                "delete",
                "jaxrl-lrm-qr",
                f"--zone={ZONE}",
                "--force",
                "--quiet",
            ],
        ),
    ],
)
def test_teardown(args, expected, env):
    assert _dry_and_wet("teardown.sh", *args, env=env) == [expected]
