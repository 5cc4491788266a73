"""The benchmarks' completion-length workloads: `uniform` (a random-weight model, whose EOS fires
with probability ~1/V per token, so every row runs close to all T tokens) and `varied` (the
same model edited so that EOS fires with a fixed probability `h` per token, so lengths are
geometric: at `h = HAZARD_PER_T / T` the mean is ~0.52 T, about a fifth of the rows reach T and
lengths spread over 10x within a batch, as in real RL).

The edit (`bias_eos`, and `bias_eos_torch` for the TRL peer's model, the same edit on the same
layout): the input embedding's dimension 0 is set to a constant `C` far above the rest of the
residual stream, and every write into dimension 0 (attention and MLP output projections) is
zeroed, so after the final RMSNorm dimension 0 is ~sqrt(D) for every token and the rest is
~0. The output head then reads dimension 0 only for EOS, giving it the constant logit
`b = log(h (V - 1) / (1 - h))`, while every other logit is ~0: P(EOS) = h at every step. The
model's cost is unchanged (same shapes); its other tokens are near-uniform, as a random model's.
"""

from __future__ import annotations

import math

import numpy as np

LENGTHS = ("uniform", "varied")
HAZARD_PER_T = 1.5  # varied: P(EOS) per token = 1.5 / T
DOMINANCE = 1e3  # C over the largest embedding row norm


def eos_logit(hazard: float, vocab_size: int) -> float:
    """The EOS logit that gives P(EOS) = `hazard` when the other V - 1 logits are 0."""
    if not 0 < hazard < 1 or vocab_size < 2:
        raise ValueError(
            f"hazard={hazard!r}, vocab_size={vocab_size!r}: expected 0 < hazard < 1, V >= 2"
        )
    return math.log(hazard * (vocab_size - 1) / (1 - hazard))


def hazard_for(max_new_tokens: int) -> float:
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected >= 2 for varied lengths")
    return min(HAZARD_PER_T / max_new_tokens, 0.5)


def bias_eos(params: dict, eos_id: int, hazard: float) -> dict:
    """`params` (our untied Qwen3-layout pytree, NumPy or JAX leaves) edited so P(EOS) = `hazard`
    at every step; new arrays on the old ones' devices (see the module docstring)."""
    import jax  # the bench's JAX side; the torch side below never imports it

    if "lm_head" not in params:
        raise ValueError("bias_eos: expected an untied output head ('lm_head' in params)")
    embed = np.array(params["embed"])
    V, D = embed.shape
    if not 0 <= eos_id < V:
        raise ValueError(f"eos_id={eos_id!r}: expected a token id in [0, {V})")
    embed[:, 0] = DOMINANCE * float(np.linalg.norm(embed, axis=1).max())
    layers = dict(params["layers"])
    for name in ("wo", "w_down"):  # every write into the residual's dimension 0
        w = np.array(layers[name])
        w[..., 0] = 0.0
        layers[name] = w
    head = np.array(params["lm_head"])  # [D, V]
    scale = float(np.asarray(params["final_norm"])[0]) * math.sqrt(D)
    head[0, :] = 0.0
    head[0, eos_id] = eos_logit(hazard, V) / scale
    new = {**params, "embed": embed, "lm_head": head, "layers": layers}
    return jax.tree.map(
        lambda n, o: jax.device_put(n.astype(o.dtype), getattr(o, "sharding", None)), new, params
    )


def bias_eos_torch(model, eos_id: int, hazard: float) -> None:
    """The same edit, in place, on a `transformers` Qwen3 causal LM (weights `[out, in]`)."""
    import torch

    inner = model.model
    with torch.no_grad():
        embed = inner.embed_tokens.weight
        V, D = embed.shape
        if not 0 <= eos_id < V:
            raise ValueError(f"eos_id={eos_id!r}: expected a token id in [0, {V})")
        embed[:, 0] = DOMINANCE * float(embed.norm(dim=1).max())
        for layer in inner.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        head = model.lm_head.weight  # [V, D]
        scale = float(inner.norm.weight[0]) * math.sqrt(D)
        head[:, 0] = 0.0
        head[eos_id, 0] = eos_logit(hazard, V) / scale
