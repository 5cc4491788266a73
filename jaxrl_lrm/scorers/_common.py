"""What the scorers share: tokenizers with offsets, the value-head forward over ragged batches,
argument checks, and the checkpoint-backed lazy reward function."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sampling, sharding
from jaxrl_lrm.data.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.hf import load_pretrained
from jaxrl_lrm.models.value_model import load_value_model


def as_tokenizer(tokenizer: Any) -> CharTokenizer | HFTokenizer:
    """The project's tokenizer interface for `tokenizer`: a `CharTokenizer` or `HFTokenizer`
    as is, a raw `transformers` tokenizer (what `models.load_pretrained` stores) wrapped."""
    if isinstance(tokenizer, CharTokenizer | HFTokenizer):
        return tokenizer
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        return HFTokenizer(tokenizer)
    raise ValueError(
        f"tokenizer={tokenizer!r}: expected a CharTokenizer, an HFTokenizer or a "
        "transformers tokenizer (pass tokenizer= when the model carries none)"
    )


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
        raise ValueError(
            f"tokenizer {tok!r} is not a fast tokenizer: offsets need "
            "return_offsets_mapping, which only fast tokenizers support"
        )
    enc = tok.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]


def token_offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """`(start_char, end_char)` of every token of `text`; see `tokenize_with_offsets`."""
    return tokenize_with_offsets(tokenizer, text)[1]


def check_batch(prompts, completions) -> None:
    for name, xs in (("prompts", prompts), ("completions", completions)):
        if isinstance(xs, str) or not all(isinstance(x, str) for x in xs):
            raise ValueError(f"{name}={xs!r}: expected a list of strings")
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts for {len(completions)} completions: "
            "expected one prompt per completion"
        )


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def check_value_model(model, what: str) -> None:
    if not model.has_value_head:
        raise ValueError(
            f"model has no value_head: expected {what} "
            "(models.with_value_head or models.load_value_model)"
        )


# ----------------------------------------------------------------------------- the forward


def values_fn(config) -> Callable:
    """A fresh jitted `(params, ids_BP, mask_BP) -> value head at every slot, float32 [B, P]`.

    Each scorer makes its own in its constructor, so its compilations (one per batch shape)
    live and die with it. Input shardings (the params' and `shard_batch`'s) drive the layout.
    """

    def values(params, ids_BP, mask_BP):
        hidden_BPD, _ = transformer.forward_hidden(params, config, ids_BP, kv_mask_BS=mask_BP)
        return transformer.value_head(params, hidden_BPD)

    return jax.jit(values)


def sequence_values(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int,
    bucket_sizes: Sequence[int] | None = None,
    mesh=None,
    forward: Callable | None = None,
) -> list[np.ndarray]:
    """Value-head outputs `[len(seq)]` (float32) at every token of each unpadded sequence.

    Sequences go through in chunks of `batch_size` rows (the last chunk is filled with one-token
    dummy rows), each chunk left-padded to a length bucket (`sampling.bucket_length`, capped at
    `max_seq_len`), so `forward` compiles once per bucket. With `mesh` the chunk is padded to a
    multiple of the (data, fsdp) size and placed with `sharding.shard_batch`; with several
    processes every process must call with the same number of chunks and buckets.

    Args:
      forward: a `values_fn(model.config)`; by default a fresh one (compiling on every call).
    """
    check_value_model(model, "a reward / value model")
    config = model.config
    forward = values_fn(config) if forward is None else forward
    rows = batch_size
    if mesh is not None:
        rows += -batch_size % (mesh.shape["data"] * mesh.shape["fsdp"])
    out = []
    for lo in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[lo : lo + batch_size]]
        n_real = len(chunk)
        longest = max(len(s) for s in chunk)
        if longest > config.max_seq_len:
            raise ValueError(
                f"a sequence has {longest} tokens: expected at most "
                f"max_seq_len={config.max_seq_len}"
            )
        P = max(longest, min(sampling.bucket_length(longest, bucket_sizes), config.max_seq_len))
        chunk += [[0]] * (rows - len(chunk))
        ids, mask = sampling.left_pad(chunk, 0, [P])
        if mesh is None:
            ids, mask = jnp.asarray(ids), jnp.asarray(mask)
        else:
            ids, mask = sharding.shard_batch((ids, mask), mesh)
        values = sharding.host_rows(forward(model.params, ids, mask))
        out += [values[i, P - len(s) :] for i, s in enumerate(chunk[:n_real])]
    return out


# ----------------------------------------------------------------------------- checkpoints


def load_backbone(path: str | Path, *, dtype: str = "float32", mesh=None):
    """`models.load_pretrained(path, mesh=mesh)` with the project's tokenizer of the directory
    (`data.tokenizer.load_tokenizer`), for checkpoint rewards without a value head."""
    return load_pretrained(path, dtype=dtype, mesh=mesh).replace(tokenizer=load_tokenizer(path))


class LazyCheckpointReward:
    """A reward function that builds its scorer from a checkpoint on first call and caches it.

    Called as `fn(prompts, completions, path=..., <options>, mesh=None, **columns)`, which is
    how the trainer calls a `rewards.functions` entry whose `args` hold `path` and options
    (the trainer may bind `mesh`, its own mesh, so the model is loaded onto it). Keyword
    arguments named in `options` configure the scorer (they, `path`, `dtype` and `mesh` form
    the cache key); every other keyword is a dataset column and goes to the scorer's call.
    Instances are module-level singletons and pickle by reference (the cache never travels).

    Args:
      name: the module attribute this instance is bound to (for pickling).
      build: `(model, mesh=..., **options) -> scorer` where the scorer has the reward signature.
      options: the keyword names `build` accepts.
      module: the module defining the instance (for pickling).
      value_head: whether the checkpoint holds a value head.
    """

    def __init__(
        self,
        name: str,
        build: Callable[..., Callable],
        options: Sequence[str],
        *,
        module: str,
        value_head: bool = True,
    ):
        self.name, self.build, self.options = name, build, tuple(options)
        self.module = module
        self.value_head = value_head
        self._cache: dict = {}

    def scorer(self, path: str, *, dtype: str = "float32", mesh=None, **options) -> Callable:
        """The (cached) scorer for `path`, `mesh` and `options`."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {self.name}: expected some of "
                f"{list(self.options)}"
            )
        key = (str(Path(path).resolve()), dtype, mesh, tuple(sorted(options.items(), key=str)))
        if key not in self._cache:
            load = load_value_model if self.value_head else load_backbone
            model = load(path, dtype=dtype, mesh=mesh)
            self._cache[key] = self.build(model, mesh=mesh, **options)
        return self._cache[key]

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        *,
        path: str | None = None,
        dtype: str = "float32",
        mesh=None,
        **kwargs,
    ) -> list[float]:
        if path is None:
            raise ValueError(
                f"{self.name} needs path=<checkpoint directory> "
                "(set it in the rewards.functions entry's args)"
            )
        options = {k: _hashable(v) for k, v in kwargs.items() if k in self.options}
        columns = {k: v for k, v in kwargs.items() if k not in self.options}
        scorer = self.scorer(path, dtype=dtype, mesh=mesh, **options)
        return scorer(prompts, completions, **columns)

    def __reduce__(self):
        return _lookup, (self.module, self.name)

    def __repr__(self) -> str:
        return f"LazyCheckpointReward({self.name!r}, cached={len(self._cache)})"


def _lookup(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v
