"""Checkpoints that verify what they hold: damaged steps (flipped bytes, truncated or deleted
files, garbage metadata) fall back to the newest intact one with a warning naming the problem,
none intact is a clear `CheckpointError`, a non-finite state is never written, an unwritable
directory fails at once, and `metrics.jsonl` matches the step a run resumes from."""

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_lrm import checkpoint, checksums
from jaxrl_lrm.checkpoint import Checkpointer, CheckpointError, NonFiniteStateError
from jaxrl_lrm.train.logging import MetricsLogger, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def make_state(step: int) -> dict:
    k = jax.random.key(step)
    return {
        "params": {"w_DxF": jax.random.normal(k, (256, 128)), "b_F": jnp.full((128,), float(step))},
        "opt_state": {
            "mu_DxF": jax.random.normal(jax.random.fold_in(k, 1), (256, 128), jnp.bfloat16),
            "count": jnp.int32(step),
        },
        "step": jnp.int32(step),
    }


def assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def ckpt_dir(tmp_path):
    """Three asynchronously saved steps, 1, 2 and 3."""
    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d)
    for s in (1, 2, 3):
        ckpt.save(s, make_state(s), {"step": s, "data": {"epoch": 0, "pos": 4 * s}})
    ckpt.close()
    return d


def restore(d, step=None):
    ckpt = Checkpointer(d)
    try:
        return ckpt.restore(make_state(0), step)
    finally:
        ckpt.close()


def largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 - n // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def delete_manifest(step_dir: Path) -> None:
    shutil.rmtree(step_dir / checkpoint.MANIFEST_ITEM)


def garbage_metadata(step_dir: Path) -> None:
    (step_dir / "state" / "_METADATA").write_bytes(b"\x00\xffnot json {{")


def garbage_meta_item(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"step": ')


def wrong_checksum(step_dir: Path) -> None:
    """A manifest that disagrees with the arrays (the arrays decode fine): only the checksum
    comparison can tell."""
    f = step_dir / checkpoint.MANIFEST_ITEM / "metadata"
    manifest = json.loads(f.read_text())
    entry = manifest["leaves"]["['params']['w_DxF']"]
    entry["checksum"] = "0" * 16
    f.write_text(json.dumps(manifest))


def test_round_trip_with_manifest(ckpt_dir):
    assert sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")) == [
        "1",
        "2",
        "3",
    ]
    manifest = json.loads((ckpt_dir / "3" / checkpoint.MANIFEST_ITEM / "metadata").read_text())
    assert manifest["step"] == 3 and len(manifest["leaves"]) == 5
    state, meta, step = restore(ckpt_dir)
    assert step == 3 and meta == {"step": 3, "data": {"epoch": 0, "pos": 12}}
    assert_tree_equal(state, make_state(3))
    state, meta, step = restore(ckpt_dir, 1)
    assert step == 1 and meta["step"] == 1
    assert_tree_equal(state, make_state(1))


@pytest.mark.parametrize(
    "damage, problem",
    [
        # the silent case: the flipped bytes decode, to other numbers
        (lambda d: flip_middle(largest_array_file(d)), r"checksum mismatch in 1 of 5 leaves"),
        (lambda d: truncate(largest_array_file(d)), r"arrays or meta unreadable"),
        (delete_manifest, r"checksum manifest missing"),
        (garbage_metadata, r"arrays or meta unreadable"),
        (garbage_meta_item, r"arrays or meta unreadable"),
        (wrong_checksum, r"checksum mismatch in 1 of 5 leaves \(\['params'\]\['w_DxF'\]\)"),
    ],
    ids=["flip64", "truncate", "no_manifest", "garbage_metadata", "garbage_meta", "checksum"],
)
def test_damaged_newest_falls_back(ckpt_dir, caplog, damage, problem):
    damage(ckpt_dir / "3")
    with caplog.at_level(logging.WARNING, logger="jaxrl_lrm.checkpoint"):
        state, meta, step = restore(ckpt_dir)
    assert step == 2 and meta["step"] == 2
    assert_tree_equal(state, make_state(2))
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "step 3" in warned and "damaged" in warned
    assert re.search(problem, warned), warned
    # the damaged step is set aside, so the resumed run can write step 3 again
    assert (ckpt_dir / "3.damaged").is_dir()
    ckpt = Checkpointer(ckpt_dir)
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, make_state(33), {"step": 3})
    ckpt.close()
    state, _, step = restore(ckpt_dir)
    assert step == 3
    assert_tree_equal(state, make_state(33))


