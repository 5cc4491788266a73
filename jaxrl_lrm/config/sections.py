"""The config sections besides the algorithm and the optimizer: model, data, mesh, sampling,
rewards, eval and SFT warm-up. Each key is documented (and, if numeric, given its range) in
its section's `Attributes:` block (`jaxrl_lrm.config.keys`)."""

from __future__ import annotations

import dataclasses

from jaxrl_lrm.config.keys import ConfigError, check, check_ranges
from jaxrl_lrm.models import lora
from jaxrl_lrm.models.config import PRESETS, REMAT_MODES, ModelConfig

DEFAULT_PRESET = "tiny"  # the model when neither `model.preset` nor `model.path` is given
_SET_ELSEWHERE = {
    "dtype": "model.dtype",
    "remat": "model.remat",
    "vocab_size": None,
}  # None: allowed (from tokenizer)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraSection:
    """`model.lora.*`: LoRA adapters instead of full fine-tuning ([LoRA](lora.md)).

    Attributes:
        rank (>= 0): the adapters' rank; 0: no LoRA (every parameter is trained).
        alpha (> 0): the adapters' scale is `alpha / rank` (PEFT's `lora_alpha`).
        targets: the projections that get adapters, a subset of `wq wk wv wo` (attention) and
            `w_gate w_up w_down` (MLP); all seven by default.
        path: a PEFT adapter directory to start from (its rank, alpha and targets must equal
            these); null: fresh adapters (A random, B zero, so step 0 is the base model).
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = lora.TARGETS
    path: str | None = None

    def __post_init__(self):
        check_ranges(self, "model.lora")
        if isinstance(self.targets, list):  # YAML gives a list; the config is hashable and
            object.__setattr__(self, "targets", tuple(self.targets))  # saves and loads equal
        try:
            lora.check_targets(self.targets)
        except ValueError:
            check(False, "model.lora.targets", list(self.targets), f"a subset of {lora.TARGETS}")
        check(self.path is None or self.rank > 0, "model.lora.path", self.path, "null at rank 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSection:
    """`model.*`: the policy to train (a random-init preset, or a local checkpoint).

    Attributes:
        preset: a `jaxrl_lrm.models.PRESETS` name, initialised at random; null means `tiny`
            when `model.path` is unset. Setting it together with `model.path` is an error.
        path: a local Hugging Face checkpoint directory (config.json, safetensors, tokenizer).
        overrides: `ModelConfig` fields to replace in the preset (e.g. `{n_layers: 4}`); only
            with a preset (an error with `model.path`). `vocab_size` defaults to the tokenizer's.
        dtype: parameter and compute dtype of the policy, `float32` or `bfloat16`.
        ref_dtype: dtype of the frozen reference copy; null: same as `model.dtype`
            (`bfloat16` halves the reference's memory). Null with LoRA (the reference is then
            the base weights themselves, not a copy).
        remat: rematerialisation of each layer in the update's backward pass: `none`, `full`
            (keep only each layer's input, recompute the rest) or a `jax.checkpoint_policies`
            name such as `dots_saveable`; the gradients are the same (see [Memory](memory.md)).
        lora: LoRA adapters (`model.lora.*`, below); rank 0 trains the whole model.
    """

    preset: str | None = None
    path: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    ref_dtype: str | None = None
    remat: str = "none"
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)

    def __post_init__(self):
        dtypes = ("float32", "bfloat16")
        check(self.remat in REMAT_MODES, "model.remat", self.remat, f"one of {list(REMAT_MODES)}")
        check(
            self.lora.rank == 0 or self.ref_dtype in (None, self.dtype),
            "model.ref_dtype",
            self.ref_dtype,
            "null with model.lora.rank > 0 (the reference is the base weights, not a copy)",
        )
        check(self.dtype in dtypes, "model.dtype", self.dtype, "'float32' or 'bfloat16'")
        check(
            self.ref_dtype in (None, *dtypes),
            "model.ref_dtype",
            self.ref_dtype,
            "null, 'float32' or 'bfloat16'",
        )
        if self.path is not None:
            for key in ("preset", "overrides"):
                value = getattr(self, key)
                check(not value, f"model.{key}", value, "unset when model.path is set (no effect)")
            return
        name = self.preset or DEFAULT_PRESET
        check(name in PRESETS, "model.preset", self.preset, f"one of {sorted(PRESETS)}")
        fields = sorted(f.name for f in dataclasses.fields(ModelConfig))
        for key, value in self.overrides.items():
            check(key in fields, f"model.overrides.{key}", value, f"a ModelConfig field {fields}")
            elsewhere = _SET_ELSEWHERE.get(key, "")
            check(elsewhere in ("", None), f"model.overrides.{key}", value, f"{elsewhere} instead")
        try:  # the preset with its overrides must be a valid model shape
            PRESETS[name].replace(**{"vocab_size": 256, **self.overrides})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides={self.overrides!r}: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSection:
    """`data.*`: where prompts (and answers, SFT targets, preference pairs) come from.

    Attributes:
        source: `task` (a procedural task), `jsonl`, `parquet` or `tfds`.
        task: for `source: task`, the task's name (see [Data](data.md)).
        task_args: keyword arguments of the task.
        path: the JSONL / Parquet file, or the TFDS `data_dir`; required unless `source: task`.
        name: the TFDS dataset name (e.g. `gsm8k`).
        split: the training split.
        eval_split: the held-out split; null: `data.eval_size` rows held out of `split`.
        prompt_field: the column holding the prompt.
        answer_field: the column holding the reference answer (passed to reward functions).
        completion_field: the column holding SFT targets.
        chosen_field: the column holding the preferred response (DPO, reward model).
        rejected_field: the column holding the rejected response (DPO, reward model).
        template: how prompts are rendered: `auto`, `chat`, `r1` or `plain`.
        system: a system prompt; `chat`: a system message before the row's messages, `r1`:
            replaces the default instructions, `plain`: written before the question.
        max_prompt_len (>= 1): prompt length in tokens (prompts are left-padded to it).
        overlong: prompts longer than `max_prompt_len` (measured after the template when the
            data is loaded, with a count in the log): `filter` drops them, `truncate` keeps
            their last `max_prompt_len` tokens, `error` stops.
        eval_size (>= 0): held-out rows evaluated (and, without `eval_split`, held out).
    """

    source: str = "task"
    task: str = "addition"
    task_args: dict = dataclasses.field(default_factory=dict)
    path: str | None = None
    name: str | None = None
    split: str = "train"
    eval_split: str | None = None
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    completion_field: str = "completion"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    template: str = "auto"
    system: str | None = None
    max_prompt_len: int = 64
    overlong: str = "filter"
    eval_size: int = 128

    def __post_init__(self):
        check_ranges(self, "data")
        sources = ("task", "jsonl", "parquet", "tfds")
        check(self.source in sources, "data.source", self.source, f"one of {sources}")
        templates = ("auto", "chat", "r1", "plain")
        check(self.template in templates, "data.template", self.template, f"one of {templates}")
        modes = ("filter", "truncate", "error")
        check(self.overlong in modes, "data.overlong", self.overlong, f"one of {modes}")
        if self.source != "task":
            check(self.path is not None, "data.path", None, f"a path for source {self.source!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshSection:
    """`mesh.*`: the device mesh (see [Architecture](architecture.md)).

    Attributes:
        data (-1 or >= 1): data-parallel axis size; -1: the devices left over.
        fsdp (-1 or >= 1): fully sharded data-parallel axis size; -1: the devices left over.
        tensor (-1 or >= 1): tensor-parallel axis size; -1: the devices left over.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        check_ranges(self, "mesh")
        sizes = [self.data, self.fsdp, self.tensor]
        check(sizes.count(-1) <= 1, "mesh", dataclasses.asdict(self), "at most one axis of -1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSection:
    """`sampling.*`: how RL completions are drawn.

    Attributes:
        max_new_tokens (>= 1): completion length cap in tokens.
        temperature (> 0): sampling temperature.
        top_k (>= 0): keep the k most likely tokens; 0: no top-k cut.
        top_p (0 < x <= 1): nucleus sampling mass; 1: no top-p cut.
        logprob_mode: the behaviour log-prob of a token under top-k / top-p, the
            denominator of the behaviour-policy weight (`algorithm.tis_max`,
            `algorithm.decoupled`): `truncated` (the renormalised distribution it was drawn
            from; the default, see [Sampling](sampling.md)) or `full` (the whole softmax).
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    logprob_mode: str = "truncated"

    def __post_init__(self):
        check_ranges(self, "sampling")
        modes = ("full", "truncated")
        check(
            self.logprob_mode in modes, "sampling.logprob_mode", self.logprob_mode, "full|truncated"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardSpec:
    """One entry of `rewards.functions` (a bare string is `{fn: STRING}`).

    Attributes:
        fn: a registered reward name (`task`, `math_accuracy`, ...) or `module.path:function`
            (the working directory is on `sys.path`).
        weight (any): its weight in the summed reward.
        args: keyword arguments bound to the function.
    """

    fn: str
    weight: float = 1.0
    args: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_ranges(self, "rewards.functions[]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardsSection:
    """`rewards.*`: the reward functions and how they are run.

    Attributes:
        functions: the reward functions, summed with their weights (see below).
        num_workers (>= 0): processes scoring in a pool; 0: score in-process.
        timeout_s (> 0): seconds one reward call may take before it scores 0.
        max_error_frac (0 <= x <= 1): a scored batch is bad for a function when more than this
            share of its samples raised or timed out; 1: never.
        max_bad_steps (>= 1): bad batches in a row (per function) that stop the run with the
            function's traceback.
    """

    functions: tuple[RewardSpec, ...] = ()
    num_workers: int = 0
    timeout_s: float = 10.0
    max_error_frac: float = 0.5
    max_bad_steps: int = 3

    def __post_init__(self):
        check_ranges(self, "rewards")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSection:
    """`eval.*`: held-out evaluation (greedy accuracy, pass@k, maj@k).

    Attributes:
        num_prompts (>= 0): held-out prompts evaluated.
        k (>= 0): samples per prompt for pass@k / maj@k; 0: greedy accuracy only.
        temperature (>= 0): sampling temperature of the k samples; 0: greedy.
        reward: the name of the reward function that says a completion is correct (>= 0.5);
            null: the first named `task` or holding `accuracy`, `correct`, `verif` or
            `unit_test`, else the only function listed.
    """

    num_prompts: int = 64
    k: int = 4
    temperature: float = 1.0
    reward: str | None = None

    def __post_init__(self):
        check_ranges(self, "eval")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTSection:
    """`sft.*`: supervised steps (the SFT stage, or a warm-up before RL).

    Attributes:
        steps (>= 0): SFT steps; for `stage: rl`, warm-up steps before RL (0: none).
        batch_size (>= 1): sequences per SFT step.
        lr (> 0): SFT learning rate.
        control_seconds (> 0): demo only: wall time of the continued-SFT control; null: as long
            as the RL stage took.
    """

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    control_seconds: float | None = None

    def __post_init__(self):
        check_ranges(self, "sft")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogSection:
    """`log.*`: what a run shows while it trains, besides `metrics.jsonl` ([Training](training.md)).

    Attributes:
        samples_every (>= 0): steps between tables of sample completions with their rewards
            (`samples.jsonl`, TensorBoard text `samples`, the console, W&B); 0: never.
        num_samples (>= 1): completions per table (the first rows of the step: whole groups
            when it is a multiple of `algorithm.group_size`).
        wandb: mirror metrics and sample tables to Weights & Biases (`pip install
            'jaxrl-lrm[wandb]'`; `WANDB_MODE=offline` writes under `<run_dir>/wandb/`).
        wandb_project: the W&B project.
        wandb_entity: the W&B entity (team or user); null: W&B's default.
    """

    samples_every: int = 10
    num_samples: int = 4
    wandb: bool = False
    wandb_project: str = "jaxrl-lrm"
    wandb_entity: str | None = None

    def __post_init__(self):
        check_ranges(self, "log")


ENV_TOOL_KEYS = ("tools", "reward", "max_turns", "tool_timeout_s", "num_workers", "error_reward")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvSection:
    """`env.*`: multi-turn, tool-using episodes instead of single completions ([Agents](agents.md)).

    Attributes:
        name: the environment: `tools` (the built-in tool environment) or
            `module.path:function` (a factory called with `env.options` that returns an
            environment); null: single-turn RL (every other `env` key is then an error).
        tools: `tools` only: the tools the model may call, each a built-in name
            (`calculator`, `python`, `search`), `module.path:attribute`, or `{name: ...,
            option: value}` (e.g. `{name: search, corpus: FILE.jsonl}`).
        reward: `tools` only: `module.path:function`, `(row, final_turn_text) -> float`,
            the reward of the turn that ends the episode; null: 0 (the scalar
            `rewards.functions` still score the whole transcript).
        max_turns (>= 1): `tools` only: assistant turns per episode; a call in the last one
            goes unanswered.
        tool_timeout_s (> 0): `tools` only: seconds one tool call may run before its worker
            is killed and the observation reports the timeout.
        num_workers (>= 1): `tools` only: worker processes that run tool calls.
        error_reward (any): `tools` only: the turn reward of a malformed or failed call.
        options: a user environment's factory keyword arguments (not with `tools`).
        max_tool_output_tokens (>= 1): an observation's content is cut to this many tokens.
        stop: the text that ends a turn for the host (the sampler stops the row there).
        threads (>= 0): episodes stepped at once on the host (their tool calls in parallel);
            0: one by one.
    """

    name: str | None = None
    tools: tuple[str | dict, ...] = ("calculator",)
    reward: str | None = None
    max_turns: int = 4
    tool_timeout_s: float = 10.0
    num_workers: int = 2
    error_reward: float = 0.0
    options: dict = dataclasses.field(default_factory=dict)
    max_tool_output_tokens: int = 64
    stop: str = "</tool_call>"
    threads: int = 0

    def __post_init__(self):
        check_ranges(self, "env")
        if isinstance(self.tools, list):  # YAML gives a list; saved and loaded configs equal
            object.__setattr__(self, "tools", tuple(self.tools))
        changed = [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name)
            != (f.default_factory() if f.default is dataclasses.MISSING else f.default)
        ]
        if self.name is None:
            for k in changed:
                check(
                    False,
                    f"env.{k}",
                    getattr(self, k),
                    "unset without env.name (single-turn RL ignores it)",
                )
            return
        check(bool(self.stop), "env.stop", self.stop, "a non-empty string")
        if self.name == "tools":
            check(bool(self.tools), "env.tools", list(self.tools), "at least one tool")
            check(
                not self.options,
                "env.options",
                self.options,
                "{} with env.name=tools (use env.tools, env.reward, ...)",
            )
            return
        for k in ENV_TOOL_KEYS:
            if k in changed:
                check(
                    False,
                    f"env.{k}",
                    getattr(self, k),
                    f"unset with the user environment {self.name!r} (its settings go in env.options)",
                )
