"""Host-side environments for multi-turn, tool-using rollouts (no JAX here).

Submodules: `env` (the protocol: `Environment`, `Episode`, `Step`; `ToolEnv`), `tools` (the
`Tool` registry, the `<tool_call>` format and its parser), `runner` (worker processes with
timeouts and output caps), `template` (observation tokens), and the built-in tools
`calculator`, `python_tool` and `search`. The manual page is docs/agents.md.
"""

from jaxrl_lrm.envs.env import (
    Environment,
    Episode,
    Step,
    ToolEnv,
    make_tool_env,
    resolve_environment,
)
from jaxrl_lrm.envs.runner import ToolResult, ToolRunner
from jaxrl_lrm.envs.tools import Tool, ToolCall, ToolCallError, parse_tool_call, resolve_tool

__all__ = [
    "Environment",
    "Episode",
    "Step",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolEnv",
    "ToolResult",
    "ToolRunner",
    "make_tool_env",
    "parse_tool_call",
    "resolve_environment",
    "resolve_tool",
]
