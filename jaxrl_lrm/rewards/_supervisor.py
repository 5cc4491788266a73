"""Sandbox supervisor: runs as its own `python -I -S` process, never imported by the package.

`sandbox.execute` starts this file with one JSON argument. It enters fresh namespaces (user when
not root, then network, mount and PID, each where the kernel allows), binds the work directory
over the world-writable directories, becomes a child subreaper, forks the program (which is PID 1
of the new PID namespace when there is one: when it exits, the kernel kills everything left in
the namespace), enforces the wall-clock limit, kills and reaps every remaining descendant and
writes one JSON status line to the pipe `status_fd`. Only the standard library is used; keep it that way.
"""

import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces(libc, cfg):
    """Unshares what the kernel allows; returns the names of the namespaces entered."""
    got = []
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        # Unprivileged: a user namespace first, mapping our uid and gid to themselves, gives the
        # capabilities the other namespaces need; they are dropped again at the program's exec.
        if libc.unshare(CLONE_NEWUSER) == 0:
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
                got.append("user")
            except OSError:
                return got
        else:
            return got
    for name, flag in (("net", CLONE_NEWNET), ("mount", CLONE_NEWNS), ("pid", CLONE_NEWPID)):
        if libc.unshare(flag) == 0:
            got.append(name)
    if "mount" in got:
        # Private propagation so nothing leaks back; then /tmp, /var/tmp and /dev/shm all become
        # the work directory, which is removed afterwards.
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            got.remove("mount")
        else:
            for target in ("/tmp", "/var/tmp", "/dev/shm"):
                if os.path.isdir(target):
                    libc.mount(b".", target.encode(), None, MS_BIND, None)
    return got


def _children():
    me, kids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                kids.append(int(entry))
    return kids


def _kill_all():
    while True:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _run_child(cfg, status_fd, namespaces):
    os.close(status_fd)
    os.setsid()
    lim = cfg["limits"]
    for res, value in (
        (resource.RLIMIT_CPU, lim["cpu_s"]),
        (resource.RLIMIT_AS, lim["as_bytes"]),
        (resource.RLIMIT_NPROC, lim["nproc"]),
        (resource.RLIMIT_FSIZE, lim["fsize_bytes"]),
        (resource.RLIMIT_NOFILE, lim["nofile"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))
    if os.getuid() == 0 and cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    # After setuid (a change of credentials clears it): die if the supervisor dies.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # With a mount namespace /tmp *is* the work directory (its own path is hidden by the bind).
    home = "/tmp" if "mount" in namespaces else cfg["workdir"]
    os.chdir(home)
    argv = [cfg["python"], "-I", "-S", "-B", "prog.py"]
    os.execve(cfg["python"], argv, {"PATH": "/usr/bin:/bin", "HOME": home})


def main():
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    namespaces = _enter_namespaces(libc, cfg) if cfg["namespaces"] else []
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _run_child(cfg, status_fd, namespaces)
        finally:
            os._exit(126)
    os.close(0)  # only the program reads stdin
    timed_out, status = False, 0
    try:
        pidfd = os.pidfd_open(pid)
        ready = select.select([pidfd], [], [], cfg["timeout_s"])[0]
        if not ready:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    except (AttributeError, OSError):  # no pidfd: poll
        deadline = start + cfg["timeout_s"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
                break
            time.sleep(0.002)
    wall = time.monotonic() - start
    _kill_all()
    code = os.waitstatus_to_exitcode(status)
    msg = {"returncode": code, "timed_out": timed_out, "wall_s": wall, "namespaces": namespaces}
    os.write(status_fd, json.dumps(msg).encode())
    os.close(status_fd)


if __name__ == "__main__":
    main()
