"""token_logprobs, entropy and chunked_token_logprobs: values, gradients and peak memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import losses


def np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 5, 11)) * 3).astype(np.float32)
    tokens = rng.integers(0, 11, size=(3, 5))
    return rng, logits, tokens


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_match_numpy(small, temperature):
    _, logits, tokens = small
    lsm = np_log_softmax(logits / temperature)
    expected_lp = np.take_along_axis(lsm, tokens[..., None], -1)[..., 0]
    expected_h = -(np.exp(lsm) * lsm).sum(-1)
    lp = losses.token_logprobs(logits, tokens, temperature=temperature)
    h = losses.entropy(logits, temperature=temperature)
    assert lp.dtype == jnp.float32 and h.dtype == jnp.float32
    np.testing.assert_allclose(lp, expected_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, expected_h, rtol=1e-5, atol=1e-5)
    jit_lp = jax.jit(functools.partial(losses.token_logprobs, temperature=temperature))
    np.testing.assert_allclose(jit_lp(logits, tokens), expected_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        jax.jit(losses.entropy)(logits),
        -(np.exp(np_log_softmax(logits)) * np_log_softmax(logits)).sum(-1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bf16_and_masked_vocab(small):
    _, logits, tokens = small
    lb = jnp.asarray(logits, jnp.bfloat16)
    up = np.asarray(lb.astype(jnp.float32))
    lsm = np_log_softmax(up)
    np.testing.assert_allclose(
        losses.token_logprobs(lb, tokens),
        np.take_along_axis(lsm, tokens[..., None], -1)[..., 0],
        rtol=1e-5,
        atol=1e-5,
    )
    masked = logits.copy()
    masked[..., 7:] = -np.inf  # e.g. top-k-masked or padded vocabulary entries
    tok = tokens % 7
    lsm = np_log_softmax(np.where(np.isinf(masked), -1e30, masked))
    h = losses.entropy(masked)
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(
        h, -(np.exp(lsm) * np.where(np.exp(lsm) > 0, lsm, 0)).sum(-1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        losses.token_logprobs(masked, tok),
        np.take_along_axis(lsm, tok[..., None], -1)[..., 0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_gradients_match_analytic(small):
    rng, logits, tokens = small
    u = rng.normal(size=tokens.shape).astype(np.float32)
    v = rng.normal(size=tokens.shape).astype(np.float32)

    def f(x):
        return jnp.sum(u * losses.token_logprobs(x, tokens)) + jnp.sum(v * losses.entropy(x))

    lsm = np_log_softmax(logits)
    p = np.exp(lsm)
    h = -(p * lsm).sum(-1, keepdims=True)
    onehot = np.eye(11)[tokens]
    expected = u[..., None] * (onehot - p) + v[..., None] * (-p * (lsm + h))
    np.testing.assert_allclose(jax.grad(f)(logits), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(logits), expected, rtol=1e-4, atol=1e-5)


def test_shape_errors(small):
    _, logits, tokens = small
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        losses.token_logprobs(logits, tokens[:, :4])
    with pytest.raises(ValueError, match="temperature"):
        losses.entropy(logits, temperature=0.0)


# ---------------------------------------------------------------- chunked from hidden states


@pytest.fixture
def hidden_case():
    rng = np.random.default_rng(1)
    b, t, d, v = 2, 5, 8, 13
    hidden = rng.normal(size=(b, t, d)).astype(np.float32)
    w = rng.normal(size=(d, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t))
    return hidden, w, tokens


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 64])
@pytest.mark.parametrize("transposed", [False, True])
def test_chunked_matches_numpy(hidden_case, chunk_size, transposed):
    hidden, w, tokens = hidden_case
    lsm = np_log_softmax((hidden.astype(np.float64) @ w) / 0.8)
    fn = functools.partial(
        losses.chunked_token_logprobs, chunk_size=chunk_size, transposed=transposed, temperature=0.8
    )
    emb = w.T if transposed else w
    for f in (fn, jax.jit(fn)):
        lp, h = f(hidden, emb, tokens)
        np.testing.assert_allclose(
            lp, np.take_along_axis(lsm, tokens[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(h, -(np.exp(lsm) * lsm).sum(-1), rtol=1e-5, atol=1e-5)


def test_chunked_gradients_equal_unchunked(hidden_case):
    hidden, w, tokens = hidden_case
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(2,) + tokens.shape).astype(np.float32)

    def chunked(h, e):
        lp, ent = losses.chunked_token_logprobs(h, e, tokens, chunk_size=3)
        return jnp.sum(u * lp) + jnp.sum(v * ent)

    def full(h, e):
        logits = jnp.einsum("btd,dv->btv", h, e)
        return jnp.sum(u * losses.token_logprobs(logits, tokens)) + jnp.sum(
            v * losses.entropy(logits)
        )

    g_chunked = jax.jit(jax.grad(chunked, argnums=(0, 1)))(hidden, w)
    g_full = jax.grad(full, argnums=(0, 1))(hidden, w)
    for a, b in zip(g_chunked, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_lse_kernels_agree(hidden_case):
    # The two-pass (CPU) and the online reduction: same values and gradients to round-off.
    hidden, w, tokens = hidden_case
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(2,) + tokens.shape).astype(np.float32)

    def run(kernel):
        def f(h, e):
            lp, ent = losses.chunked_token_logprobs(
                h, e, tokens, chunk_size=4, temperature=0.9, lse_kernel=kernel
            )
            return jnp.sum(u * lp) + jnp.sum(v * ent), (lp, ent)

        return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))(hidden, w)

    (g2, (lp2, ent2)), (g1, (lp1, ent1)) = run("two_pass"), run("online")
    np.testing.assert_allclose(lp2, lp1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ent2, ent1, rtol=1e-6, atol=1e-6)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lse_kernel='three_pass'"):
        losses.chunked_token_logprobs(hidden, w, tokens, lse_kernel="three_pass")


def test_chunked_shape_errors(hidden_case):
    hidden, w, tokens = hidden_case
    with pytest.raises(ValueError, match=r"\[V, D\]"):
        losses.chunked_token_logprobs(hidden, w, tokens, transposed=True)
    with pytest.raises(ValueError, match="chunk_size"):
        losses.chunked_token_logprobs(hidden, w, tokens, chunk_size=0)


# ---------------------------------------------------------------- peak memory (compile only)

B, T, V, D = 2, 512, 32768, 64
LOGITS_BYTES = B * T * V * 4


def temp_bytes(fn, *shapes):
    return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_no_second_logits_array(dtype, temperature):
    logits = jax.ShapeDtypeStruct((B, T, V), dtype)
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def both(x, tok):
        return (
            losses.token_logprobs(x, tok, temperature=temperature),
            losses.entropy(x, temperature=temperature),
        )

    assert temp_bytes(both, logits, tokens) < LOGITS_BYTES / 100


def test_chunked_peak_memory_far_below_logits():
    hidden = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    w = jax.ShapeDtypeStruct((D, V), jnp.float32)
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
    fwd = functools.partial(losses.chunked_token_logprobs, chunk_size=64)

    def loss(h, e, tok):
        lp, ent = fwd(h, e, tok)
        return jnp.sum(lp) + 0.1 * jnp.sum(ent)

    assert temp_bytes(fwd, hidden, w, tokens) < LOGITS_BYTES / 8
    assert temp_bytes(jax.grad(loss, argnums=(0, 1)), hidden, w, tokens) < LOGITS_BYTES / 4
    unchunked = lambda h, e, tok: losses.token_logprobs(h @ e, tok)
    assert temp_bytes(unchunked, hidden, w, tokens) >= LOGITS_BYTES  # the thing we avoid
