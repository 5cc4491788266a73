"""JAX's persistent compilation cache on by default: a second start of the same config compiles
nothing it compiled before (measured through JAX's monitoring events), and the console shows
the start's phases from its first second."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.train import compile_cache
from jaxrl_lrm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_cache_directory_of_each_setting(tmp_path):
    run = tmp_path / "runs" / "a"
    assert compile_cache.cache_dir("auto", run) == tmp_path / "runs" / ".jax_compile_cache"
    assert compile_cache.cache_dir(str(tmp_path / "c"), run) == tmp_path / "c"
    assert compile_cache.cache_dir("off", run) is None
    with pytest.raises(ConfigError, match="train.compile_cache=' ': expected auto, off or"):
        load_config(None, ["train.compile_cache=' '"])


def test_auto_keeps_a_cache_already_configured(tmp_path):
    before = jax.config.jax_compilation_cache_dir  # tests/conftest.py's per-session cache
    assert before
    assert compile_cache.enable("auto", tmp_path / "runs" / "x") == Path(before)
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "runs").exists()


def test_compile_stats_count_misses_then_hits():
    salt = float(np.random.default_rng().integers(1 << 30))  # a program no cache has seen

    def f(x):
        return jnp.tanh(x * salt) @ x.T

    before = compile_cache.compile_stats()
    jax.jit(f)(jnp.ones((3, 3))).block_until_ready()
    mid = compile_cache.compile_stats()
    jax.clear_caches()  # a "new process": the in-memory executables are gone
    jax.jit(f)(jnp.ones((3, 3))).block_until_ready()
    after = compile_cache.compile_stats()
    assert mid["compile/cache_misses"] >= before["compile/cache_misses"] + 1
    assert after["compile/cache_misses"] == mid["compile/cache_misses"]
    assert after["compile/cache_hits"] >= mid["compile/cache_hits"] + 1
    assert mid["compile/time_s"] > before["compile/time_s"]


def _start(run_dir: Path) -> tuple[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "JAXRL_"))}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "jaxrl_lrm", "train", "configs/smoke.yaml"]
    cmd += ["mesh.fsdp=1", "train.steps=2", "train.eval_every=0", "train.checkpoint_every=0"]
    cmd += ["log.samples_every=0", "--run-dir", str(run_dir)]
    out = subprocess.run(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )  # one stream: the order of log lines (stderr) and progress lines (stdout) is kept
    assert out.returncode == 0, out.stdout[-3000:]
    return out.stdout, read_metrics(run_dir / "metrics.jsonl")[-1]


@pytest.mark.slow  # two fresh processes (~1-2 min on a shared 2-core CPU)
def test_a_second_start_compiles_nothing_it_compiled_before(tmp_path):
    """Two runs of the same config into two directories under one `runs/`: the first compiles
    (cache misses), the second loads every executable from `runs/.jax_compile_cache`."""
    log_a, first = _start(tmp_path / "runs" / "a")
    log_b, second = _start(tmp_path / "runs" / "b")
    assert (tmp_path / "runs" / ".jax_compile_cache").is_dir()
    assert first["compile/cache_misses"] > 0 and first["compile/cache_hits"] == 0
    assert second["compile/cache_misses"] == 0
    assert second["compile/cache_hits"] == first["compile/cache_misses"]
    assert second["compile/time_s"] < first["compile/time_s"]
    assert second["compile/count"] == first["compile/count"]
    print(json.dumps({"first": first, "second": second}))
    # the start's phases, in order, stamped from the first second
    phases = [
        r"\[ *(\d+\.\d)s\] jaxrl_lrm.cli: jaxrl-lrm train: starting",
        r"compilation cache: .*\.jax_compile_cache",
        r"loading: tokenizer, model, data and programs",
        r"step 1/2: compiling and running the first step",
        r"step 1/2 \| reward .*s/step \| \d+ tok/s \| eta",
        r"first step done \(compile/count \d+\)",
        r"step 2/2 \|",
    ]
    pos = 0
    for p in phases:
        m = re.compile(p).search(log_a, pos)
        assert m, (p, log_a[pos:][:2000])
        pos = m.end()
    assert float(re.search(phases[0], log_a).group(1)) < 1.0
