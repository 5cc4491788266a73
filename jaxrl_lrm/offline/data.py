"""Reading and encoding the fixed example sets of the offline stages.

`encode_pairs` lays out (prompt, completion) pairs as the update reads them: a left-padded
prompt (P = `data.max_prompt_len`) followed by the completion and its EOS, right-padded to
T = `sampling.max_new_tokens`; `loss_mask_BL` marks the completion tokens and their EOS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxrl_lrm import sampling
from jaxrl_lrm.config import Config
from jaxrl_lrm.data import sources
from jaxrl_lrm.data.overlong import overlong_indices
from jaxrl_lrm.data.templates import render_prompt


def make_render(config: Config, tokenizer) -> Callable[[str], str]:
    """Question -> prompt text, with the RL run's template rule (tasks: plain)."""
    template = config.data.template
    if config.data.source == "task" and template == "auto":
        template = "plain"
    return lambda question: render_prompt(question, tokenizer, template, config.data.system)


def read_rows(config: Config, split: str, target_field: str, extra: tuple[str, ...] = ()):
    """Rows of a file / TFDS source with `prompt`, `target` (from `target_field`) and `extra`
    string fields (`data.sources.make_source` with `target_field` read in place of the answer)."""
    data = dataclasses.replace(config.data, answer_field=target_field)
    src = sources.make_source(data, split, seed=config.seed)
    rows = []
    for i in range(len(src)):
        row = src[i]
        for field in extra:
            if not isinstance(row.get(field), str):
                raise ValueError(
                    f"{split} row {i}: field {field!r}={row.get(field)!r}: "
                    f"expected a string (fields present: {sorted(row)})"
                )
        rows.append(
            {"prompt": row["prompt"], "target": str(row["answer"]), **{f: row[f] for f in extra}}
        )
    return rows


def fit_prompts(items: list, tokenizer, render, prompt_len: int, overlong: str, what: str):
    """`items` (tuples whose first entry is the prompt) with the prompts longer than
    `prompt_len` after `render` handled by `overlong` (`data.overlong`: filter, truncate,
    error; see `data.overlong.overlong_indices`)."""
    length = lambda item: len(tokenizer.encode(render(item[0])))
    return [items[i] for i in overlong_indices(items, length, prompt_len, overlong, what)]


def encode_pairs(
    pairs: list[tuple[str, str]],
    tokenizer,
    prompt_len: int,
    completion_len: int,
    render: Callable[[str], str] = lambda s: s,
    truncate: bool = False,
) -> dict:
    """NumPy `tokens_BL`, `attn_BL`, `loss_mask_BL` (L = prompt_len + completion_len) of
    (prompt, completion) pairs: left-padded prompt (`truncate`: its last `prompt_len` tokens),
    completion + EOS right-padded."""
    prompts = [tokenizer.encode(render(p)) for p, _ in pairs]
    if truncate:
        prompts = [ids[-prompt_len:] for ids in prompts]
    ids_BP, mask_BP = sampling.left_pad(prompts, tokenizer.pad_id, bucket_sizes=[prompt_len])
    B, T = len(pairs), completion_len
    comp = np.full((B, T), tokenizer.pad_id, np.int32)
    cmask = np.zeros((B, T), np.int32)
    for i, (_, c) in enumerate(pairs):
        ids = tokenizer.encode(c) + [tokenizer.eos_id]
        if len(ids) > T:
            raise ValueError(
                f"completion {c[:60]!r} has {len(ids)} tokens with EOS; "
                f"sampling.max_new_tokens={T} is too small"
            )
        comp[i, : len(ids)] = ids
        cmask[i, : len(ids)] = 1
    return {
        "tokens_BL": np.concatenate([ids_BP, comp], axis=1),
        "attn_BL": np.concatenate([mask_BP, cmask], axis=1),
        "loss_mask_BL": np.concatenate([np.zeros_like(mask_BP), cmask], axis=1),
    }


def encode_checked(config: Config, pairs, tokenizer, render, what: str = "prompts") -> dict:
    """`encode_pairs` at `data.max_prompt_len` + `sampling.max_new_tokens`, overlong prompts
    handled by `data.overlong`."""
    if not pairs:
        raise ValueError("no examples: the data source gave 0 (prompt, completion) pairs")
    P, overlong = config.data.max_prompt_len, config.data.overlong
    pairs = fit_prompts(pairs, tokenizer, render, P, overlong, what)
    return encode_pairs(
        pairs, tokenizer, P, config.sampling.max_new_tokens, render, overlong == "truncate"
    )
