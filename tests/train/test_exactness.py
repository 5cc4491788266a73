"""Exact on-policy log-probs: the sampler's against the trainer's recomputation, batch
invariance of the trainer's, truncated (top-k / top-p) log-probs against NumPy, and the
`mismatch/*` metrics of every step."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import losses, sharding, train
from jaxrl_lrm.config import load_config
from jaxrl_lrm.models import transformer
from jaxrl_lrm.sampling_draw import _choose
from jaxrl_lrm.train import rl_stage
from jaxrl_lrm.train import update as upd
from jaxrl_lrm.train.batch import Prompts

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
ONE_DEVICE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
BIG = ["train.prompts_per_step=16", "sampling.max_new_tokens=8"]  # 64 rows x 8 tokens


def _rollout(overrides):
    """A built smoke setup and one rollout of its first prompts."""
    s = rl_stage.build(load_config(SMOKE, overrides))
    rows = [s.train_rows[i] for i in range(s.config.train.prompts_per_step)]
    _, ids, mask = s.text.encode(rows, s.group_size)
    prompts = sharding.shard_batch(Prompts(ids_BP=ids, mask_BP=mask), s.mesh)
    return s, s.programs.sample(s.state.params, prompts, s.state.rng, s.state.step)


def _trainer_logp(s, r):
    u = s.update_config
    fn = jax.jit(
        lambda p, t, a: upd.completion_logprobs(p, u.model, t, a, u.prompt_len, u.temperature)[0]
    )
    return np.asarray(fn(s.state.params, r.tokens_BL, r.attn_BL))


@pytest.mark.parametrize("mesh", [ONE_DEVICE, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]])
def test_sampler_logprobs_equal_the_trainers_float32(mesh):
    """Over a whole RL batch (64 rows x 8 tokens) the KV-cache sampler's log-probs equal the
    trainer's full-forward recomputation to 1e-6."""
    s, r = _rollout(mesh + BIG)
    trainer = _trainer_logp(s, r)
    sampler = np.asarray(r.sampler_logp_BT)
    m = np.asarray(r.completion_mask_BT).astype(bool)
    assert m.sum() > 300
    assert np.abs(trainer - sampler)[m].max() <= 1e-6


def test_the_logprob_head_is_bitwise_the_trainers():
    """Given the same final hidden states, the sampler's head (`hidden_to_logits`, then
    `losses.sampled_logprobs` of logits / T) and the trainer's (`chunked_token_logprobs`) give
    bitwise equal log-probs: what differs between them is only the backbone's shapes (one
    decode position against the whole sequence). `jax.nn.log_softmax`, which the sampler used
    before, is not bitwise equal to the trainer's kernel."""
    s = rl_stage.build(load_config(SMOKE, ONE_DEVICE))
    u, p = s.update_config, s.state.params
    N, D, temp = 96, u.model.d_model, 0.7
    hidden = jax.random.normal(jax.random.key(0), (N, D)) * 3.0
    tok = jax.random.randint(jax.random.key(1), (N,), 0, u.model.vocab_size)

    def sampler(h, t):
        scaled = transformer.hidden_to_logits(p, u.model, h) / temp
        return losses.sampled_logprobs(scaled, t), jnp.take_along_axis(
            jax.nn.log_softmax(scaled), t[:, None], axis=-1
        )[:, 0]

    def trainer(h, t):
        w = transformer.output_embedding(p, u.model)
        return losses.chunked_token_logprobs(h[None], w, t[None], temperature=temp)[0][0]

    ours, log_softmax = jax.jit(sampler)(hidden, tok)
    theirs = jax.jit(trainer)(hidden, tok)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert (np.asarray(log_softmax) != np.asarray(theirs)).any()


