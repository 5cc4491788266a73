"""The environment protocol and the built-in tool-using environment.

An environment is a callable `make_episode(row: dict) -> Episode` (a data row in, a fresh
episode out); an `Episode` answers each assistant turn (its text, as decoded from the sampled
tokens of that turn) with a `Step`: the observation to show the model next (None when the
episode is over), the turn's reward and a done flag. The rollout (`jaxrl_lrm.episodes`) owns
the tokens: it turns the observation into token ids with `envs.template` and appends them, so
an environment never sees or produces tokens.

`ToolEnv` is the environment for tool use: a turn that ends in a `<tool_call>` block runs that
tool (in `envs.runner`'s worker processes, with its timeout and output cap) and returns its
output as the observation; a malformed call returns the parser's message; a turn without a
call ends the episode and is scored by `reward_fn(row, final_turn_text)`. The episode also
ends after `max_turns` assistant turns.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
from collections.abc import Callable
from typing import Protocol

from jaxrl_lrm.envs.runner import ToolRunner
from jaxrl_lrm.envs.tools import CALL_CLOSE, Tool, ToolCallError, parse_tool_call, resolve_tool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """An environment's answer to one assistant turn.

    Attributes:
      observation: text for the tool message that follows the turn, or None when `done`.
      reward: the turn's reward (credited to the turn's last sampled token).
      done: the episode is over; the rollout samples no more turns.
      tool_calls, tool_errors, tool_seconds: what the turn cost in tools (for metrics).
    """

    observation: str | None
    reward: float = 0.0
    done: bool = False
    tool_calls: int = 0
    tool_errors: int = 0
    tool_seconds: float = 0.0

    def __post_init__(self):
        if (self.observation is None) != self.done:
            raise ValueError(
                f"Step(observation={self.observation!r}, done={self.done}): an episode that "
                "goes on needs an observation, and one that is done has none"
            )


class Episode(Protocol):
    """One episode: `step(turn_text) -> Step` for each assistant turn, in order."""

    def step(self, turn: str) -> Step: ...


Environment = Callable[[dict], Episode]


@dataclasses.dataclass
class ToolEpisode:
    """An episode of `ToolEnv` (mutable: it counts its turns)."""

    env: ToolEnv
    row: dict
    turns: int = 0

    def step(self, turn: str) -> Step:
        self.turns += 1
        called = turn.rstrip().endswith(CALL_CLOSE)
        if not called:
            reward = self.env.reward_fn(self.row, turn) if self.env.reward_fn else 0.0
            return Step(observation=None, reward=float(reward), done=True)
        if self.turns >= self.env.max_turns:  # a call in the last turn allowed goes unanswered
            return Step(observation=None, reward=0.0, done=True)
        try:
            call = parse_tool_call(turn, self.env.tools)
        except ToolCallError as e:
            return Step(
                observation=f"error: {e}", reward=self.env.error_reward, tool_calls=1, tool_errors=1
            )
        tool = self.env.tools[call.name]
        res = self.env.runner.call(tool.fn, call.arguments)
        failed = res.status != "ok"
        text = f"error ({res.status}): {res.text}" if failed else res.text
        return Step(
            observation=text,
            reward=self.env.error_reward if failed else 0.0,
            tool_calls=1,
            tool_errors=int(failed),
            tool_seconds=res.seconds,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolEnv:
    """The tool-using environment (see the module docstring); `ToolEnv(...)(row)` starts an
    episode.

    Attributes:
      tools: the tools the model may call, by name.
      runner: where calls run (its timeout and output cap apply to every call).
      reward_fn: `(row, final_turn_text) -> float` for the turn that ends the episode, or None
        for 0.
      max_turns: assistant turns per episode; a tool call in the last one is not answered.
      error_reward: the turn reward of a malformed or failed call (0 by default).
    """

    tools: dict[str, Tool]
    runner: ToolRunner
    reward_fn: Callable[[dict, str], float] | None = None
    max_turns: int = 4
    error_reward: float = 0.0

    def __post_init__(self):
        if not self.tools or any(k != t.name for k, t in self.tools.items()):
            raise ValueError(f"tools={self.tools!r}: expected a non-empty {{name: Tool}} dict")
        for t in self.tools.values():
            try:
                pickle.dumps(t.fn)
            except Exception as e:
                raise ValueError(
                    f"tool {t.name!r}: fn must be picklable (a module-level function or a "
                    f"partial of one) to run in a worker process: {e}"
                ) from None
        if not (isinstance(self.max_turns, int) and self.max_turns >= 1):
            raise ValueError(f"max_turns={self.max_turns!r}: expected an integer >= 1")

    def __call__(self, row: dict) -> ToolEpisode:
        return ToolEpisode(env=self, row=row)


def _import(spec: str, what: str):
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"{what} {spec!r}: expected 'module.path:name'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {spec!r} cannot be imported: {e}") from None


def make_tool_env(
    *,
    tools: list,
    reward: str | None = None,
    max_turns: int = 4,
    timeout_s: float = 10.0,
    max_chars: int = 4000,
    num_workers: int = 2,
    error_reward: float = 0.0,
) -> ToolEnv:
    """A `ToolEnv` from config values: `tools` entries are a name (`tools.BUILTIN` or
    `module:name`) or `{"name": ..., **options}`; `reward` is `module:function`."""
    built = {}
    for entry in tools:
        spec, options = (entry, {}) if isinstance(entry, str) else (None, dict(entry))
        spec = spec or options.pop("name", None)
        if not isinstance(spec, str):
            raise ValueError(f"tool entry {entry!r}: expected a name or {{'name': ..., ...}}")
        tool = resolve_tool(spec, options)
        if tool.name in built:
            raise ValueError(f"tool {tool.name!r} is listed twice")
        built[tool.name] = tool
    runner = ToolRunner(num_workers=num_workers, timeout_s=timeout_s, max_chars=max_chars)
    return ToolEnv(
        tools=built,
        runner=runner,
        reward_fn=_import(reward, "reward") if reward else None,
        max_turns=max_turns,
        error_reward=error_reward,
    )


BUILTIN_ENVIRONMENTS = {"tools": make_tool_env}


def resolve_environment(spec: str, options: dict | None = None) -> Environment:
    """The environment a config names: `tools` (`make_tool_env`) or `module:name`, a
    function that returns an environment from `options`."""
    factory = BUILTIN_ENVIRONMENTS.get(spec) or _import(spec, "environment")
    try:
        return factory(**dict(options or {}))
    except TypeError as e:
        raise ValueError(
            f"environment {spec!r}: bad options {sorted(options or {})}: {e}"
        ) from None
