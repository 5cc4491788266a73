"""`bench.workload`: the varied-length edit gives EOS the probability it promises, on our
model and on the TRL peer's torch model alike."""

import importlib.util
import math

import jax
import numpy as np
import pytest

from jaxrl_lrm import models
from jaxrl_lrm.bench import grpo_step, workload
from jaxrl_lrm.models import transformer


def test_eos_logit_formula():
    b = workload.eos_logit(0.01, 1000)
    assert math.isclose(math.exp(b) / (math.exp(b) + 999), 0.01)
    assert workload.hazard_for(128) == 1.5 / 128
    with pytest.raises(ValueError, match="hazard=1.5"):
        workload.eos_logit(1.5, 10)
    with pytest.raises(ValueError, match="max_new_tokens=1"):
        workload.hazard_for(1)


def test_biased_model_gives_eos_its_probability_at_every_position():
    m = models.init(models.preset("tiny", vocab_size=512), 0)
    params = workload.bias_eos(m.params, 1, 0.05)
    tokens = jax.random.randint(jax.random.key(1), (3, 20), 3, 512)
    hidden, _ = transformer.forward_hidden(params, m.config, tokens)
    probs = jax.nn.softmax(transformer.hidden_to_logits(params, m.config, hidden), axis=-1)
    np.testing.assert_allclose(np.asarray(probs[..., 1]), 0.05, rtol=1e-3)
    # the other tokens stay near-uniform, and shapes and dtypes are unchanged
    others = np.asarray(probs[..., 2:])
    assert others.max() / others.min() < 1.01
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
        lambda x: (x.shape, x.dtype), m.params
    )
    with pytest.raises(ValueError, match="eos_id=512"):
        workload.bias_eos(m.params, 512, 0.05)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs torch + transformers")
def test_torch_edit_matches_ours():
    import torch
    import transformers

    from jaxrl_lrm.bench import peers

    c = models.preset("tiny", vocab_size=512)
    model = transformers.Qwen3ForCausalLM(peers.hf_qwen3_config(c)).to(torch.float32)
    workload.bias_eos_torch(model, 1, 0.05)
    with torch.no_grad():
        logits = model(torch.randint(3, 512, (2, 16))).logits
    np.testing.assert_allclose(torch.softmax(logits, -1)[..., 1].numpy(), 0.05, rtol=1e-3)


def test_grpo_step_varied_lengths_and_packing():
    args = ["--preset", "tiny", "--vocab-size", "256", "--prompts", "2", "--group", "4"]
    args += ["--new-tokens", "16", "--repeats", "1", "--lengths", "varied"]
    plain = grpo_step.run(True, args)["summary"]
    packed = grpo_step.run(True, args + ["--pack-rows", "1"])["summary"]
    for s in (plain, packed):
        assert 1 <= s["mean_response_len"] < 12  # EOS fires (uniform runs ~16)
        p10, _, p90 = s["response_len_p10_p50_p90"]
        assert p90 >= 2 * p10
        assert s["decode_vs_floor"] > 0
    assert packed["mean_response_len"] == plain["mean_response_len"]  # same rollouts
    assert 0 < packed["pad_frac"] < plain["pad_frac"] < 1
