"""Building a run's pieces from its config: tokenizer, policy, data, reward functions, and the
correctness check used by evaluation. Host code only; nothing here is jitted."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrl_lrm import models, sharding
from jaxrl_lrm.config import DEFAULT_PRESET, Config
from jaxrl_lrm.data import demo as demo_task
from jaxrl_lrm.data import demo_tools, tasks
from jaxrl_lrm.data.tokenizer import CharTokenizer, load_tokenizer
from jaxrl_lrm.models.value_model import load_value_model
from jaxrl_lrm.rewards.shaping import soft_overlong_punishment
from jaxrl_lrm.rewards.unsupervised import extract_final_answer
from jaxrl_lrm.scorers import LazyCheckpointReward

DEMO_TASKS = {"addition": demo_task.AdditionTask}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What the trainer needs of a task: rows, a reward, an answer extractor, SFT pairs."""

    generate: Callable[[int, int], list[dict]]
    reward_fn: Callable
    extract: Callable[[str], str | None]
    sft_examples: Callable[[int, int], list[tuple[str, str]]] | None = None
    alphabet: str | None = None


def resolve_task(name: str, args: dict) -> TaskInfo:
    """A procedural task by name: the demo's `addition`, or one of `data.tasks.TASKS`."""
    if name == "tool_multiply":  # the tool-use demo's task (docs/agents.md)
        task = demo_tools.ToolMultiplyTask(**args)
        return TaskInfo(
            generate=task.generate,
            reward_fn=demo_tools.transcript_reward,
            extract=demo_tools.extract,
            sft_examples=task.sft_examples,
        )
    if name in DEMO_TASKS:
        task = DEMO_TASKS[name](**args)
        return TaskInfo(
            generate=task.generate,
            reward_fn=demo_task.addition_reward,
            extract=lambda s: demo_task.extract(s, task.digits),
            sft_examples=task.sft_examples,
            alphabet=demo_task.ALPHABET,
        )
    task = tasks.get_task(name)
    task_config = task.config(**args)
    return TaskInfo(
        generate=lambda n, seed: task.generate(n, seed, task_config),
        reward_fn=task.reward,
        extract=extract_final_answer,
    )


# A character set wide enough for the procedural tasks' prompts and answers.
DEFAULT_ALPHABET = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    " +-*/=()[]{}<>.,:;!?'\"#%&_^|\\$@~`\n"
)


def build_tokenizer(config: Config, task: TaskInfo | None):
    if config.model.path is not None:
        return load_tokenizer(config.model.path)
    return CharTokenizer(task.alphabet if task and task.alphabet else DEFAULT_ALPHABET)


def build_policy(config: Config, tokenizer, mesh) -> models.Model:
    """The initial policy: a local HF checkpoint, or a random preset sized to the tokenizer."""
    dtype = config.model.dtype
    if config.model.path is not None:
        model = models.load_pretrained(config.model.path, dtype=dtype, mesh=mesh)
        model = model.replace(config=model.config.replace(remat=config.model.remat))
        if model.tokenizer is None:
            model = model.replace(tokenizer=tokenizer)
        return model
    overrides = dict(config.model.overrides)
    overrides.setdefault("vocab_size", tokenizer.vocab_size)
    overrides["dtype"] = dtype
    overrides["remat"] = config.model.remat
    model_config = models.preset(config.model.preset or DEFAULT_PRESET, **overrides)
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model.overrides.vocab_size={model_config.vocab_size} is smaller than "
            f"the tokenizer's vocabulary ({tokenizer.vocab_size})"
        )
    return models.init(model_config, jax.random.key(config.seed), mesh=mesh, tokenizer=tokenizer)


def reference_params(config: Config, params):
    """The frozen reference of `params`: the same arrays (the train state takes its own copy),
    or a copy cast to `model.ref_dtype` when that differs from `model.dtype`."""
    dtype = config.model.ref_dtype
    return params if dtype in (None, config.model.dtype) else frozen_copy(params, dtype)


def frozen_copy(params, dtype: str | None = None):
    """A copy of `params` (optionally cast) that survives the policy's buffers being donated."""
    return jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)) if dtype else x.copy(), params)


def build_value_params(config: Config, policy: models.Model, mesh, *, backbone=None):
    """PPO's value model: a value-model directory (`algorithm.value_path`, backbone + head,
    `models.load_value_model`; a reward-model export is one), or a copy of the initial
    policy's backbone (`backbone`, default `policy.params`) with a fresh zero head."""
    backbone = policy.params if backbone is None else backbone
    if config.algorithm.value_path is not None:
        model = load_value_model(config.algorithm.value_path, mesh=mesh)
        shape = (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "mlp_dim",
        )
        if any(getattr(model.config, k) != getattr(policy.config, k) for k in shape):
            raise ValueError(
                f"algorithm.value_path={config.algorithm.value_path!r}: its model "
                "shape differs from the policy's; expected the same backbone"
            )
        return frozen_copy(model.params)
    value = models.with_value_head(policy.replace(params=frozen_copy(backbone)))
    return sharding.on_mesh(value.params, mesh)


