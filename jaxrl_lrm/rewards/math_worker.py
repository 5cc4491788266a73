"""Math-Verify side of answer checking; runs inside the worker processes of `math_pool`.

`python -m jaxrl_lrm.rewards.math_worker FD` is the pool's zygote: it imports Math-Verify
once, says `ready` on the Unix socket `FD`, then forks a ready worker per request (`zygote`),
so a killed worker is replaced in milliseconds rather than by a second-long import. A worker
reads one JSON request per line (`{"id", "resp", "ans", "gold", "gold_raw", "lenient"}`) and
answers `"<id> 1"` or `"<id> 0"`. Importing this module imports neither Math-Verify nor SymPy;
`judge` does, on first use.

Math-Verify's own timeouts (`signal.alarm`, main thread only) are switched off
(`parsing_timeout=None`, `timeout_seconds=None`): the parent enforces its deadline by killing
the whole worker process, which also stops work stuck inside SymPy's C-level big-integer code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sys

from jaxrl_lrm.rewards.math_fast import bare_answer, extract_answer

WORKER_MEMORY_BYTES = 3 << 30
FLOAT_ROUNDING = 6
# `1,000`, `1 000`, `12,5` (decimal comma), `-3.25`, `40%`; not lists such as `3, 1, 2`
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:[ ,]\d{3})+|\d+)(?:[.,]\d+)?\s*%?")
_MV: dict = {}
# One comparison of each kind, run once in the zygote so that every forked worker starts with
# SymPy's lazily imported simplification, set, matrix and relational machinery already loaded.
WARMUP = [
    ("1", "1"),
    ("2x+7", "7+2x"),
    ("x^2-1", "(x-1)(x+1)"),
    ("x \\geq 5", "x>=5"),
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}"),
    ("[1,2)", "[1,2)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("y = 2x+1", "y=1+2x"),
    ("\\sin(2x)", "2\\sin x\\cos x"),
    ("50\\%", "0.5"),
    ("(1,2)", "(1,2)"),
    ("\\pi", "3.14159"),
]


def _mv() -> dict:
    """Lazily imports Math-Verify and builds the extraction configs."""
    if not _MV:
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" note
        import math_verify as mv

        latex, expr = mv.LatexExtractionConfig, mv.ExprExtractionConfig
        _MV.update(
            parse=mv.parse,
            verify=mv.verify,
            full=[latex(boxed_match_priority=0), expr()],
            anchored=[
                latex(boxed_match_priority=0, try_extract_without_anchor=False),
                expr(try_extract_without_anchor=False),
            ],
            expr=[expr()],
        )
    return _MV


def _parse(text: str, config: str) -> list:
    mv = _mv()
    return mv["parse"](text, mv[config], parsing_timeout=None)


def _parse_bare(text: str) -> list:
    """A text that is all answer: plain numbers as numbers, anything else as LaTeX."""
    if _PLAIN_NUMBER_RE.fullmatch(text.strip()):
        return _parse(text, "expr")  # `1,000` is a thousand, `1,22` a decimal comma
    if any(d in text for d in ("$", "\\(", "\\[", "\\boxed")):
        return _parse(text, "full")
    return _parse(f"${text}$", "full") or _parse(text, "full")


def gold_candidates(gold: str, gold_raw: str | None) -> list[list]:
    """Parses of the gold: its bare answer, and the raw text when it has several `\\boxed`."""
    out = [_parse_bare(gold)]
    if gold_raw and gold_raw != gold and gold_raw.count("\\boxed") > 1:
        out.append(_parse(gold_raw, "full"))  # Math-Verify joins `\\boxed{1} and \\boxed{2}`
    return [g for g in out if g]


def pred_candidates(resp: str | None, ans: str | None, lenient: bool):
    """Parses of the response's final answer, most specific first (a generator: lazy).

    `ans` is the answer the host already extracted (`\\boxed{}`, `<answer>`, `####`); several
    `\\boxed{}` are also read together (`\\boxed{-2} and \\boxed{1}`). Without an explicit
    answer: the whole response when it is a bare answer, else one after an "answer" / "final
    answer is" anchor; `lenient` also accepts the last LaTeX expression or number anywhere
    (Math-Verify's unanchored extraction).
    """
    if ans is None and resp is not None:
        ans = extract_answer(resp)
    if ans is not None:
        if _PLAIN_NUMBER_RE.fullmatch(ans.strip()):
            yield _parse(ans, "expr")  # `3,5` as a decimal comma first, then as LaTeX
        yield _parse("\\boxed{" + ans + "}", "full")
        if resp is not None and resp.count("\\boxed") > 1:
            yield _parse(resp, "full")
        return
    if resp is None:
        return
    bare = bare_answer(resp)
    if bare is not None:
        yield _parse_bare(bare)
        return
    anchored = _parse(resp, "anchored")
    yield anchored
    if lenient and not anchored:
        yield _parse(resp, "full")


def judge(
    resp: str | None, ans: str | None, gold: str, gold_raw: str | None = None, lenient: bool = False
) -> bool:
    """True iff the prediction's final answer equals `gold` under Math-Verify. Never raises."""
    try:
        golds = gold_candidates(gold, gold_raw)
        if not golds:
            return False
        for pred in pred_candidates(resp, ans, lenient):
            for g in golds:
                if pred and _mv()["verify"](
                    g, pred, float_rounding=FLOAT_ROUNDING, timeout_seconds=None
                ):
                    return True
        return False
    except Exception:  # noqa: BLE001 - any failure means "not shown equal"
        return False


def _serve(req_fd: int, resp_fd: int) -> None:
    """Request loop of one forked worker: JSON lines in on `req_fd`, verdicts out on `resp_fd`."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    out = os.fdopen(resp_fd, "w", buffering=1)
    for line in os.fdopen(req_fd, "rb"):  # ends when the parent closes its end
        rid = -1
        try:
            req = json.loads(line)
            rid = int(req["id"])
            ok = judge(
                req.get("resp"),
                req.get("ans"),
                str(req["gold"]),
                req.get("gold_raw"),
                bool(req.get("lenient")),
            )
        except Exception:  # noqa: BLE001
            ok = False
        out.write(f"{rid} {int(ok)}\n")


def zygote(sock_fd: int) -> None:
    """Imports Math-Verify once, then forks a ready worker for every request on `sock_fd`.

    A request is one byte carrying two file descriptors (the worker's request-read and
    response-write pipe ends, `socket.send_fds`); the reply is the worker's pid and a newline.
    Children are reaped automatically (`SIGCHLD` ignored). The zygote exits when the parent
    closes the socket; a worker exits when the parent closes its request pipe.
    """
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for ans, gold in WARMUP:  # imports, regexes, the LaTeX parser and SymPy's lazy modules
        judge(None, ans, gold)
    sock.sendall(b"ready\n")
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 16, 2)
        if not msg or len(fds) != 2:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _serve(fds[0], fds[1])
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        sock.sendall(f"{pid}\n".encode())


if __name__ == "__main__":
    sys.setrecursionlimit(5000)
    sys.stdout = sys.stderr  # stray prints never reach a protocol channel
    zygote(int(sys.argv[1]))
