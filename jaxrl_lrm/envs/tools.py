"""Tools: plain Python functions registered by name with a JSON-schema-like signature, the
tool-call format, and the parser that turns model text into a checked call.

Format (Qwen / Hermes): the model writes

    <tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>

and the sampler stops the row at `</tool_call>`. `parse_tool_call` reads the last such block
of a turn with `json.loads` (never `eval`) and checks it against the tool's `parameters`; any
problem comes back as a `ToolCallError` whose message becomes the observation, so a malformed
call never raises into the trainer.

A tool's `parameters` is the JSON-schema subset `{"type": "object", "properties": {name:
{"type": t, "description": ...}}, "required": [...]}` with t one of string, integer, number,
boolean, array, object; unknown arguments are refused. Users register tools in the config by
`module:attribute`, where the attribute is a `Tool` or a function returning one from the
entry's options (like reward functions); `BUILTIN` names the shipped ones.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import re
from collections.abc import Callable
from typing import Any

from jaxrl_lrm.envs.calculator import calculator
from jaxrl_lrm.envs.python_tool import run_python
from jaxrl_lrm.envs.search import load_index, search

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tool:
    """A callable tool. `fn(**arguments) -> str` must be picklable (a module-level function or
    a `functools.partial` of one): it runs in a worker process (`envs.runner`)."""

    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r}: expected an identifier-like string")
        if not callable(self.fn):
            raise ValueError(f"tool {self.name!r}: fn={self.fn!r} is not callable")
        _check_schema(self.name, self.parameters)

    def schema(self) -> dict:
        """The OpenAI/Hermes function description, as chat templates take it in `tools=`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A parsed, checked call."""

    name: str
    arguments: dict


class ToolCallError(ValueError):
    """A malformed tool call; the message is written back to the model as the observation."""


def _check_schema(name: str, params) -> None:
    ok = isinstance(params, dict) and params.get("type") == "object"
    props = params.get("properties", {}) if ok else None
    ok = ok and isinstance(props, dict)
    ok = ok and all(isinstance(p, dict) and p.get("type") in _TYPES for p in props.values())
    required = params.get("required", []) if ok else None
    ok = ok and isinstance(required, list) and all(r in props for r in required)
    if not ok:
        raise ValueError(
            f"tool {name!r}: parameters={params!r}: expected {{'type': 'object', "
            f"'properties': {{arg: {{'type': one of {sorted(_TYPES)}}}}}, 'required': [args]}}"
        )


def check_arguments(tool: Tool, arguments) -> dict:
    """`arguments` if they fit `tool.parameters`, else a `ToolCallError` saying what is wrong."""
    if not isinstance(arguments, dict):
        raise ToolCallError(f"'arguments' must be a JSON object, got {json.dumps(arguments)}")
    props = tool.parameters.get("properties", {})
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        raise ToolCallError(f"{tool.name}: unknown argument(s) {unknown}; expected {sorted(props)}")
    missing = [r for r in tool.parameters.get("required", []) if r not in arguments]
    if missing:
        raise ToolCallError(f"{tool.name}: missing required argument(s) {missing}")
    for key, value in arguments.items():
        want = props[key]["type"]
        bad_bool = isinstance(value, bool) and want in ("integer", "number")
        if bad_bool or not isinstance(value, _TYPES[want]):
            raise ToolCallError(f"{tool.name}: argument {key!r} must be a {want}, got {value!r}")
    return arguments


def parse_tool_call(text: str, tools: dict[str, Tool]) -> ToolCall:
    """The last `<tool_call>...</tool_call>` block of `text`, parsed and checked.

    Raises:
      ToolCallError: when there is no complete block, its body is not a JSON object with a
        string `name` and an object `arguments`, the tool is unknown or the arguments do not
        fit its parameters.
    """
    end = text.rfind(CALL_CLOSE)
    start = text.rfind(CALL_OPEN, 0, end if end >= 0 else len(text))
    if end < 0 or start < 0:
        raise ToolCallError(f"no complete {CALL_OPEN}...{CALL_CLOSE} block in the turn")
    body = text[start + len(CALL_OPEN) : end].strip()
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ToolCallError(f"the tool call is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolCallError('a tool call must be {"name": <string>, "arguments": {...}}')
    extra = sorted(set(call) - {"name", "arguments"})
    if extra:
        raise ToolCallError(f"unexpected key(s) {extra} in the tool call")
    tool = tools.get(call["name"])
    if tool is None:
        raise ToolCallError(f"unknown tool {call['name'][:64]!r}; available: {sorted(tools)}")
    return ToolCall(call["name"], check_arguments(tool, call.get("arguments", {})))


def format_call(name: str, arguments: dict) -> str:
    """The text of a call in the format `parse_tool_call` reads (for SFT traces and tests)."""
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{CALL_CLOSE}"


def _string_arg(description: str) -> dict:
    return {"type": "string", "description": description}


def calculator_tool() -> Tool:
    """`calculator(expression)`: exact rational arithmetic (`envs.calculator`)."""
    return Tool(
        name="calculator",
        fn=calculator,
        description="Evaluates an arithmetic expression exactly (+ - * / // % **, sqrt).",
        parameters={
            "type": "object",
            "properties": {"expression": _string_arg("e.g. 123*45 or (1/3+1/6)**2")},
            "required": ["expression"],
        },
    )


def python_tool(*, timeout_s: float = 5.0, memory_mb: int = 512) -> Tool:
    """`python(code)`: runs the code in the sandbox (`envs.python_tool`)."""
    return Tool(
        name="python",
        fn=functools.partial(run_python, timeout_s=timeout_s, memory_mb=memory_mb),
        description="Runs a Python program in a sandbox and returns what it prints.",
        parameters={
            "type": "object",
            "properties": {"code": _string_arg("a complete Python program")},
            "required": ["code"],
        },
    )


def search_tool(*, corpus: str, k: int = 3) -> Tool:
    """`search(query, k)`: BM25 over the JSONL corpus at `corpus` (`envs.search`)."""
    load_index(corpus)  # a missing or malformed corpus is an error now, not at the first call
    return Tool(
        name="search",
        fn=functools.partial(search, corpus=corpus),
        description="Searches a local document collection; returns the best passages.",
        parameters={
            "type": "object",
            "properties": {
                "query": _string_arg("words to look for"),
                "k": {"type": "integer", "description": f"passages to return (default {k})"},
            },
            "required": ["query"],
        },
    )


BUILTIN: dict[str, Callable[..., Tool]] = {
    "calculator": calculator_tool,
    "python": python_tool,
    "search": search_tool,
}


def resolve_tool(spec: str, options: dict | None = None) -> Tool:
    """The tool a config entry names: a `BUILTIN` name or `module:attribute` (a `Tool`, or a
    function returning one), built with `options` as keyword arguments."""
    options = dict(options or {})
    if spec in BUILTIN:
        factory = BUILTIN[spec]
    else:
        module, _, attr = spec.partition(":")
        if not attr:
            raise ValueError(f"tool {spec!r}: expected one of {sorted(BUILTIN)} or 'module:name'")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"tool {spec!r} cannot be imported: {e}") from None
    if isinstance(factory, Tool):
        if options:
            raise ValueError(f"tool {spec!r} is a Tool; options {sorted(options)} cannot apply")
        return factory
    try:
        tool = factory(**options)
    except TypeError as e:
        raise ValueError(f"tool {spec!r}: bad options {sorted(options)}: {e}") from None
    if not isinstance(tool, Tool):
        raise ValueError(f"tool {spec!r} returned {type(tool).__name__}, expected a Tool")
    return tool
