"""The SFT stage of `jaxrl-lrm train` (`stage: sft`): masked next-token loss on
(prompt, completion) pairs, with checkpoints, exact resume and `metrics.jsonl`.

Data: a procedural task's own `sft_examples` (the demo's `addition`), or its rows' `answer`
as the completion; or the `data.prompt_field` / `data.completion_field` columns of a JSONL,
Parquet or TFDS source. The loss is `steps.sft_loss`: the mean negative log-likelihood of the
completion tokens and their EOS; prompt and padding tokens are never targets.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.config import Config
from jaxrl_lrm.models import transformer
from jaxrl_lrm.rl import sft, stages, steps

TASK_TRAIN_EXAMPLES = 4096  # SFT pairs drawn from a procedural task


def sft_pairs(config: Config, task, split: str) -> list[tuple[str, str]]:
    """`(question, completion)` pairs of the train or held-out split."""
    if task is not None:
        n = TASK_TRAIN_EXAMPLES if split == "train" else config.data.eval_size
        seed = config.seed if split == "train" else config.seed + 1_000_003
        if task.sft_examples is not None:
            return list(task.sft_examples(n, seed))
        return [(r["prompt"], str(r["answer"])) for r in task.generate(n, seed)]
    rows = stages.read_rows(config, split, config.data.completion_field)
    return [(r["prompt"], r["target"]) for r in rows]


def encode(config: Config, pairs, tokenizer, render) -> dict:
    """`sft.encode_pairs` at `data.max_prompt_len` + `sampling.max_new_tokens`."""
    if not pairs:
        raise ValueError("no SFT examples: the data source gave 0 (prompt, completion) pairs")
    stages.check_prompt_lengths(pairs, tokenizer, render, config.data.max_prompt_len)
    return sft.encode_pairs(pairs, tokenizer, config.data.max_prompt_len,
                            config.sampling.max_new_tokens, render)


def token_stats(params, model_config, batch: dict) -> dict:
    """Per row: summed completion NLL, target-token count and greedy-correct token count."""
    logp, m, hidden = steps.next_token_logprobs(params, model_config, batch)
    pred = jnp.argmax(transformer.hidden_to_logits(params, model_config, hidden[:, :-1]), -1)
    hit = (pred == batch["tokens_BL"][:, 1:]).astype(jnp.float32) * m
    return {"nll": -(logp * m).sum(1), "tokens": m.sum(1), "hits": hit.sum(1)}


def summarize(stats: dict) -> dict:
    """Held-out metrics; a row is exactly right when every target is the greedy choice."""
    tokens = max(float(stats["tokens"].sum()), 1.0)
    return {"eval/loss": float(stats["nll"].sum()) / tokens,
            "eval/token_accuracy": float(stats["hits"].sum()) / tokens,
            "eval/accuracy": float(np.mean(stats["hits"] == stats["tokens"]))}


def train_sft(config: Config, *, run_dir: str | Path | None = None, mesh=None,
              max_steps_this_run: int | None = None, quiet: bool = False) -> stages.StageResult:
    """Runs (or resumes) the SFT stage into `run_dir` (default `config.run_dir`).

    Reads: `seed`, `model.*`, `data.*` (source, task / path, prompt_field, completion_field,
    template, max_prompt_len, eval_size / eval_split), `sampling.max_new_tokens` (completion
    length), `train.*` (steps, prompts_per_step as the batch, lr and schedule, micro_batches,
    checkpoint_every, eval_every, max_to_keep), `mesh.*`.

    Metrics per step: `sft/loss`, `grad_norm`, `lr`; with evaluation (every `train.eval_every`
    steps and at the end, when held-out pairs exist): `eval/loss`, `eval/token_accuracy`,
    `eval/accuracy` (share of rows whose whole completion is the greedy choice).
    """
    run_dir = Path(run_dir or config.run_dir)
    mesh = mesh or sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    task, tokenizer, model = stages.build_model(config, mesh)
    render = stages.make_render(config, tokenizer)
    train_data = encode(config, sft_pairs(config, task, "train"), tokenizer, render)
    eval_pairs = sft_pairs(config, task, "eval") if config.data.eval_size or \
        config.data.eval_split else []
    model_config = model.config
    evaluate = None
    if eval_pairs:
        eval_data = encode(config, eval_pairs, tokenizer, render)
        stats_fn = jax.jit(lambda p, b: token_stats(p, model_config, b))
        batch = config.train.prompts_per_step

        def evaluate(params):
            return summarize(stages.eval_rows(stats_fn, params, eval_data, batch, mesh))

    return stages.run_stage(
        config, run_dir=run_dir, mesh=mesh, params=model.params,
        loss_fn=lambda p, _, b: steps.sft_loss(p, model_config, b), train_data=train_data,
        evaluate=evaluate, max_steps_this_run=max_steps_this_run, quiet=quiet)
