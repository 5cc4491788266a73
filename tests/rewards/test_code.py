"""Sandbox attack suite and unit-test reward, checked against hand-computed outcomes."""

import os
import signal
import socket
import tempfile
import threading
import time
import uuid

import psutil
import pytest

from jaxrl_lrm.rewards import sandbox
from jaxrl_lrm.rewards.code import execute, extract_code, parse_tests, unit_test_reward

ROOT = os.geteuid() == 0


def _leftovers(marker: str) -> list[int]:
    """Processes still alive from a sandboxed run: uid nobody (as root) or a marked cmdline."""
    time.sleep(0.05)
    found = []
    for p in psutil.process_iter(["uids", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd or (ROOT and p.info["uids"] and p.info["uids"].real == 65534):
            found.append(p.pid)
    return found


@pytest.fixture
def clean():
    yield
    assert _leftovers("31.4159") == [], "sandboxed processes survived"


def test_ok_stdin_and_clean_environment(clean, monkeypatch):
    monkeypatch.setenv("JAXRL_TEST_SECRET", "hunter2-secret")
    prog = (
        "import os, sys\n"
        "print(sorted(os.environ))\n"
        f"try: print(open('/proc/{os.getpid()}/environ').read())\n"
        "except OSError as e: print('denied', type(e).__name__)\n"
        "print(input()[::-1])\n"
    )
    r = execute(prog, stdin="abc\n", timeout_s=2)
    assert r.status == "ok" and r.returncode == 0
    assert "hunter2-secret" not in r.stdout and "JAXRL_TEST_SECRET" not in r.stdout
    assert r.stdout.splitlines()[-1] == "cba"
    if ROOT:
        assert "denied" in r.stdout


def test_error_status_and_exit_code(clean):
    r = execute("import sys\nprint('x')\nsys.exit(3)", timeout_s=2)
    assert (r.status, r.returncode, r.stdout) == ("error", 3, "x\n")
    r = execute("raise KeyError('boom')", timeout_s=2)
    assert r.status == "error" and r.returncode == 1 and "KeyError: 'boom'" in r.stderr


@pytest.mark.parametrize("prog", ["while True: pass", "import time\ntime.sleep(100)"])
def test_infinite_loop_and_sleep_time_out(clean, prog):
    t = time.monotonic()
    r = execute(prog, timeout_s=1.0)
    assert r.status == "timeout"
    assert 0.9 <= r.wall_s < 1.5 and time.monotonic() - t < 3.0


def test_huge_allocation_hits_memory_limit(clean):
    r = execute("x = bytearray(8 << 30)\nprint('allocated')", timeout_s=2, memory_mb=256)
    assert r.status == "memory" and "allocated" not in r.stdout


def test_fork_bomb_contained(clean):
    prog = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(100); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(n, flush=True)\n"
        "time.sleep(100)\n"
    )
    r = execute(prog, timeout_s=1.5)
    assert r.status == "timeout"
    assert int(r.stdout.split()[0]) <= sandbox._NPROC


def _daemon_prog() -> str:
    return (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', '31.4159'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('parent done')\n"
    )


def test_double_forked_daemon_dies_with_program(clean):
    r = execute(_daemon_prog(), timeout_s=2)
    assert r.status == "ok" and r.stdout == "parent done\n"


def test_writes_outside_workdir_do_not_land(clean):
    tag = uuid.uuid4().hex
    targets = [
        os.path.join(tempfile.gettempdir(), f"evil_{tag}"),
        f"/dev/shm/evil_{tag}",
        f"/var/tmp/evil_{tag}",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), f"evil_{tag}"),
        f"/evil_{tag}",
    ]
    prog = (
        f"targets = {targets!r}\n"
        "for t in targets:\n"
        "    try:\n"
        "        open(t, 'w').write('x')\n"
        "    except OSError:\n"
        "        pass\n"
        "open('local.txt', 'w').write('fine')\n"
        "print(open('local.txt').read())\n"
    )
    r = execute(prog, timeout_s=2)
    assert r.status == "ok" and r.stdout.endswith("fine\n")
    for t in targets:
        assert not os.path.exists(t), t