def test_trainer_logprobs_are_batch_invariant():
    """A row's trainer log-probs alone, in a quarter of the batch (4 micro-batches), in the
    whole batch, and with log-softmax chunks of 1, 5 or 2048 positions agree to 1e-6 (float32,
    the smoke model). Not bitwise: XLA:CPU vectorises reductions (even RMSNorm's) differently
    for different row counts."""
    s = rl_stage.build(load_config(SMOKE, ONE_DEVICE))
    u = s.update_config
    B, P, T = 16, u.prompt_len, 8
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, u.model.vocab_size, (B, P + T)), jnp.int32)
    attn = np.ones((B, P + T), np.int32)
    attn[:, :3] = 0  # left padding
    for b in range(B):
        attn[b, P + rng.integers(1, T) :] = 0  # EOS somewhere
    attn = jnp.asarray(attn)
    m = np.asarray(attn[:, P:]).astype(bool)

    def logp(t, a, chunk=upd.LOGPROB_CHUNK):
        def f(p, t, a):
            hidden, _ = transformer.forward_hidden(p, u.model, t, kv_mask_BS=a)
            return losses.chunked_token_logprobs(
                hidden[:, P - 1 : -1],
                transformer.output_embedding(p, u.model),
                t[:, P:],
                chunk_size=chunk,
            )[0]

        return np.asarray(jax.jit(f)(s.state.params, t, a))

    whole = logp(tokens, attn)
    variants = {
        "alone": np.concatenate([logp(tokens[i : i + 1], attn[i : i + 1]) for i in range(B)]),
        "micro4": np.concatenate([logp(tokens[i : i + 4], attn[i : i + 4]) for i in (0, 4, 8, 12)]),
        **{f"chunk{c}": logp(tokens, attn, c) for c in (1, 5, 2048)},
    }
    for name, got in variants.items():
        assert np.abs(got - whole)[m].max() <= 1e-6, name


# ------------------------------------------------------------------ truncated log-probs


