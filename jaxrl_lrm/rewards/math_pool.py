"""A pool of Math-Verify worker processes with a hard, kill-based per-call deadline.

One *zygote* subprocess (`python -m jaxrl_lrm.rewards.math_worker FD`) imports Math-Verify
once and forks workers on request; each worker talks JSON lines over its own pair of pipes.
The parent never forks (it may be a multithreaded JAX process) and never uses
`multiprocessing`, so the pool works from any thread and inside daemonic `multiprocessing`
workers. No signals are used for the deadline, so it holds in every thread.

A call takes an idle worker or, when none is idle, forks a new one (milliseconds: the zygote
has already imported everything); its deadline starts when its request is written. If the
answer is not back by then, the worker is killed (`SIGKILL`, which also stops work stuck inside
SymPy's C code) and the call returns `None` at once, while a background thread forks a
replacement (restarting the zygote first if it has died). A worker has
at most one request in flight and every answer carries its request id, so a late answer can
never be taken for another call's. Starting the zygote (about a second) happens once, before
the first call's deadline starts, and is not charged to it.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import jaxrl_lrm

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jaxrl_lrm.__file__)))
STARTUP_TIMEOUT_S = 120.0
MAX_WORKERS = 64  # concurrent calls beyond this wait for a worker
_ids = itertools.count()


def _read_line(fd: int, buf: bytearray, deadline: float) -> bytes | None:
    """The next line from `fd` (buffered in `buf`), or `None` at `deadline`; EOFError at EOF."""
    while True:
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[:i])
            del buf[: i + 1]
            return line.strip()
        left = max(0.0, deadline - time.monotonic())  # 0: one last non-blocking poll
        if not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError("peer exited")
        buf.extend(chunk)


class _Zygote:
    """The subprocess that has imported Math-Verify and forks ready workers."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PKG_ROOT, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jaxrl_lrm.rewards.math_worker", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.sock, self.buf = ours, bytearray()
        if _read_line(ours.fileno(), self.buf, time.monotonic() + STARTUP_TIMEOUT_S) != b"ready":
            self.close()
            raise RuntimeError("math_worker zygote did not start")

    def fork(self) -> tuple[int, int, int]:
        """`(pid, request write fd, response read fd)` of a new worker."""
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            socket.send_fds(self.sock, [b"f"], [req_r, resp_w])
        finally:
            os.close(req_r)
            os.close(resp_w)
        line = _read_line(self.sock.fileno(), self.buf, time.monotonic() + 30.0)
        if line is None:
            raise OSError("zygote did not fork")
        return int(line), req_w, resp_r

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()  # the zygote exits on end of file
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Worker:
    """One forked worker: its pid and its two pipe ends; used by one thread at a time."""

    def __init__(self, pid: int, req_w: int, resp_r: int) -> None:
        self.pid, self.req_w, self.resp_r = pid, req_w, resp_r
        os.set_blocking(req_w, False)  # a big request is written as the worker reads it
        self.buf = bytearray()
        self.alive = True

    def request(self, payload: dict, timeout_s: float) -> bool | None:
        """The worker's verdict, or `None` if `timeout_s` passed first."""
        rid = next(_ids)
        data = (json.dumps({**payload, "id": rid}) + "\n").encode()
        deadline = time.monotonic() + timeout_s
        view = memoryview(data)
        while view:  # large requests: write as the worker reads, within the deadline
            left = max(0.0, deadline - time.monotonic())
            if not select.select([], [self.req_w], [], left)[1]:
                return None
            try:
                view = view[os.write(self.req_w, view) :]
            except BlockingIOError:
                pass
        while True:
            line = _read_line(self.resp_r, self.buf, deadline)
            if line is None:
                return None
            got, _, verdict = line.partition(b" ")
            if got == str(rid).encode():
                return verdict == b"1"

    def kill(self) -> None:
        if self.alive:
            self.alive = False
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            for fd in (self.req_w, self.resp_r):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        """Lets the worker exit by itself (its request pipe reaches end of file)."""
        if self.alive:
            self.alive = False
            for fd in (self.req_w, self.resp_r):
                os.close(fd)


class _Pool:
    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = size
        self.lock = threading.Condition()
        self.zlock = threading.Lock()
        self.zygote = _Zygote()
        self.idle = [self._spawn() for _ in range(size)]
        self.count = size
        self.closed = False

    def _spawn(self) -> _Worker:
        with self.zlock:
            if not self.zygote.alive():
                self.zygote.close()
                self.zygote = _Zygote()
            return _Worker(*self.zygote.fork())

    def _acquire(self) -> _Worker:
        with self.lock:
            while not self.idle and self.count >= MAX_WORKERS and not self.closed:
                self.lock.wait(0.05)
            if self.closed:
                raise RuntimeError("pool closed")
            if self.idle:
                return self.idle.pop()
            self.count += 1
        try:
            return self._spawn()
        except Exception:
            with self.lock:
                self.count -= 1
            raise

    def _release(self, w: _Worker | None) -> None:
        with self.lock:
            if w is None:
                self.count -= 1
            elif self.closed:
                w.close()
            else:
                self.idle.append(w)
            self.lock.notify()

    def compare(self, payload: dict, timeout_s: float) -> bool | None:
        """Math-Verify's verdict on `payload`, or `None` when it took longer than `timeout_s`."""
        w = self._acquire()
        result = None
        try:
            result = w.request(payload, timeout_s)
        except (OSError, EOFError, ValueError):
            pass
        if result is None:
            w.kill()
            self._release(None)
            threading.Thread(target=self._refill, daemon=True).start()
        else:
            self._release(w)
        return result

    def _refill(self) -> None:
        """Forks a replacement for a killed worker while the caller returns."""
        with self.lock:
            if self.closed or self.count >= self.size:
                return
            self.count += 1
        try:
            w = self._spawn()
        except Exception:  # noqa: BLE001 - the next call that needs a worker forks one
            w = None
        self._release(w)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for w in self.idle:
                w.close()
            self.idle = []
            self.lock.notify_all()
        with self.zlock:
            self.zygote.close()


_POOL: _Pool | None = None
_LOCK = threading.Lock()


def default_size() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def get_pool(size: int | None = None) -> _Pool:
    """The process-wide pool, created (and waited for) on first use and again after a `fork`."""
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
    """Stops the workers and the zygote; the next comparison starts a new pool."""
    global _POOL
    with _LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()
        _POOL = None
