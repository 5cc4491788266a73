"""Rewards from a model with a scalar value head: a Bradley-Terry reward model (RM) and a
process reward model (PRM).

Both run `prompt + completion` (re-tokenised: `encode(prompt) + encode(completion)`) through
the backbone and read `transformer.value_head` at chosen positions:

- `RewardModelScorer`: the head at the last real token is the sequence's score.
- `PRMScorer`: `sigmoid(head)` at the last token of every reasoning step (steps from
  `rewards.dense.split_steps`) is that step's score; `rewards.dense.step_token_rewards` puts
  the scores on completion tokens, and a `min` / `last` / `mean` reduction gives one outcome
  reward per completion.

Unlike the rest of `jaxrl_lrm.rewards` these import and run JAX: call them in-process on the
trainer's host (`rewards.num_workers: 0`), never in the reward executor's worker processes.
Batches are left-padded to a fixed batch size and a power-of-two length bucket, so one jitted
forward serves every call of the same bucket.

`reward_model_from_checkpoint` and `prm_from_checkpoint` are the config-facing faces: reward
functions that take `path=` (bound from `rewards.functions[*].args`) and load the checkpoint
once, on first use. The checkpoint is a `models.value_model` directory (`save_value_model`:
backbone + `value_head.safetensors`), e.g. an export of the `reward_model` training stage.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sampling
from jaxrl_lrm.data.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.value_model import load_value_model, save_value_model
from jaxrl_lrm.rewards.dense import split_steps, step_token_rewards

REDUCTIONS = ("min", "last", "mean")
SPLIT_MODES = ("blank_line", "newline", "step_marker")
_JOINERS = {"blank_line": "\n\n", "newline": "\n", "step_marker": "\n"}


def as_tokenizer(tokenizer: Any) -> CharTokenizer | HFTokenizer:
    """The project's tokenizer interface for `tokenizer`: a `CharTokenizer` or `HFTokenizer`
    as is, a raw `transformers` tokenizer (what `models.load_pretrained` stores) wrapped."""
    if isinstance(tokenizer, CharTokenizer | HFTokenizer):
        return tokenizer
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        return HFTokenizer(tokenizer)
    raise ValueError(f"tokenizer={tokenizer!r}: expected a CharTokenizer, an HFTokenizer or a "
                     "transformers tokenizer (pass tokenizer= when the model carries none)")


def tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` (no special tokens) and each token's `(start_char, end_char)` span.

    A `CharTokenizer` token is one character, so token i spans `(i, i + 1)`. A Hugging Face
    tokenizer must be a fast one: its `return_offsets_mapping=True` gives the spans.

    Raises:
      ValueError: for a tokenizer that cannot report offsets.
    """
    tok = as_tokenizer(tokenizer)
    if isinstance(tok, CharTokenizer):
        ids = tok.encode(text)
        return ids, [(i, i + 1) for i in range(len(ids))]
    if not getattr(tok.tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {tok!r} is not a fast tokenizer: offsets need "
                         "return_offsets_mapping, which only fast tokenizers support")
    enc = tok.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]


def token_offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """`(start_char, end_char)` of every token of `text`; see `tokenize_with_offsets`."""
    return tokenize_with_offsets(tokenizer, text)[1]


# ----------------------------------------------------------------------------- the forward


def _values(params, config, ids_BP, mask_BP):
    """Value head at every slot of left-padded sequences: float32 [B, P]."""
    hidden_BPD, _ = transformer.forward_hidden(params, config, ids_BP, kv_mask_BS=mask_BP)
    return transformer.value_head(params, hidden_BPD)


_values_jit = jax.jit(_values, static_argnums=1)


def sequence_values(model, sequences: Sequence[Sequence[int]], *, batch_size: int,
                    bucket_sizes: Sequence[int] | None = None) -> list[np.ndarray]:
    """Value-head outputs `[len(seq)]` (float32) at every token of each unpadded sequence.

    Sequences go through in chunks of `batch_size` rows (the last chunk is filled with one-token
    dummy rows), each chunk left-padded to a length bucket (`sampling.bucket_length`, capped at
    `max_seq_len`), so the jitted forward compiles once per bucket.
    """
    if not model.has_value_head:
        raise ValueError("model has no value_head: expected a reward / value model "
                         "(models.with_value_head or models.load_value_model)")
    config = model.config
    out = []
    for lo in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[lo:lo + batch_size]]
        n_real = len(chunk)
        longest = max(len(s) for s in chunk)
        if longest > config.max_seq_len:
            raise ValueError(f"a sequence has {longest} tokens: expected at most "
                             f"max_seq_len={config.max_seq_len}")
        P = max(longest, min(sampling.bucket_length(longest, bucket_sizes), config.max_seq_len))
        chunk += [[0]] * (batch_size - len(chunk))
        ids, mask = sampling.left_pad(chunk, 0, [P])
        values = np.asarray(jax.device_get(
            _values_jit(model.params, config, jnp.asarray(ids), jnp.asarray(mask))))
        out += [values[i, P - len(s):] for i, s in enumerate(chunk[:n_real])]
    return out


