"""`ModelConfig.remat`: the same gradients with and without, less memory kept for the backward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import REMAT_MODES, preset
from jaxrl_lrm.train import update as upd

BASE = preset("tiny", n_layers=3, qkv_bias=True)
PROMPT = 12


def _loss(params, config, tokens_BL):
    """The update's forward: completion log-probs (chunked from hidden states) and entropy,
    and a value head read from the same backbone."""
    attn = jnp.ones_like(tokens_BL)
    logp, ent = upd.completion_logprobs(params, config, tokens_BL, attn, PROMPT)
    values = upd.completion_values(params, config, tokens_BL, attn, PROMPT)
    w = jnp.cos(jnp.arange(logp.shape[1], dtype=jnp.float32))
    return jnp.sum(logp * w) + 0.1 * jnp.sum(ent) + jnp.sum(values**2)


@functools.cache
def _params():
    return jax.jit(_init)()


def _init():
    params = transformer.init_params(BASE, jax.random.key(0), value_head=True, init_std=0.15)
    params["layers"]["bk"] = 0.3 * jax.random.normal(
        jax.random.key(1), params["layers"]["bk"].shape
    )
    params["value_head"]["w"] = jax.random.normal(
        jax.random.key(2), params["value_head"]["w"].shape
    )
    return params


@pytest.mark.parametrize(
    "mode, unroll", [("full", None), ("full", 1), ("dots_with_no_batch_dims_saveable", 1)]
)
def test_gradients_equal_with_and_without_remat(mode, unroll):
    plain = BASE.replace(scan_unroll=unroll)
    loss_ref, ref = _grad(plain)
    loss, got = _grad(plain.replace(remat=mode))
    assert float(loss) == pytest.approx(float(loss_ref), rel=1e-6)
    for path, r in jax.tree_util.tree_leaves_with_path(ref):
        g = np.asarray(_at(got, path))
        scale = float(np.abs(np.asarray(r)).max())
        assert scale > 1e-3, path  # every parameter gets a gradient worth comparing
        np.testing.assert_allclose(g, np.asarray(r), rtol=0, atol=3e-6 * scale, err_msg=str(path))


@functools.cache
def _grad(config):
    tokens = jax.random.randint(jax.random.key(3), (3, 24), 1, BASE.vocab_size)
    return jax.jit(jax.value_and_grad(_loss), static_argnums=1)(_params(), config, tokens)


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def _grad_jaxpr(config):
    def loss(p, t):
        return jnp.sum(upd.completion_logprobs(p, config, t, jnp.ones_like(t), PROMPT)[0])

    tokens = jax.ShapeDtypeStruct((2, 24), jnp.int32)
    params = jax.eval_shape(_init)
    return str(jax.make_jaxpr(jax.grad(loss))(params, tokens))


def test_remat_is_in_the_differentiated_program_and_only_when_asked():
    # the chunked log-softmax has its own checkpoints; the layer body adds one more
    plain = _grad_jaxpr(BASE).count("remat")
    assert _grad_jaxpr(BASE.replace(remat="full")).count("remat") == plain + 1
    assert (
        _grad_jaxpr(BASE.replace(remat="dots_saveable", scan_unroll=1)).count("remat") == plain + 1
    )
    # the forward alone (sampling, scoring) runs the same computation either way
    tokens = jax.random.randint(jax.random.key(3), (2, 24), 1, BASE.vocab_size)
    params = _params()
    a, _ = transformer.forward(params, BASE, tokens)
    b, _ = transformer.forward(params, BASE.replace(remat="full"), tokens)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_full_remat_keeps_less_for_the_backward():
    """A rolled scan (the default above 8 layers): full remat keeps each layer's input only."""
    config = preset("tiny", n_layers=6, scan_unroll=1)
    params = jax.eval_shape(lambda: transformer.init_params(config, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((4, 96), jnp.int32)

    def temp(c):
        def loss(p, t):
            logp, _ = upd.completion_logprobs(p, c, t, jnp.ones_like(t), 8)
            return jnp.sum(logp)

        compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    none, full, dots = (
        temp(config),
        temp(config.replace(remat="full")),
        temp(config.replace(remat="dots_saveable")),
    )
    assert full < 0.5 * none, (full, none)
    assert full < dots < none, (full, dots, none)


def test_bad_remat_names_the_valid_policies():
    with pytest.raises(ValueError, match="remat='dots': expected one of") as e:
        preset("tiny", remat="dots")
    for name in ("none", "full", "dots_saveable", "nothing_saveable"):
        assert name in str(e.value)
        assert name in REMAT_MODES
    for name in REMAT_MODES[2:]:  # every listed policy is a real jax policy
        assert callable(getattr(jax.checkpoint_policies, name))
