"""Supervised fine-tuning on (prompt, completion) pairs: the objective, its held-out metrics and
its data. The warm-up before RL, `stage: sft`, and the demo's continued-SFT control.

Loss: the mean negative log-likelihood of the completion tokens and their EOS; prompt and
padding tokens are never targets.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import losses
from jaxrl_lrm.config import Config
from jaxrl_lrm.models import transformer
from jaxrl_lrm.offline.data import read_rows
from jaxrl_lrm.train.update import next_token_logprobs

TASK_TRAIN_EXAMPLES = 4096  # SFT pairs drawn from a procedural task


def target_denominators(batch: dict) -> losses.Denominators:
    """Whole-batch normalisers of the SFT loss (its targets: `loss_mask_BL` shifted by one)."""
    return losses.Denominators.of(batch["loss_mask_BL"][:, 1:])


def sft_loss(params, config, batch: dict, denom: losses.Denominators | None = None):
    """Masked next-token cross-entropy: mean over target tokens with `loss_mask_BL == 1`
    (with `denom`, this micro-batch's share of the whole batch's mean)."""
    logp, m, _ = next_token_logprobs(params, config, batch)
    loss = -losses.aggregate(logp, m, "token-mean", denom=denom)
    return loss, {"sft/loss": loss}


def token_stats(params, model_config, batch: dict) -> dict:
    """Per row: summed completion NLL, target-token count and greedy-correct token count."""
    logp, m, hidden = next_token_logprobs(params, model_config, batch)
    pred = jnp.argmax(transformer.hidden_to_logits(params, model_config, hidden[:, :-1]), -1)
    hit = (pred == batch["tokens_BL"][:, 1:]).astype(jnp.float32) * m
    return {"nll": -(logp * m).sum(1), "tokens": m.sum(1), "hits": hit.sum(1)}


def summarize(stats: dict) -> dict:
    """Held-out metrics; a row is exactly right when every target is the greedy choice."""
    tokens = max(float(stats["tokens"].sum()), 1.0)
    return {
        "eval/loss": float(stats["nll"].sum()) / tokens,
        "eval/token_accuracy": float(stats["hits"].sum()) / tokens,
        "eval/accuracy": float(np.mean(stats["hits"] == stats["tokens"])),
    }


def sft_pairs(config: Config, task, split: str) -> list[tuple[str, str]]:
    """`(question, completion)` pairs of the train or held-out split: a procedural task's own
    `sft_examples` (or its rows' answers), else `data.prompt_field` / `data.completion_field`
    of a JSONL, Parquet or TFDS source."""
    if task is not None:
        n = TASK_TRAIN_EXAMPLES if split == "train" else config.data.eval_size
        seed = config.seed if split == "train" else config.seed + 1_000_003
        if task.sft_examples is not None:
            return list(task.sft_examples(n, seed))
        return [(r["prompt"], str(r["answer"])) for r in task.generate(n, seed)]
    rows = read_rows(config, split, config.data.completion_field)
    return [(r["prompt"], r["target"]) for r in rows]
