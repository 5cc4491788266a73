"""Supervised fine-tuning on (prompt, completion) pairs: the warm-up stage before RL, and the
continued-SFT control of the demo. Loss on completion tokens (and their EOS) only."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxrl_lrm import sampling, sharding
from jaxrl_lrm.rl import steps


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, prompt_len: int, completion_len: int,
                 render: Callable[[str], str] = lambda s: s) -> dict:
    """Token arrays for SFT: left-padded prompt, completion + EOS right-padded.

    Returns numpy `tokens_BL`, `attn_BL`, `loss_mask_BL` with L = prompt_len + completion_len.
    """
    prompts = [tokenizer.encode(render(p)) for p, _ in pairs]
    ids_BP, mask_BP = sampling.left_pad(prompts, tokenizer.pad_id, bucket_sizes=[prompt_len])
    B, T = len(pairs), completion_len
    comp = np.full((B, T), tokenizer.pad_id, np.int32)
    cmask = np.zeros((B, T), np.int32)
    for i, (_, c) in enumerate(pairs):
        ids = tokenizer.encode(c) + [tokenizer.eos_id]
        if len(ids) > T:
            raise ValueError(f"completion {c[:60]!r} has {len(ids)} tokens with EOS; "
                             f"sampling.max_new_tokens={T} is too small")
        comp[i, : len(ids)] = ids
        cmask[i, : len(ids)] = 1
    tokens = np.concatenate([ids_BP, comp], axis=1)
    attn = np.concatenate([mask_BP, cmask], axis=1)
    loss_mask = np.concatenate([np.zeros_like(mask_BP), cmask], axis=1)
    return {"tokens_BL": tokens, "attn_BL": attn, "loss_mask_BL": loss_mask}


def run_sft(state: steps.TrainState, optimizer, data: dict, *, config, mesh, batch_size: int,
            seed: int, max_steps: int | None = None, max_seconds: float | None = None,
            on_step: Callable[[int, steps.TrainState, dict], None] | None = None):
    """SFT on the encoded `data` in shuffled batches until `max_steps` or `max_seconds`.

    Returns the final state and the number of steps taken. `on_step(step, state, metrics)` is
    called after every step (for logging and periodic evaluation; its time counts).
    """
    if max_steps is None and max_seconds is None:
        raise ValueError("run_sft needs max_steps or max_seconds")
    n = data["tokens_BL"].shape[0]
    if batch_size > n:
        raise ValueError(f"sft.batch_size={batch_size} exceeds the {n} SFT examples")
    update = _sft_update_fn(config, optimizer)
    rng = np.random.default_rng(seed)
    order, pos, taken = rng.permutation(n), 0, 0
    start = time.monotonic()
    while True:
        if max_steps is not None and taken >= max_steps:
            break
        if max_seconds is not None and time.monotonic() - start >= max_seconds:
            break
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos: pos + batch_size]
        pos += batch_size
        batch = sharding.shard_batch({k: v[idx] for k, v in data.items()}, mesh)
        state, metrics = update(state, batch)
        taken += 1
        if on_step is not None:
            on_step(taken, state, metrics)
    jax.block_until_ready(state.params)
    return state, taken


@functools.lru_cache(maxsize=8)
def _sft_update_fn(config, optimizer):
    return jax.jit(functools.partial(steps.sft_update, config=config, optimizer=optimizer),
                   donate_argnums=0)
