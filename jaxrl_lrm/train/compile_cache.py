"""JAX's persistent compilation cache for training runs, and counts of what a run compiled.

`enable(setting, run_dir)` points JAX's persistent cache at a directory before anything is
compiled, so a second start of the same config loads every executable it compiled before
instead of compiling it again. `train.compile_cache`:

- `auto` (default): `<run_dir>/../.jax_compile_cache` (runs under one `runs/` share it), unless
  JAX's cache is already configured (`JAX_COMPILATION_CACHE_DIR`, which JAX reads itself, or a
  caller's `jax.config.update`), which is then kept;
- a path: that directory;
- `off`: no persistent cache (every start compiles from scratch).

Every compilation is cached (no minimum compile time or size): the small programs of a run
(RNG splits, placements) add up to seconds on a cold start too.

`compile_stats()` counts, through `jax.monitoring`, the executables this process compiled
(`compile/cache_misses`: looked up in the persistent cache, not found, so compiled), loaded from
the cache (`compile/cache_hits`) and the seconds spent in XLA compilation or loading
(`compile/time_s`); the loop logs them every step next to `compile/count`.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import jax

CACHE_DIR_NAME = ".jax_compile_cache"
_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"
_COMPILE_S = "/jax/core/compile/backend_compile_duration"


def cache_dir(setting: str, run_dir: str | Path) -> Path | None:
    """The directory `train.compile_cache = setting` names for `run_dir` (None: off)."""
    if setting == "off":
        return None
    if setting == "auto":
        return Path(run_dir).resolve().parent / CACHE_DIR_NAME
    return Path(setting).expanduser().resolve()


def enable(setting: str, run_dir: str | Path) -> Path | None:
    """Points JAX's persistent compilation cache at `cache_dir(setting, run_dir)`; returns the
    directory in use (None when off). Call before the run compiles anything."""
    install()
    current = jax.config.jax_compilation_cache_dir
    if setting == "auto" and current:
        return Path(current)
    path = cache_dir(setting, run_dir)
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


_COUNTS: collections.Counter = collections.Counter()  # this process's, since install()
_LOCK = threading.Lock()


def _event(event: str, **_) -> None:
    if event in (_HIT, _MISS):
        with _LOCK:
            _COUNTS[event] += 1


def _duration(event: str, seconds: float, **_) -> None:
    if event == _COMPILE_S:
        with _LOCK:
            _COUNTS[event] += seconds


def install() -> None:
    """Starts counting (once per process: JAX keeps its listeners globally)."""
    with _LOCK:
        if _COUNTS["installed"]:
            return
        jax.monitoring.register_event_listener(_event)
        jax.monitoring.register_event_duration_secs_listener(_duration)
        _COUNTS["installed"] = 1


def compile_stats() -> dict[str, float]:
    """`compile/cache_hits`, `compile/cache_misses` and `compile/time_s` of this process since
    counting began (`install()`; the `jaxrl-lrm` command installs before building anything)."""
    install()
    with _LOCK:
        return {
            "compile/cache_hits": float(_COUNTS[_HIT]),
            "compile/cache_misses": float(_COUNTS[_MISS]),
            "compile/time_s": float(_COUNTS[_COMPILE_S]),
        }
