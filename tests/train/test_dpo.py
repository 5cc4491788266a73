"""DPO stage: the loss against NumPy, log 2 at step 0, learning, exact resume, SFT -> DPO chain."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models
from jaxrl_lrm.config import ConfigError, load_config
from jaxrl_lrm.data.tokenizer import CharTokenizer
from jaxrl_lrm.models import transformer
from jaxrl_lrm.offline import dpo
from jaxrl_lrm.train import stages
from jaxrl_lrm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "dpo.yaml"
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "head_dim": 16, "mlp_dim": 64}


def _config(tmp_path, *overrides):
    return load_config(
        CONFIG,
        [f"run_dir={tmp_path}", f"data.path={ROOT}/tests/fixtures/pairs/prefs.jsonl", *overrides],
    )


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_seq_logp(params, config, enc, P):
    """Sum of completion-token log-probs from the full float32 logits, in NumPy."""
    logits, _ = transformer.forward(
        params, config, jnp.asarray(enc["tokens_BL"]), kv_mask_BS=jnp.asarray(enc["attn_BL"])
    )
    lp = _np_log_softmax(np.asarray(logits, np.float64))
    tok, m = enc["tokens_BL"], enc["loss_mask_BL"]
    out = np.zeros(tok.shape[0])
    for b in range(tok.shape[0]):
        for t in range(P, tok.shape[1]):
            if m[b, t]:
                out[b] += lp[b, t - 1, tok[b, t]]
    return out


def test_dpo_terms_match_numpy():
    tok = CharTokenizer("abcdp:")
    config = models.preset("tiny", vocab_size=tok.vocab_size, **TINY)
    policy = models.init(config, 0).params
    ref = models.init(config, 1).params
    triples = [("p:", "aab", "b"), ("pa:", "c", "dddd"), ("p:", "abcd", "ab")]
    P, T, beta, ls = 4, 5, 0.5, 0.1
    enc = dpo.encode_preferences(triples, tok, P, T)
    terms = jax.jit(
        lambda p, r, b: dpo.dpo_terms(p, r, config, b, prompt_len=P, beta=beta, label_smoothing=ls)
    )(policy, ref, enc)
    side = {s: {k[:-2]: v for k, v in enc.items() if k.endswith(s)} for s in ("_c", "_r")}
    c, r = (_np_seq_logp(policy, config, side[s], P) for s in ("_c", "_r"))
    rc, rr = (_np_seq_logp(ref, config, side[s], P) for s in ("_c", "_r"))
    h = (c - rc) - (r - rr)
    log_sig = lambda x: -np.log1p(np.exp(-x))
    want = -(1 - ls) * log_sig(beta * h) - ls * log_sig(-beta * h)
    assert np.all(np.abs(h) > 1e-2)  # a non-trivial batch: policy and reference differ
    np.testing.assert_allclose(terms["loss"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["chosen_reward"], beta * (c - rc), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["rejected_reward"], beta * (r - rr), rtol=1e-5, atol=1e-6)
    # Only completion tokens and their EOS count: row 0's chosen is "aab" + EOS = 4 tokens.
    assert enc["loss_mask_BL_c"][0].sum() == 4 and enc["loss_mask_BL_r"][1].sum() == 5


def test_dpo_starts_at_log2_and_learns(tmp_path):
    config = _config(tmp_path, "train.steps=30", "train.eval_every=0", "train.checkpoint_every=0")
    result = stages.train(config, quiet=True)
    h = result.history
    # Policy == reference at step 0: h = 0 exactly, so the loss is -log sigmoid(0) = log 2.
    assert abs(h[0]["dpo/loss"] - math.log(2)) < 1e-6
    assert h[0]["dpo/margin"] == 0.0
    assert np.mean([m["dpo/loss"] for m in h[-5:]]) < 0.45
    assert h[-1]["eval/reward_accuracy"] >= 0.8
    assert h[-1]["eval/loss"] < 0.5


def _strip_time(records):
    return [
        {k: v for k, v in r.items() if not k.startswith(("time/", "compile/"))} for r in records
    ]


def test_dpo_resume_is_exact(tmp_path):
    over = ("train.steps=4", "train.checkpoint_every=2", "train.eval_every=2")
    stages.train(_config(tmp_path / "straight", *over))
    stages.train(_config(tmp_path / "split", *over), max_steps_this_run=2)
    assert len(read_metrics(tmp_path / "split" / "metrics.jsonl")) == 2
    stages.train(_config(tmp_path / "split", *over))
    a = _strip_time(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    b = _strip_time(read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    assert a == b


def test_bad_dpo_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="algorithm.beta=0.0"):
        stages.train(_config(tmp_path, "algorithm.beta=0.0"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p:", "chosen": "a"}) + "\n")
    with pytest.raises(ValueError, match="'rejected'"):
        stages.train(_config(tmp_path, f"data.path={bad}", "data.eval_size=0"))
    with pytest.raises(ValueError, match="train.prompts_per_step=999"):
        stages.train(_config(tmp_path, "train.prompts_per_step=999"))
    with pytest.raises(ConfigError, match="stage='ppo'"):
        _config(tmp_path, "stage=ppo")


def test_sft_export_chains_into_dpo(tmp_path):
    """SFT on a JSONL file -> export (HF layout) -> DPO with model.path: the policy and the
    reference both start from the SFT weights, so the first DPO loss is log 2."""
    sft = load_config(
        ROOT / "configs" / "sft.yaml",
        [
            f"run_dir={tmp_path / 'sft'}",
            "data.source=jsonl",
            f"data.path={ROOT}/tests/fixtures/pairs/reverse.jsonl",
            "data.template=plain",
            "data.eval_size=0",
            "sampling.max_new_tokens=9",
            "data.max_prompt_len=10",
            "train.steps=2",
            "train.checkpoint_every=0",
            "train.eval_every=0",
        ],
    )
    sft_result = stages.train(sft)
    out = tmp_path / "sft_hf"
    assert stages.export(tmp_path / "sft", out) == 2
    loaded = models.load_pretrained(out)
    assert loaded.tokenizer is not None or (out / "char_tokenizer.json").is_file()
    tokens = jnp.asarray([[5, 6, 7, 8]])
    np.testing.assert_allclose(
        models.logits(loaded, tokens),
        models.logits(loaded.replace(params=sft_result.params), tokens),
        rtol=1e-6,
        atol=1e-6,
    )
    result = stages.train(
        _config(
            tmp_path / "dpo",
            f"model.path={out}",
            "model.preset=null",
            "model.overrides={}",
            "train.steps=1",
            "data.eval_size=0",
        ),
        quiet=True,
    )
    assert abs(result.history[0]["dpo/loss"] - math.log(2)) < 1e-6