def test_extra_arrays_round_trip_and_are_verified(tmp_path, caplog):
    """A step's `extra` arrays (an asynchronous run's batch in flight) come back bitwise, with
    their sharding; a step saved without them gives None; a checksum of theirs that disagrees
    makes the step damaged (the newest intact one is used)."""
    mesh = jax.make_mesh((8,), ("data",))
    rows = NamedSharding(mesh, P("data"))
    extra = {
        "tokens": jax.device_put(jnp.arange(8 * 64, dtype=jnp.int32).reshape(8, 64), rows),
        "logp": jax.device_put(-jax.random.uniform(jax.random.key(1), (8, 32)), rows),
        "absent": None,
    }
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows), extra)
    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d)
    ckpt.save(1, make_state(1), {"step": 1})
    ckpt.save(2, make_state(2), {"step": 2}, extra=extra)
    ckpt.close()
    ckpt = Checkpointer(d)
    state, meta, step, got = ckpt.restore(make_state(0), extra=target)
    assert step == 2 and meta == {"step": 2} and got["absent"] is None
    assert_tree_equal(got, extra)
    assert got["tokens"].sharding == rows
    assert_tree_equal(state, make_state(2))
    assert ckpt.restore(make_state(0), 1, extra=target)[3] is None
    assert len(ckpt.restore(make_state(0), 2)) == 3  # without a target: the state only
    ckpt.close()
    f = d / "2" / checkpoint.MANIFEST_ITEM / "metadata"
    manifest = json.loads(f.read_text())
    manifest["extra_leaves"]["['tokens']"]["checksum"] = "0" * 16
    f.write_text(json.dumps(manifest))
    ckpt = Checkpointer(d)
    with caplog.at_level(logging.WARNING, logger="jaxrl_lrm.checkpoint"):
        _, _, step, got = ckpt.restore(make_state(0), extra=target)
    ckpt.close()
    assert step == 1 and got is None
    assert re.search(r"checksum mismatch in 1 of 2 extra leaves", caplog.text), caplog.text


def test_none_intact_is_a_clear_error(ckpt_dir):
    flip_middle(largest_array_file(ckpt_dir / "3"))
    delete_manifest(ckpt_dir / "2")
    garbage_metadata(ckpt_dir / "1")
    with pytest.raises(CheckpointError, match="no intact checkpoint") as e:
        restore(ckpt_dir)
    msg = str(e.value)
    assert "step 3:" in msg and "step 2: checksum manifest missing" in msg and "step 1:" in msg
    assert "Traceback" not in msg and len(msg) < 2000
    # nothing was set aside: there is nothing to resume from
    assert sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")) == [
        "1",
        "2",
        "3",
    ]


def test_explicit_damaged_step_raises(ckpt_dir):
    delete_manifest(ckpt_dir / "3")
    with pytest.raises(CheckpointError, match="step 3 .* damaged: checksum manifest missing"):
        restore(ckpt_dir, 3)
    with pytest.raises(CheckpointError, match="step 7 not in"):
        restore(ckpt_dir, 7)
    state, _, step = restore(ckpt_dir, 2)
    assert step == 2
    with pytest.raises(CheckpointError, match="no checkpoint"):
        restore(ckpt_dir.parent / "empty")


def test_restore_state_only_verifies_and_needs_no_write_access(ckpt_dir):
    truncate(largest_array_file(ckpt_dir / "3"))
    state, step = checkpoint.restore_state_only(ckpt_dir, make_state(0))
    assert step == 2
    assert_tree_equal(state, make_state(2))
    assert not (ckpt_dir / "3.damaged").exists()  # read-only: nothing is moved


def test_non_finite_state_is_refused(tmp_path):
    ckpt = Checkpointer(tmp_path / "c", async_save=False)
    bad = make_state(1)
    bad["params"]["w_DxF"] = bad["params"]["w_DxF"].at[3, 4].set(jnp.nan)
    bad["opt_state"]["mu_DxF"] = bad["opt_state"]["mu_DxF"] * jnp.inf
    with pytest.raises(NonFiniteStateError, match=r"step 1 .*NaN or inf in 2 of 5") as e:
        ckpt.save(1, bad, {"step": 1})
    assert e.value.leaves == ["['opt_state']['mu_DxF']", "['params']['w_DxF']"]
    assert isinstance(e.value, CheckpointError)
    assert ckpt.all_steps() == []
    ckpt.close()
    assert not any(p.name[0].isdigit() for p in (tmp_path / "c").iterdir())


