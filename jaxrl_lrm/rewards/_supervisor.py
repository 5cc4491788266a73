"""Sandbox zygote: a pre-isolated Python process that forks one contained run per request.

Run as its own interpreter (`python -I -S -B _supervisor.py CONFIG`), never imported by the
package; standard library only (plus `_wire.py` beside it). Start-up, once:
  * a user namespace when not root (mapping the caller to uid 0 inside), a private mount
    namespace, and a new root: a small tmpfs holding read-only, nosuid binds of `/usr` (`/lib*`,
    `/bin` as on the host), the Python installation (its `site-packages` covered), five device
    nodes, a stub `/etc`, empty `/proc` and `/tmp`; `pivot_root` onto it and the old root
    detached, so no host path is reachable (not even by a chroot escape);
  * it then answers `{"ready": true}` or `{"error": why}` on its socket and waits for requests.
Per request (a JSON config plus file descriptors over the SOCK_SEQPACKET socket) it forks:
  S, the run's supervisor: new mount, IPC, network, UTS and PID namespaces; enforces the wall
    clock and kills the run when the caller closes the control pipe (or dies); writes one JSON
    status line; dies with the zygote (PR_SET_PDEATHSIG).
  C, PID 1 of the run: mounts the run's size-limited tmpfs on /tmp and its own /proc, then
    takes uid nobody (when the host caller is root), a fresh session keyring, its own user
    namespace (so RLIMIT_NPROC is counted per run), rlimits, no capabilities, no_new_privs and
    only its own descriptors; then the program's code runs in this already started interpreter
    (no exec), and in "serve" mode `_wire.serve` answers the harness. When C exits (or S kills
    it) the kernel kills everything else in the PID namespace.
The zygote exits when its socket closes or its parent changes.
"""

# Only cheap imports: the zygote's start-up is on the first call's critical path (`json` is
# imported on the first "serve" request; `socket`, `signal` and `re` would pull in `enum`).
import _socket
import atexit
import builtins
import ctypes
import gc
import marshal
import os
import resource
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire  # noqa: E402

del sys.path[0]

NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = (
    0x20000,
    0x4000000,
    0x8000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
NOBODY = 65534
SIGKILL = 9
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "keyctl": 250},
    "aarch64": {"pivot_root": 41, "keyctl": 219},
}
_HINTS = {
    "user": "user namespaces (CONFIG_USER_NS; sysctl user.max_user_namespaces > 0; on Ubuntu "
    "kernel.apparmor_restrict_unprivileged_userns=0 when not root)",
    "mount": "mount namespaces (CONFIG_NAMESPACES) and mounting tmpfs/bind/proc in them",
    "pid": "PID namespaces (CONFIG_PID_NS)",
    "ipc": "IPC namespaces (CONFIG_IPC_NS)",
    "net": "network namespaces (CONFIG_NET_NS)",
    "uts": "UTS namespaces (CONFIG_UTS_NS)",
    "pivot_root": "pivot_root(2) onto a tmpfs",
    "keyring": "keyctl(2) (CONFIG_KEYS) to give the program a fresh session keyring",
    "pidfd": "pidfd_open(2) (Linux >= 5.3)",
}
libc = ctypes.CDLL(None, use_errno=True)
_DENY: set[str] = set()  # features to treat as missing (the tests' way to check the message)


class Missing(OSError):
    def __init__(self, feature: str, call: str, errno: int):
        super().__init__(
            errno,
            f"sandbox: {call} failed ({os.strerror(errno)}); the sandbox needs {_HINTS[feature]}",
        )


def _check(ret: int, feature: str, call: str) -> None:
    if feature in _DENY:
        raise Missing(feature, call, 1)
    if ret != 0:
        raise Missing(feature, call, ctypes.get_errno())


def _mount(src, dst, fstype, flags, data=None, feature="mount"):
    enc = lambda s: None if s is None else s.encode()
    _check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), feature, f"mount {dst}")


def _syscall(name: str, *args) -> int:
    return libc.syscall(_SYSCALLS.get(os.uname().machine, _SYSCALLS["x86_64"])[name], *args)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_self(inside: int, uid: int, gid: int) -> None:
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside} {uid} 1")
    _write("/proc/self/gid_map", f"{inside} {gid} 1")


def _bind_ro(src: str, dst: str, dev: bool = False) -> None:
    _mount(src, dst, None, BIND | REC)
    f = os.statvfs(src).f_flag  # keep the flags the source has (locked in a user namespace)
    keep = (f & (NODEV | NOEXEC)) | (1024 if f & 1024 else 0) | (2048 if f & 2048 else 0)
    keep |= (1 << 21) if f & 4096 else 0
    _mount(None, dst, None, REMOUNT | BIND | RDONLY | NOSUID | (0 if dev else NODEV) | keep)


