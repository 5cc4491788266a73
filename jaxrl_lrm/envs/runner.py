"""Runs tool calls in worker processes with a per-call timeout and an output cap.

A tool is untrusted in the way it behaves (it may hang, crash its process or print without
end), so every call runs in a worker process started with the "forkserver" method (JAX's
threads make `fork` of the trainer unsafe). A call that passes `timeout_s` has its worker
killed and replaced; a worker that dies (a segfault, `os._exit`) is replaced too; an exception
in the tool becomes its message; output past `max_chars` is cut in the worker, before it is
sent back. Each case ends in a `ToolResult` whose `text` says what happened, so the model sees
it as the observation and the trainer never sees an exception from a tool.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import queue
import resource
import time

STATUSES = ("ok", "error", "timeout", "crashed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolResult:
    """One call's outcome.

    Attributes:
      text: the tool's output, or a message saying how it failed.
      status: "ok", "error" (the tool raised), "timeout" (cut off at `timeout_s`) or "crashed"
        (its process died).
      truncated: the output was longer than the cap and was cut.
      seconds: wall time of the call as the caller saw it.
    """

    text: str
    status: str
    truncated: bool = False
    seconds: float = 0.0


def _serve(conn, memory_mb: int) -> None:
    """A worker's loop: `(fn, kwargs, max_chars)` in, `(status, text, truncated)` out. What a
    tool prints goes to /dev/null (its output is its return value), and its address space is
    capped at `memory_mb`, so a flood or a runaway allocation is the tool's own error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            fn, kwargs, max_chars = conn.recv()
        except EOFError:
            return
        try:
            out = fn(**kwargs)
            text = out if isinstance(out, str) else repr(out)
            status = "ok"
        except BaseException as e:  # a tool's SystemExit or KeyboardInterrupt is its error too
            text, status = f"{type(e).__name__}: {e}", "error"
        conn.send((status, _cut(text, max_chars, status), len(text) > max_chars))


def _cut(text: str, max_chars: int, status: str) -> str:
    """Output keeps its head; an error message its head and its tail (a traceback's last line)."""
    if len(text) <= max_chars or status == "ok":
        return text[:max_chars]
    half = max_chars // 2
    return f"{text[:half]}\n...\n{text[len(text) - (max_chars - half) :]}"


@dataclasses.dataclass
class _Worker:
    proc: multiprocessing.process.BaseProcess
    conn: object


class ToolRunner:
    """A few worker processes that run tool calls; `run(calls)` answers them all."""

    def __init__(
        self,
        *,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        max_chars: int = 4000,
        memory_mb: int = 2048,
        start_method: str = "forkserver",
    ):
        """Args:
        num_workers: processes; calls of one `run` are spread over them.
        timeout_s: wall-clock limit of one call, after which its worker is killed.
        max_chars: characters of output kept (the observation's token cap comes after).
        memory_mb: address-space limit of a worker process.
        start_method: "forkserver" or "spawn".
        """
        if not (isinstance(num_workers, int) and num_workers >= 1):
            raise ValueError(f"num_workers={num_workers!r}: expected an integer >= 1")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r}: expected a number > 0")
        if not (isinstance(max_chars, int) and max_chars >= 1):
            raise ValueError(f"max_chars={max_chars!r}: expected an integer >= 1")
        if not (isinstance(memory_mb, int) and memory_mb >= 64):
            raise ValueError(f"memory_mb={memory_mb!r}: expected an integer >= 64")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method={start_method!r}: expected 'forkserver' or 'spawn'")
        self.timeout_s, self.max_chars, self.memory_mb = float(timeout_s), max_chars, memory_mb
        self._ctx = multiprocessing.get_context(start_method)
        self._workers: list[_Worker | None] = [None] * num_workers
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(num_workers):
            self._free.put(i)

    def _worker(self, i: int) -> _Worker:
        w = self._workers[i]
        if w is None or not w.proc.is_alive():
            ours, theirs = self._ctx.Pipe()
            proc = self._ctx.Process(target=_serve, args=(theirs, self.memory_mb), daemon=True)
            proc.start()
            theirs.close()
            w = self._workers[i] = _Worker(proc, ours)
        return w

    def _kill(self, i: int) -> None:
        w, self._workers[i] = self._workers[i], None
        if w is not None:
            w.proc.kill()
            w.proc.join()
            w.conn.close()

    def call(self, fn, kwargs: dict) -> ToolResult:
        """Runs `fn(**kwargs)` in a free worker (waits for one); safe to call from threads."""
        i = self._free.get()
        try:
            start = time.monotonic()
            w = self._worker(i)
            w.conn.send((fn, kwargs, self.max_chars))
            if w.conn.poll(self.timeout_s):
                return self._receive(i, time.monotonic() - start)
            self._kill(i)
            return ToolResult(
                text=f"the tool did not finish within {self.timeout_s:g} s and was stopped",
                status="timeout",
                seconds=time.monotonic() - start,
            )
        finally:
            self._free.put(i)

    def run(self, calls: list[tuple]) -> list[ToolResult]:
        """Runs `(fn, kwargs)` calls over the workers at once; results in call order."""
        if len(calls) <= 1:
            return [self.call(fn, kw) for fn, kw in calls]
        with cf.ThreadPoolExecutor(len(self._workers)) as pool:
            return list(pool.map(lambda c: self.call(*c), calls))

    def _receive(self, i: int, seconds: float) -> ToolResult:
        try:
            status, text, truncated = self._workers[i].conn.recv()
        except (EOFError, OSError):
            self._workers[i].proc.join(timeout=1.0)
            code = self._workers[i].proc.exitcode
            self._kill(i)
            return ToolResult(
                text=f"the tool's process died (exit code {code})",
                status="crashed",
                seconds=seconds,
            )
        return ToolResult(text=text, status=status, truncated=truncated, seconds=seconds)

    def close(self) -> None:
        """Stops the workers."""
        for i in range(len(self._workers)):
            self._kill(i)

    def __enter__(self) -> ToolRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