def test_all_finite():
    state = make_state(1)
    assert checkpoint.all_finite(state) is True
    state["params"]["b_F"] = state["params"]["b_F"].at[0].set(-jnp.inf)
    assert checkpoint.all_finite(state) is False
    assert checkpoint.all_finite({"n": jnp.int32(3)}) is True
    # inside jit: a traced boolean
    assert not bool(jax.jit(checkpoint.all_finite)(state))
    assert bool(jax.jit(checkpoint.all_finite)(make_state(2)))


def test_checksums_do_not_depend_on_sharding(tmp_path):
    """Saved from a 2x4-sharded state, restored onto one device (and the other way): the
    checksums agree, since they are order-free sums over global positions."""
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    state = make_state(5)
    sharded = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "fsdp") if x.ndim == 2 else P())),
        state,
    )
    assert checksums.summaries(sharded) == checksums.summaries(state)
    ckpt = Checkpointer(tmp_path / "c", async_save=False)
    ckpt.save(5, sharded, {"step": 5})
    restored, _, step = ckpt.restore(make_state(0))
    ckpt.close()
    assert step == 5 and restored["params"]["w_DxF"].sharding.num_devices == 1
    assert_tree_equal(restored, state)


def test_checksum_sees_one_flipped_bit_and_swapped_values():
    x = jax.random.normal(jax.random.key(0), (64, 32))
    base = checksums.summaries(x)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32).at[17, 3].add(1)
    flipped = jax.lax.bitcast_convert_type(bits, jnp.float32)
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    assert checksums.summaries(flipped) != base
    assert checksums.summaries(swapped) != base
    assert checksums.summaries(x + 0.0) == base


def _np_checksum(x: np.ndarray) -> str:
    """The documented checksum in NumPy, over the whole array at once: words of the bytes
    (uint32, one per element below 4 bytes), keyed by flat position, mixed by MurmurHash3's
    finaliser, summed mod 2**32 twice."""

    def mix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    size = x.dtype.itemsize
    raw = x.reshape(-1).view({1: np.uint8, 2: np.uint16}.get(size, np.uint32))
    w = raw.astype(np.uint32)
    pos = np.arange(w.size, dtype=np.uint32)
    key = mix(pos * np.uint32(0x9E3779B9) + np.uint32(0x7F4A7C15))
    h1 = int(mix(w ^ key).astype(np.uint64).sum() % 2**32)
    h2 = int(mix(w + mix(key ^ np.uint32(0x632BE5AB))).astype(np.uint64).sum() % 2**32)
    return f"{h1:08x}{h2:08x}"


@pytest.mark.parametrize(
    "spec", [P(), P("data", "fsdp"), P(None, "data"), P("fsdp")], ids=["repl", "2d", "part", "1d"]
)
def test_checksums_match_numpy_on_every_sharding(spec, monkeypatch):
    """Each leaf's checksum equals the NumPy formula over the gathered array, for replicated,
    2-D, partially replicated and 1-D shardings (one replica of each piece counts once), for
    float32, bfloat16, int8, bool and 0-d leaves; and every program it runs is on one device
    (no collective: side-by-side collective programs can deadlock XLA:CPU's devices)."""
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    k = jax.random.key(3)
    tree = {
        "f32": jax.random.normal(k, (16, 12)),
        "bf16": jax.random.normal(k, (8, 8), jnp.bfloat16),
        "i8": jnp.arange(64, dtype=jnp.int8).reshape(8, 8),
        "bool": jax.random.bernoulli(k, 0.5, (8, 4)),
        "scalar": jnp.float32(-2.5),
    }
    put = lambda x: jax.device_put(x, NamedSharding(mesh, spec if x.ndim >= len(spec) else P()))
    devices_seen = []
    real = checksums._shard_summary
    monkeypatch.setattr(
        checksums,
        "_shard_summary",
        lambda x, *a: devices_seen.append(len(x.devices())) or real(x, *a),
    )
    got = checksums.summaries(jax.tree.map(put, tree))
    want = {f"['{n}']": _np_checksum(np.asarray(x)) for n, x in tree.items()}
    assert {n: v[1] for n, v in got.items()} == want
    assert set(devices_seen) == {1} and len(devices_seen) >= len(tree)
    assert got["['bf16']"][2:] == ([8, 8], "bfloat16") and all(v[0] for v in got.values())
    nan = put(tree["f32"].at[3, 5].set(jnp.nan))
    assert checksums.summaries({"x": nan})["['x']"][0] is False
    assert checksums.all_finite({"x": nan, "i": tree["i8"]}) is False
    assert checksums.all_finite(jax.tree.map(put, tree)) is True


