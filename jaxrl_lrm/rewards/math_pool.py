"""A persistent pool of SymPy worker processes with a hard per-call deadline.

Each worker is a plain `python -m jaxrl_lrm.rewards.math_sympy` subprocess talking JSON lines
over pipes, so the pool works from any thread, from daemonic `multiprocessing` workers (which
may not start `multiprocessing` children) and next to a multithreaded JAX runtime (no `fork` of
the parent). A call takes an idle worker, writes one request and waits on the pipe with
`select` until its deadline. When the deadline passes, a worker that is computing is killed and
replaced at once (its replacement imports SymPy in the background while the other workers keep
serving); a worker still starting up is kept and told to drop its late answer. No signals are
used, so the deadline holds in every thread.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

import jaxrl_lrm

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jaxrl_lrm.__file__)))


STARTUP_TIMEOUT_S = 60.0


class _Worker:
    """One SymPy subprocess and its read buffer; used by one thread at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PKG_ROOT, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jaxrl_lrm.rewards.math_sympy"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, close_fds=True,
        )
        self.buf = b""
        self.ready = False
        self.stale = 0  # answers still owed to callers that gave up waiting

    def _lines(self, deadline: float):
        """Yields protocol lines until `deadline`; stops early on end of file."""
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                yield line.strip()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("worker exited")
            self.buf += chunk

    def wait_ready(self, timeout_s: float) -> bool:
        """Blocks until the worker has imported SymPy (its `ready` line), up to `timeout_s`."""
        if self.ready:
            return True
        try:
            for line in self._lines(time.monotonic() + timeout_s):
                if line == b"ready":
                    self.ready = True
                    return True
        except (OSError, EOFError):
            pass
        return False

    def request(self, pred: str, gold: str, deadline: float) -> bool | None:
        """The worker's verdict, or `None` if `deadline` passed first."""
        self.proc.stdin.write((json.dumps([pred, gold]) + "\n").encode())
        self.proc.stdin.flush()
        for line in self._lines(deadline):
            if line == b"ready":
                self.ready = True
            elif self.stale:
                self.stale -= 1
            else:
                return line == b"1"
        self.stale += 1
        return None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = size
        self.idle: queue.Queue[_Worker] = queue.Queue()
        workers = [_Worker() for _ in range(size)]  # start them all, then wait for each
        for w in workers:
            # A new pool's start-up (importing SymPy, ~1 s) is not charged to the first
            # comparisons: without this wait the first symbolic checks of a process would
            # time out and count a right answer as wrong. Replacements of killed workers
            # start while the others serve.
            w.wait_ready(STARTUP_TIMEOUT_S)
            self.idle.put(w)

    def compare(self, pred: str, gold: str, deadline: float) -> bool | None:
        try:
            w = self.idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        result, dead = None, False
        try:
            result = w.request(pred, gold, deadline)
        except (OSError, EOFError, ValueError):
            dead = True
        if dead or (result is None and w.ready) or w.stale > 2:
            w.kill()
            w = _Worker()
        self.idle.put(w)
        return result

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().kill()
            except queue.Empty:
                return


_POOL: _Pool | None = None
_LOCK = threading.Lock()


def default_size() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def get_pool(size: int | None = None) -> _Pool:
    """The process-wide pool, created on first use (and again after a `fork`)."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL.pid != os.getpid() or (size and size != _POOL.size):
            if _POOL is not None and _POOL.pid == os.getpid():
                _POOL.close()
            _POOL = _Pool(size or default_size())
            if not getattr(get_pool, "_atexit", False):
                atexit.register(shutdown)
                get_pool._atexit = True
        return _POOL


def shutdown() -> None:
    """Kills the worker processes; the next SymPy comparison starts a new pool."""
    global _POOL
    with _LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()
        _POOL = None
