"""The built-in `python` tool: the program runs in the reward sandbox (`rewards.sandbox`:
its own namespaces, a private read-only root, no network, rlimits, a wall-clock limit), and the
model sees what it printed, or the error.
"""

from __future__ import annotations

from jaxrl_lrm.rewards import sandbox


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> str:
    """The tool: stdout of `code` run in the sandbox; on failure the status and stderr's tail.

    Raises:
      RuntimeError: when the program fails, times out or runs out of memory; the message (its
        status and the last lines of its stderr) is what the model reads.
    """
    res = sandbox.execute(code, timeout_s=timeout_s, memory_mb=memory_mb)
    if res.status == "ok":
        return res.stdout
    tail = res.stderr[-2000:].strip()
    if res.status == "timeout":
        raise RuntimeError(f"the program ran past its {timeout_s:g} s limit\n{res.stdout[-500:]}")
    if res.status == "memory":
        raise RuntimeError(f"the program ran out of memory ({memory_mb} MiB)\n{tail}")
    raise RuntimeError(f"the program exited with code {res.returncode}\n{tail}")