def test_no_network_to_loopback_server(clean):
    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(3.0)
    port = server.getsockname()[1]

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    prog = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked', e.errno)\n"
    )
    r = execute(prog, timeout_s=2)
    server.close()
    thread.join()
    assert r.stdout.startswith("blocked") and accepted == []


def test_cannot_signal_caller(clean):
    me = os.getpid()
    # kill(-1) as uid nobody inside the PID namespace reaches nothing of ours (root only).
    targets = ["os.getppid()", str(me), "0"] + (["-1"] if ROOT else [])
    prog = (
        "import os, signal\n"
        f"for pid in ({', '.join(targets)},):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = execute(prog, timeout_s=2)
    assert r.returncode in (0, -9)  # kill(0) / kill(-1) may take the program itself down
    assert psutil.pid_exists(me) and execute("print(7)", timeout_s=2).stdout == "7\n"


def test_huge_output_is_capped(clean):
    rss = psutil.Process().memory_info().rss
    r = execute(
        "import sys\nfor _ in range(200):\n    sys.stdout.write('y' * (1 << 20))\n", timeout_s=5
    )
    assert r.status == "ok" and r.stdout == "y" * sandbox._OUTPUT_CAP
    assert psutil.Process().memory_info().rss - rss < 100 << 20


@pytest.mark.parametrize(
    ("feature", "words"),
    [("net", "network namespaces"), ("user", "user namespaces"), ("pivot_root", "pivot_root")],
)
def test_missing_kernel_feature_raises_naming_it(monkeypatch, feature, words):
    sandbox.shutdown()
    monkeypatch.setattr(sandbox, "_DENY", (feature,))
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match=words):
            execute("print(1)", timeout_s=2)
        with pytest.raises(sandbox.SandboxUnavailable, match=words):
            unit_test_reward(["p"], [CODE_OK], [["assert add(1, 2) == 3"]], timeout_s=2)
    finally:
        sandbox.shutdown()


