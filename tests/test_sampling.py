"""The KV-cache sampler against full forward passes, NumPy truncated softmaxes and a sharded run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models, sampling, sharding

PROMPTS = [
    [5, 9, 200, 17],
    [3],
    [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
    [100, 101],
]  # lengths 4, 1, 17 (bucket 32), 2


@pytest.fixture(scope="module")
def model():
    return models.init("tiny", 0)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


REF_LEN = 32  # reference passes run at one shape (one compilation), see `_full_logits`


def _full_logits(model, seq):
    """`models.logits` over the unpadded sequence starting at position 0. Filler appended on the
    right cannot reach positions before it under the causal mask, so logits[:len(seq)] are those
    of the sequence alone; one fixed length avoids a compilation per length."""
    tokens = np.zeros((1, REF_LEN), np.int32)
    tokens[0, : len(seq)] = seq
    return np.asarray(models.logits(model, tokens))[0, : len(seq)]


def _greedy_reference(model, prompt, steps):
    """Greedy decoding by a full forward pass over the growing sequence each step."""
    seq, logps = list(prompt), []
    for _ in range(steps):
        logits = _full_logits(model, seq)[-1]
        tok = int(np.argmax(logits))
        logps.append(_log_softmax(logits)[tok])
        seq.append(tok)
    return seq[len(prompt) :], np.array(logps)


def test_left_pad_and_buckets():
    ids, mask = sampling.left_pad([[1, 2, 3], [4]], pad_id=9)
    expected_ids = np.full((2, 16), 9)
    expected_ids[0, -3:] = [1, 2, 3]
    expected_ids[1, -1] = 4
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(mask, (expected_ids != 9).astype(np.int32))
    assert sampling.left_pad([[1] * 17], 0)[0].shape == (1, 32)
    assert sampling.left_pad([[1] * 5], 0, bucket_sizes=[4, 8, 64])[0].shape == (1, 8)
    with pytest.raises(ValueError, match="prompt length 9"):
        sampling.left_pad([[1] * 9], 0, bucket_sizes=[4, 8])


def test_greedy_matches_full_forward_ragged(model):
    T = 6
    gen = sampling.generate(model, PROMPTS, max_new_tokens=T, temperature=0.0)
    assert gen.tokens.shape == gen.logprobs.shape == gen.mask.shape == (len(PROMPTS), T)
    for i, prompt in enumerate(PROMPTS):
        ref_tokens, ref_logps = _greedy_reference(model, prompt, T)
        np.testing.assert_array_equal(gen.tokens[i], ref_tokens, err_msg=f"row {i}")
        np.testing.assert_allclose(gen.logprobs[i], ref_logps, atol=1e-5)
    np.testing.assert_array_equal(gen.mask, 1)


def test_sampled_logprobs_match_full_forward(model):
    T, temp = 8, 0.7
    gen = sampling.generate(model, PROMPTS, max_new_tokens=T, temperature=temp, rng=3)
    for i, prompt in enumerate(PROMPTS):
        logits = _full_logits(model, list(prompt) + gen.tokens[i].tolist())[len(prompt) - 1 : -1]
        ref = _log_softmax(logits / temp)[np.arange(T), gen.tokens[i]]
        np.testing.assert_allclose(gen.logprobs[i], ref, atol=1e-4, err_msg=f"row {i}")
    # Sampling, not greedy: at 0.7 over a near-flat vocabulary some token differs from argmax.
    greedy = sampling.generate(model, PROMPTS, max_new_tokens=T, temperature=0.0)
    assert (gen.tokens != greedy.tokens).any()
    again = sampling.generate(model, PROMPTS, max_new_tokens=T, temperature=temp, rng=3)
    np.testing.assert_array_equal(gen.tokens, again.tokens)


def _truncated_probs(logits, top_k, top_p):
    """NumPy reference: softmax, keep the top k, renormalise, keep the nucleus, renormalise."""
    order = np.argsort(-logits, kind="stable")
    if top_k:
        order = order[:top_k]
    p = np.exp(logits[order] - logits[order].max())
    p /= p.sum()
    keep = (np.cumsum(p) - p) < top_p
    out = np.zeros_like(logits, dtype=np.float64)
    out[order[keep]] = p[keep] / p[keep].sum()
    return out


@pytest.mark.parametrize(
    "top_k,top_p,draw",
    [
        (5, 1.0, "inverse_cdf"),
        (0, 0.5, "inverse_cdf"),
        (6, 0.8, "inverse_cdf"),
        (6, 0.8, "categorical"),
    ],
)
def test_top_k_top_p_frequencies(model, top_k, top_p, draw):
    # A sharper head than the random init gives, so the truncations change the distribution.
    peaked = model.replace(params={**model.params, "lm_head": model.params["lm_head"] * 15.0})
    prompt = [11, 22, 33]
    N = 8192
    gen = sampling.generate(
        peaked,
        [prompt] * N,
        max_new_tokens=1,
        temperature=1.0,
        top_k=top_k,
        top_p=top_p,
        rng=7,
        draw=draw,
    )
    logits = np.asarray(models.logits(peaked, np.array([prompt])), np.float64)[0, -1]
    expected = _truncated_probs(logits, top_k, top_p)
    counts = np.bincount(gen.tokens[:, 0], minlength=logits.size)
    assert counts[expected == 0].sum() == 0, "sampled a token outside the truncated set"
    # Hoeffding per category with a union bound over the kept ones: every |freq - p| stays under
    # `bound` with probability >= 1 - 1e-6.
    support = int((expected > 0).sum())
    bound = math.sqrt(math.log(2 * support / 1e-6) / (2 * N))
    np.testing.assert_array_less(np.abs(counts / N - expected), bound)
    # The test has power: the untruncated softmax is far from the truncated one.
    full = np.exp(logits - logits.max())
    full /= full.sum()
    assert np.abs(full - expected).max() > 2 * bound
    # The stored log-prob is of the untruncated softmax.
    np.testing.assert_allclose(gen.logprobs[:, 0], np.log(full)[gen.tokens[:, 0]], atol=1e-4)


def test_two_level_inverse_cdf_draws_the_one_level_tokens():
    # Same uniforms, same tokens: the block-then-inside inversion finds the index the flat CDF
    # does (the vocabulary is large enough for the two-level path: 8 blocks and more). A row may
    # only differ where its uniform lies within round-off of a CDF step (none at this seed).
    B, C = 4096, 2048
    logits = 3.0 * jax.random.normal(jax.random.key(0), (B, C))
    logits = logits.at[::7, 1000:].set(-jnp.inf)  # zero-mass tails, as top-k/top-p leave them
    key = jax.random.key(1)
    two = np.asarray(jax.jit(sampling._inverse_cdf)(key, logits))
    one = np.asarray(jax.jit(lambda k, x: sampling._inverse_cdf(k, x, block=None))(key, logits))
    assert np.all(two[::7] < 1000)
    differ = np.nonzero(two != one)[0]
    assert differ.size <= B // 1000
    u = 1.0 - np.asarray(jax.random.uniform(key, (B, 1)), np.float64)[:, 0]
    x = np.asarray(logits, np.float64)
    cdf = np.cumsum(np.exp(x - x.max(-1, keepdims=True)), axis=-1)
    cdf /= cdf[:, -1:]
    for b in differ:
        lo, hi = sorted((one[b], two[b]))
        assert abs(u[b] - cdf[b, lo]) < 1e-5 and cdf[b, hi - 1] - cdf[b, lo] < 1e-5


@pytest.mark.parametrize("draw", sampling.DRAWS)
def test_draws_follow_the_softmax(draw):
    # Both draws against the exact probabilities (Hoeffding per category, union bound: fails
    # with probability < 1e-6), over a vocabulary big enough for the two-level inverse CDF.
    N, C = 65536, 1024
    logits_C = np.asarray(2.0 * jax.random.normal(jax.random.key(2), (C,)), np.float64)
    p = np.exp(logits_C - logits_C.max())
    p /= p.sum()
    logits = jnp.broadcast_to(jnp.asarray(logits_C, jnp.float32), (N, C))
    picks = np.asarray(jax.jit(sampling._draw, static_argnums=2)(jax.random.key(3), logits, draw))
    bound = math.sqrt(math.log(2 * C / 1e-6) / (2 * N))
    np.testing.assert_array_less(np.abs(np.bincount(picks, minlength=C) / N - p), bound)
    assert p.max() > 4 * bound  # the distribution is far from uniform at this bound


def test_greedy_ignores_the_draw(model):
    kw = dict(max_new_tokens=5, temperature=0.0)
    a = sampling.generate(model, PROMPTS, draw="inverse_cdf", **kw)
    b = sampling.generate(model, PROMPTS, draw="categorical", **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)


def test_eos_padding_and_early_stop(model):
    T, pad = 8, 0
    free = sampling.generate(model, PROMPTS, max_new_tokens=T, temperature=0.0, pad_id=pad)
    assert free.decode_steps == T - 1
    eos = int(free.tokens[0, 2])
    gen = sampling.generate(
        model, PROMPTS, max_new_tokens=T, temperature=0.0, eos_id=eos, pad_id=pad
    )
    for i in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[i] == eos)
        n = hits[0] + 1 if hits.size else T  # tokens kept, EOS included
        np.testing.assert_array_equal(gen.tokens[i, :n], free.tokens[i, :n])
        np.testing.assert_array_equal(gen.tokens[i, n:], pad)
        np.testing.assert_array_equal(gen.mask[i], np.arange(T) < n)
        np.testing.assert_array_equal(gen.logprobs[i, n:], 0.0)
        np.testing.assert_allclose(gen.logprobs[i, :n], free.logprobs[i, :n], atol=1e-6)
    # Every row ends at step 2: the loop runs two decode passes, not T - 1.
    same = sampling.generate(
        model, [PROMPTS[0]] * 3, max_new_tokens=T, temperature=0.0, eos_id=eos, pad_id=pad
    )
    assert same.decode_steps == 2
    assert same.tokens.shape == (3, T)
    np.testing.assert_array_equal(same.mask.sum(1), 3)
    # EOS as the very first token: no decode pass at all.
    first = int(free.tokens[0, 0])
    assert (
        sampling.generate(
            model, [PROMPTS[0]], max_new_tokens=T, temperature=0.0, eos_id=first
        ).decode_steps
        == 0
    )


def test_buckets_share_one_compilation(model):
    kw = dict(max_new_tokens=3, temperature=0.0)
    sampling.generate(model, [[1, 2, 3], [4]], **kw)
    before = sampling._sample_jit._cache_size()
    sampling.generate(model, [[1, 2, 3, 4, 5, 6], [7, 8]], **kw)  # same bucket (16), same B
    assert sampling._sample_jit._cache_size() == before


def test_sample_tokens_jitted_directly(model):
    ids, mask = sampling.left_pad(PROMPTS, 0)
    fn = jax.jit(
        sampling.sample_tokens,
        static_argnames=(
            "config",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "eos_id",
            "pad_id",
        ),
    )
    tokens, logprobs, mask_out = fn(
        model.params,
        model.config,
        ids,
        mask,
        jax.random.key(3),
        max_new_tokens=5,
        temperature=0.7,
        top_k=0,
        top_p=1.0,
        eos_id=None,
        pad_id=0,
    )
    gen = sampling.generate(model, PROMPTS, max_new_tokens=5, temperature=0.7, rng=3)
    np.testing.assert_array_equal(tokens, gen.tokens)
    np.testing.assert_allclose(logprobs, gen.logprobs, atol=1e-6)
    np.testing.assert_array_equal(mask_out, gen.mask)


@pytest.mark.parametrize("shape,n_rows", [((2, 4, 1), 8), ((2, 2, 2), 5)])
def test_sharded_equals_single_device(model, shape, n_rows):
    mesh = sharding.make_mesh(*shape)
    sharded = sharding.shard_model(model, mesh)
    prompts = [PROMPTS[i % len(PROMPTS)] + [i] for i in range(n_rows)]
    kw = dict(max_new_tokens=5, temperature=0.0)
    single = sampling.generate(model, prompts, **kw)
    multi = sampling.generate(sharded, prompts, **kw)
    np.testing.assert_array_equal(multi.tokens, single.tokens)
    np.testing.assert_allclose(multi.logprobs, single.logprobs, atol=1e-5)
    np.testing.assert_array_equal(multi.mask, single.mask)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompts=[]), "prompts=\\[\\]"),
        (dict(prompts=[[1], []]), "prompts\\[1\\]"),
        (dict(prompts=[[1, 300]]), "token id 300"),
        (dict(prompts=[[-1]]), "token id -1"),
        (dict(prompts=[[1] * 510]), "max_seq_len=512"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(max_new_tokens=-3), "max_new_tokens=-3"),
        (dict(temperature=-0.5), "temperature=-0.5"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(top_k=257), "top_k=257"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(eos_id=256), "eos_id=256"),
        (dict(pad_id=-1), "pad_id=-1"),
        (dict(draw="gumbel"), "draw='gumbel'"),
    ],
)
def test_bad_input_raises(model, kwargs, match):
    args = dict(prompts=[[1, 2]], max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=match):
        sampling.generate(model, args.pop("prompts"), **args)
