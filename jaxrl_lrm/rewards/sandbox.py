"""Run untrusted Python in a contained process (`execute`); the caller's side of the sandbox.

Each calling process starts one zygote (`_supervisor.py`, its own interpreter) on first use: it
builds a private read-only root and then forks one contained run per request, so a run costs a
few forks instead of two interpreter start-ups. Every run gets its own PID, mount, IPC, network,
UTS and user namespaces, a private /proc, a size-limited tmpfs as /tmp (its only writable
place), uid nobody when the caller is root, a fresh session keyring, rlimits, no capabilities and
no_new_privs; when the program exits, times out, or the caller closes the control pipe or dies,
everything in the run is killed. See `docs/rewards_code_tasks.md` for what is and is not
isolated, and the kernel features needed: when one is missing `execute` raises
`SandboxUnavailable` naming it, rather than running the program less contained.
"""

import dataclasses
import marshal
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

_SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
_OUTPUT_CAP = 1 << 20  # bytes kept per stream
_NPROC = 64
_FSIZE = 64 << 20
_DISK_MB = 64
_NOFILE = 64
_START_TIMEOUT_S = 30.0
# Features the zygote must treat as missing (tests use it to check the error message).
_DENY: tuple[str, ...] = ()


class SandboxUnavailable(RuntimeError):
    """The kernel lacks a feature the sandbox needs; the message names it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecResult:
    """Outcome of one sandboxed run.

    Attributes:
      status: "ok" (exit code 0), "error" (non-zero exit or killed by a signal), "timeout" (wall
        clock or CPU limit) or "memory" (the address-space limit was hit).
      returncode: the program's exit code; negative for death by that signal.
      stdout: decoded standard output, at most 1 MiB (the rest is read and dropped).
      stderr: decoded standard error, same cap.
      wall_s: wall-clock seconds of the program itself.
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    wall_s: float


@dataclasses.dataclass(frozen=True)
class _Zygote:
    owner: int  # the pid that started it: a forked child must start its own
    proc: subprocess.Popen
    sock: socket.socket


_ZYGOTE: list[_Zygote] = []
_LOCK = threading.Lock()


def _start_zygote() -> _Zygote:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cfg = {"fd": theirs.fileno(), "deny": list(_DENY)}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", _SUPERVISOR, marshal.dumps(cfg).hex()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={},
        cwd="/",
        start_new_session=True,
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    ours.settimeout(_START_TIMEOUT_S)
    try:
        raw = ours.recv(1 << 16)
        msg = marshal.loads(raw) if raw else {"error": "the sandbox zygote exited"}
    except (OSError, ValueError, EOFError) as e:
        msg = {"error": f"the sandbox zygote did not start: {e}"}
    ours.settimeout(None)
    if "error" in msg:
        ours.close()
        proc.kill()
        proc.wait()
        raise SandboxUnavailable(msg["error"])
    return _Zygote(owner=os.getpid(), proc=proc, sock=ours)


def _zygote(restart: bool = False) -> _Zygote:
    with _LOCK:
        z = _ZYGOTE[0] if _ZYGOTE else None
        if z is not None and (restart or z.owner != os.getpid() or z.proc.poll() is not None):
            if z.owner == os.getpid():
                shutdown()
            _ZYGOTE.clear()
            z = None
        if z is None:
            z = _start_zygote()
            _ZYGOTE.append(z)
        return z


def shutdown() -> None:
    """Stops this process's zygote (the next run starts a new one); runs in flight are killed."""
    if _ZYGOTE and _ZYGOTE[0].owner == os.getpid():
        z = _ZYGOTE.pop()
        z.sock.close()
        try:
            z.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            z.proc.kill()
            z.proc.wait()


def start_run(
    mode: str, program: str, *, timeout_s: float, memory_mb: int, fds: dict[str, int]
) -> tuple[int, int]:
    """Starts one contained run; returns `(ctl_w, status_r)`.

    `mode` is "exec" (`fds` has "stdin", "stdout", "stderr") or "serve" (`fds` has "rpc": the
    program's end of the harness channel, its fd 3). The descriptors in `fds` are closed here.
    Closing `ctl_w` kills the run; `status_r` yields one JSON status line once it is over.
    """
    data = program.encode("utf-8", "surrogatepass")
    prog = os.memfd_create("prog", os.MFD_CLOEXEC)
    ctl_r, ctl_w = os.pipe()
    status_r, status_w = os.pipe()
    mine = {"ctl": ctl_r, "status": status_w, "prog": prog, **fds}
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(prog, view) :]
        cfg = {
            "mode": mode,
            "fds": list(mine),
            "timeout_s": float(timeout_s),
            "prog_len": len(data),
            "disk_mb": _DISK_MB,
            "host_root": os.geteuid() == 0,
            "limits": {
                "cpu_s": int(timeout_s) + 2,
                "as_bytes": int(memory_mb) << 20,
                "nproc": _NPROC,
                "fsize_bytes": _FSIZE,
                "nofile": _NOFILE,
            },
        }
        payload = [marshal.dumps(cfg)]
        try:
            socket.send_fds(_zygote().sock, payload, list(mine.values()))
        except OSError:  # the zygote died (or was killed): one fresh start
            socket.send_fds(_zygote(restart=True).sock, payload, list(mine.values()))
    except BaseException:
        os.close(ctl_w)
        os.close(status_r)
        raise
    finally:
        for fd in mine.values():
            os.close(fd)
    return ctl_w, status_r