def _build_root() -> None:
    """Enters the zygote's namespaces and pivots onto the minimal read-only root."""
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        _check(libc.unshare(NEWUSER), "user", "unshare(CLONE_NEWUSER)")
        _map_self(0, uid, gid)
    _check(libc.unshare(NEWNS), "mount", "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, REC | PRIVATE)
    prefixes = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)})
    new = next(
        d
        for d in ("/tmp", "/mnt", "/media", "/srv", "/opt", "/home")
        if os.path.isdir(d) and not any((p + "/").startswith(d + "/") for p in prefixes)
    )
    _mount("tmpfs", new, "tmpfs", NOSUID | NODEV, "size=1m,mode=755")
    for top in ("usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin"):
        host = "/" + top
        if os.path.islink(host):
            os.symlink(os.readlink(host), new + host)
        elif os.path.isdir(host):
            os.mkdir(new + host)
            _bind_ro(host, new + host)
    for p in prefixes:
        if not p.startswith("/usr/") and not os.path.isdir(new + p):
            os.makedirs(new + p)
            _bind_ro(p, new + p)
        ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        site = f"{new}{p}/lib/{ver}/site-packages"
        if os.path.isdir(site):
            _mount("tmpfs", site, "tmpfs", RDONLY | NOSUID | NODEV, "size=4k")
    for d in ("dev", "etc", "proc", "tmp", "var", ".old"):
        os.mkdir(f"{new}/{d}")
    if uid != 0:
        # In a user namespace the kernel lets a run mount its own /proc only while a full proc
        # mount is visible; each run detaches this one right after mounting its own.
        os.mkdir(f"{new}/.proc")
        _mount("/proc", f"{new}/.proc", None, BIND | REC, feature="pid")
    for node in ("null", "zero", "full", "random", "urandom"):
        open(f"{new}/dev/{node}", "w").close()
        _bind_ro(f"/dev/{node}", f"{new}/dev/{node}", dev=True)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("shm", "/tmp"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{new}/dev/{name}")
    os.symlink("/tmp", f"{new}/var/tmp")
    _write(
        f"{new}/etc/passwd",
        f"root:x:0:0::/:/bin/false\nnobody:x:{NOBODY}:{NOBODY}::/tmp:/bin/false\n",
    )
    _write(f"{new}/etc/group", f"root:x:0:\nnogroup:x:{NOBODY}:\n")
    _write(f"{new}/etc/hostname", "sandbox\n")
    os.chdir(new)
    _check(_syscall("pivot_root", b".", b".old"), "pivot_root", "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", 2), "pivot_root", "umount2(old root, MNT_DETACH)")
    os.rmdir("/.old")
    _mount(None, "/", None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)


