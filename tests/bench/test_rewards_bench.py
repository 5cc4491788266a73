"""bench rewards: the CPU-time meter against processes of known CPU use, the sandbox figures."""

import subprocess
import sys

from jaxrl_lrm.bench import rewards

_BURN = (
    "import sys, time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < {s}: pass\n"
    "print('done', flush=True)\n"
    "time.sleep({sleep})\n"
)


def test_tree_cpu_s_counts_live_and_reaped_descendants():
    start = rewards.tree_cpu_s()
    subprocess.run([sys.executable, "-c", _BURN.format(s=0.3, sleep=0)], check=True)
    reaped = rewards.tree_cpu_s() - start  # the child's 0.3 s, now in our reaped-children time
    live = subprocess.Popen(
        [sys.executable, "-c", _BURN.format(s=0.3, sleep=30)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout.readline() == "done\n"
        both = rewards.tree_cpu_s() - start  # the live child's own 0.3 s added
    finally:
        live.kill()
        live.wait()
    assert 0.28 <= reaped < 1.0 and 0.56 <= both < 2.0 and both - reaped >= 0.28


def test_sandbox_figures():
    out = rewards._sandbox(3)
    assert set(out) == {"sandbox_per_s", "sandbox_cpu_ms", "sandbox_start_s"}
    assert out["sandbox_per_s"] > 0 and out["sandbox_cpu_ms"] > 0 and out["sandbox_start_s"] > 0
