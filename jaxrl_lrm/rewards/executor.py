"""Score a batch with several reward functions in a process pool, with per-call timeouts.

The pool uses the "forkserver" (or "spawn") start method: JAX threads in the trainer make
`fork` unsafe. Reward functions must therefore be picklable, i.e. defined at module level.
"""

import concurrent.futures as cf
import dataclasses
import logging
import math
import multiprocessing
import numbers
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np

_log = logging.getLogger(__name__)


class _CallTimeout(Exception):
    pass


class RewardFunctionError(RuntimeError):
    """A reward function broke its contract (a wrong number of values, a value that is not a
    finite number) or kept failing; the run stops with this error and its message."""


class _Contract(Exception):
    """A call's return value breaks the contract; never retried sample by sample."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class _CallResult:
    rewards: list[float]
    errors: int = 0
    timeouts: int = 0
    traceback: str | None = None
    fatal: str | None = None  # a broken contract: the run stops


def _alarm(signum, frame):
    raise _CallTimeout()


def _is_number(x) -> bool:
    # numbers.Real holds int, float, bool and NumPy's scalar types; a string such as "0.5" is
    # not a number, and neither is None.
    return isinstance(x, numbers.Real | np.bool_)


def _valid(out, completions: list[str]) -> list[float]:
    """`out` as `len(completions)` finite floats, else `_Contract` naming the bad value."""
    n = len(completions)
    if isinstance(out, str | bytes | dict) or not hasattr(out, "__len__"):
        raise _Contract(f"returned {out!r:.200}; expected a list of {n} numbers")
    values = list(out)
    if len(values) != n:
        raise _Contract(f"returned {len(values)} values for {n} completions: {values!r:.200}")
    for i, x in enumerate(values):
        if not _is_number(x) or not math.isfinite(float(x)):
            kind = "a finite number" if _is_number(x) else f"a number, not {type(x).__name__}"
            raise _Contract(
                f"returned {x!r} for sample {i} (completion {completions[i]!r:.80}); "
                f"expected {kind}"
            )
    return [float(x) for x in values]


def _run_call(fn, prompts, completions, columns, timeout_s) -> _CallResult:
    """One call of `fn` on a chunk; a raising chunk is retried sample by sample.

    `sys.exit` inside `fn` counts as raising (it must not end the trainer or a worker). A
    return value of the wrong length or with a value that is not a finite number gives a
    `fatal` result. The timeout is a SIGALRM on the whole call (retries included) when running
    in a main thread; elsewhere (in-process mode off the main thread) the call runs unbounded.
    """
    n = len(completions)
    use_alarm = threading.current_thread() is threading.main_thread() and timeout_s is not None
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            return _CallResult(rewards=_valid(fn(prompts, completions, **columns), completions))
        except (_CallTimeout, _Contract):
            raise
        except (Exception, SystemExit):
            first_tb = traceback.format_exc()
        rewards, errors = [], 0
        for i in range(n):
            cols = {k: v[i : i + 1] for k, v in columns.items()}
            try:
                out = fn(prompts[i : i + 1], completions[i : i + 1], **cols)
            except (_CallTimeout, _Contract):
                raise
            except (Exception, SystemExit):
                rewards.append(0.0)
                errors += 1
                continue
            rewards.append(_valid(out, completions[i : i + 1])[0])
        return _CallResult(rewards=rewards, errors=errors, traceback=first_tb)
    except _Contract as e:
        return _CallResult(rewards=[0.0] * n, fatal=str(e))
    except _CallTimeout:
        return _CallResult(rewards=[0.0] * n, timeouts=n)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


class RewardExecutor:
    """A pool that scores batches with weighted reward functions.

    `score` returns `(total[B], per_fn {name: [B]}, stats)` with
    `total = sum_k weight_k * reward_k`. A function that raises gives 0 for the samples it raised
    on (a failing call is retried sample by sample to find them), is counted in
    `stats["errors/<name>"]` and is logged once per function with its traceback; a call over
    `timeout_s` gives 0 to every sample of that call, counted in `stats["timeouts/<name>"]`.
    A worker that does not come back at all (stuck in C code) is killed and the pool rebuilt;
    one that dies (`os._exit`, a signal) counts as errors on its call's samples. `sys.exit`
    inside a function counts as raising. A function that returns the wrong number of values,
    or a value that is not a finite number (a string such as "0.5", None, NaN), raises
    `RewardFunctionError` naming the value.

    Calls are chunks of `chunk_size` samples; when `columns` has `group_size`, chunks are
    multiples of it so that group-level rewards (majority vote) see whole groups.
    """

    def __init__(
        self,
        reward_fns: Sequence[tuple[str, Callable, float]],
        *,
        num_workers: int = 0,
        timeout_s: float = 30.0,
        chunk_size: int = 8,
        start_method: str = "forkserver",
    ):
        """Args:
        reward_fns: `(name, fn, weight)` triples; names unique, weights finite.
        num_workers: processes in the pool; 0 runs every call in this process (tests, debugging).
        timeout_s: limit per call in seconds.
        chunk_size: samples per call (rounded up to a multiple of `group_size` when given).
        start_method: "forkserver" or "spawn".
        """
        names = [t[0] for t in reward_fns]
        if not reward_fns or len(set(names)) != len(names):
            raise ValueError(f"reward_fns must be non-empty with unique names, got {names}")
        for name, fn, weight in reward_fns:
            if not callable(fn) or not math.isfinite(weight):
                raise ValueError(f"reward {name!r}: fn must be callable, weight finite ({weight})")
        if num_workers < 0 or chunk_size < 1 or not timeout_s > 0:
            raise ValueError(
                f"need num_workers >= 0, chunk_size >= 1, timeout_s > 0; got {num_workers}, "
                f"{chunk_size}, {timeout_s}"
            )
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        self.reward_fns = list(reward_fns)
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size
        self._ctx = multiprocessing.get_context(start_method)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._logged: set[str] = set()
        self._submitter = cf.ThreadPoolExecutor(max_workers=1)
        self.tracebacks: dict[str, str] = {}  # name -> the first traceback of the last `score`

    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.num_workers, mp_context=self._ctx)
        return self._pool

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for proc in list((pool._processes or {}).values()):
                proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stops the workers."""
        self._submitter.shutdown(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "RewardExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _chunks(self, n: int, columns: dict) -> list[slice]:
        size = self.chunk_size
        if "group_size" in columns:
            sizes = set(columns["group_size"])
            if len(sizes) != 1:
                raise ValueError(f"group_size must be the same for every row, got {sorted(sizes)}")
            g = int(next(iter(sizes)))
            if g < 1 or n % g:
                raise ValueError(f"batch of {n} is not a whole number of groups of {g}")
            size = g * math.ceil(size / g)
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    def score(
        self, prompts: list[str], completions: list[str], columns: dict[str, list] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
        """Scores one batch.

        Args:
          prompts: B prompt strings.
          completions: B completion strings.
          columns: dataset fields, each a list of B entries, passed to every function.

        Returns:
          `(total float32[B], {name: float32[B]}, stats)`; stats has `errors/<name>`,
          `timeouts/<name>` (sample counts) and `time_s`.
        """
        columns = dict(columns or {})
        n = len(completions)
        if len(prompts) != n or any(len(v) != n for v in columns.values()):
            lengths = {k: len(v) for k, v in columns.items()}
            raise ValueError(f"prompts ({len(prompts)}) and columns {lengths} must have {n} rows")
        start = time.monotonic()
        chunks = self._chunks(n, columns)
        calls = [(name, fn, s) for name, fn, _ in self.reward_fns for s in chunks]
        args = [
            (fn, prompts[s], completions[s], {k: v[s] for k, v in columns.items()}, self.timeout_s)
            for _, fn, s in calls
        ]
        results = self._run_all(args)
        per_fn = {name: np.zeros(n, np.float32) for name, _, _ in self.reward_fns}
        stats = {
            f"{k}/{name}": 0.0 for name, _, _ in self.reward_fns for k in ("errors", "timeouts")
        }
        self.tracebacks = {}
        for (name, _, s), res in zip(calls, results):
            if res.fatal is not None:
                raise RewardFunctionError(
                    f"reward function {name!r} {res.fatal}; stopping (a reward function returns "
                    "one finite number per completion)"
                )
            per_fn[name][s] = res.rewards
            stats[f"errors/{name}"] += res.errors
            stats[f"timeouts/{name}"] += res.timeouts
            if res.traceback:
                self.tracebacks.setdefault(name, res.traceback)
                if name not in self._logged:
                    self._logged.add(name)
                    _log.error("reward function %r raised (logged once):\n%s", name, res.traceback)
        total = np.zeros(n, np.float32)
        for name, _, weight in self.reward_fns:
            total += np.float32(weight) * per_fn[name]
        stats["time_s"] = time.monotonic() - start
        return total, per_fn, stats

    def _run_all(self, args: list[tuple]) -> list[_CallResult]:
        if self.num_workers == 0:
            return [_run_call(*a) for a in args]
        pool = self._get_pool()
        futures = [pool.submit(_run_call, *a) for a in args]
        # Each call bounds itself with SIGALRM; this backstop catches a worker stuck in C code.
        waves = math.ceil(len(args) / self.num_workers)
        cf.wait(futures, timeout=waves * self.timeout_s + 5.0)
        results, broken = [], False
        for a, fut in zip(args, futures):
            n = len(a[2])
            if not fut.done():  # still running: stuck where SIGALRM cannot reach it
                broken = True
                results.append(_CallResult(rewards=[0.0] * n, timeouts=n))
                continue
            try:
                results.append(fut.result())
            except (Exception, SystemExit) as e:  # the worker died (os._exit, a signal, OOM)
                broken = True
                tb = f"the worker process scoring this call died: {type(e).__name__}: {e}"
                results.append(_CallResult(rewards=[0.0] * n, errors=n, traceback=tb))
        if broken:
            _log.warning("reward executor: a worker did not return; rebuilding the pool")
            self._kill_pool()
        return results

    def submit(
        self, prompts: list[str], completions: list[str], columns: dict[str, list] | None = None
    ) -> cf.Future:
        """Like `score`, but returns a future at once so device work can overlap scoring."""
        return self._submitter.submit(self.score, prompts, completions, columns)
