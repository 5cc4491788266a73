"""Assert tests judged by the trusted caller, never by the program's own process or exit status.

The program runs contained (`sandbox.start_run(mode="serve")`): its code executes as
`__main__`, then a stub answers requests on a private channel. The test itself (set-up
statements and asserts, which the program never sees) runs here, in the caller. A name the test
reads is its own set-up's, else a builtin, else a standard module the program imported (imported
here), else a `_Remote` stand-in for the program's global, so `add(1, 2)` becomes one request and
its reply is rebuilt from plain builtins by `_wire.decode`.
Nothing the program returns can carry its own `__eq__`, `__bool__` or `__hash__`; anything that
is not plain data stays on the program's side as a handle whose truth and equality are refused.
Asserts are rewritten with `ast` into calls of `_check` (so `-O` means nothing) and each
single `==` / `!=` of an assert into `_same`, which also requires equal types (int and float may
mix, bool may not). A test passes only if all of this finishes by the deadline without an
exception; the program exiting early, crashing or hanging fails it.
"""

import ast
import builtins
import importlib
import os
import select
import socket
import sys
import time

from jaxrl_lrm.rewards import _wire, sandbox


class _Failed(Exception):
    pass


class _Consumed:
    """An iterator the program returned, already consumed: iterable, equal only to itself."""

    __slots__ = ("items",)

    def __init__(self, items):
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)


class _Channel:
    """The trusted end of the request channel, with the test's deadline."""

    def __init__(self, fd: int, deadline: float):
        self.fd, self.deadline = fd, deadline
        self.interrupt = None  # an exception a signal handler raised while we waited

    def _wait(self, read: bool) -> None:
        left = self.deadline - time.monotonic()
        rlist, wlist = ([self.fd], []) if read else ([], [self.fd])
        try:
            ready = left > 0 and select.select(rlist, wlist, [], left)
        except BaseException as e:
            self.interrupt = e
            raise
        if not ready or not any(ready):
            raise _Failed("deadline")

    def _read(self, fd, n):
        self._wait(read=True)
        return os.read(fd, n)

    def request(self, msg: dict):
        view = memoryview(_wire.dumps(msg))
        while view:
            self._wait(read=False)
            view = view[os.write(self.fd, view) :]
        reply = _wire.recv(self.fd, self._read)
        if "e" in reply:
            raise _Failed(f"the program raised {str(reply['e'])[:200]}")
        return _wire.decode(reply["v"], lambda i: _Remote(self, ["h", i]), _Consumed)


def _send(value):
    def handle(obj):
        if isinstance(obj, _Remote) and obj._ref[0] == "h":
            return obj._ref[1]
        raise _Failed(f"cannot pass {type(obj).__name__} to the program")

    return _wire.encode(value, handle)


class _Remote:
    """A name or object on the program's side: calls, attributes and items become requests."""

    __slots__ = ("_chan", "_ref")

    def __init__(self, chan: _Channel, ref: list):
        object.__setattr__(self, "_chan", chan)
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        msg = {"op": "call", "ref": self._ref, "args": [_send(a) for a in args]}
        return self._chan.request({**msg, "kw": {k: _send(v) for k, v in kwargs.items()}})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._chan.request({"op": "getattr", "ref": self._ref, "name": name})

    def __getitem__(self, key):
        return self._chan.request({"op": "getitem", "ref": self._ref, "key": _send(key)})

    def __iter__(self):
        raise _Failed("a program object is not plain data")

    def __bool__(self):
        raise _Failed("a program object is not plain data")


def _same(a, b) -> bool:
    """Equality that trusts neither side's methods: equal builtin types and equal values."""
    if isinstance(a, _Remote | _Consumed) or isinstance(b, _Remote | _Consumed):
        return False
    ta, tb = type(a), type(b)
    if ta is not tb:
        return {ta, tb} <= {int, float} and a == b
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _check(value) -> None:
    if isinstance(value, _Remote | _Consumed) or not value:
        raise _Failed("assertion failed")