def _run_program(src: str, serve: bool) -> int:
    """Runs `src` as `__main__` the way `python prog.py` would; returns the exit status."""
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = sys.__stderr__ = open(
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    main = type(sys)("__main__")
    main.__file__, main.__builtins__ = "prog.py", builtins
    sys.modules["__main__"], sys.argv = main, ["prog.py"]
    atexit._clear()
    rc = 0
    try:
        exec(compile(src, "prog.py", "exec"), main.__dict__)
        if serve:
            _wire.serve(3, main.__dict__, os)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            rc = (e.code or 0) & 0xFF
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except BaseException:  # noqa: BLE001 - reported like the interpreter does
        sys.excepthook(*sys.exc_info())
        rc = 1
    threads = sys.modules.get("threading")  # as the interpreter does: join non-daemon threads
    for step in (
        getattr(threads, "_shutdown", None),
        atexit._run_exitfuncs,
        sys.stdout.flush,
        sys.stderr.flush,
    ):
        try:
            if step is not None:
                step()
        except BaseException:  # noqa: BLE001, S110 - the interpreter ignores these too
            pass
    return rc


def _program(cfg: dict, fds: dict, report: int) -> None:
    """C, PID 1 of the run: its /tmp and /proc, then the program's identity and limits, then
    the program itself; never returns. When it exits the kernel kills the rest of the run."""
    try:
        libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
        os.close(fds.pop("ctl"))
        os.close(fds.pop("status"))
        opts = f"size={cfg['disk_mb']}m,nr_inodes=4096,mode=1777"
        _mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, opts)
        _mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, None, feature="pid")
        if os.path.isdir("/.proc"):
            _check(libc.umount2(b"/.proc", 2), "pid", "umount2(/.proc)")
        _socket.sethostname("sandbox")
        if os.getuid() == 0 and cfg["host_root"]:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # so we may write our own uid_map
        _check(0 if _syscall("keyctl", 1, None) >= 0 else -1, "keyring", "keyctl(JOIN_SESSION)")
        uid, gid = os.getuid(), os.getgid()
        # Created while RLIMIT_NPROC is still unlimited, so only this namespace's count is capped.
        _check(libc.unshare(NEWUSER), "user", "unshare(CLONE_NEWUSER) for the program")
        _map_self(uid, uid, gid)
        lim = cfg["limits"]
        for res, soft, hard in (
            # As PID 1 the program ignores SIGXCPU; the hard limit's SIGKILL stops it.
            (resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"]),
            (resource.RLIMIT_AS, lim["as_bytes"], lim["as_bytes"]),
            (resource.RLIMIT_NPROC, lim["nproc"], lim["nproc"]),
            (resource.RLIMIT_FSIZE, lim["fsize_bytes"], lim["fsize_bytes"]),
            (resource.RLIMIT_NOFILE, lim["nofile"], lim["nofile"]),
            (resource.RLIMIT_CORE, 0, 0),
        ):
            resource.setrlimit(res, (soft, hard))
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
        if libc.capset(hdr, (ctypes.c_uint32 * 6)()) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.chdir("/tmp")
        src = os.pread(fds["prog"], cfg["prog_len"], 0).decode("utf-8", "replace")
        with open("prog.py", "w", encoding="utf-8") as f:
            f.write(src)
        if cfg["mode"] == "serve":
            null = os.open("/dev/null", os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)
            os.dup2(fds["rpc"], 3)
        else:
            for target, key in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
                os.dup2(fds[key], target)
        os.closerange(4 if cfg["mode"] == "serve" else 3, 1 << 16)
    except OSError as e:
        os.write(report, f"E {e}\n".encode())
        os._exit(125)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    os._exit(_run_program(src, cfg["mode"] == "serve"))


def _supervise(cfg: dict, fds: dict, zygote: int) -> None:
    """S: the run's namespaces, wall clock and status line; never returns."""
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    if os.getppid() != zygote:
        os._exit(1)
    status_fd, ctl = fds["status"], fds["ctl"]
    msg = {"returncode": -9, "timed_out": False, "cancelled": False, "wall_s": 0.0, "error": None}
    try:
        for name, flag in (
            ("mount", NEWNS),
            ("ipc", NEWIPC),
            ("net", NEWNET),
            ("uts", NEWUTS),
            ("pid", NEWPID),
        ):
            _check(libc.unshare(flag), name, f"unshare(CLONE_NEW{name.upper()})")
        report_r, report_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            _program(cfg, fds, report_w)
        os.close(report_w)
        for key in list(fds):
            if key not in ("status", "ctl"):
                os.close(fds.pop(key))
        pidfd = os.pidfd_open(pid)
        deadline = start + cfg["timeout_s"]
        while True:
            left = deadline - time.monotonic()
            ready = select.select([pidfd, ctl], [], [], max(left, 0))[0] if left > 0 else []
            if pidfd in ready:
                break
            if ctl in ready and os.read(ctl, 1):
                continue
            msg["cancelled" if ready else "timed_out"] = True
            os.kill(pid, SIGKILL)
            break
        _, status, usage = os.wait4(pid, 0)
        msg["wall_s"] = time.monotonic() - start
        msg["returncode"] = os.waitstatus_to_exitcode(status)
        if usage.ru_utime + usage.ru_stime >= cfg["limits"]["cpu_s"]:
            msg["timed_out"] = True  # killed at the CPU-time limit
        with os.fdopen(report_r, "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                if line.startswith("E "):
                    msg["error"] = line[2:]
    except OSError as e:
        msg["error"] = str(e)
    os.write(status_fd, marshal.dumps(msg))
    os._exit(0)


def _serve(sock) -> None:
    parent, me = os.getppid(), os.getpid()
    while True:
        while True:  # reap finished runs
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if os.getppid() != parent:
            return
        if not select.select([sock], [], [], 1.0)[0]:
            continue
        data, anc, _, _ = sock.recvmsg(1 << 16, _socket.CMSG_LEN(8 * 4))
        if not data:
            return
        raw = b"".join(d for lvl, kind, d in anc if (lvl, kind) == (_socket.SOL_SOCKET, 1))
        fds = [int.from_bytes(raw[i : i + 4], sys.byteorder) for i in range(0, len(raw) - 3, 4)]
        cfg = marshal.loads(data)
        if cfg["mode"] == "serve" and "json" not in sys.modules:
            import json  # noqa: F401 - once, here, so no run pays for it
        named = dict(zip(cfg["fds"], fds))
        if os.fork() == 0:
            sock.close()
            _supervise(cfg, named, me)
        for fd in fds:
            os.close(fd)


def main() -> None:
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    _DENY.update(cfg.get("deny", ()))
    sock = _socket.socket(fileno=cfg["fd"])
    try:
        _build_root()
        if "pidfd" in _DENY or not hasattr(os, "pidfd_open"):
            raise Missing("pidfd", "os.pidfd_open", 38)
    except (OSError, StopIteration) as e:
        sock.send(marshal.dumps({"error": str(e)}))
        return
    sock.send(marshal.dumps({"ready": True}))
    # Forked runs share our pages copy-on-write; a collector walking every object would copy
    # them all, so our objects are frozen out of collection (the program's own are collected).
    gc.collect()
    gc.freeze()
    _serve(sock)


if __name__ == "__main__":
    main()
