"""Direct Preference Optimization (`stage: dpo`): Rafailov et al. 2023, arXiv:2305.18290.

For a pair (prompt x, chosen y_w, rejected y_l) and a frozen reference (the initial policy),

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
    loss = -(1 - ls) * log_sigmoid(beta * h) - ls * log_sigmoid(-beta * h)

(`losses.dpo_loss`), where each log-probability is summed over the completion's tokens (EOS
included) with `losses.chunked_token_logprobs`. The implicit reward of a completion is
`beta * (log pi - log ref)`; reward accuracy is the share of pairs whose chosen completion has
the higher implicit reward, and the margin is their difference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lrm import losses
from jaxrl_lrm.config import Config
from jaxrl_lrm.offline.data import encode_pairs, fit_prompts, read_rows
from jaxrl_lrm.train.update import completion_logprobs


def read_pairs(config: Config, split: str) -> list[tuple[str, str, str]]:
    """`(prompt, chosen, rejected)` triples from `data.prompt_field`, `data.chosen_field`,
    `data.rejected_field` of the JSONL / Parquet / TFDS source."""
    if config.data.source == "task":
        raise ValueError(
            "data.source='task': preference stages read (prompt, chosen, rejected) "
            "rows; expected data.source 'jsonl', 'parquet' or 'tfds'"
        )
    rows = read_rows(config, split, config.data.chosen_field, extra=(config.data.rejected_field,))
    return [(r["prompt"], r["target"], r[config.data.rejected_field]) for r in rows]


def encode_preferences(
    triples,
    tokenizer,
    prompt_len: int,
    completion_len: int,
    render=lambda s: s,
    overlong: str = "error",
    what: str = "preference prompts",
) -> dict:
    """Chosen and rejected sequences in `sft.encode_pairs` layout, keys suffixed `_c` / `_r`;
    prompts over `prompt_len` handled by `overlong` (`data.overlong`)."""
    if not triples:
        raise ValueError("no preference pairs: the data source gave 0 rows")
    triples = fit_prompts(list(triples), tokenizer, render, prompt_len, overlong, what)
    out = {}
    for suffix, k in (("_c", 1), ("_r", 2)):
        enc = encode_pairs(
            [(t[0], t[k]) for t in triples],
            tokenizer,
            prompt_len,
            completion_len,
            render,
            overlong == "truncate",
        )
        out.update({f"{name}{suffix}": v for name, v in enc.items()})
    return out


def sequence_logprobs(
    params, model_config, tokens_BL, attn_BL, loss_mask_BL, prompt_len: int
) -> jax.Array:
    """`[B]` float32: sum of log-probs of the completion tokens (`loss_mask_BL == 1`)."""
    logp_BT, _ = completion_logprobs(params, model_config, tokens_BL, attn_BL, prompt_len)
    return jnp.sum(logp_BT * loss_mask_BL[:, prompt_len:].astype(jnp.float32), axis=1)


def pair_logprobs(params, model_config, batch: dict, prompt_len: int):
    """`(chosen_logp[B], rejected_logp[B])` in one forward pass over the 2B sequences."""
    cat = {
        k: jnp.concatenate([batch[f"{k}_c"], batch[f"{k}_r"]])
        for k in ("tokens_BL", "attn_BL", "loss_mask_BL")
    }
    logp = sequence_logprobs(
        params, model_config, cat["tokens_BL"], cat["attn_BL"], cat["loss_mask_BL"], prompt_len
    )
    n = batch["tokens_BL_c"].shape[0]
    return logp[:n], logp[n:]


def dpo_terms(
    params,
    ref_params,
    model_config,
    batch: dict,
    *,
    prompt_len: int,
    beta: float,
    label_smoothing: float = 0.0,
) -> dict:
    """Per-pair `loss`, `chosen_reward`, `rejected_reward` (implicit rewards), all `[B]`."""
    chosen, rejected = pair_logprobs(params, model_config, batch, prompt_len)
    ref_chosen, ref_rejected = jax.lax.stop_gradient(
        pair_logprobs(ref_params, model_config, batch, prompt_len)
    )
    loss = losses.dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=label_smoothing
    )
    return {
        "loss": loss,
        "chosen_reward": beta * (chosen - ref_chosen),
        "rejected_reward": beta * (rejected - ref_rejected),
    }


def pair_denominators(batch: dict) -> losses.Denominators:
    """Whole-batch normalisers of a preference loss, a mean over pairs: every count is the
    number of pairs (so per-pair metrics are weighted by pairs across micro-batches)."""
    n = jnp.asarray(batch["attn_BL_c"].shape[0], jnp.float32)
    return losses.Denominators(tokens=n, rows_with_tokens=n, rows=n)


def mean_over_pairs(x_B, denom: losses.Denominators | None):
    """The mean over pairs, or with `denom` this micro-batch's share of the whole batch's."""
    return jnp.mean(x_B) if denom is None else jnp.sum(x_B) / denom.rows


def dpo_batch_loss(
    params,
    ref_params,
    model_config,
    batch: dict,
    denom=None,
    *,
    prompt_len: int,
    beta: float,
    label_smoothing: float = 0.0,
):
    """`(mean loss, metrics)` of a batch of pairs: `dpo/loss`, `dpo/reward_accuracy`,
    `dpo/margin`, `dpo/chosen_reward`, `dpo/rejected_reward`."""
    t = dpo_terms(
        params,
        ref_params,
        model_config,
        batch,
        prompt_len=prompt_len,
        beta=beta,
        label_smoothing=label_smoothing,
    )
    loss = mean_over_pairs(t["loss"], denom)
    margin = t["chosen_reward"] - t["rejected_reward"]
    return loss, {
        "dpo/loss": loss,
        "dpo/reward_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
        "dpo/margin": jnp.mean(margin),
        "dpo/chosen_reward": jnp.mean(t["chosen_reward"]),
        "dpo/rejected_reward": jnp.mean(t["rejected_reward"]),
    }