def _check_batch(prompts, completions) -> None:
    for name, xs in (("prompts", prompts), ("completions", completions)):
        if isinstance(xs, str) or not all(isinstance(x, str) for x in xs):
            raise ValueError(f"{name}={xs!r}: expected a list of strings")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions: "
                         "expected one prompt per completion")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


# ----------------------------------------------------------------------------- reward model


class RewardModelScorer:
    """Bradley-Terry reward model as a reward function.

    `reward = scale * (head(h_last) - shift)` where `h_last` is the final hidden state at the
    last token of `encode(prompt) + encode(completion)` (the score a Bradley-Terry RM is
    trained on: `P(a > b) = sigmoid(r_a - r_b)`). Set `shift` to the RM's mean score and
    `scale` to one over its standard deviation to put rewards on a unit scale. Sequences
    longer than `max_seq_len` keep their last `max_seq_len` tokens (counted in
    `stats["truncated"]`).

    Args:
      model: a `Model` with a value head.
      tokenizer: defaults to `model.tokenizer`.
      batch_size: rows per jitted forward.
      scale, shift: the affine normalisation above.
      append_eos: score at an EOS token appended to the completion (how the `reward_model`
        training stage reads its RM: prompt + completion + EOS).
      bucket_sizes: length buckets (default powers of two >= 16).
    """

    def __init__(self, model, tokenizer=None, *, batch_size: int = 8, scale: float = 1.0,
                 shift: float = 0.0, append_eos: bool = False,
                 bucket_sizes: Sequence[int] | None = None):
        if not model.has_value_head:
            raise ValueError("model has no value_head: expected a reward model "
                             "(models.with_value_head or models.load_value_model)")
        self.model = model
        self.tokenizer = as_tokenizer(model.tokenizer if tokenizer is None else tokenizer)
        self.batch_size = _positive_int("batch_size", batch_size)
        for name, v in (("scale", scale), ("shift", shift)):
            if not isinstance(v, int | float) or not np.isfinite(v):
                raise ValueError(f"{name}={v!r}: expected a finite number")
        self.scale, self.shift = float(scale), float(shift)
        self.suffix = [self.tokenizer.eos_id] if append_eos else []
        self.bucket_sizes = bucket_sizes
        self.stats = {"scored": 0, "truncated": 0}

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Unnormalised head outputs at the last token, float32 [N]."""
        _check_batch(prompts, completions)
        limit = self.model.config.max_seq_len
        seqs = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            seq = self.tokenizer.encode(p) + self.tokenizer.encode(c) + self.suffix
            if not seq:
                raise ValueError(f"prompts[{i}] and completions[{i}] are both empty: "
                                 "expected at least one token to score")
            self.stats["truncated"] += len(seq) > limit
            seqs.append(seq[-limit:])
        if not seqs:
            return np.zeros(0, np.float32)
        values = sequence_values(self.model, seqs, batch_size=self.batch_size,
                                 bucket_sizes=self.bucket_sizes)
        self.stats["scored"] += len(seqs)
        return np.array([v[-1] for v in values], np.float32)

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        raw = self.raw_scores(prompts, completions)
        return [float(self.scale * (r - self.shift)) for r in raw]


# ----------------------------------------------------------------------------- PRM


@dataclasses.dataclass(frozen=True)
class PRMResult:
    """One completion's process-reward scores.

    Attributes:
      steps: `(start_char, end_char)` of each step in the completion.
      step_scores: float32 [K], `sigmoid(head)` at each step's last token.
      token_rewards: float32 [T], the step scores on the completion's tokens
        (`rewards.dense.step_token_rewards`).
      positions: [K] index of each step's last token in `encode(prompt) + encode(completion)`.
    """

    steps: list[tuple[int, int]]
    step_scores: np.ndarray
    token_rewards: np.ndarray
    positions: np.ndarray


class PRMScorer:
    """Process reward model: one score in (0, 1) per reasoning step.

    Step k's score is `sigmoid(head(h_t))` with t the last token of step k in
    `encode(prompt) + encode(completion)` (the PRM800K / Math-Shepherd convention of reading
    the PRM at the step's end). As a reward function it returns the `reduction` of the step
    scores: `"min"` (a solution is as good as its worst step, Lightman et al. 2023), `"last"`,
    or `"mean"`; a completion with no steps gets `empty_score`. A prompt that would push the
    sequence past `max_seq_len` loses tokens from its start; a completion that alone exceeds
    it raises `ValueError`.

    Args:
      model: a `Model` with a value head trained as a PRM.
      tokenizer: defaults to `model.tokenizer`; must report offsets (`tokenize_with_offsets`).
      step_splitter: a `split_steps` mode: "blank_line", "newline" or "step_marker".
      reduction: "min", "last" or "mean".
      batch_size: rows per jitted forward.
      empty_score: the reward of a completion with no steps.
    """

    def __init__(self, model, tokenizer=None, *, step_splitter: str = "blank_line",
                 reduction: str = "min", batch_size: int = 8, empty_score: float = 0.0,
                 bucket_sizes: Sequence[int] | None = None):
        if not model.has_value_head:
            raise ValueError("model has no value_head: expected a PRM "
                             "(models.with_value_head or models.load_value_model)")
        if step_splitter not in SPLIT_MODES:
            raise ValueError(f"step_splitter={step_splitter!r}: expected one of {SPLIT_MODES}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
        self.model = model
        self.tokenizer = as_tokenizer(model.tokenizer if tokenizer is None else tokenizer)
        self.step_splitter, self.reduction = step_splitter, reduction
        self.batch_size = _positive_int("batch_size", batch_size)
        self.empty_score = float(empty_score)
        self.bucket_sizes = bucket_sizes

    def step_positions(self, prompt: str, completion: str):
        """`(sequence ids, step spans, completion offsets, step-end positions in the sequence)`."""
        prompt_ids = self.tokenizer.encode(prompt)
        comp_ids, offsets = tokenize_with_offsets(self.tokenizer, completion)
        limit = self.model.config.max_seq_len
        if len(comp_ids) > limit:
            raise ValueError(f"completion has {len(comp_ids)} tokens: expected at most "
                             f"max_seq_len={limit} to score its steps")
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(comp_ids) - limit):]
        spans = split_steps(completion, mode=self.step_splitter)
        offs = np.asarray(offsets, np.int64).reshape(-1, 2)
        real = offs[:, 1] > offs[:, 0]
        positions = []
        for start, end in spans:  # the same "last overlapping token" rule as step_token_rewards
            hits = np.nonzero(real & (offs[:, 0] < end) & (offs[:, 1] > start))[0]
            if hits.size == 0:
                raise ValueError(f"step at characters [{start}, {end}) overlaps no token")
            positions.append(len(prompt_ids) + int(hits[-1]))
        return prompt_ids + comp_ids, spans, offsets, np.asarray(positions, np.int64)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[PRMResult]:
        """Per-step scores and token-level rewards for every completion."""
        _check_batch(prompts, completions)
        encoded = [self.step_positions(p, c) for p, c in zip(prompts, completions)]
        todo = [i for i, e in enumerate(encoded) if len(e[0]) > 0 and len(e[3]) > 0]
        values = sequence_values(self.model, [encoded[i][0] for i in todo],
                                 batch_size=self.batch_size,
                                 bucket_sizes=self.bucket_sizes) if todo else []
        by_row = dict(zip(todo, values))
        results = []
        for i, (_, spans, offsets, positions) in enumerate(encoded):
            if i in by_row:
                head = by_row[i][positions].astype(np.float64)
                scores = (1.0 / (1.0 + np.exp(-head))).astype(np.float32)
            else:
                scores = np.zeros(0, np.float32)
            rewards = step_token_rewards(completions[i], offsets, scores,
                                         mode=self.step_splitter)
            results.append(PRMResult(spans, scores, rewards, positions))
        return results

    def step_scorer(self, prompt: str, steps: Sequence[str]) -> list[float]:
        """The `rewards.dense` extension point: `(prompt, steps) -> one score per step`.

        The steps are joined back into a completion with the splitter's separator.
        """
        completion = _JOINERS[self.step_splitter].join(steps)
        result = self.score([prompt], [completion])[0]
        if len(result.step_scores) != len(steps):
            raise ValueError(f"{len(steps)} steps re-split into {len(result.step_scores)} under "
                             f"step_splitter={self.step_splitter!r}: expected the same count")
        return [float(s) for s in result.step_scores]

    def as_token_level(self) -> Callable:
        """This PRM as a token-level reward function (`rewards.dense.TokenLevelReward`): per
        completion, `[(step_end_char, step_score) for each step]`, which the trainer places on
        the token ending each step and feeds to GAE / REINFORCE++ as dense rewards."""

        def prm_token_level(prompts: list[str], completions: list[str], **_):
            return [[(int(end), float(s)) for (_, end), s in zip(r.steps, r.step_scores)]
                    for r in self.score(prompts, completions)]

        prm_token_level.token_level = True
        return prm_token_level

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        out = []
        for r in self.score(prompts, completions):
            if r.step_scores.size == 0:
                out.append(self.empty_score)
            else:
                reduce = {"min": np.min, "last": lambda s: s[-1], "mean": np.mean}
                out.append(float(reduce[self.reduction](r.step_scores)))
        return out


# ----------------------------------------------------------------------------- checkpoints


# One checkpoint format for every value-head model (`models.value_model`); the old names stay
# as aliases.
save_reward_model = save_value_model
load_reward_model = load_value_model


def load_backbone(path: str | Path, *, dtype: str = "float32"):
    """`models.load_pretrained(path)` with the project's tokenizer of the directory
    (`data.tokenizer.load_tokenizer`), for checkpoint rewards without a value head."""
    from jaxrl_lrm.models import load_pretrained

    return load_pretrained(path, dtype=dtype).replace(tokenizer=load_tokenizer(path))


class LazyCheckpointReward:
    """A reward function that builds its scorer from a checkpoint on first call and caches it.

    Called as `fn(prompts, completions, path=..., <options>, **columns)`, which is how the
    trainer calls a `rewards.functions` entry whose `args` hold `path` and options. Keyword
    arguments named in `options` configure the scorer (they and `path`, `dtype` form the cache
    key); every other keyword is a dataset column and goes to the scorer's call. Instances are
    module-level singletons and pickle by reference (the cache never travels).

    Args:
      name: the module attribute this instance is bound to (for pickling).
      build: `(model, **options) -> scorer` where the scorer has the reward signature.
      options: the keyword names `build` accepts.
      value_head: whether the checkpoint holds a value head.
      module: the module defining the instance (for pickling).
    """

    def __init__(self, name: str, build: Callable[..., Callable], options: Sequence[str], *,
                 value_head: bool = True, module: str = __name__):
        self.name, self.build, self.options = name, build, tuple(options)
        self.module = module
        self.value_head = value_head
        self._cache: dict = {}

    def scorer(self, path: str, *, dtype: str = "float32", **options) -> Callable:
        """The (cached) scorer for `path` and `options`."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {self.name}: expected some of "
                             f"{list(self.options)}")
        key = (str(Path(path).resolve()), dtype, tuple(sorted(options.items(), key=str)))
        if key not in self._cache:
            model = (load_value_model(path, dtype=dtype) if self.value_head
                     else load_backbone(path, dtype=dtype))
            self._cache[key] = self.build(model, **options)
        return self._cache[key]

    def __call__(self, prompts: list[str], completions: list[str], *, path: str | None = None,
                 dtype: str = "float32", **kwargs) -> list[float]:
        if path is None:
            raise ValueError(f"{self.name} needs path=<checkpoint directory> "
                             "(set it in the rewards.functions entry's args)")
        options = {k: _hashable(v) for k, v in kwargs.items() if k in self.options}
        columns = {k: v for k, v in kwargs.items() if k not in self.options}
        return self.scorer(path, dtype=dtype, **options)(prompts, completions, **columns)

    def __reduce__(self):
        return _lookup, (self.module, self.name)

    def __repr__(self) -> str:
        return f"LazyCheckpointReward({self.name!r}, cached={len(self._cache)})"


def _lookup(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


reward_model_from_checkpoint = LazyCheckpointReward(
    "reward_model_from_checkpoint", RewardModelScorer,
    ("batch_size", "scale", "shift", "append_eos", "bucket_sizes"))
prm_from_checkpoint = LazyCheckpointReward(
    "prm_from_checkpoint", PRMScorer,
    ("step_splitter", "reduction", "batch_size", "empty_score", "bucket_sizes"))