def test_execute_rejects_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        execute("print(1)", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        execute("print(1)", memory_mb=-1)


CODE_OK = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n"
CODE_HALF = "```py\ndef add(a, b):\n    return a + b if a >= 0 else 0\n```"


def test_extract_code_takes_last_block():
    text = "```\nfirst\n```\ntext\n```python\nsecond = 2\n```\n```python\nunclosed"
    assert extract_code(text) == "second = 2\n"
    assert extract_code("no code here") is None


def test_unit_test_reward_assert_formats():
    src = "import math\nassert add(1, 2) == 3\nassert add(-1, 5) == 4\n"
    as_list = ["assert add(1, 2) == 3", "assert add(-1, 5) == 4"]
    got = unit_test_reward(
        ["p"] * 5,
        [CODE_OK, CODE_HALF, "no code", CODE_OK, CODE_HALF],
        [src, src, src, as_list, '["assert add(0, 0) == 0", "assert add(-2, 3) == 1"]'],
        timeout_s=2,
    )
    assert got == [1.0, 0.5, 0.0, 1.0, 0.5]


def test_unit_test_reward_stdin_stdout_formats():
    prog = "```python\na, b = map(int, input().split())\nprint(a * b)\n```"
    cases = [
        {"input": "2 3\n", "output": "6\n"},
        {"input": "4 5", "output": "20  \n\n"},
        {"input": "1 1", "output": "2"},
    ]
    apps = {"inputs": ["3 3\n", "0 9\n"], "outputs": ["9\n", "1\n"]}
    loop = "```python\nwhile True: pass\n```"
    got = unit_test_reward(["p"] * 3, [prog, prog, loop], [cases, apps, cases], timeout_s=1)
    assert got == pytest.approx([2 / 3, 0.5, 0.0])


@pytest.mark.parametrize("bad", [[], 5, [{"input": "x"}], "x = 1\n", "assert (", {"inputs": [1]}])
def test_parse_tests_rejects_malformed(bad):
    with pytest.raises(ValueError, match="tests"):
        parse_tests(bad)


def test_parse_tests_setup_statements_prefix_each_assert():
    kind, cases = parse_tests("import math\nassert math.pi > 3\nassert True")
    assert kind == "assert" and cases == [
        "import math\nassert math.pi > 3",
        "import math\nassert True",
    ]


def test_unit_test_reward_length_mismatch():
    with pytest.raises(ValueError, match="tests has 1 entries for 2 completions"):
        unit_test_reward(["p", "p"], [CODE_OK, CODE_OK], [["assert True"]])


def test_zygote_restarts_after_dying_and_serves_threads(clean):
    assert execute("print(1)", timeout_s=2).stdout == "1\n"
    zygote = sandbox._ZYGOTE[0].proc
    zygote.kill()
    zygote.wait()
    assert execute("print(2)", timeout_s=2).stdout == "2\n"
    out = {}

    def work(k):
        out[k] = [execute(f"print({k} * {i})", timeout_s=5).stdout for i in range(4)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: [f"{k * i}\n" for i in range(4)] for k in range(4)}


def test_no_descriptor_leaks(clean):
    execute("print(1)", timeout_s=2)
    before = len(os.listdir("/proc/self/fd"))
    for prog in ("print(1)", "import sys; sys.exit(2)", "while True: pass"):
        execute(prog, stdin="x" * 100_000, timeout_s=0.5)
    unit_test_reward(["p"] * 2, [CODE_OK, CODE_HALF], [["assert add(1, 2) == 3"]] * 2)

    def alarm(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for call in (
            lambda: execute("while True: pass", timeout_s=10),
            lambda: unit_test_reward(["p"], ["```\nwhile True: pass\n```"], [["assert f()"]]),
        ):
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(KeyboardInterrupt):
                call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(os.listdir("/proc/self/fd")) == before


_STATE_PROG = (
    "import builtins, gc, os, resource, signal, sys\n"
    "print(hasattr(builtins, 'LEAK'), 'leak' in sys.modules, os.environ.get('LEAK'))\n"
    "print(sorted(os.listdir('/tmp')), os.getcwd(), sys.path[:1], sys.getrecursionlimit())\n"
    "print(resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_AS))\n"
    "print(os.umask(0o22), signal.getsignal(signal.SIGTERM), gc.isenabled(), len(gc.get_objects()) < 10**5)\n"
)
_POLLUTERS = [
    "import builtins, gc, os, resource, signal, sys, types\n"
    "builtins.LEAK = 1; sys.modules['leak'] = types.ModuleType('leak'); os.environ['LEAK'] = '1'\n"
    "open('/tmp/leak.txt', 'w').write('x'); os.mkdir('/tmp/d'); sys.path.insert(0, '/tmp')\n"
    "sys.setrecursionlimit(60); os.umask(0o777); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8)); gc.disable(); keep = [[] for _ in range(10**5)]\n"
    "os.chdir('/')\ntry: os.kill(-1, 9)  # every other process of the run: none\nexcept OSError: pass\n",
    "import ctypes; ctypes.string_at(0)",  # a segfault
    "x = bytearray(8 << 30)",  # the memory limit
    "import os; os._exit(7)",
]


def test_a_run_leaves_nothing_for_the_next(clean):
    """The zygote forks every run from the same clean state: what a run changes (globals,
    modules, environment, files, cwd, limits, signal handlers, the collector), or a run that
    crashes, is not seen by the next run, and the zygote itself survives."""
    fresh = execute(_STATE_PROG, timeout_s=5)
    assert fresh.status == "ok" and "False False None" in fresh.stdout
    zygote = sandbox._ZYGOTE[0].proc
    for polluter, status in zip(_POLLUTERS, ["ok", "error", "memory", "error"]):
        r = execute(polluter, timeout_s=5, memory_mb=256)
        assert r.status == status, r
        after = execute(_STATE_PROG, timeout_s=5)
        assert (after.status, after.stdout) == ("ok", fresh.stdout), polluter
    assert sandbox._ZYGOTE[0].proc is zygote and zygote.poll() is None