def _np_truncated(scaled, top_k, top_p):
    """NumPy reference of the sampler's truncation: the kept ids and their renormalised
    log-probs (top-k, then top-p over the top-k's own softmax, the first always kept)."""
    order = np.argsort(-scaled, kind="stable")
    k = top_k or len(scaled)
    kept = order[:k]
    p = np.exp(scaled[kept] - scaled[kept].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    kept = kept[before < top_p]
    z = scaled[kept]
    lse = z.max() + np.log(np.exp(z - z.max()).sum())
    return kept, {int(i): float(scaled[i] - lse) for i in kept}


def _np_full(scaled):
    top = scaled.max(-1, keepdims=True)
    return scaled - top - np.log(np.exp(scaled - top).sum(-1, keepdims=True))


@pytest.mark.parametrize(
    "top_k, top_p", [(0, 0.9), (5, 1.0), (8, 0.5), (1, 1.0), (0, 1e-6), (50, 0.95)]
)
@pytest.mark.parametrize("draw", ["inverse_cdf", "categorical"])
def test_truncated_logprobs_match_numpy(top_k, top_p, draw):
    """The drawn token is in the kept set; its full log-prob is NumPy's log-softmax of
    logits / T, its truncated log-prob the log of its renormalised probability in the kept
    set (0 when only one token is kept)."""
    B, V, temp = 64, 300, 0.7
    logits = jax.random.normal(jax.random.key(1), (B, V)) * 3.0
    logits = logits.at[:, 7].set(logits[:, 3])  # ties
    tok, full, trunc = jax.jit(_choose, static_argnums=(2, 3, 4, 5))(
        logits, jax.random.key(2), temp, top_k, top_p, draw
    )
    scaled = np.asarray(logits, np.float64) / temp
    for b in range(B):
        kept, ref = _np_truncated(scaled[b], top_k, top_p)
        t = int(tok[b])
        assert t in ref, (b, t, kept)
        assert float(full[b]) == pytest.approx(_np_full(scaled[b])[t], abs=2e-6)
        assert float(trunc[b]) == pytest.approx(ref[t], abs=2e-6)
        if len(kept) == 1:
            assert float(trunc[b]) == 0.0


def test_no_truncation_reports_no_truncated_logprobs():
    logits = jax.random.normal(jax.random.key(1), (4, 50))
    for temp, k, p in [(1.0, 0, 1.0), (0.0, 5, 0.5)]:
        tok, full, trunc = _choose(logits, jax.random.key(0), temp, k, p)
        assert trunc is None
        ref = _np_full(np.asarray(logits, np.float64) / (temp or 1.0))
        np.testing.assert_allclose(full, ref[np.arange(4), np.asarray(tok)], atol=2e-6)


def test_rollouts_carry_the_truncated_logprobs_in_truncated_mode():
    """`sampling.logprob_mode`: truncated (the default) puts the renormalised log-probs in
    `Rollout.sampler_trunc_logp_BT` (>= the full ones, 0 off the mask) and makes them the
    behaviour log-probs; full leaves them out."""
    s, r = _rollout(ONE_DEVICE + ["sampling.top_k=4"])
    m = np.asarray(r.completion_mask_BT).astype(bool)
    full, trunc = np.asarray(r.sampler_logp_BT), np.asarray(r.sampler_trunc_logp_BT)
    assert (trunc[m] >= full[m]).all() and (trunc[m] > full[m] + 1e-3).any()
    assert (trunc[~m] == 0).all()
    assert r.behaviour_logp_BT is r.sampler_trunc_logp_BT
    _, r_full = _rollout(ONE_DEVICE + ["sampling.top_k=4", "sampling.logprob_mode=full"])
    assert r_full.sampler_trunc_logp_BT is None
    np.testing.assert_array_equal(r_full.tokens_BL, r.tokens_BL)  # same draws
    assert r_full.behaviour_logp_BT is r_full.sampler_logp_BT
    with pytest.raises(ValueError, match="sampling.logprob_mode='mixed'"):
        load_config(SMOKE, ["sampling.logprob_mode=mixed"])


# ------------------------------------------------------------------ mismatch metrics


def test_logprob_mismatch_against_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(-2, 1, (6, 5)).astype(np.float32)
    b = (a + rng.normal(0, 0.2, (6, 5))).astype(np.float32)
    b[0, 0] = a[0, 0] + 50.0  # masked out: must not count
    mask = (rng.uniform(size=(6, 5)) > 0.3).astype(np.float32)
    mask[0, 0] = 0
    got = losses.logprob_mismatch(a, b, mask, clip_low=0.2, clip_high=0.28)
    d = (a - b)[mask > 0]
    r = np.exp(d)
    assert float(got["max_abs_logp"]) == pytest.approx(np.abs(d).max(), rel=1e-6)
    assert float(got["mean_abs_logp"]) == pytest.approx(np.abs(d).mean(), rel=1e-5)
    assert float(got["frac_ratio_outside_clip"]) == pytest.approx(
        ((r < 0.8) | (r > 1.28)).mean(), rel=1e-6
    )
    empty = losses.logprob_mismatch(a, b, np.zeros_like(mask))
    assert all(float(v) == 0.0 for v in empty.values())


def test_max_metrics_are_maxima_over_micro_batches():
    """`accumulate_update` reduces `.../max...` metrics with a max (the mean of per-micro-batch
    maxima would understate them), the others as before."""
    import optax

    from jaxrl_lrm.train.state import ModelState

    x = jnp.asarray([[0.0], [0.0], [0.0], [9.0]])
    opt = optax.sgd(0.1)
    params = {"w": jnp.ones(())}
    model = ModelState(params, opt.init(params))

    def loss_fn(p, _, mb, denom):
        return jnp.sum(p["w"] * mb), {"a/max_x": jnp.max(mb), "a/mean_x": jnp.mean(mb)}

    for n in (1, 2, 4):
        _, m = upd.accumulate_update(model, opt, loss_fn, x, n)
        assert float(m["a/max_x"]) == 9.0, n
        assert float(m["a/mean_x"]) == pytest.approx(2.25), n


def test_smoke_run_logs_mismatch_within_1e6_float32(tmp_path):
    """Every step of configs/smoke.yaml (float32) logs the three mismatch metrics, from the
    sampler's log-probs against the update's recomputation, max |d| <= 1e-6; with 4 micro-
    batches too (the max survives micro-batching)."""
    for over in ([], ["train.micro_batches=4"]):
        cfg = load_config(SMOKE, ONE_DEVICE + ["train.steps=2", "train.eval_every=0", *over])
        hist = train.run_rl(cfg, run_dir=tmp_path / str(len(over)), quiet=True).history
        for h in hist:
            assert 0 < h["mismatch/max_abs_logp"] <= 1e-6, h
            assert 0 < h["mismatch/mean_abs_logp"] <= h["mismatch/max_abs_logp"]
            assert h["mismatch/frac_ratio_outside_clip"] == 0.0
