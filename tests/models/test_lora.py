"""LoRA adapters (`models.lora`): step 0 is the base model exactly, the factored forward equals
a NumPy-merged model, gradients follow the chain rule through `W + s A B`, decode with a KV
cache equals the full forward, and the adapters' shardings come from the rules table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl_lrm import sharding
from jaxrl_lrm.models import lora, transformer
from jaxrl_lrm.models.config import preset

CONFIGS = {
    "qwen3": preset("tiny"),
    "qwen2-bias-tied": preset(
        "tiny", arch="qwen2", qk_norm=False, qkv_bias=True, tie_embeddings=True
    ),
    "generic-rolled": preset("tiny", cpu_kernels=False, scan_unroll=1),
}
ALL = lora.LoraConfig(rank=4, alpha=8.0)


def _base(config):
    return jax.jit(lambda k: transformer.init_params(config, k, init_std=0.1))(jax.random.key(0))


def _trained(config, spec, seed=1):
    """Adapters with non-zero B (as after training)."""
    ad = lora.init_adapters(config, spec, jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(spec.targets)))
    for t in spec.targets:
        b = ad["layers"][t]["lora_b"]
        ad["layers"][t]["lora_b"] = 0.2 * jax.random.normal(next(keys), b.shape)
    return ad


def _tokens(config, B=2, T=9):
    return np.asarray(jax.random.randint(jax.random.key(3), (B, T), 0, config.vocab_size))


_forward = jax.jit(lambda p, t, config: transformer.forward(p, config, t)[0], static_argnums=2)
_merge = jax.jit(lora.merge, static_argnums=2)


def _logits(params, config, tokens):
    return np.asarray(_forward(params, tokens, config))


def _numpy_merge(base, adapters, scale):
    """The reference: `W + scale * A @ B` in NumPy, each target's in/out axes flattened."""
    out = jax.tree.map(np.asarray, base)
    for t, ab in adapters["layers"].items():
        a, b = np.asarray(ab["lora_a"], np.float64), np.asarray(ab["lora_b"], np.float64)
        L, r = a.shape[0], a.shape[-1]
        d = np.stack([a[i].reshape(-1, r) @ b[i].reshape(r, -1) for i in range(L)])
        w = out["layers"][t]
        out["layers"][t] = (w + scale * d.reshape(w.shape)).astype(w.dtype)
    return out


@pytest.mark.parametrize("name", ["qwen3", "generic-rolled"])
def test_step0_adapters_give_the_base_model_exactly(name):
    config = CONFIGS[name]
    base = _base(config)
    ad = lora.init_adapters(config, ALL, jax.random.key(1))
    assert all(float(jnp.abs(x["lora_a"]).max()) > 0 for x in ad["layers"].values())
    tokens = _tokens(config)
    want = _logits(base, config, tokens)
    np.testing.assert_array_equal(_logits(lora.apply(base, ad, ALL.scale), config, tokens), want)
    np.testing.assert_array_equal(_logits(_merge(base, ad, ALL.scale), config, tokens), want)


@pytest.mark.parametrize("name", ["qwen2-bias-tied", "generic-rolled"])
def test_factored_and_merged_equal_a_numpy_merged_model(name):
    config = CONFIGS[name]
    base, ad = _base(config), _trained(config, ALL)
    tokens = _tokens(config)
    want = _logits(_numpy_merge(base, ad, ALL.scale), config, tokens)
    assert np.abs(want - _logits(base, config, tokens)).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(
        _logits(lora.apply(base, ad, ALL.scale), config, tokens), want, atol=1e-5, rtol=0
    )
    merged = _merge(base, ad, ALL.scale)
    ref = _numpy_merge(base, ad, ALL.scale)
    for t in ALL.targets:
        np.testing.assert_allclose(merged["layers"][t], ref["layers"][t], atol=1e-6, rtol=0)
    np.testing.assert_allclose(_logits(merged, config, tokens), want, atol=1e-5, rtol=0)


def test_subset_of_targets_touches_only_those():
    config = CONFIGS["qwen3"]
    spec = lora.LoraConfig(rank=2, alpha=2.0, targets=("wv", "w_down"))
    base, ad = _base(config), _trained(config, spec)
    assert set(ad["layers"]) == {"wv", "w_down"}
    assert ad["layers"]["wv"]["lora_a"].shape == (2, 64, 2)
    assert ad["layers"]["wv"]["lora_b"].shape == (2, 2, 2, 16)
    merged = _merge(base, ad, spec.scale)
    for k, w in base["layers"].items():
        changed = not np.array_equal(merged["layers"][k], w)
        assert changed == (k in spec.targets), k
    assert lora.num_params(config, spec) == 2 * (64 * 2 + 2 * 32 + 128 * 2 + 2 * 64)


