"""The algorithm and optimizer sections and `Config`, the root of a run's configuration."""

from __future__ import annotations

import dataclasses

from jaxrl_lrm.algorithms.registry import NAMES as ALGORITHMS  # the one registry of names
from jaxrl_lrm.algorithms.registry import REGISTRY, check_section
from jaxrl_lrm.algorithms.spec import explicit_keys
from jaxrl_lrm.config.keys import ConfigError, check, check_ranges
from jaxrl_lrm.config.sections import (
    DataSection,
    EnvSection,
    EvalSection,
    LogSection,
    MeshSection,
    ModelSection,
    RewardsSection,
    SamplingSection,
    SFTSection,
)

STAGES = ("rl", "sft", "dpo", "reward_model")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmSection:
    """`algorithm.*`: the algorithm's name and overrides of its published defaults.

    Every key but `name` and `group_size` defaults to null, which means the published default
    of the chosen algorithm (`jaxrl_lrm.algorithms.REGISTRY`, with sources); a key the algorithm
    ignores or contradicts (e.g. `beta` with `dapo`, `kl_kind` with `ppo`, `lam` with `grpo`)
    is refused with a `ConfigError` naming it. `algorithms.resolve(section)` gives the spec.

    Attributes:
        name: one of `jaxrl_lrm.algorithms.NAMES` (see [Algorithms](algorithms.md)).
        group_size (>= 1): completions per prompt (>= 2 for every algorithm but `ppo`).
        loss: a user's policy loss, `module.path:function`, in place of the algorithm's
            surrogate, with the built-in losses' signature (`jaxrl_lrm.algorithms.custom`,
            [Algorithms](algorithms.md#a-custom-policy-loss)); null: the algorithm's own.
        beta (>= 0): KL coefficient towards the reference; 0 skips the reference.
        kl_kind: KL estimator in the loss: `k1`, `k2`, `k3` or `low_var_kl`.
        clip_low (> 0): lower PPO clip range (ratio >= 1 - clip_low).
        clip_high (>= 0): upper PPO clip range (ratio <= 1 + clip_high).
        dual_clip (> 1): dual-clip bound on negative-advantage ratios.
        agg: loss aggregation, a `losses.aggregate` mode (`token-mean`, ...).
        std_normalize: whether group advantages are divided by the group's std.
        tis_max (>= 1): truncated importance sampling cap (sampler vs trainer log-probs).
        decoupled: the decoupled PPO objective: clip against the proximal policy (recomputed
            before the step's updates), weight by the behaviour ratio (capped at `tis_max`
            if set); required by `train.max_staleness >= 1`.
        entropy_coef (>= 0): entropy bonus coefficient.
        value_path: PPO: initialise the value model from this directory (a reward-model export).
        value_lr (> 0): PPO: the value model's learning rate; null: `train.lr`.
        value_clip (> 0): PPO: value clip range.
        gamma (0 <= x <= 1): discount (PPO's GAE, `reinforce_pp`).
        lam (0 <= x <= 1): PPO: the GAE lambda.
        kl_target (> 0): adaptive KL controller's target (per-token mean KL); `beta` is the
            starting coefficient.
        kl_horizon (> 0): adaptive KL controller's horizon in samples.
        max_gen_rounds (>= 1): DAPO: generation rounds to fill the batch with mixed groups.
        overlong_cache (>= 0): DAPO: soft overlong punishment window in tokens; null:
            `sampling.max_new_tokens // 4`; 0: no overlong term.
    """

    name: str = "grpo"
    group_size: int = 8
    loss: str | None = None
    beta: float | None = None
    kl_kind: str | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    dual_clip: float | None = None
    agg: str | None = None
    std_normalize: bool | None = None
    tis_max: float | None = None
    decoupled: bool | None = None
    entropy_coef: float | None = None
    value_path: str | None = None
    value_lr: float | None = None
    value_clip: float | None = None
    gamma: float | None = None
    lam: float | None = None
    kl_target: float | None = None
    kl_horizon: float | None = None
    max_gen_rounds: int | None = None
    overlong_cache: int | None = None

    def __post_init__(self):
        check(self.name in ALGORITHMS, "algorithm.name", self.name, f"one of {ALGORITHMS}")
        check_ranges(self, "algorithm")
        try:  # value ranges, then keys the algorithm ignores (the registry's rules)
            check_section(self.name, explicit_keys(self))
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSection:
    """`train.*`: the optimizer, the schedule and the loop's cadence.

    Attributes:
        steps (>= 1): training steps in total.
        prompts_per_step (>= 1): prompts per RL step (each gets `algorithm.group_size`
            completions).
        ppo_epochs (>= 1): passes over each step's batch.
        minibatches (>= 1): optimizer updates per epoch.
        micro_batches (>= 1): gradient accumulation inside one update (never changes it).
        pack_rows (>= 0): > 0: the RL update and score pass pack the rows' real tokens into
            full-length rows (sequence packing), this many packed rows per micro-batch, looping
            only over the micro-batches that hold tokens (never changes the update); 0: off.
        lr (> 0): peak learning rate (AdamW).
        warmup_steps (>= 0): linear warm-up steps.
        lr_schedule: `cosine` (decay to `lr * min_lr_ratio`) or `constant`.
        min_lr_ratio (0 <= x <= 1): the cosine schedule's final fraction of `lr`.
        weight_decay (>= 0): AdamW weight decay.
        b1 (0 <= x < 1): AdamW first-moment decay.
        b2 (0 <= x < 1): AdamW second-moment decay.
        max_grad_norm (>= 0): global gradient-norm clip; 0: no clipping.
        checkpoint_every (>= 0): steps between checkpoints; 0: only at the end.
        eval_every (>= 0): steps between held-out evaluations; 0: never during training.
        max_to_keep (>= 1): checkpoints kept.
        log_every (>= 1): steps between console progress lines (every step is in
            `metrics.jsonl`).
        compile_cache: JAX's persistent compilation cache: `auto`
            (`<run_dir>/../.jax_compile_cache`, unless JAX's cache is already set, e.g. by
            `JAX_COMPILATION_CACHE_DIR`), a directory, or `off`; a second start of the same
            config then compiles nothing it compiled before.
        max_staleness (>= 0): asynchronous rollouts: the device samples step k+1 while the
            host scores step k, and no batch more than this many policy versions old is
            trained on; 0: synchronous (needs `algorithm.decoupled` when >= 1).
    """

    steps: int = 4
    prompts_per_step: int = 8
    ppo_epochs: int = 1
    minibatches: int = 1
    micro_batches: int = 1
    pack_rows: int = 0
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0
    eval_every: int = 0
    max_to_keep: int = 3
    log_every: int = 1
    compile_cache: str = "auto"
    max_staleness: int = 0

    def __post_init__(self):
        check_ranges(self, "train")
        packs = self.pack_rows > 0
        check(
            not (packs and self.micro_batches > 1),
            "train.micro_batches",
            self.micro_batches,
            "1 with train.pack_rows > 0 (packing sets its own micro-batches)",
        )
        schedules = ("cosine", "constant")
        check(
            self.lr_schedule in schedules, "train.lr_schedule", self.lr_schedule, "cosine|constant"
        )
        check(
            bool(self.compile_cache.strip()),
            "train.compile_cache",
            self.compile_cache,
            "auto, off or a directory",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The whole run.

    Attributes:
        seed (>= 0): the run's seed (initialisation, sampling keys, data order).
        run_dir: the run directory (config, metrics, checkpoints); a run resumes from it.
        model: see `model.*`.
        data: see `data.*`.
        mesh: see `mesh.*`.
        algorithm: see `algorithm.*`.
        sampling: see `sampling.*`.
        train: see `train.*`.
        rewards: see `rewards.*`.
        eval: see `eval.*`.
        sft: see `sft.*`.
        log: see `log.*`.
        env: see `env.*`.
        stage: what `jaxrl-lrm train` runs: `rl`, `sft`, `dpo` or `reward_model`.
        demo: run the SFT / control / RL comparison and write `demo_summary.json`.
    """

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
    log: LogSection = dataclasses.field(default_factory=LogSection)
    env: EnvSection = dataclasses.field(default_factory=EnvSection)
    stage: str = "rl"
    demo: bool = False

    def __post_init__(self):
        check_ranges(self, "")
        check(self.stage in STAGES, "stage", self.stage, f"one of {STAGES}")
        if self.algorithm.group_size < 2 and self.algorithm.name != "ppo":
            raise ConfigError(
                f"algorithm.group_size={self.algorithm.group_size!r}: expected >= 2 "
                f"for {self.algorithm.name!r} (a group baseline needs 2 samples)"
            )
        k = self.train.max_staleness
        if k and not (self.algorithm.decoupled or self.algorithm.tis_max is not None):
            raise ConfigError(
                f"train.max_staleness={k!r}: asynchronous rollouts train on samples of an "
                "older policy, and the standard objective would clip against that policy "
                "without correcting for it; set algorithm.decoupled=true (the decoupled PPO "
                "objective), or train.max_staleness=0"
            )
        if k and REGISTRY[self.algorithm.name].spec_kwargs()["dynamic_sampling"]:
            raise ConfigError(
                f"train.max_staleness={k!r}: not with DAPO's dynamic sampling "
                f"(algorithm.name={self.algorithm.name!r}); use train.max_staleness=0"
            )
        self._check_env()
        rows = self.train.prompts_per_step * self.algorithm.group_size
        mb = self.train.minibatches * self.train.micro_batches
        if rows % mb:
            raise ConfigError(
                f"train.prompts_per_step*algorithm.group_size={rows} is not divisible by "
                f"train.minibatches*train.micro_batches={mb}"
            )

    def _check_env(self):
        """Multi-turn episodes: what the episode sampler does not do is an error."""
        name, s = self.env.name, self.sampling
        if name is None:
            return
        check(self.stage == "rl", "stage", self.stage, f"rl with env.name={name!r}")
        if self.train.max_staleness:
            raise ConfigError(
                f"train.max_staleness={self.train.max_staleness!r}: expected 0 with "
                f"env.name={name!r} (episodes are sampled synchronously)"
            )
        if REGISTRY[self.algorithm.name].spec_kwargs()["dynamic_sampling"]:
            raise ConfigError(
                f"algorithm.name={self.algorithm.name!r}: DAPO's dynamic sampling is not "
                f"built for episodes (env.name={name!r}); use another algorithm"
            )
        if s.logprob_mode == "truncated" and (s.top_k > 0 or s.top_p < 1.0):
            raise ConfigError(
                f"sampling.logprob_mode={s.logprob_mode!r}: expected full with "
                f"env.name={name!r} and top-k / top-p (the episode sampler reports the "
                "full-softmax log-prob)"
            )
