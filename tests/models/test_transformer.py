"""The transformer's KV cache, RoPE frequencies, config validation and parameter counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import ModelConfig, preset

CONFIGS = {
    "qwen3": preset("tiny"),
    "qwen2-llama3rope": preset(
        "tiny",
        arch="qwen2",
        qk_norm=False,
        qkv_bias=True,
        tie_embeddings=True,
        rope_scaling=("llama3", 8.0, 1.0, 4.0, 64),
    ),
    # The generic formulations (einsums, per-layer cache slices) and a rolled layer scan.
    "qwen3-generic-rolled": preset("tiny", cpu_kernels=False, scan_unroll=1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kv_cache_prefill_and_decode_equal_full_forward(name):
    config = CONFIGS[name]
    params = jax.jit(lambda k: transformer.init_params(config, k, init_std=0.15))(jax.random.key(0))
    if config.qkv_bias:  # init makes biases zero; give them values so they matter
        keys = jax.random.split(jax.random.key(1), 3)
        for key, b in zip(keys, ("bq", "bk", "bv")):
            params["layers"][b] = 0.3 * jax.random.normal(key, params["layers"][b].shape)
    B, Pn, n = 2, 7, 5
    S = Pn + n
    tokens = np.array(jax.random.randint(jax.random.key(2), (B, S), 1, config.vocab_size))
    mask = np.ones((B, S), np.int32)
    mask[1, :3] = 0  # row 1 is left-padded
    tokens[1, :3] = 0
    full, _ = jax.jit(lambda t, m: transformer.forward(params, config, t, kv_mask_BS=m))(
        tokens, mask
    )

    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    step = jax.jit(
        lambda t, pos, m, cache, i: transformer.forward(
            params, config, t, positions_BT=pos, kv_mask_BS=m, cache=cache, cache_index=i
        )
    )
    cache = transformer.init_cache(config, B, S)
    prefill_mask = np.where(np.arange(S) < Pn, mask, 0)
    out, cache = step(tokens[:, :Pn], positions[:, :Pn], prefill_mask, cache, 0)
    got = [out]
    for t in range(Pn, S):
        step_mask = np.where(np.arange(S) <= t, mask, 0)
        out, cache = step(tokens[:, t : t + 1], positions[:, t : t + 1], step_mask, cache, t)
        got.append(out)
    got = np.concatenate([np.asarray(g) for g in got], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], np.asarray(full)[real], atol=1e-5, rtol=0)
    assert np.abs(np.asarray(full)).max() > 1.0  # the comparison is not between near-zeros
    # The padded row equals its real tokens run alone.
    alone, _ = transformer.forward(params, config, jnp.asarray(tokens[1:, 3:]))
    np.testing.assert_allclose(got[1, 3:], np.asarray(alone)[0], atol=1e-5, rtol=0)


def meta_llama3_inv_freq(head_dim, theta, factor, low_ff, high_ff, old_ctx):
    """Meta's `apply_scaling` from the Llama 3.1 reference code, one frequency at a time."""
    freqs = [1.0 / theta ** (i / head_dim) for i in range(0, head_dim, 2)]
    low_wavelen, high_wavelen = old_ctx / low_ff, old_ctx / high_ff
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


@pytest.mark.parametrize(
    "config",
    [preset("llama-3.2-1b"), CONFIGS["qwen2-llama3rope"]],
    ids=["llama-3.2-1b", "tiny-short-context"],
)
def test_llama3_inv_freq_matches_reference(config):
    _, factor, low, high, old_ctx = config.rope_scaling
    want = meta_llama3_inv_freq(config.head_dim, config.rope_theta, factor, low, high, old_ctx)
    got = transformer.rope_inv_freq(config)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # All three regimes occur, so each branch is exercised.
    plain = meta_llama3_inv_freq(config.head_dim, config.rope_theta, 1.0, low, high, old_ctx)
    ratio = plain / want
    assert np.any(ratio == 1.0) and np.any(np.isclose(ratio, factor))
    assert np.any((ratio > 1.0) & ~np.isclose(ratio, factor))


def test_default_inv_freq():
    config = preset("tiny")
    want = [1.0 / 10000.0 ** (2 * i / 16) for i in range(8)]
    np.testing.assert_allclose(transformer.rope_inv_freq(config), want, rtol=1e-6)


