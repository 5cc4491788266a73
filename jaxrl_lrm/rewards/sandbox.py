"""Run untrusted Python in a sandboxed subprocess (`execute`).

Layers, each checked by `tests/rewards/test_code.py`:
  * a fresh temporary work directory (removed afterwards) and an empty environment;
  * network, mount and PID namespaces (plus a user namespace when not root): no network at all,
    /tmp, /var/tmp and /dev/shm replaced by the work directory, and every process the program
    starts dies with it;
  * an unprivileged uid (nobody, 65534) when the caller is root;
  * rlimits on CPU time, address space, processes, file size and open files;
  * a wall-clock limit, stdout/stderr read incrementally and capped.

Where the kernel refuses namespaces the rest still applies and a one-time warning names what is
missing. The supervisor that sets this up is `_supervisor.py`, run as its own interpreter.
"""

import dataclasses
import json
import logging
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

_log = logging.getLogger(__name__)

_SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
_NOBODY = 65534
_OUTPUT_CAP = 1 << 20  # bytes kept per stream
_NPROC = 64
_FSIZE = 64 << 20
_NOFILE = 64
_WARNED: set[str] = set()
# Tests switch this off to exercise the fallback path.
_USE_NAMESPACES = True


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


def _world_reachable(path: str) -> bool:
    """True iff uid `nobody` can traverse to and execute `path` (via the "other" bits)."""
    path = os.path.realpath(path)
    try:
        mode = os.stat(path).st_mode
        if not (mode & stat.S_IXOTH and mode & stat.S_IROTH):
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _program_python(drop_uid: bool) -> str:
    """The interpreter for the program: ours, unless uid nobody cannot reach it."""
    if not drop_uid or _world_reachable(sys.executable) and _world_reachable(sys.prefix):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(candidate) and _world_reachable(candidate):
            return os.path.realpath(candidate)
    return ""


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        _log.warning(message)


def _drain(proc: subprocess.Popen, stdin: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Feeds stdin and reads both output pipes until EOF or `deadline`, keeping the first bytes."""
    sel = selectors.DefaultSelector()
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    pending = memoryview(stdin)
    in_fd = proc.stdin.fileno()
    os.set_blocking(in_fd, False)
    if pending:
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            fd = key.fd
            if fd == in_fd:
                try:
                    n = os.write(fd, pending[:65536])
                    pending = pending[n:]
                except (BrokenPipeError, BlockingIOError) as e:
                    if isinstance(e, BlockingIOError):
                        continue
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                sel.unregister(fd)
            elif len(kept[fd]) < _OUTPUT_CAP:
                kept[fd] += chunk[: _OUTPUT_CAP - len(kept[fd])]
    sel.close()
    return bytes(kept[proc.stdout.fileno()]), bytes(kept[proc.stderr.fileno()])


def execute(
    program: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512
) -> ExecResult:
    """Runs `program` (Python source) in the sandbox described in the module docstring.

    Args:
      program: Python source, run as `python -I -S -B prog.py` inside the work directory.
      stdin: text fed to the program's standard input.
      timeout_s: wall-clock limit in seconds (the CPU-time rlimit is `ceil(timeout_s) + 1`).
      memory_mb: address-space limit in MiB (RLIMIT_AS, so it bounds virtual memory).

    Returns:
      An `ExecResult`. Never raises for anything the program does.

    Raises:
      ValueError: if `timeout_s` or `memory_mb` is not positive, or `program` is not a string.
    """
    if not isinstance(program, str):
        raise ValueError(f"program must be a str, got {type(program).__name__}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not memory_mb > 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    is_root = os.geteuid() == 0
    python = _program_python(is_root)
    drop_uid = is_root and bool(python)
    if is_root and not python:
        python = sys.executable
        _warn_once(
            "uid",
            f"sandbox: no Python interpreter reachable by uid {_NOBODY} ({sys.executable} is not);"
            " programs run as root (inside the namespaces). Install a world-readable python3.",
        )
    workdir = tempfile.mkdtemp(prefix="jaxrl_sandbox_")
    try:
        with open(os.path.join(workdir, "prog.py"), "w", encoding="utf-8") as f:
            f.write(program)
        if drop_uid:
            os.chown(workdir, _NOBODY, _NOBODY)
            os.chown(os.path.join(workdir, "prog.py"), _NOBODY, _NOBODY)
        cfg = {
            "workdir": workdir,
            "python": python,
            "namespaces": _USE_NAMESPACES,
            "uid": _NOBODY if drop_uid else None,
            "gid": _NOBODY if drop_uid else None,
            "timeout_s": float(timeout_s),
            "limits": {
                "cpu_s": int(timeout_s) + 2,
                "as_bytes": int(memory_mb) << 20,
                "nproc": _NPROC,
                "fsize_bytes": _FSIZE,
                "nofile": _NOFILE,
            },
        }
        return _run(cfg, stdin.encode("utf-8", "replace"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(cfg: dict, stdin: bytes) -> ExecResult:
    status_r, status_w = os.pipe()
    cfg = {**cfg, "status_fd": status_w}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", _SUPERVISOR, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cfg["workdir"],
            env={},
            start_new_session=True,
            pass_fds=(status_w,),
        )
    finally:
        os.close(status_w)
    # The supervisor enforces the limit; this backstop only catches a supervisor that hangs.
    deadline = time.monotonic() + cfg["timeout_s"] + 5.0
    try:
        out, err = _drain(proc, stdin, deadline)
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
        with os.fdopen(status_r, "rb") as f:
            raw = f.read()
    try:
        msg = json.loads(raw)
    except ValueError:
        return ExecResult(status="timeout", returncode=-9, stdout="", stderr="", wall_s=0.0)
    _check_namespaces(msg["namespaces"])
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


def _check_namespaces(got: list[str]) -> None:
    want = {"net", "mount", "pid"} | ({"user"} if os.geteuid() != 0 else set())
    missing = sorted(want - set(got))
    if missing:
        _warn_once(
            "ns",
            f"sandbox: could not create the {', '.join(missing)} namespace(s); running without "
            "them (no network isolation without 'net', daemons may outlive the program without "
            "'pid', /tmp is shared without 'mount'). Needs root, or unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0).",
        )
