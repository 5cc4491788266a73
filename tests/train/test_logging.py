"""What a run shows while it trains: sample completions with their rewards (samples.jsonl,
TensorBoard text, console) logged with their own step, W&B in offline mode, the progress line."""

import glob
import importlib.util
import io
import json
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from jaxrl_lrm import cli, train
from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.train import wandb_sink
from jaxrl_lrm.train.logging import MetricsLogger, read_metrics

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
ONES = "rewards.functions=[{fn: 'toy_rewards:ones_fraction'}]"


def _smoke(*overrides):
    return load_config(SMOKE, ["mesh.fsdp=1", "train.eval_every=0", ONES, *overrides])


def _tfrecords(path: Path) -> list[bytes]:
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        out.append(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
    return out


def tensorboard_texts(run_dir: Path) -> dict[int, str]:
    """step -> the `samples` text summary, read back from the event files."""
    out = {}
    for f in sorted((run_dir / "tensorboard").glob("events.*")):
        for rec in _tfrecords(f):
            e = event_pb2.Event.FromString(rec)
            for v in e.summary.value:
                if v.tag.startswith("samples"):
                    out[e.step] = v.tensor.string_val[0].decode()
    return out


def test_samples_are_logged_with_their_own_step_and_rewards(tmp_path, capsys):
    """Every completion of steps 2 and 4 (of 4), each with its reward: the rewards are the
    reward function's on the logged text, and their mean is the step's `reward/mean` (so the
    table belongs to the step it is logged with, even though metrics are fetched one step late).
    """
    cfg = _smoke("train.steps=4", "log.samples_every=2", "log.num_samples=16")
    train.run_rl(cfg, run_dir=tmp_path)
    metrics = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    tables = read_metrics(tmp_path / "samples.jsonl")
    assert [t["step"] for t in tables] == [2, 4]
    for t in tables:
        rows = t["samples"]
        assert len(rows) == 16 and set(rows[0]) == {
            "prompt",
            "completion",
            "reward",
            "ones_fraction",
        }
        for r in rows:
            want = r["completion"].count("1") / max(len(r["completion"]), 1)
            assert r["reward"] == r["ones_fraction"] == pytest.approx(want, abs=1e-6)
            assert r["prompt"].endswith("=")  # the addition task's rendered prompt
        mean = sum(r["reward"] for r in rows) / len(rows)
        assert mean == pytest.approx(metrics[t["step"]]["reward/mean"], abs=1e-6)
    texts = tensorboard_texts(tmp_path)
    assert sorted(texts) == [2, 4]
    assert "| prompt | completion | reward | ones_fraction |" in texts[2]
    out = capsys.readouterr().out
    assert "samples at step 2:" in out and "samples at step 4:" in out
    assert f"completion: {tables[1]['samples'][0]['completion']!r}" in out


def test_samples_off_and_resume_keeps_tables_of_the_checkpointed_steps(tmp_path):
    log = lambda steps, resume: _log_tables(tmp_path, steps, resume)  # noqa: E731
    log([1, 2, 3], None)  # died after step 3, checkpoint at 2
    log([3], 2)
    assert [t["step"] for t in read_metrics(tmp_path / "samples.jsonl")] == [1, 2, 3]
    train.run_rl(_smoke("train.steps=1", "log.samples_every=0"), run_dir=tmp_path / "off")
    assert not (tmp_path / "off" / "samples.jsonl").exists()


def _log_tables(run_dir, steps, resume):
    logger = MetricsLogger(run_dir, total_steps=4, resume_step=resume, stream=io.StringIO())
    for s in steps:
        logger.log_samples(s, [{"prompt": "p", "completion": f"c{s}", "reward": 1.0}])
    logger.close()


def test_console_table_cuts_long_text_and_marks_a_tty_line(tmp_path):
    stream = io.StringIO()
    logger = MetricsLogger(tmp_path, total_steps=3, stream=stream)
    logger.log_samples(1, [{"prompt": "x" * 1000, "completion": "a|b\nc", "reward": -0.5}])
    text = stream.getvalue()
    assert "reward -0.500" in text and "x" * 236 + "..." in text and "x" * 241 not in text
    row = read_metrics(tmp_path / "samples.jsonl")[0]["samples"][0]
    assert row["prompt"] == "x" * 1000  # the JSONL keeps the full text
    logger.progress(1, {"time/step_s": 0.5, "tokens_per_s": 1234.0}, 3, 1)
    assert "0.50s/step | 1234 tok/s | eta" in stream.getvalue()


# ----------------------------------------------------------------------------- W&B


def _wandb_records(run_dir: Path) -> list[dict]:
    """History records of the offline W&B run (its `.wandb` file: W&B's LevelDB-style log of
    protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, buf, out = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 0:
            pos += left - 7 - n
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            r = pb.Record.FromString(buf)
            if r.WhichOneof("record_type") == "history":
                out.append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in r.history.item
                    }
                )
    return out


def test_wandb_offline_mirrors_metrics_and_samples(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _smoke("train.steps=2", "log.samples_every=2", "log.wandb=true", "log.wandb_project=t")
    train.run_rl(cfg, run_dir=tmp_path)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    history = {}
    for h in _wandb_records(tmp_path):
        history.setdefault(h["_step"], {}).update(h)
    assert sorted(history) == [1, 2]
    for r in metrics:
        for k in ("reward/mean", "loss/total", "grad_norm"):
            assert history[r["step"]][k] == pytest.approx(r[k], rel=1e-6), k
    assert history[2]["samples/_type"] == "table-file" and history[2]["samples/nrows"] == 4
    (table,) = glob.glob(
        str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "*.json")
    )
    want = read_metrics(tmp_path / "samples.jsonl")[0]["samples"]
    assert json.loads(Path(table).read_text())["data"] == [list(r.values()) for r in want]
    run_id = (tmp_path / "wandb_id").read_text()
    assert run_id and Path(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))[0]).name.endswith(
        run_id
    )


def test_wandb_enabled_but_not_installed_fails_before_building(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'jaxrl-lrm\[wandb\]'"):
        wandb_sink.require()
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(SMOKE), "log.wandb=true", "--run-dir", str(run_dir)]) == 2
    assert "log.wandb=True: the wandb package is not installed" in capsys.readouterr().err
    assert not run_dir.exists()  # nothing was built or written