# ----------------------------------------------------------------------------- read-only


@contextlib.contextmanager
def read_only_dir(path: Path):
    """`path` as a read-only bind mount (root ignores chmod). Yields False where mounting is not
    allowed; the caller then injects the failure instead."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode
        == 0
    )
    if (
        mounted
        and subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(path)], capture_output=True
        ).returncode
        != 0
    ):
        subprocess.run(["umount", str(path)], capture_output=True)
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


def test_read_only_directory_fails_at_once(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    with read_only_dir(d) as mounted:
        if not mounted:  # no mount permission: the write fails as a read-only mount's would

            def refuse(self, *a, **k):
                raise OSError(30, "Read-only file system", str(self))

            monkeypatch.setattr(Path, "write_bytes", refuse)
        t0 = time.monotonic()
        with pytest.raises(CheckpointError, match="not writable.*Read-only file system"):
            Checkpointer(d)
        with pytest.raises(CheckpointError, match="not writable"):
            Checkpointer(d / "nested")
        assert time.monotonic() - t0 < 10


def test_directory_made_read_only_after_construction_fails_the_save(tmp_path):
    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d)
    with read_only_dir(d) as mounted:
        if not mounted:
            pytest.skip("needs a read-only bind mount")
        with pytest.raises(CheckpointError, match="not writable.*Read-only file system"):
            ckpt.save(1, make_state(1), {"step": 1})
    ckpt.close()


def test_failed_background_save_is_an_error(tmp_path):
    """A write that fails in orbax's background thread (it only logs it) surfaces at the next
    `wait` / `save` / `close`, and the failed step is not listed. Run in a child process: the
    aborted save leaves orbax's signal threads waiting out their timeout, which would hold the
    test process at exit."""
    child = subprocess.run(
        [sys.executable, "-c", _FAILED_SAVE_CHILD, str(tmp_path / "checkpoints")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent,
    )
    if child.returncode == 3:
        pytest.skip("needs a read-only bind mount")
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-3000:]


_FAILED_SAVE_CHILD = """
import os, sys, time
import pytest
sys.path.insert(0, ".")
from test_checkpoint import make_state, read_only_dir
from jaxrl_lrm import checkpoint
from jaxrl_lrm.checkpoint import Checkpointer, CheckpointError

d = sys.argv[1]
ckpt = Checkpointer(d)
ckpt.save(1, make_state(1), {"step": 1})
ckpt.wait()
checkpoint._check_writable = lambda directory: None
with read_only_dir(__import__("pathlib").Path(d)) as mounted:
    if not mounted:
        os._exit(3)
    t0 = time.monotonic()
    ckpt.save(2, make_state(2), {"step": 2})
    with pytest.raises(CheckpointError, match="saving checkpoint step 2 .* failed.*step 1"):
        ckpt.wait()
    assert time.monotonic() - t0 < 120
assert ckpt.all_steps() == [1]
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow
def test_trainer_exits_with_the_error_on_a_read_only_checkpoints_dir(tmp_path):
    """The CLI run ends (exit 2) with the message instead of hanging."""
    run_dir = tmp_path / "run"
    with read_only_dir(run_dir / "checkpoints") as mounted:
        if not mounted:
            pytest.skip("needs a read-only bind mount")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "jaxrl_lrm",
                "train",
                str(ROOT / "configs" / "smoke.yaml"),
                f"run_dir={run_dir}",
                "mesh.data=1",
                "mesh.fsdp=1",
                "mesh.tensor=1",
                "train.steps=1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not writable" in proc.stderr


# ----------------------------------------------------------------------------- metrics.jsonl


def test_metrics_keep_exactly_the_steps_of_the_checkpoint(tmp_path):
    def log(steps, resume_step):
        logger = MetricsLogger(
            tmp_path, total_steps=10, resume_step=resume_step, stream=open(os.devnull, "w")
        )
        for s in steps:
            logger.log(s, {"loss": float(s)})
        logger.close()

    log([1, 2, 3, 4, 5], None)  # checkpoints at 2 and 4, died after logging 5
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    log([5, 6], 4)  # resumed from 4
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    log([3], 2)  # steps 4 and 6 found damaged: resumed from 2
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == [1.0, 2.0, 3.0]
    log([1], 0)  # nothing intact: a fresh run starts over
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
