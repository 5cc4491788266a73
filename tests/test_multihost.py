"""Multi-host on one machine: 2 local processes x 2 simulated CPU devices = one 4-device mesh.

Each process runs `WORKER` (below): `sharding.initialize_distributed` with an explicit
coordinator, a `(data=1, fsdp=4)` mesh spanning both processes, a sharded tiny model and a
sharded batch, then a jitted parameter sum and full logits gathered to every process. Both
processes must agree with each other and with a single-process reference computed here.

jax 0.10.2 needs no extra setting for this: `jax_cpu_collectives_implementation` defaults to
`"gloo"` (asserted below), which is what cross-process CPU collectives require.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models

REPO = Path(__file__).resolve().parent.parent
NUM_PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 120

WORKER = textwrap.dedent("""
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrl_lrm import models, sharding
    from jaxrl_lrm.models import transformer

    address, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sharding.initialize_distributed(address, 2, pid)
    assert jax.process_count() == 2 and jax.process_index() == pid
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    mesh = sharding.make_mesh(data=1, fsdp=-1)
    model = models.init("tiny", 0, mesh=mesh)
    # each process passes only its own rows; the global batch is their concatenation
    local = np.load(out + ".tokens.npy")[2 * pid: 2 * pid + 2]
    tokens = sharding.shard_batch(local, mesh)
    assert tokens.shape == (4, 8)
    np.testing.assert_array_equal(sharding.host_rows(tokens), local)
    rep = sharding.replicated(mesh)
    total = jax.jit(lambda p: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(p)),
                    out_shardings=rep)(model.params)
    logits = jax.jit(lambda p, t: transformer.forward(p, model.config, t)[0],
                     out_shardings=rep)(model.params, tokens)
    np.save(out + ".logits.npy", np.asarray(logits))
    print("PARAM_SUM", repr(float(total)), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tokens() -> np.ndarray:
    """A fixed `[4, 8]` batch: 4 rows, so the batch axis splits over the 4-way fsdp axis."""
    return (np.arange(32, dtype=np.int32).reshape(4, 8) * 7 + 3) % 256


def _run_processes(tmp_path: Path) -> list[tuple[float, np.ndarray]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
    )
    procs, outs = [], []
    for i in range(NUM_PROCESSES):
        out = str(tmp_path / f"proc{i}")
        np.save(out + ".tokens.npy", _tokens())
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), address, str(i), out],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    try:
        for i, (p, out) in enumerate(zip(procs, outs)):
            text, _ = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"process {i} failed (rc {p.returncode}):\n{text[-3000:]}"
            lines = [ln for ln in text.splitlines() if ln.startswith("PARAM_SUM ")]
            assert len(lines) == 1, f"process {i} printed no PARAM_SUM line:\n{text[-3000:]}"
            results.append((float(lines[0].split()[1]), np.load(out + ".logits.npy")))
    finally:
        for p in procs:  # a hung peer must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def test_cpu_collectives_default_is_gloo():
    # Cross-process CPU collectives need gloo (or mpi); if this default changes, the workers
    # must set it with jax.config.update before initialize_distributed.
    assert jax.config.jax_cpu_collectives_implementation == "gloo"


def test_two_processes_agree_with_single_process(tmp_path):
    results = _run_processes(tmp_path)
    # Single-process reference: the same seed, unsharded, summed in float64 by NumPy.
    model = models.init("tiny", 0)
    ref_sum = sum(float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(model.params))
    ref_logits = np.asarray(models.logits(model, jnp.asarray(_tokens())))
    (sum0, logits0), (sum1, logits1) = results
    assert sum0 == sum1, "the two processes printed different parameter sums"
    np.testing.assert_array_equal(logits0, logits1)
    assert sum0 == pytest.approx(ref_sum, rel=1e-5, abs=1e-3)
    assert logits0.shape == (4, 8, model.config.vocab_size)
    np.testing.assert_allclose(logits0, ref_logits, rtol=1e-4, atol=1e-4)
    assert np.std(ref_logits) > 1e-3  # the comparison is not between two near-constant arrays


def _train_cli(run_dir: Path, extra: list[str], num_processes: int) -> list[dict]:
    """`jaxrl-lrm train configs/smoke.yaml` over `num_processes` processes of
    `4 // num_processes` devices each (one 4-device mesh either way); the metrics records."""
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // num_processes}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
    )
    cmd = [
        sys.executable,
        "-m",
        "jaxrl_lrm",
        "train",
        "configs/smoke.yaml",
        "train.steps=2",
        "train.checkpoint_every=2",
        "train.eval_every=0",
        f"run_dir={run_dir}",
        *extra,
    ]
    if num_processes > 1:
        cmd += ["--coordinator-address", address, "--num-processes", str(num_processes)]
    procs = [
        subprocess.Popen(
            [*cmd, *(["--process-id", str(i)] if num_processes > 1 else [])],
            env=env,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(num_processes)
    ]
    try:
        outs = [p.communicate(timeout=4 * TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, text) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed (rc {p.returncode}):\n{text[-3000:]}"
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_train_two_processes(tmp_path):
    """`jaxrl-lrm train` with explicit coordinator flags, 2 processes sharing one run_dir."""
    run_dir = tmp_path / "run"
    records = _train_cli(run_dir, [], NUM_PROCESSES)
    assert [r["step"] for r in records] == [1, 2]  # written once, by process 0
    assert all(np.isfinite(r["loss/total"]) and 0 <= r["reward/mean"] <= 1 for r in records)
    assert (run_dir / "checkpoints").is_dir()


@pytest.mark.slow
def test_lora_two_processes_equal_one_process(tmp_path):
    """LoRA over 2 processes x 2 devices trains as 1 process x 4 devices (same mesh, same
    data): the same losses, rewards and gradient norms, step by step."""
    lora = ["model.lora.rank=4", "model.lora.alpha=8"]
    two = _train_cli(tmp_path / "two", lora, NUM_PROCESSES)
    one = _train_cli(tmp_path / "one", lora, 1)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one):
        assert a["reward/mean"] == b["reward/mean"]
        for key in ("loss/total", "grad_norm"):
            assert np.isclose(a[key], b[key], rtol=1e-4, atol=1e-6), (key, a[key], b[key])