def test_adapter_gradients_follow_the_chain_rule():
    """dL/dA = s dL/dW' B^T and dL/dB = s A^T dL/dW', with dL/dW' the full-weight gradient at
    the merged weights (an independent path: no adapter code in it)."""
    config = CONFIGS["qwen3"]
    spec = lora.LoraConfig(rank=3, alpha=6.0, targets=("wq", "wo", "w_up"))
    base, ad = _base(config), _trained(config, spec)
    tokens = _tokens(config)

    def loss(params):
        logits = transformer.forward(params, config, tokens)[0]
        return jnp.mean(jax.nn.log_softmax(logits)[..., 7])

    g_ad = jax.jit(jax.grad(lambda a: loss(lora.apply(base, a, spec.scale))))(ad)
    g_w = jax.jit(jax.grad(loss))(_merge(base, ad, spec.scale))
    for t in spec.targets:
        a, b = np.asarray(ad["layers"][t]["lora_a"]), np.asarray(ad["layers"][t]["lora_b"])
        L, r = a.shape[0], a.shape[-1]
        gw = np.asarray(g_w["layers"][t]).reshape(L, a[0].size // r, -1)
        a2, b2 = a.reshape(L, -1, r), b.reshape(L, r, -1)
        want_a = spec.scale * np.einsum("lio,lro->lir", gw, b2).reshape(a.shape)
        want_b = spec.scale * np.einsum("lir,lio->lro", a2, gw).reshape(b.shape)
        np.testing.assert_allclose(g_ad["layers"][t]["lora_a"], want_a, atol=2e-6, rtol=1e-4)
        np.testing.assert_allclose(g_ad["layers"][t]["lora_b"], want_b, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["qwen3"])
def test_factored_kv_cache_decode_equals_full_forward(name):
    config = CONFIGS[name]
    params = lora.apply(_base(config), _trained(config, ALL), ALL.scale)
    tokens = _tokens(config, T=8)
    full = _logits(params, config, tokens)
    step = jax.jit(
        lambda p, t, i, cache: transformer.forward(
            p,
            config,
            t,
            positions_BT=i + jnp.zeros((2, 1), jnp.int32),
            cache=cache,
            cache_index=i,
            kv_mask_BS=jnp.arange(8)[None].repeat(2, 0) <= i,
        )
    )
    cache = transformer.init_cache(config, 2, 8)
    for i in range(8):
        out, cache = step(params, tokens[:, i : i + 1], i, cache)
        np.testing.assert_allclose(out[:, 0], full[:, i], atol=1e-5, rtol=0)


def test_adapter_shardings_from_the_rules_and_sharded_equals_single():
    config = CONFIGS["qwen3"]
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sh = sharding.tree_shardings(
        lora.adapter_axes(config, ALL), lora.adapter_shapes(config, ALL), mesh
    )["layers"]
    assert sh["wq"]["lora_a"].spec == P(None, "fsdp", None)
    assert sh["wq"]["lora_b"].spec == P(None, None, "tensor", None)
    assert sh["wo"]["lora_a"].spec == P(None, "tensor", None, None)
    assert sh["wo"]["lora_b"].spec == P(None, None, "fsdp")
    assert sh["w_down"]["lora_a"].spec == P(None, "tensor", None)
    base, ad = _base(config), _trained(config, ALL)
    tokens = _tokens(config, B=4)
    want = _logits(lora.apply(base, ad, ALL.scale), config, tokens)
    ad_sh = jax.device_put(ad, {"layers": sh})
    base_sh = sharding.shard_params(base, config, mesh)
    got = _logits(lora.apply(base_sh, ad_sh, ALL.scale), config, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_bad_configs_and_trees_are_refused():
    with pytest.raises(ValueError, match=r"targets=\['q_proj'\]"):
        lora.LoraConfig(rank=2, alpha=1.0, targets=("q_proj",))
    with pytest.raises(ValueError, match="rank=0"):
        lora.LoraConfig(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha=-1"):
        lora.LoraConfig(rank=2, alpha=-1)
    base = _base(CONFIGS["qwen3"])
    bad = {"layers": {"w_nope": {"lora_a": jnp.zeros(1), "lora_b": jnp.zeros(1)}}}
    with pytest.raises(ValueError, match="/layers/w_nope"):
        lora.apply(base, bad, 1.0)
