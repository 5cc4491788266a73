"""Typed, frozen run configuration read from YAML with dotted command-line overrides.

Every section is a frozen `kw_only` dataclass validated in `__post_init__`; `load_config`
rejects unknown keys and ill-typed values with an error naming the dotted key, the value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxrl_lrm.algorithms.registry import NAMES as ALGORITHMS  # the one registry of names
from jaxrl_lrm.algorithms.registry import check_section
from jaxrl_lrm.algorithms.spec import explicit_keys

STAGES = ("rl", "sft", "dpo", "reward_model")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


def _check(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSection:
    preset: str | None = "tiny"  # a `models.PRESETS` name, or None when `path` is given
    path: str | None = None  # a local Hugging Face checkpoint directory
    overrides: dict = dataclasses.field(default_factory=dict)  # ModelConfig fields to replace
    dtype: str = "float32"
    ref_dtype: str | None = None  # None: same as dtype; "bfloat16" halves the reference's memory

    def __post_init__(self):
        _check(
            self.preset is not None or self.path is not None,
            "model.preset",
            self.preset,
            "a preset name, or model.path set",
        )
        _check(
            self.dtype in ("float32", "bfloat16"),
            "model.dtype",
            self.dtype,
            "'float32' or 'bfloat16'",
        )
        _check(
            self.ref_dtype in (None, "float32", "bfloat16"),
            "model.ref_dtype",
            self.ref_dtype,
            "null, 'float32' or 'bfloat16'",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSection:
    source: str = "task"  # task | jsonl | parquet | tfds
    task: str = "addition"  # for source=task: a name in data.tasks / demo tasks
    task_args: dict = dataclasses.field(default_factory=dict)
    path: str | None = None  # jsonl / parquet file, or TFDS data_dir
    name: str | None = None  # TFDS dataset name (e.g. "gsm8k")
    split: str = "train"
    eval_split: str | None = None
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    completion_field: str = "completion"  # SFT targets
    chosen_field: str = "chosen"  # DPO / reward-model preference pairs
    rejected_field: str = "rejected"
    template: str = "auto"  # auto | chat | r1 | plain
    max_prompt_len: int = 64
    eval_size: int = 128

    def __post_init__(self):
        _check(
            self.source in ("task", "jsonl", "parquet", "tfds"),
            "data.source",
            self.source,
            "one of 'task', 'jsonl', 'parquet', 'tfds'",
        )
        _check(
            self.template in ("auto", "chat", "r1", "plain"),
            "data.template",
            self.template,
            "one of 'auto', 'chat', 'r1', 'plain'",
        )
        _check(self.max_prompt_len > 0, "data.max_prompt_len", self.max_prompt_len, "> 0")
        _check(self.eval_size >= 0, "data.eval_size", self.eval_size, ">= 0")
        if self.source in ("jsonl", "parquet", "tfds"):
            _check(
                self.path is not None,
                "data.path",
                self.path,
                f"a path for data.source={self.source!r}",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshSection:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        for k in ("data", "fsdp", "tensor"):
            v = getattr(self, k)
            _check(v == -1 or v >= 1, f"mesh.{k}", v, "a positive integer or -1")
        _check(
            [self.data, self.fsdp, self.tensor].count(-1) <= 1,
            "mesh",
            dataclasses.asdict(self),
            "at most one axis of size -1",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmSection:
    """`algorithm.*`: the algorithm's name and overrides of its published defaults.

    Every key but `name` and `group_size` defaults to `None`, which means the published default
    of the chosen algorithm (`jaxrl_lrm.algorithms.REGISTRY`, with sources); a key the algorithm
    ignores or contradicts (e.g. `beta` with `dapo`, `kl_kind` with `ppo`, `lam` with `grpo`)
    is refused with a `ConfigError` naming it. `algorithms.resolve(section)` gives the spec.
    """

    name: str = "grpo"  # one of algorithms.NAMES
    group_size: int = 8  # completions per prompt
    beta: float | None = None  # KL coefficient towards the reference; 0 skips the reference
    kl_kind: str | None = None  # KL estimator in the loss: k1 | k2 | k3 | low_var_kl
    clip_low: float | None = None
    clip_high: float | None = None
    dual_clip: float | None = None
    agg: str | None = None  # a losses.aggregate mode
    std_normalize: bool | None = None  # group advantages divided by the group std
    tis_max: float | None = None  # truncated importance sampling cap (sampler vs trainer)
    entropy_coef: float | None = None
    # PPO: the value model, GAE (gamma also for reinforce_pp) and the adaptive KL controller
    value_path: str | None = None  # init the value model from a reward model export
    value_lr: float | None = None  # None: train.lr
    value_clip: float | None = None
    gamma: float | None = None
    lam: float | None = None
    kl_target: float | None = None  # adaptive KL when set (per-token mean KL); beta is the start
    kl_horizon: float | None = None
    # DAPO: dynamic sampling and the soft overlong punishment
    max_gen_rounds: int | None = None  # generation rounds to fill the batch with mixed groups
    overlong_cache: int | None = None  # None: sampling.max_new_tokens // 4; 0: no overlong term

    def __post_init__(self):
        _check(self.name in ALGORITHMS, "algorithm.name", self.name, f"one of {ALGORITHMS}")
        _check(self.group_size >= 1, "algorithm.group_size", self.group_size, ">= 1")
        try:  # value ranges, then keys the algorithm ignores (the registry's rules)
            check_section(self.name, explicit_keys(self))
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSection:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        _check(self.max_new_tokens > 0, "sampling.max_new_tokens", self.max_new_tokens, "> 0")
        _check(
            self.temperature > 0, "sampling.temperature", self.temperature, "> 0 for RL sampling"
        )
        _check(self.top_k >= 0, "sampling.top_k", self.top_k, ">= 0")
        _check(0 < self.top_p <= 1, "sampling.top_p", self.top_p, "in (0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSection:
    steps: int = 4  # RL steps in total
    prompts_per_step: int = 8
    ppo_epochs: int = 1
    minibatches: int = 1  # optimizer updates per epoch
    micro_batches: int = 1  # gradient accumulation inside one update
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: never during training
    max_to_keep: int = 3
    log_every: int = 1

    def __post_init__(self):
        for k in ("steps", "prompts_per_step", "ppo_epochs", "minibatches", "micro_batches"):
            _check(getattr(self, k) >= 1, f"train.{k}", getattr(self, k), ">= 1")
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(
            self.lr_schedule in ("cosine", "constant"),
            "train.lr_schedule",
            self.lr_schedule,
            "'cosine' or 'constant'",
        )
        for k in ("warmup_steps", "checkpoint_every", "eval_every"):
            _check(getattr(self, k) >= 0, f"train.{k}", getattr(self, k), ">= 0")
        _check(self.max_to_keep >= 1, "train.max_to_keep", self.max_to_keep, ">= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardSpec:
    fn: str  # a registered name (see rewards registry) or "module.path:function"
    weight: float = 1.0
    args: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardsSection:
    functions: tuple[RewardSpec, ...] = ()
    num_workers: int = 0  # 0: score in-process
    timeout_s: float = 10.0

    def __post_init__(self):
        _check(self.num_workers >= 0, "rewards.num_workers", self.num_workers, ">= 0")
        _check(self.timeout_s > 0, "rewards.timeout_s", self.timeout_s, "> 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSection:
    num_prompts: int = 64
    k: int = 4  # pass@k / maj@k samples per prompt (0 disables)
    temperature: float = 1.0

    def __post_init__(self):
        _check(self.num_prompts >= 0, "eval.num_prompts", self.num_prompts, ">= 0")
        _check(self.k >= 0, "eval.k", self.k, ">= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTSection:
    steps: int = 0  # SFT warm-up steps before RL (0: none)
    batch_size: int = 32
    lr: float = 1e-3
    control_seconds: float | None = None  # demo: continued-SFT control for this wall time
    # (None: as long as the RL stage took)

    def __post_init__(self):
        _check(self.steps >= 0, "sft.steps", self.steps, ">= 0")
        _check(self.batch_size >= 1, "sft.batch_size", self.batch_size, ">= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    seed: int = 0
    run_dir: str = "runs/default"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    algorithm: AlgorithmSection = dataclasses.field(default_factory=AlgorithmSection)
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    rewards: RewardsSection = dataclasses.field(default_factory=RewardsSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    sft: SFTSection = dataclasses.field(default_factory=SFTSection)
    stage: str = "rl"  # rl | sft | dpo | reward_model: what `jaxrl-lrm train` runs
    demo: bool = False  # run the SFT / control / RL comparison and write demo_summary.json

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r}: expected one of {STAGES}")
        if self.algorithm.group_size < 2 and self.algorithm.name != "ppo":
            raise ConfigError(
                f"algorithm.group_size={self.algorithm.group_size!r}: expected >= 2 "
                f"for {self.algorithm.name!r} (a group baseline needs 2 samples)"
            )
        rows = self.train.prompts_per_step * self.algorithm.group_size
        mb = self.train.minibatches * self.train.micro_batches
        if rows % mb:
            raise ConfigError(
                f"train.prompts_per_step*algorithm.group_size={rows} is not divisible by "
                f"train.minibatches*train.micro_batches={mb}"
            )


# --------------------------------------------------------------------------- building


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list | tuple)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}={raw!r}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; allowed here: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        elif typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is RewardSpec:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{key}={value!r}: expected a list of reward specs")
            kwargs[name] = tuple(
                _build(RewardSpec, {"fn": v} if isinstance(v, str) else v, f"{key}[{i}]")
                for i, v in enumerate(value)
            )
        else:
            wants_float = tp is float or float in typing.get_args(tp)
            if wants_float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif wants_float and isinstance(value, str):
                # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it is
                try:
                    value = float(value)
                except ValueError:
                    pass
            if not _type_ok(value, tp):
                raise ConfigError(f"{key}={value!r}: expected a value of type {tp}")
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies `key.path=value` strings (values parsed as YAML) to a raw config dict."""
    raw = _deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        path, text = item.split("=", 1)
        node = raw
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return raw


def _deepcopy(x):
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def from_dict(raw: dict) -> Config:
    return _build(Config, raw or {}, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config (or the defaults when `path` is None) and applies overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{str(path)!r}: expected a YAML mapping at the top level")
    return from_dict(apply_overrides(raw, list(overrides or [])))


def to_dict(config: Config) -> dict:
    def conv(x):
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        return x

    return conv(config)


def save_config(config: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
