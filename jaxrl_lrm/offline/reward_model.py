"""Reward-model training (`stage: reward_model`): a backbone with a scalar head trained on
preference pairs with the Bradley-Terry loss (Ouyang et al. 2022, arXiv:2203.02155):

    r(x, y) = value_head(hidden state at the last real token of prompt + completion + EOS)
    loss = -log_sigmoid(r(x, y_chosen) - r(x, y_rejected))

Saving and loading: `save_reward_model` / `load_reward_model` are `models.save_value_model` /
`models.load_value_model` (backbone via `models.save_pretrained`, the head as
`value_head.safetensors` with `w [D]`, `b []` beside it).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import models, sharding
from jaxrl_lrm.config import Config
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.value_model import (
    VALUE_HEAD_FILE,
    load_value_head,
    load_value_model,
    save_value_model,
)
from jaxrl_lrm.offline.data import encode_pairs
from jaxrl_lrm.offline.dpo import mean_over_pairs
from jaxrl_lrm.train import setup


def last_token_index(attn_BL) -> jax.Array:
    """`[B]` index of the last position with `attn_BL == 1` (0 for an all-zero row)."""
    L = attn_BL.shape[1]
    return jnp.max(jnp.where(attn_BL.astype(bool), jnp.arange(L)[None, :], 0), axis=1)


def sequence_rewards(params, model_config, tokens_BL, attn_BL) -> jax.Array:
    """`[B]` float32 scalar rewards: the value head at each row's last real token."""
    hidden_BLD, _ = transformer.forward_hidden(params, model_config, tokens_BL, kv_mask_BS=attn_BL)
    idx_B = last_token_index(attn_BL)
    hidden_BD = jnp.take_along_axis(hidden_BLD, idx_B[:, None, None], axis=1)[:, 0]
    return transformer.value_head(params, hidden_BD)


def pair_rewards(params, model_config, batch: dict):
    """`(r_chosen[B], r_rejected[B])` in one forward pass (batch as `dpo.encode_preferences`)."""
    tokens = jnp.concatenate([batch["tokens_BL_c"], batch["tokens_BL_r"]])
    attn = jnp.concatenate([batch["attn_BL_c"], batch["attn_BL_r"]])
    r = sequence_rewards(params, model_config, tokens, attn)
    n = batch["tokens_BL_c"].shape[0]
    return r[:n], r[n:]


def bradley_terry_loss(r_chosen, r_rejected) -> jax.Array:
    """`[B]`: `-log_sigmoid(r_chosen - r_rejected)`."""
    return -jax.nn.log_sigmoid(
        jnp.asarray(r_chosen, jnp.float32) - jnp.asarray(r_rejected, jnp.float32)
    )


def rm_terms(params, model_config, batch: dict) -> dict:
    """Per-pair `loss`, `r_chosen`, `r_rejected`, all `[B]`."""
    rc, rr = pair_rewards(params, model_config, batch)
    return {"loss": bradley_terry_loss(rc, rr), "r_chosen": rc, "r_rejected": rr}


def rm_batch_loss(params, model_config, batch: dict, denom=None):
    """`(mean Bradley-Terry loss, metrics)`: `rm/loss`, `rm/accuracy` (share of pairs with
    `r_chosen > r_rejected`), `rm/margin`, `rm/chosen_reward`, `rm/rejected_reward`."""
    t = rm_terms(params, model_config, batch)
    loss = mean_over_pairs(t["loss"], denom)
    margin = t["r_chosen"] - t["r_rejected"]
    return loss, {
        "rm/loss": loss,
        "rm/accuracy": jnp.mean((margin > 0).astype(jnp.float32)),
        "rm/margin": jnp.mean(margin),
        "rm/chosen_reward": jnp.mean(t["r_chosen"]),
        "rm/rejected_reward": jnp.mean(t["r_rejected"]),
    }


# --------------------------------------------------------------------------- save / load
# One checkpoint format for every value-head model: `models.value_model`. The stage's old names
# stay as aliases for callers (`stages.export`, PPO's `algorithm.value_path`).

save_reward_model = save_value_model
load_reward_model = load_value_model


def build_reward_model(config: Config, mesh):
    """`(tokenizer, model with a value head)`: the backbone of `model.path` / `model.preset`;
    the head from `model.path/value_head.safetensors` when present, else zeros (so every
    initial reward is exactly 0)."""
    _, tokenizer, model = setup.build_model(config, mesh)
    if config.model.path is not None and (Path(config.model.path) / VALUE_HEAD_FILE).is_file():
        head = load_value_head(config.model.path, model.config.d_model, config.model.dtype)
        model = model.replace(params={**model.params, "value_head": head})
    else:
        model = models.with_value_head(model)
    head = jax.device_put(model.params["value_head"], sharding.replicated(mesh))
    return tokenizer, model.replace(params={**model.params, "value_head": head})


def score(
    model: models.Model,
    prompts: list[str],
    completions: list[str],
    *,
    prompt_len: int,
    completion_len: int,
    tokenizer=None,
    render=lambda s: s,
) -> np.ndarray:
    """Host helper: `[N]` rewards of (prompt, completion) texts under a reward model, in the
    training stage's layout (`encode_pairs`: left-padded prompt, completion + EOS). It compiles
    its forward on each call; for repeated scoring inside RL use
    `scorers.RewardModelScorer`, which compiles once per scorer."""
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("tokenizer=None and model.tokenizer is None: pass the tokenizer")
    if len(prompts) != len(completions):
        raise ValueError(f"len(prompts)={len(prompts)} != len(completions)={len(completions)}")
    enc = encode_pairs(
        list(zip(prompts, completions)), tokenizer, prompt_len, completion_len, render
    )
    forward = jax.jit(lambda p, t, a: sequence_rewards(p, model.config, t, a))
    return np.asarray(forward(model.params, enc["tokens_BL"], enc["attn_BL"]))