def read_status(status_r: int, deadline: float) -> dict | None:
    """The run's status line from `status_r`, or None if it did not come by `deadline`.

    Raises:
      SandboxUnavailable: if the run could not be set up (the message names the feature).
    """
    raw = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([status_r], [], [], left)[0]:
            return None
        chunk = os.read(status_r, 1 << 16)
        if not chunk:
            break
        raw += chunk
    msg = marshal.loads(raw) if raw else None  # written by the run's trusted supervisor
    if msg is not None and msg["error"]:
        raise SandboxUnavailable(msg["error"])
    return msg


def _drain(fds: dict[str, int], stdin: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Feeds stdin and reads both output pipes until EOF or `deadline`, keeping the first bytes.

    Closes stdin once it is written (the program then sees EOF) and marks it -1 in `fds`; the
    caller closes the rest.
    """
    sel = selectors.DefaultSelector()
    out, err, in_fd = fds["stdout"], fds["stderr"], fds["stdin"]
    kept = {out: bytearray(), err: bytearray()}
    for fd in (out, err, in_fd):
        os.set_blocking(fd, False)
    sel.register(out, selectors.EVENT_READ)
    sel.register(err, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        os.close(in_fd)
        fds["stdin"] = -1
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                fd = key.fd
                if fd == in_fd:
                    try:
                        pending = pending[os.write(fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed stdin
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        os.close(fd)
                        fds["stdin"] = -1
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                elif len(kept[fd]) < _OUTPUT_CAP:
                    kept[fd] += chunk[: _OUTPUT_CAP - len(kept[fd])]
    finally:
        sel.close()
    return bytes(kept[out]), bytes(kept[err])


def execute(
    program: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512
) -> ExecResult:
    """Runs `program` (Python source) as `prog.py` in a contained run (see the module docstring).

    Args:
      program: Python source, run as `__main__` in a Python started like `python -I -S -B`.
      stdin: text fed to the program's standard input.
      timeout_s: wall-clock limit in seconds (the CPU-time rlimit is `int(timeout_s) + 2`).
      memory_mb: address-space limit in MiB (RLIMIT_AS, so it bounds virtual memory).

    Returns:
      An `ExecResult`. Never raises for anything the program does.

    Raises:
      ValueError: if `timeout_s` or `memory_mb` is not positive, or `program` is not a string.
      SandboxUnavailable: if the kernel lacks a feature the sandbox needs (the message says which).
    """
    if not isinstance(program, str):
        raise ValueError(f"program must be a str, got {type(program).__name__}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not memory_mb > 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        ctl_w, status_r = start_run(
            "exec",
            program,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            fds={"stdin": in_r, "stdout": out_w, "stderr": err_w},
        )
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    # The supervisor enforces the limit; this backstop only catches one that hangs.
    deadline = time.monotonic() + timeout_s + 5.0
    ours = {"stdin": in_w, "stdout": out_r, "stderr": err_r, "status": status_r, "ctl": ctl_w}
    try:
        out, err = _drain(ours, stdin.encode("utf-8", "replace"), deadline)
        msg = read_status(status_r, deadline)
    finally:
        for fd in ours.values():  # closing ctl_w kills whatever is left of the run
            if fd >= 0:
                os.close(fd)
    if msg is None:
        return ExecResult(status="timeout", returncode=-9, stdout="", stderr="", wall_s=0.0)
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    code = msg["returncode"]
    if msg["timed_out"] or code == -signal.SIGXCPU:
        status = "timeout"
    elif code != 0 and "MemoryError" in stderr[-2000:]:
        status = "memory"
    else:
        status = "ok" if code == 0 else "error"
    return ExecResult(
        status=status, returncode=code, stdout=stdout, stderr=stderr, wall_s=msg["wall_s"]
    )