BASE = dict(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=32)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"arch": "gpt2"}, "arch='gpt2': expected one of"),
        ({"dtype": "float16"}, "dtype='float16': expected one of"),
        ({"vocab_size": 0}, "vocab_size=0: expected a positive integer"),
        ({"n_layers": 1.5}, "n_layers=1.5: expected a positive integer"),
        ({"n_heads": 3, "n_kv_heads": 2}, "n_heads=3 is not a multiple of n_kv_heads=2"),
        ({"head_dim": 7}, "head_dim=7: RoPE needs an even head dimension"),
        ({"rope_scaling": ("yarn", 2.0)}, "rope_scaling=\\('yarn', 2.0\\): expected None or"),
    ],
)
def test_config_validation(changes, match):
    ModelConfig(**BASE)  # the base is valid
    with pytest.raises(ValueError, match=match):
        ModelConfig(**(BASE | changes))


def leaf_count(config):
    shapes = transformer.param_shapes(config)
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(s) for s in leaves)


def test_num_params():
    bench = preset("bench-cpu")
    assert bench.num_params == 24_122_880 == leaf_count(bench)
    # Published parameter counts of the real checkpoints.
    assert preset("qwen2.5-0.5b").num_params == 494_032_768
    assert preset("llama-3.2-1b").num_params == 1_235_814_400
    assert preset("qwen2.5-7b").num_params == 7_615_616_512  # "7.61B" on its model card
    assert preset("qwen3-8b").num_params == 8_190_735_360  # "8.2B" on its model card
    for name in models.PRESETS:
        assert preset(name).num_params == leaf_count(preset(name)), name
    untied = preset("tiny", tie_embeddings=False, qkv_bias=True)
    assert untied.num_params == leaf_count(untied)
    params = jax.eval_shape(lambda k: transformer.init_params(preset("tiny"), k), jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == preset("tiny").num_params


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'gpt-5'; expected one of"):
        preset("gpt-5")
    with pytest.raises(ValueError, match="unknown model preset"):
        models.init("gpt-5")


# Each CPU switch against the default: the same numbers to float32 round-off.
SWITCHES = {
    "rolled": dict(scan_unroll=1),
    "unroll-2-of-3": dict(scan_unroll=2),
    "generic": dict(cpu_kernels=False),
    "generic-rolled": dict(cpu_kernels=False, scan_unroll=False),
}


def _grad_and_decode(config, params, tokens_BT):
    """Logits, parameter gradients of a scalar of them, and prefill + one decode step."""
    B, T = tokens_BT.shape
    w = jnp.sin(jnp.arange(config.vocab_size, dtype=jnp.float32))

    def loss(p):
        logits, _ = transformer.forward(p, config, tokens_BT)
        return jnp.sum(jax.nn.log_softmax(logits) * w), logits

    grads, logits = jax.grad(loss, has_aux=True)(params)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    kv = jnp.ones((B, T + 1), bool)
    cache = transformer.init_cache(config, B, T + 1)
    _, cache = transformer.forward(
        params, config, tokens_BT, positions_BT=pos, kv_mask_BS=kv, cache=cache, cache_index=0
    )
    step, cache = transformer.forward(
        params,
        config,
        tokens_BT[:, :1],
        positions_BT=pos[:, :1] + T,
        kv_mask_BS=kv,
        cache=cache,
        cache_index=T,
    )
    return logits, grads, step, cache


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_cpu_switches_give_the_default_numbers(switch):
    base = preset("tiny", n_layers=3, qkv_bias=True)
    params = jax.jit(lambda k: transformer.init_params(base, k, init_std=0.15))(jax.random.key(0))
    bk = params["layers"]["bk"]
    params["layers"]["bk"] = 0.3 * jax.random.normal(jax.random.key(1), bk.shape)
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 1, base.vocab_size)
    ref = jax.jit(_grad_and_decode, static_argnums=0)(base, params, tokens)
    got = jax.jit(_grad_and_decode, static_argnums=0)(
        base.replace(**SWITCHES[switch]), params, tokens
    )
    assert np.abs(np.asarray(ref[0])).max() > 1.0
    for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        scale = float(np.abs(np.asarray(r)).max())
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=2e-6 * scale + 1e-7)


def test_scan_unroll_default_and_validation():
    assert preset("tiny").layer_unroll == 2  # shallow: straight-line layers
    assert preset("qwen3-0.6b").layer_unroll == 1  # deep: a rolled scan
    assert preset("qwen3-0.6b", scan_unroll=True).layer_unroll == 28
    assert preset("tiny", scan_unroll=False).layer_unroll == 1
    assert preset("tiny", scan_unroll=5).layer_unroll == 2
    for bad in (0, -1, 1.5, "all"):
        with pytest.raises(ValueError, match="scan_unroll="):
            preset("tiny", scan_unroll=bad)
    with pytest.raises(ValueError, match="cpu_kernels="):
        preset("tiny", cpu_kernels=1)
