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

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import losses, sharding
from jaxrl_lrm.config import Config
from jaxrl_lrm.rl import setup, sft, stages, steps


def read_pairs(config: Config, split: str) -> list[tuple[str, str, str]]:
    """`(prompt, chosen, rejected)` triples from `data.prompt_field`, `data.chosen_field`,
    `data.rejected_field` of the JSONL / Parquet / TFDS source."""
    if config.data.source == "task":
        raise ValueError("data.source='task': preference stages read (prompt, chosen, rejected) "
                         "rows; expected data.source 'jsonl', 'parquet' or 'tfds'")
    rows = stages.read_rows(config, split, config.data.chosen_field,
                            extra=(config.data.rejected_field,))
    return [(r["prompt"], r["target"], r[config.data.rejected_field]) for r in rows]


def encode_preferences(triples, tokenizer, prompt_len: int, completion_len: int,
                       render=lambda s: s) -> dict:
    """Chosen and rejected sequences in `sft.encode_pairs` layout, keys suffixed `_c` / `_r`."""
    if not triples:
        raise ValueError("no preference pairs: the data source gave 0 rows")
    stages.check_prompt_lengths([(p, c) for p, c, _ in triples], tokenizer, render, prompt_len)
    out = {}
    for suffix, k in (("_c", 1), ("_r", 2)):
        enc = sft.encode_pairs([(t[0], t[k]) for t in triples], tokenizer, prompt_len,
                               completion_len, render)
        out.update({f"{name}{suffix}": v for name, v in enc.items()})
    return out


def sequence_logprobs(params, model_config, tokens_BL, attn_BL, loss_mask_BL,
                      prompt_len: int) -> jax.Array:
    """`[B]` float32: sum of log-probs of the completion tokens (`loss_mask_BL == 1`)."""
    logp_BT, _ = steps.completion_logprobs(params, model_config, tokens_BL, attn_BL, prompt_len)
    return jnp.sum(logp_BT * loss_mask_BL[:, prompt_len:].astype(jnp.float32), axis=1)


def pair_logprobs(params, model_config, batch: dict, prompt_len: int):
    """`(chosen_logp[B], rejected_logp[B])` in one forward pass over the 2B sequences."""
    cat = {k: jnp.concatenate([batch[f"{k}_c"], batch[f"{k}_r"]])
           for k in ("tokens_BL", "attn_BL", "loss_mask_BL")}
    logp = sequence_logprobs(params, model_config, cat["tokens_BL"], cat["attn_BL"],
                             cat["loss_mask_BL"], prompt_len)
    n = batch["tokens_BL_c"].shape[0]
    return logp[:n], logp[n:]


def dpo_terms(params, ref_params, model_config, batch: dict, *, prompt_len: int, beta: float,
              label_smoothing: float = 0.0) -> dict:
    """Per-pair `loss`, `chosen_reward`, `rejected_reward` (implicit rewards), all `[B]`."""
    chosen, rejected = pair_logprobs(params, model_config, batch, prompt_len)
    ref_chosen, ref_rejected = jax.lax.stop_gradient(
        pair_logprobs(ref_params, model_config, batch, prompt_len))
    loss = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta,
                           label_smoothing=label_smoothing)
    return {"loss": loss, "chosen_reward": beta * (chosen - ref_chosen),
            "rejected_reward": beta * (rejected - ref_rejected)}


def dpo_batch_loss(params, ref_params, model_config, batch: dict, *, prompt_len: int,
                   beta: float, label_smoothing: float = 0.0):
    """`(mean loss, metrics)` of a batch of pairs: `dpo/loss`, `dpo/reward_accuracy`,
    `dpo/margin`, `dpo/chosen_reward`, `dpo/rejected_reward`."""
    t = dpo_terms(params, ref_params, model_config, batch, prompt_len=prompt_len, beta=beta,
                  label_smoothing=label_smoothing)
    loss = jnp.mean(t["loss"])
    margin = t["chosen_reward"] - t["rejected_reward"]
    return loss, {"dpo/loss": loss,
                  "dpo/reward_accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
                  "dpo/margin": jnp.mean(margin),
                  "dpo/chosen_reward": jnp.mean(t["chosen_reward"]),
                  "dpo/rejected_reward": jnp.mean(t["rejected_reward"])}


def train_dpo(config: Config, *, run_dir: str | Path | None = None, mesh=None,
              max_steps_this_run: int | None = None, quiet: bool = False,
              label_smoothing: float = 0.0) -> stages.StageResult:
    """Runs (or resumes) DPO into `run_dir` (default `config.run_dir`).

    The policy starts from, and the frozen reference is, the model of `model.path` (e.g. an
    exported SFT run) or `model.preset`. Reads: `seed`, `model.*`, `data.*` (source, path,
    prompt_field, chosen_field, rejected_field, template, max_prompt_len, eval_size /
    eval_split), `sampling.max_new_tokens` (completion length), `algorithm.beta` (the DPO beta,
    > 0), `train.*` as the SFT stage, `mesh.*`. `label_smoothing` (conservative DPO) has no
    config key yet.

    Metrics per step: `dpo/loss`, `dpo/reward_accuracy`, `dpo/margin`, `dpo/chosen_reward`,
    `dpo/rejected_reward`, `grad_norm`, `lr`; held-out (every `train.eval_every` steps and at
    the end): `eval/loss`, `eval/reward_accuracy`, `eval/margin`.
    """
    beta = config.algorithm.beta
    if beta <= 0:
        raise ValueError(f"algorithm.beta={beta!r}: expected > 0 for stage='dpo' (the DPO "
                         "temperature, e.g. 0.1)")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected 0 <= value < 0.5")
    run_dir = Path(run_dir or config.run_dir)
    mesh = mesh or sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    _, tokenizer, model = stages.build_model(config, mesh)
    render = stages.make_render(config, tokenizer)
    P, T = config.data.max_prompt_len, config.sampling.max_new_tokens
    train_data = encode_preferences(read_pairs(config, "train"), tokenizer, P, T, render)
    # The state trains a copy (its buffers are donated); these stay the frozen reference.
    ref_params = setup.frozen_copy(model.params, config.model.ref_dtype) \
        if config.model.ref_dtype not in (None, config.model.dtype) else model.params
    mc = model.config
    kw = dict(prompt_len=P, beta=beta, label_smoothing=label_smoothing)
    evaluate = None
    if config.data.eval_size or config.data.eval_split:
        eval_data = encode_preferences(read_pairs(config, "eval"), tokenizer, P, T, render)
        terms = jax.jit(lambda p, b: dpo_terms(p["policy"], p["ref"], mc, b, **kw))

        def evaluate(params):
            t = stages.eval_rows(terms, {"policy": params, "ref": ref_params}, eval_data,
                                 config.train.prompts_per_step, mesh)
            margin = t["chosen_reward"] - t["rejected_reward"]
            return {"eval/loss": float(np.mean(t["loss"])),
                    "eval/reward_accuracy": float(np.mean(margin > 0)),
                    "eval/margin": float(np.mean(margin))}

    return stages.run_stage(
        config, run_dir=run_dir, mesh=mesh, params=model.params,
        loss_fn=lambda p, ref, b: dpo_batch_loss(p, ref, mc, b, **kw), train_data=train_data,
        evaluate=evaluate, frozen=ref_params, max_steps_this_run=max_steps_this_run,
        quiet=quiet)