class _Rewrite(ast.NodeTransformer):
    """`assert t` -> `_check(t)`; inside asserts, `a == b` -> `_same(a, b)` (and `!=`)."""

    def __init__(self):
        self.in_assert = False

    def visit_Assert(self, node):
        self.in_assert = True
        test = self.visit(node.test)
        self.in_assert = False
        call = ast.Call(ast.Name("_jaxrl_check", ast.Load()), [test], [])
        return ast.copy_location(ast.Expr(call), node)

    def visit_Compare(self, node):
        self.generic_visit(node)
        if not self.in_assert or len(node.ops) != 1 or type(node.ops[0]) not in (ast.Eq, ast.NotEq):
            return node
        call = ast.Call(ast.Name("_jaxrl_same", ast.Load()), [node.left, node.comparators[0]], [])
        if isinstance(node.ops[0], ast.NotEq):
            call = ast.UnaryOp(ast.Not(), call)
        return ast.copy_location(call, node)


# Standard modules whose import has side effects in the caller.
_NO_IMPORT = frozenset(
    {"this", "antigravity", "turtle", "turtledemo", "tkinter", "idlelib", "__hello__", "__phello__"}
)


def _stdlib_imports(code: str, wanted: set[str]) -> dict:
    """`{name: value}` for the program's top-level imports of standard modules that bind a name
    in `wanted`, imported here.

    A test that reads `math` (or `isclose`) because the program imported it gets the real module,
    not the program's copy, which the program could have patched (`math.isclose = ...`).
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.Import | ast.ImportFrom) or getattr(node, "level", 0):
            continue
        for alias in node.names:
            module = node.module if isinstance(node, ast.ImportFrom) else alias.name
            top = module.split(".")[0]
            name = alias.asname or (alias.name if isinstance(node, ast.ImportFrom) else top)
            if name not in wanted or top not in sys.stdlib_module_names or top in _NO_IMPORT:
                continue
            try:
                if isinstance(node, ast.ImportFrom):
                    value = getattr(importlib.import_module(module), alias.name, None)
                    if value is None:
                        value = importlib.import_module(f"{module}.{alias.name}")
                else:
                    value = importlib.import_module(module)
                    value = value if alias.asname else importlib.import_module(top)
                found[name] = value
            except (ImportError, AttributeError):
                continue
    return found


def run_assert_test(code: str, test: str, *, timeout_s: float, memory_mb: int) -> bool:
    """True iff `test` (set-up statements and asserts) passes against the program `code`.

    Raises:
      SandboxUnavailable: if the kernel lacks a feature the sandbox needs.
    """
    try:
        tree = ast.fix_missing_locations(_Rewrite().visit(ast.parse(test)))
        compiled = compile(tree, "<test>", "exec")
    except (SyntaxError, ValueError):
        return False
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    start = time.monotonic()
    ctl_w, status_r = sandbox.start_run(
        "serve", code, timeout_s=timeout_s + 1.0, memory_mb=memory_mb, fds={"rpc": theirs.detach()}
    )
    chan = _Channel(ours.fileno(), start + timeout_s)
    # Every name the test reads resolves, in this order, to its own set-up (bound when it runs),
    # a builtin, a standard module the program imported (imported here), or the program's global.
    # Builtins are never the program's: an `abs` of its own would judge `abs(f(x) - y) < e`.
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(dir(builtins))
    imported = _stdlib_imports(code, names)
    env = {"__builtins__": builtins, "__name__": "__test__"}
    for name in names:
        env[name] = imported[name] if name in imported else _Remote(chan, ["n", name])
    env.update(_jaxrl_check=_check, _jaxrl_same=_same)
    try:
        try:
            exec(compiled, env)
            passed = True
        except Exception:  # noqa: BLE001 - any failure of the test, or of the program, fails it
            if chan.interrupt is not None:
                raise chan.interrupt from None  # e.g. the reward executor's SIGALRM: no verdict
            passed = False
        finally:
            ours.close()
            os.close(ctl_w)  # kills the run now
        sandbox.read_status(status_r, time.monotonic() + 10.0)  # raises if it could not start
    finally:
        os.close(status_r)
    return passed
