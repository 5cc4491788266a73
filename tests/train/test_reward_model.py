"""Reward-model stage: Bradley-Terry loss against NumPy, held-out ranking of a toy preference,
exact resume, and export / `load_reward_model` keeping the trained head."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lrm import models
from jaxrl_lrm.config import load_config
from jaxrl_lrm.data.tokenizer import CharTokenizer
from jaxrl_lrm.models import transformer
from jaxrl_lrm.offline import dpo, reward_model
from jaxrl_lrm.train import stages
from jaxrl_lrm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "reward_model.yaml"
PREFS = ROOT / "tests" / "fixtures" / "pairs" / "prefs.jsonl"
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "head_dim": 16, "mlp_dim": 64}


def _config(run_dir, *overrides):
    return load_config(CONFIG, [f"run_dir={run_dir}", f"data.path={PREFS}", *overrides])


def test_bradley_terry_matches_numpy():
    tok = CharTokenizer("abp:")
    config = models.preset("tiny", vocab_size=tok.vocab_size, **TINY)
    params = models.init(config, 0).params
    rng = np.random.default_rng(0)
    params["value_head"] = {
        "w": jnp.asarray(rng.normal(size=32), jnp.float32),
        "b": jnp.asarray(0.3, jnp.float32),
    }
    triples = [("p:", "aab", "b"), ("pa:", "a", "bbbb"), ("p:", "ab", "abab")]
    P, T = 4, 5
    enc = dpo.encode_preferences(triples, tok, P, T)
    terms = jax.jit(lambda p, b: reward_model.rm_terms(p, config, b))(params, enc)
    want = {}
    for s in ("c", "r"):
        hidden, _ = transformer.forward_hidden(
            params,
            config,
            jnp.asarray(enc[f"tokens_BL_{s}"]),
            kv_mask_BS=jnp.asarray(enc[f"attn_BL_{s}"]),
        )
        hidden = np.asarray(hidden, np.float64)
        # The last real token is the EOS after the completion: P + len(completion).
        last = [P + len(t[1 if s == "c" else 2]) for t in triples]
        assert all(enc[f"tokens_BL_{s}"][b, i] == tok.eos_id for b, i in enumerate(last))
        want[s] = np.array(
            [hidden[b, i] @ np.asarray(params["value_head"]["w"]) + 0.3 for b, i in enumerate(last)]
        )
    d = want["c"] - want["r"]
    np.testing.assert_allclose(terms["r_chosen"], want["c"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["r_rejected"], want["r"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["loss"], np.log1p(np.exp(-d)), rtol=1e-5, atol=1e-6)
    # Batch loss is the mean; accuracy the share of pairs with r_chosen > r_rejected.
    loss, m = reward_model.rm_batch_loss(params, config, enc)
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-d))), rtol=1e-5)
    np.testing.assert_allclose(m["rm/accuracy"], np.mean(d > 0))


def test_reward_model_ranks_held_out_pairs(tmp_path):
    result = stages.train(
        _config(tmp_path, "train.steps=40", "train.eval_every=0", "train.checkpoint_every=0")
    )
    h = result.history
    assert abs(h[0]["rm/loss"] - math.log(2)) < 1e-6  # zero head: every reward is 0
    assert np.mean([m["rm/loss"] for m in h[-5:]]) < 0.4
    assert h[-1]["eval/accuracy"] >= 0.8  # 64 held-out pairs ("more 'a' is better")

    # Export keeps the head; the loaded model scores held-out texts like the trained params.
    out = tmp_path / "rm_hf"
    assert stages.export(tmp_path, out) == 40
    assert (out / reward_model.VALUE_HEAD_FILE).is_file()
    loaded = reward_model.load_reward_model(out)
    prompts, chosen, rejected = (
        ["p1:", "p2:", "p3:"],
        ["aaaab", "aaa", "aabaa"],
        ["bbbbb", "bab", "bb"],
    )
    kw = dict(prompt_len=4, completion_len=9)
    rc = reward_model.score(loaded, prompts, chosen, **kw)
    trained = loaded.replace(params=jax.device_get(result.params))
    np.testing.assert_allclose(
        rc, reward_model.score(trained, prompts, chosen, **kw), rtol=1e-5, atol=1e-5
    )
    assert np.all(rc > reward_model.score(loaded, prompts, rejected, **kw))
    # A reward-model run continues from the exported head (model.path holds it).
    cont = stages.train(
        _config(
            tmp_path / "cont",
            f"model.path={out}",
            "model.preset=null",
            "model.overrides={}",
            "train.steps=1",
            "data.eval_size=0",
        ),
        quiet=True,
    )
    assert cont.history[0]["rm/loss"] < 0.5


def test_reward_model_resume_is_exact(tmp_path):
    over = ("train.steps=4", "train.checkpoint_every=2", "train.eval_every=2")
    stages.train(_config(tmp_path / "straight", *over))
    stages.train(_config(tmp_path / "split", *over), max_steps_this_run=2)
    stages.train(_config(tmp_path / "split", *over))
    strip = lambda rs: [
        {k: v for k, v in r.items() if not k.startswith(("time/", "compile/"))} for r in rs
    ]
    a = strip(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    b = strip(read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [1, 2, 3, 4] and "eval/accuracy" in a[1]
    assert a == b


def test_save_and_load_errors(tmp_path):
    tok = CharTokenizer("ab")
    model = models.init(models.preset("tiny", vocab_size=tok.vocab_size, **TINY), 0, tokenizer=tok)
    with pytest.raises(ValueError, match="no value_head"):
        reward_model.save_reward_model(model, tmp_path / "x")
    models.save_pretrained(model, tmp_path / "plain")
    with pytest.raises(ValueError, match="value_head.safetensors"):
        reward_model.load_reward_model(tmp_path / "plain")
    with pytest.raises(ValueError, match="data.source='task'"):
        stages.train(_config(tmp_path, "data.source=task"))
