"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os
import tempfile

# The tests' programs are tiny, so compiling them is most of the suite's time: LLVM's
# optimisation level 0 compiles them in about 30 % less CPU time (measured on tests/train,
# 2 vCPUs). XLA's semantics do not change with it; the numbers are checked against references
# at tolerances (and run-vs-run comparisons are between programs compiled the same way).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# Programs are built per run (no module-level registries); runs that repeat a program's shapes
# load its executable from JAX's persistent compilation cache instead of compiling it again. The
# cache lives for one test session (a fresh directory), so no entry from another session or from
# a concurrent test process is ever read.
_CACHE = os.environ.get("JAXRL_TEST_COMPILE_CACHE") or tempfile.mkdtemp(prefix="jaxrl_jit_cache_")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
