"""Sequence packing (`train.packing`): the layout against a NumPy reference, packed forwards
against unpacked ones (the packed update against the unpacked one: tests/train/test_trainer.py)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models
from jaxrl_lrm.config import load_config
from jaxrl_lrm.models import transformer
from jaxrl_lrm.train import packing, update

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"

P, T = 4, 12


def varied_rows(B: int, V: int, seed: int = 0):
    """Left-padded prompts of 1..P tokens, completions of 1..T tokens then padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, V, size=(B, P + T)).astype(np.int32)
    attn = np.zeros((B, P + T), np.int32)
    for b in range(B):
        p, n = rng.integers(1, P + 1), rng.integers(1, T + 1)
        attn[b, P - p : P + n] = 1
    tokens[attn == 0] = 0
    return jnp.asarray(tokens), jnp.asarray(attn)


def test_layout_places_every_real_token_once_in_order():
    tokens, attn = varied_rows(9, 50, seed=1)
    lay = jax.jit(packing.layout, static_argnums=2)(tokens, attn, 2)
    C, S = lay["tokens"].shape
    assert (C, S) == (10, P + T)  # 9 rows rounded up to micro-batches of 2
    dst, tok, seg, pos = (np.asarray(lay[k]) for k in ("dst_BL", "tokens", "segments", "positions"))
    a, t = np.asarray(attn), np.asarray(tokens)
    real = dst[a == 1]
    assert len(set(real.tolist())) == a.sum() and real.max() < C * S  # no slot used twice
    assert np.all(dst[a == 0] == C * S)
    flat_tok, flat_seg, flat_pos = tok.ravel(), seg.ravel(), pos.ravel()
    for b in range(9):
        idx = dst[b][a[b] == 1]
        assert np.all(np.diff(idx) == 1) and len(set(idx // S)) == 1  # contiguous, one row
        np.testing.assert_array_equal(flat_tok[idx], t[b][a[b] == 1])
        assert np.all(flat_seg[idx] == b + 1)
        np.testing.assert_array_equal(flat_pos[idx], np.arange(len(idx)))
    assert (flat_seg == 0).sum() == C * S - a.sum()  # every other slot is padding
    used = len(set((real // S).tolist()))
    assert int(lay["n_micro"]) == -(-used // 2) and int(lay["real"]) == a.sum()
    # first-fit decreasing never opens a row a sequence would have fitted in before
    assert used <= -(-a.sum() // S) + 2


def test_segment_ids_make_a_packed_row_two_independent_sequences():
    m = models.init("tiny", 0)
    a = jnp.asarray([[5, 6, 7, 8, 9]], jnp.int32)
    b = jnp.asarray([[10, 11, 12]], jnp.int32)
    ha, _ = transformer.forward_hidden(m.params, m.config, a)
    hb, _ = transformer.forward_hidden(m.params, m.config, b)
    packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], axis=1)
    seg = jnp.asarray([[1] * 5 + [2] * 3 + [0, 0]])
    pos = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]])
    h, _ = transformer.forward_hidden(
        m.params, m.config, packed, positions_BT=pos, kv_mask_BS=seg > 0, segment_ids_BT=seg
    )
    np.testing.assert_allclose(h[0, :5], ha[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h[0, 5:8], hb[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="segment_ids_BT"):
        cache = transformer.init_cache(m.config, 1, 10)
        transformer.forward_hidden(
            m.params, m.config, a, positions_BT=pos[:, :5], cache=cache, segment_ids_BT=seg
        )


@pytest.mark.parametrize("rows", [1, 3])
def test_packed_logprobs_equal_the_unpacked_pass(rows):
    m = models.init("tiny", 0)
    tokens, attn = varied_rows(7, m.config.vocab_size)
    want, _ = update.completion_logprobs(m.params, m.config, tokens, attn, P, 0.7)
    got = jax.jit(
        lambda p, t, a: packing.logprobs(p, m.config, t, a, P, rows=rows, temperature=0.7)
    )(m.params, tokens, attn)
    mask = np.asarray(attn[:, P:]) == 1
    np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(want)[mask], rtol=2e-5, atol=2e-5)
    assert np.all(np.asarray(got)[~mask] == 0)


def test_packing_with_micro_batches_is_a_config_error():
    from jaxrl_lrm.config import ConfigError

    with pytest.raises(ConfigError, match="train.micro_batches=2: expected 1 with train.pack_rows"):
        load_config(SMOKE, ["train.pack_rows=2", "train.micro_batches=2"])
    with pytest.raises(ConfigError, match="train.pack_rows=-1"):
        load_config(SMOKE, ["train.pack_rows=-1"])
