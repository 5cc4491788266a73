"""Tools that misbehave, for the runner and environment tests (importable as `toy_tools:NAME`
from tests/envs; they must live in a module a worker process can import)."""

import os
import time

from jaxrl_lrm.envs.tools import Tool


def echo(text: str) -> str:
    return text


def hang(seconds: float = 3600.0) -> str:
    time.sleep(seconds)
    return "woke up"


def spin() -> str:
    while True:
        pass


def crash() -> str:
    os._exit(3)


def raise_error() -> str:
    raise KeyError("no such key")


def flood() -> str:
    print("x" * 10_000_000)  # the worker's stdout is /dev/null: this floods nothing
    return "y" * 10_000_000


def allocate() -> str:
    return "z" * (8 << 30)  # past the worker's address-space cap


def exit_call() -> str:
    raise SystemExit(0)


def pid() -> str:
    return str(os.getpid())


ECHO = Tool(
    name="echo",
    fn=echo,
    description="echoes its text",
    parameters={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


def _no_args(name: str, fn) -> Tool:
    return Tool(name=name, fn=fn, description=name, parameters={"type": "object", "properties": {}})


def make_misbehaving(which: str) -> Tool:
    fns = {"hang": hang, "crash": crash, "flood": flood, "raise": raise_error, "spin": spin}
    return _no_args(which, fns[which])


def exact_reward(row: dict, final_turn: str) -> float:
    return float(row["answer"] in final_turn)
