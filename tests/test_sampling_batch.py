"""The shrinking decode batch: the same tokens (bitwise) and log-probs (to float32 round-off) as
decoding every row to the end (`shrink=False`), against a full forward too, single device and
sharded."""

import jax
import numpy as np
import pytest

from jaxrl_lrm import models, sampling, sharding
from jaxrl_lrm.bench import workload
from jaxrl_lrm.sampling_batch import _batch_sizes

EOS, T = 2, 24
PROMPTS = [
    [5, 9, 200, 17],
    [3],
    [7, 8, 9, 10, 11, 12, 13],
    [100, 101],
] * 6  # 24 rows: decode batches of 24, 12 and 8
STATIC = sampling._STATIC + ("truncated_logprobs", "shrink")


@pytest.fixture(scope="module")
def model():
    """The tiny model with P(EOS) = 0.08 at every step: lengths spread over [1, T]."""
    m = models.init("tiny", 0)
    return models.Model(config=m.config, params=workload.bias_eos(m.params, EOS, 0.08))


def _run(model, shrink: bool, mesh=None, **kw):
    ids, mask = sampling.left_pad(PROMPTS, 0)
    args = dict(temperature=1.0, top_k=0, top_p=1.0, draw="inverse_cdf") | kw
    out = jax.jit(sampling._sample, static_argnames=STATIC)(
        model.params,
        model.config,
        ids,
        mask,
        jax.random.key(7),
        max_new_tokens=T,
        eos_id=EOS,
        pad_id=0,
        mesh=mesh,
        truncated_logprobs=True,
        shrink=shrink,
        **args,
    )
    return [np.asarray(x) for x in out]


def test_batch_sizes():
    assert _batch_sizes(12, 1, min_rows=1) == (12, 6, 3, 1)
    assert _batch_sizes(32, 1, min_rows=1) == (32, 16, 8, 4, 2, 1)
    assert _batch_sizes(32, 1) == (32, 16, 8)  # MIN_ROWS = 8
    assert _batch_sizes(12, 1) == (12,)
    assert _batch_sizes(16, 8) == (16, 8)
    assert _batch_sizes(8, 8) == (8,)
    assert _batch_sizes(24, 4, min_rows=1) == (24, 12, 8, 4)  # 6 rounded up to a multiple of 4
    assert _batch_sizes(1, 1, min_rows=0) == (1,)


@pytest.mark.parametrize(
    "top_k,top_p,draw",
    [
        (0, 1.0, "inverse_cdf"),
        pytest.param(0, 1.0, "categorical", marks=pytest.mark.slow),
        pytest.param(0, 0.9, "inverse_cdf", marks=pytest.mark.slow),
    ],
)
def test_shrinking_batch_decodes_as_the_full_batch(model, top_k, top_p, draw):
    full = _run(model, False, top_k=top_k, top_p=top_p, draw=draw)
    cut = _run(model, True, top_k=top_k, top_p=top_p, draw=draw)
    lengths = full[2].sum(axis=1)
    # the workload does shrink the batch: some rows end before half the rows are left
    assert lengths.min() <= 3 and lengths.max() >= 12, lengths
    for i, name in ((0, "tokens"), (2, "mask"), (3, "steps")):
        np.testing.assert_array_equal(cut[i], full[i], err_msg=name)
    # The forward of a smaller batch may round a few tokens' log-probs by one ulp (XLA:CPU
    # vectorises other shapes differently; measured 4 of 576 here), never more.
    for i, name in ((1, "logprobs"), (4, "truncated logprobs")):
        np.testing.assert_allclose(cut[i], full[i], rtol=0, atol=1e-6, err_msg=name)
        assert (cut[i] == full[i]).mean() > 0.95, name


def test_shrinking_batch_matches_full_forward(model):
    temp = 0.7
    tokens, logprobs, mask, steps, _ = _run(model, True, temperature=temp)
    assert int(steps) == mask.sum(axis=1).max() - 1  # stopped when the longest row ended
    for i, prompt in enumerate(PROMPTS):
        n = int(mask[i].sum())
        np.testing.assert_array_equal(mask[i], np.arange(T) < n)
        np.testing.assert_array_equal(tokens[i, n:], 0)
        assert n == T or tokens[i, n - 1] == EOS
        seq = prompt + tokens[i, :n].tolist()
        padded = np.zeros((1, 32), np.int32)  # one shape; right filler cannot reach `seq`
        padded[0, : len(seq)] = seq
        logits = np.asarray(models.logits(model, padded))[0, len(prompt) - 1 : len(seq) - 1]
        logits = logits / temp
        logits = logits - logits.max(-1, keepdims=True)
        ref = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ref = ref[np.arange(n), tokens[i, :n]]
        np.testing.assert_allclose(logprobs[i, :n], ref, atol=1e-4, err_msg=f"row {i}")
        np.testing.assert_array_equal(logprobs[i, n:], 0.0)


@pytest.mark.slow
def test_shrinking_batch_sharded_equals_single_device(model):
    mesh = sharding.make_mesh(1, 4, 1)  # 24 rows over 4 shards: sizes 24, 12, 8
    sharded = sharding.shard_model(model, mesh)
    single = _run(model, False)
    multi = _run(sharded, True, mesh=mesh)
    np.testing.assert_array_equal(multi[0], single[0])
    np.testing.assert_allclose(multi[1], single[1], atol=1e-5)
    np.testing.assert_array_equal(multi[2], single[2])