def dapo_overlong(prompts, completions, *, max_len: int, cache_len: int, **columns):
    """DAPO's soft overlong punishment on `completion_lengths` (see rewards.shaping)."""
    return soft_overlong_punishment(max_len=max_len, cache_len=cache_len)(
        prompts, completions, **columns
    )


def _import_fn(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(
            f"reward fn {spec!r}: expected a registered name or 'module.path:function'"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward fn {spec!r} cannot be imported: {e}") from None


def registered_rewards() -> dict[str, str]:
    """Names usable in `rewards.functions` (besides `task` and `module:function`)."""
    return {
        "math_accuracy": "jaxrl_lrm.rewards.math:accuracy_reward",
        "math_accuracy_lenient": "jaxrl_lrm.rewards.math:accuracy_reward_lenient",
        "think_format": "jaxrl_lrm.rewards.format:think_format_reward",
        "answer_tag": "jaxrl_lrm.rewards.format:answer_tag_reward",
        "unit_tests": "jaxrl_lrm.rewards.code:unit_test_reward",
        "majority_vote": "jaxrl_lrm.rewards.unsupervised:majority_vote_reward",
    }


def build_rewards(
    config: Config, task: TaskInfo | None, mesh=None
) -> list[tuple[str, Callable, float]]:
    """`(name, fn, weight)` triples; with no functions configured, the task's own verifier.

    Scorers loaded from a checkpoint (`scorers.*_from_checkpoint`) run on the trainer's `mesh`
    when they score in this process (`rewards.num_workers: 0`, the default; a mesh does not
    travel to worker processes)."""
    out = [
        (name, _on_mesh(fn, mesh, config), w) for name, fn, w in _configured_rewards(config, task)
    ]
    if config.algorithm.name == "dapo" and config.algorithm.overlong_cache != 0:
        max_len = config.sampling.max_new_tokens
        cache = config.algorithm.overlong_cache or max(1, max_len // 4)
        out.append(
            ("overlong", _Bound(dapo_overlong, {"max_len": max_len, "cache_len": cache}), 1.0)
        )
    return out


def _on_mesh(fn: Callable, mesh, config: Config) -> Callable:
    """`fn` with the trainer's mesh bound when it is an in-process checkpoint scorer."""
    base, kwargs = (fn.fn, fn.kwargs) if isinstance(fn, _Bound) else (fn, {})
    if mesh is None or config.rewards.num_workers or not isinstance(base, LazyCheckpointReward):
        return fn
    return _Bound(base, {**kwargs, "mesh": mesh})


def _configured_rewards(config: Config, task: TaskInfo | None):
    specs = config.rewards.functions
    if not specs:
        if task is None:
            raise ValueError(
                "rewards.functions is empty and data.source is not a task: "
                "configure at least one reward function"
            )
        return [("task", task.reward_fn, 1.0)]
    out = []
    names = registered_rewards()
    for spec in specs:
        if spec.fn == "task":
            if task is None:
                raise ValueError("rewards.functions names 'task' but data.source is not 'task'")
            fn = task.reward_fn
        elif spec.fn in names:
            fn = _import_fn(names[spec.fn])
        elif ":" in spec.fn:
            fn = _import_fn(spec.fn)
        else:
            raise ValueError(
                f"rewards.functions fn={spec.fn!r}: expected 'task', one of "
                f"{sorted(names)}, or 'module.path:function'"
            )
        if spec.args:
            fn = _Bound(fn, dict(spec.args))
        out.append((spec.fn.split(":")[-1], fn, spec.weight))
    return out


@dataclasses.dataclass(frozen=True)
class _Bound:
    """A reward function with extra keyword arguments (picklable, unlike a lambda)."""

    fn: Callable
    kwargs: dict

    def __call__(self, prompts, completions, **columns):
        return self.fn(prompts, completions, **columns, **self.kwargs)


def build_model(config: Config, mesh):
    """`(task or None, tokenizer, model)` of a run's config."""
    task = (
        resolve_task(config.data.task, config.data.task_args)
        if config.data.source == "task"
        else None
    )
    tokenizer = build_tokenizer(config, task)
    return task, tokenizer, build_policy(config, tokenizer, mesh)
