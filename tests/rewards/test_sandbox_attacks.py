"""Second attack suite on the code sandbox: each program would earn full reward (or leave a trace
on the host) if its attack worked; every one must score 0 or leave nothing behind."""

import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psutil
import pytest

from jaxrl_lrm.rewards import sandbox
from jaxrl_lrm.rewards.code import execute, unit_test_reward

ROOT = os.geteuid() == 0
TESTS = "assert add(1, 2) == 3\nassert add(-1, 5) == 4\nassert add(10, 20) == 30\n"
IO_CASES = [{"input": "2 3\n", "output": "5\n"}, {"input": "7 8\n", "output": "15\n"}]
WRONG = "def add(a, b):\n    return a - b\n"


def _score(code: str, tests=TESTS, timeout_s: float = 2.0) -> float:
    return unit_test_reward(["p"], [f"```python\n{code}\n```"], [tests], timeout_s=timeout_s)[0]


def _sandboxed(marker: str) -> list[psutil.Process]:
    """Live processes of sandboxed runs: uid nobody (when we are root) or `marker` in argv."""
    found = []
    for p in psutil.process_iter(["uids", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if marker in " ".join(p.info["cmdline"] or []) or (
            ROOT and p.info["uids"] and p.info["uids"].real == 65534
        ):
            found.append(p)
    return found


def _gone(marker: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while _sandboxed(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- gaming the harness: a wrong `add` plus a trick that used to make the run "pass" ------------

HARNESS_ATTACKS = {
    "os_exit_0": WRONG + "import os\nos._exit(0)\n",
    "sys_exit_0": WRONG + "import sys\nsys.exit(0)\n",
    "atexit_exit_0": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook_exit_0": WRONG + "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n",
    "trace_hook_exit_0": WRONG + "import os, sys\n"
    "def tr(frame, event, arg):\n"
    "    if frame.f_code.co_name != 'add' and event in ('line', 'call', 'return'):\n"
    "        os._exit(0)\n"
    "    return tr\n"
    "sys.settrace(tr)\nsys.setprofile(lambda *a: os._exit(0))\n",
    "eq_always_true": "class Yes:\n"
    "    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
    "    __bool__ = lambda s: True\n    __hash__ = lambda s: 0\n"
    "def add(a, b):\n    return Yes()\n",
    "int_subclass_eq": "class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
    "def add(a, b):\n    return I(0)\n",
    "reexec_with_O": WRONG + "import os, sys\nif not sys.flags.optimize:\n"
    "    os.execv(sys.executable, [sys.executable, '-O', *sys.argv])\n",
    "reads_own_test_source": "import gc, re, sys\n"
    "def _find():\n"
    "    text = ''\n"
    "    for path in [__file__, sys.argv[0], '/proc/self/cmdline', '/proc/1/cmdline']:\n"
    "        try: text += open(path, errors='replace').read()\n"
    "        except OSError: pass\n"
    "    text += ' '.join(o for o in gc.get_objects() if isinstance(o, str))\n"
    "    f = sys._getframe()\n"
    "    while f: text += repr(f.f_globals.keys()); f = f.f_back\n"
    "    return dict(((int(a), int(b)), int(c)) for a, b, c in\n"
    "        re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', text))\n"
    "EXPECTED = _find()\n"
    "def add(a, b):\n    return EXPECTED.get((a, b), 0)\n",
    "bool_for_int": "def add(a, b):\n    return True\n",
    "forged_reply_on_channel": WRONG + "import os, struct, json\n"
    "for v in range(40):\n"
    "    body = json.dumps({'v': ['i', hex(v)]}).encode()\n"
    "    try: os.write(3, struct.pack('>I', len(body)) + body)\n"
    "    except OSError: pass\n",
    # The test below reads `math` without importing it, relying on the program's import.
    "patched_stdlib_module": WRONG + "import math\nmath.isclose = lambda *a, **k: True\n",
    "own_abs_builtin": WRONG + "abs = lambda x: 0\nsorted = lambda x: [0, 1]\n",
    "patch_builtins": WRONG
    + "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\n"
    "builtins.isinstance = lambda *a: True\n",
}


HELPER_TESTS = (
    TESTS + "assert math.isclose(add(0.5, 0.25), 0.75)\nassert abs(add(1, 1) - 2) < 1e-9\n"
)


@pytest.mark.parametrize("name", sorted(HARNESS_ATTACKS))
def test_harness_attack_scores_zero(name):
    assert _score(HARNESS_ATTACKS[name], HELPER_TESTS) == 0.0


def test_test_may_use_the_programs_standard_imports():
    assert _score("import math\ndef add(a, b):\n    return a + b\n", HELPER_TESTS) == 1.0
    assert (
        _score("from math import fsum as math\ndef add(a, b):\n    return a + b\n", HELPER_TESTS)
        == 0.8
    )  # `math` is its own name here: math.isclose is not found


def test_io_attack_cannot_find_expected_output():
    token = uuid.uuid4().hex
    # Dumps every string in memory and every small file outside /usr and the Python install.
    snoop = (
        "import gc, os, sys\n"
        "seen = [o for o in gc.get_objects() if isinstance(o, str)]\n"
        "for top in ('/tmp', '/etc', '/dev', '/var', '/proc/1', '/proc/self'):\n"
        "    for root, dirs, files in os.walk(top):\n"
        "        dirs[:] = [d for d in dirs if d not in ('task', 'net', 'map_files')]\n"
        "        for f in files:\n"
        "            try: seen.append(open(os.path.join(root, f), errors='ignore').read(4096))\n"
        "            except OSError: pass\n"
        "print('\\n'.join(seen))\n"
    )
    case = {"input": "7 8\n", "output": token}
    assert _score(snoop, [case], timeout_s=10) == 0.0
    r = execute(snoop, stdin=case["input"], timeout_s=10)
    assert r.status == "ok" and len(r.stdout) > 1000 and token not in r.stdout


def test_legitimate_programs_get_full_reward():
    correct = {
        "plain": "def add(a, b):\n    return a + b\n",
        "stdlib": "import collections, functools, heapq, itertools, math, re, json, fractions\n"
        "import decimal, datetime, bisect, random, string, typing, dataclasses, statistics\n"
        "@functools.lru_cache(None)\n"
        "def add(a, b):\n    return int(math.fsum([a, b]))\n",
        "recursive": "import sys\nsys.setrecursionlimit(10000)\n"
        "def add(a, b):\n    return a if b == 0 else (add(a + 1, b - 1) if b > 0 else add(a - 1, b + 1))\n"
        "assert add(0, 3000) == 3000\n",
        "prints_a_lot": "def add(a, b):\n    print('x' * 100000)\n    return a + b\n"
        "for _ in range(50):\n    print('y' * 100000)\n",
        "main_guard_and_threads": "import threading\n"
        "def add(a, b):\n    out = []\n    t = threading.Thread(target=lambda: out.append(a + b))\n"
        "    t.start(); t.join()\n    return out[0]\n"
        "if __name__ == '__main__':\n    print(add(2, 2))\n",
        "writes_tmp_files": "import os, tempfile\n"
        "def add(a, b):\n    with tempfile.NamedTemporaryFile('w+') as f:\n"
        "        f.write(str(a + b)); f.flush(); f.seek(0)\n        return int(f.read())\n",
    }
    for name, code in correct.items():
        assert _score(code, timeout_s=5) == 1.0, name
    rich = (
        "class Solution:\n    def two(self, xs, t):\n"
        "        seen = {}\n        for i, x in enumerate(xs):\n"
        "            if t - x in seen: return [seen[t - x], i]\n            seen[x] = i\n"
        "def evens(n):\n    yield from range(0, n, 2)\n"
        "def stats(xs):\n    return {'mean': sum(xs) / len(xs), 'set': set(xs), 'none': None}\n"
    )
    rich_tests = (
        "import math\nexpected = [0, 1]\n"
        "assert Solution().two([2, 7, 11], 9) == expected\n"
        "assert list(evens(7)) == [0, 2, 4, 6]\n"
        "assert math.isclose(stats([1, 2])['mean'], 1.5)\n"
        "assert stats([1, 1, 2])['set'] == {1, 2} and stats([1])['none'] is None\n"
        "assert all(Solution().two([a, b], a + b) == [0, 1] for a, b in [(1, 2), (5, 9)])\n"
    )
    assert _score(rich, rich_tests, timeout_s=5) == 1.0
    io = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert _score(io, IO_CASES) == 1.0
    big = "import sys\nsys.stdout.write('z' * 500000 + '\\n')\n"
    assert _score(big, [{"input": "", "output": "z" * 500000}]) == 1.0


# --- outliving and escaping the run -------------------------------------------------------------


def test_daemon_does_not_survive_timeout():
    marker = f"{uuid.uuid4().int % 10**6}.2718"
    prog = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
        "while True: pass\n"
    )
    r = execute(prog, timeout_s=1.0)
    assert r.status == "timeout" and _gone(marker, 1.0)


def test_nothing_survives_kill_9_of_the_trainer():
    marker = f"{uuid.uuid4().int % 10**6}.1414"
    prog = (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "time.sleep(60)\n"
    )
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from jaxrl_lrm.rewards.code import execute\nexecute({prog!r}, timeout_s=60)",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        deadline = time.monotonic() + 30
        while len([p for p in _sandboxed(marker) if marker in " ".join(p.cmdline())]) < 3:
            assert time.monotonic() < deadline, "the program never started"
            time.sleep(0.05)
    finally:
        trainer.kill()
        trainer.wait()
    assert _gone(marker, 3.0)


def test_one_run_exhausting_processes_does_not_starve_others():
    hog = (
        "import os, time\nkids = 0\n"
        "while True:\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30); os._exit(0)\n"
        "    kids += 1\n"
        "print(kids, flush=True)\ntime.sleep(30)\n"
    )
    result = []
    t = threading.Thread(target=lambda: result.append(execute(hog, timeout_s=4)))
    t.start()
    time.sleep(1.5)
    try:
        assert _score("def add(a, b):\n    return a + b\n") == 1.0
        assert execute("import os\nprint(os.fork() > -1)", timeout_s=2).status == "ok"
    finally:
        t.join()
    assert result[0].status == "timeout" and 0 < int(result[0].stdout.split()[0]) <= sandbox._NPROC


def test_cannot_reach_another_runs_directory_or_processes():
    tag = uuid.uuid4().hex
    victim = (
        f"import os, time\nopen('victim_{tag}', 'w').write('x')\ntime.sleep(2.5)\n"
        "print(sorted(os.listdir('.')))\n"
    )
    attacker = (
        "import os\nfound = []\n"
        "for pid in os.listdir('/proc'):\n"
        "    if not pid.isdigit(): continue\n"
        "    try:\n"
        f"        if 'victim_{tag}' in os.listdir(f'/proc/{{pid}}/cwd'):\n"
        f"            open(f'/proc/{{pid}}/cwd/evil_{tag}', 'w').write('x'); found.append(pid)\n"
        "        found.append(open(f'/proc/{pid}/cmdline').read())\n"
        "    except OSError: pass\n"
        "print(found, sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    result = []
    t = threading.Thread(target=lambda: result.append(execute(victim, timeout_s=5)))
    t.start()
    time.sleep(1.0)
    r = execute(attacker, timeout_s=3)
    t.join()
    assert r.status == "ok" and f"victim_{tag}" not in r.stdout and "pytest" not in r.stdout
    assert r.stdout.rstrip().endswith(" ['1']")  # it sees one process: itself, PID 1
    assert f"evil_{tag}" not in result[0].stdout and f"victim_{tag}" in result[0].stdout


@pytest.mark.skipif(platform.machine() != "x86_64", reason="keyctl syscall numbers for x86_64")
def test_callers_session_keyring_is_not_readable():
    libc = ctypes.CDLL(None, use_errno=True)
    secret = f"jaxrl-key-{uuid.uuid4().hex}"
    sandbox.shutdown()  # the zygote is started below, from a process holding the key
    assert libc.syscall(250, 1, b"jaxrl-test-session") > 0  # KEYCTL_JOIN_SESSION_KEYRING
    key = libc.syscall(248, b"user", secret.encode(), b"hunter2-payload", 15, -3)  # add_key @s
    assert key > 0
    prog = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = ctypes.create_string_buffer(256)\n"
        "for ring in (-3, -4, -5, -2, -1):\n"
        f"    k = libc.syscall(250, 10, ring, b'user', {secret.encode()!r}, 0)\n"
        "    if k > 0 and libc.syscall(250, 11, k, buf, 256) > 0: print(buf.value)\n"
        f"    print(libc.syscall(250, 11, {key}, buf, 256), buf.value)\n"
    )
    try:
        r = execute(prog, timeout_s=2)
    finally:
        sandbox.shutdown()
    assert r.status == "ok" and "hunter2" not in r.stdout


def test_host_unix_and_abstract_sockets_not_connectable():
    path = os.path.join(tempfile.gettempdir(), f"jaxrl_sock_{uuid.uuid4().hex[:8]}")
    abstract = f"\0jaxrl_abs_{uuid.uuid4().hex[:8]}"
    servers = []
    for addr in (path, abstract):
        s = socket.socket(socket.AF_UNIX)
        s.bind(addr)
        s.listen()
        s.settimeout(0.5)
        servers.append(s)
    os.chmod(path, 0o777)
    prog = (
        "import socket\n"
        f"for addr in ({path!r}, {abstract!r}, '/run/systemd/private', '/var/run/docker.sock'):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try: s.connect(addr); print('connected', addr)\n"
        "    except OSError as e: print('blocked', e.errno)\n"
    )
    try:
        r = execute(prog, timeout_s=2)
        for s in servers:
            with pytest.raises(TimeoutError):
                s.accept()
    finally:
        for s in servers:
            s.close()
        os.unlink(path)
    assert r.status == "ok" and "connected" not in r.stdout and r.stdout.count("blocked") == 4


def _sysv() -> list[str]:
    return [open(f"/proc/sysvipc/{k}").read().splitlines()[1:] for k in ("shm", "sem", "msg")]


def test_sysv_ipc_objects_do_not_outlive_the_run():
    before = _sysv()
    prog = (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "print(libc.shmget(0, 4096, 0o1666), libc.semget(0, 1, 0o1666), libc.msgget(0, 0o1666))\n"
        "print(open('/proc/sysvipc/shm').read().count('\\n'))\n"
    )
    r = execute(prog, timeout_s=2)
    ids = r.stdout.split()
    assert r.status == "ok" and all(int(i) >= 0 for i in ids[:3])  # created inside the run
    assert _sysv() == before
    r2 = execute("print(open('/proc/sysvipc/shm').read().count('\\n'))", timeout_s=2)
    assert r2.stdout.strip() == "1"  # a later run sees none of them either


def test_world_writable_host_directories_stay_clean():
    tag = uuid.uuid4().hex
    targets = [
        f"/run/lock/evil_{tag}",
        f"/var/lock/evil_{tag}",
        f"/dev/shm/evil_{tag}",
        f"/var/tmp/evil_{tag}",
        os.path.join(tempfile.gettempdir(), f"evil_{tag}"),
        f"/dev/mqueue/evil_{tag}",
    ]
    prog = f"for t in {targets!r}:\n    try: open(t, 'w').write('x')\n    except OSError: pass\n"
    assert execute(prog, timeout_s=2).status == "ok"
    assert not any(os.path.exists(t) for t in targets)


def test_host_files_are_not_readable():
    secret = f"host-secret-{uuid.uuid4().hex}"
    path = os.path.join(tempfile.gettempdir(), f"jaxrl_secret_{uuid.uuid4().hex[:8]}")
    with open(path, "w") as f:
        f.write(secret)
    os.chmod(path, 0o644)
    with open("/etc/hostname") as f:
        hostname = f.read().strip()
    here = os.path.abspath(__file__)
    prog = (
        "import os\n"
        f"for p in ({path!r}, '/etc/hostname', '/etc/passwd', {here!r}, '/proc/1/environ',\n"
        "          '/etc/shadow', '/root/.bash_history', '/proc/sys/kernel/hostname'):\n"
        "    try: print(p, open(p, errors='replace').read()[:2000])\n"
        "    except OSError as e: print(p, 'denied', e.errno)\n"
        "print(sorted(os.listdir('/')))\n"
    )
    try:
        r = execute(prog, timeout_s=2)
    finally:
        os.unlink(path)
    assert r.status == "ok"
    assert secret not in r.stdout and "HUNTER" not in r.stdout and "HARNESS_ATTACKS" not in r.stdout
    assert hostname == "sandbox" or hostname not in r.stdout
    assert "root:x:0:0::/:/bin/false" in r.stdout  # the sandbox's stub, not the host's passwd
    # Only what Python needs: /usr and the interpreter's own prefix (under /root for pyenv).
    assert not {"work", "home", "opt", "mnt", "srv", "run"} & set(eval(r.stdout.splitlines()[-1]))


def test_disk_writes_are_bounded():
    prog = (
        "import os\ntotal = 0\n"
        "for i in range(10000):\n"
        "    try:\n"
        "        with open(f'f{i}', 'wb') as f:\n"
        "            for _ in range(64): f.write(b'x' * (1 << 20)); total += 1 << 20\n"
        "    except OSError:\n        break\n"
        "print(total >> 20)\n"
    )
    t = time.monotonic()
    r = execute(prog, timeout_s=10)
    assert time.monotonic() - t < 8 and r.stdout.strip()
    assert int(r.stdout.split()[-1]) <= sandbox._DISK_MB


class _Alarm(Exception):
    pass


def test_nothing_survives_the_executors_timeout(monkeypatch):
    """The reward executor bounds a call with SIGALRM: the exception unwinds out of the run."""
    marker = f"{uuid.uuid4().int % 10**6}.5772"
    prog = (
        "import os\n"
        "if os.fork() == 0:\n"
        f"    os.setsid(); os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "def add(a, b):\n    while True: pass\n"
        "while True: pass\n"
    )

    def alarm(signum, frame):
        raise _Alarm()

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for call in (lambda: execute(prog, timeout_s=30), lambda: _score(prog, timeout_s=30)):
            signal.setitimer(signal.ITIMER_REAL, 0.7)
            with pytest.raises(_Alarm):
                call()
            assert _gone(marker, 2.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_hosts_hostname_is_never_changed():
    """The run names itself `sandbox` in its own UTS namespace and a program may try
    `sethostname` too; neither reaches the host (gloo, for one, resolves the host's name)."""
    before = socket.gethostname()
    prog = (
        "import socket\n"
        "try: socket.sethostname('pwned')\n"
        "except OSError as e: print('denied', e.errno)\n"
        "print(socket.gethostname())\n"
    )
    r = execute(prog, timeout_s=2)
    assert r.status == "ok" and r.stdout.splitlines()[-1] in ("sandbox", "pwned"), r
    assert socket.gethostname() == before
