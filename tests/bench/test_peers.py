"""Same-run peer comparison (`bench.peers`, `grpo_step --vs-trl`) at tiny sizes; skipped when
TRL is not installed (it is an optional extra)."""

import math

import pytest

from jaxrl_lrm import models
from jaxrl_lrm.bench import grpo_step, peers

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

TINY = [
    "--preset",
    "tiny",
    "--vocab-size",
    "256",
    "--prompts",
    "2",
    "--group",
    "2",
    "--new-tokens",
    "8",
    "--repeats",
    "1",
]


def test_word_tokenizer_ids_by_hand():
    tok = peers.word_tokenizer(256)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == 256
    assert tok("w5 w7 w255", add_special_tokens=False)["input_ids"] == [5, 7, 255]
    assert tok("w256 w3", add_special_tokens=False)["input_ids"] == [2, 3]  # past V: unknown
    assert tok.decode([5, 1, 9, 0], skip_special_tokens=True) == "w5 w9"


def test_hf_config_matches_our_parameter_count():
    import transformers

    for name in ("tiny", "bench-cpu"):
        ours = models.preset(name)
        hf = transformers.Qwen3ForCausalLM(peers.hf_qwen3_config(ours))
        assert sum(p.numel() for p in hf.parameters()) == ours.num_params, name
        attn = hf.model.layers[0].self_attn
        # q: d -> heads * head_dim, k: d -> kv_heads * head_dim (grouped-query attention)
        assert tuple(attn.q_proj.weight.shape) == (ours.n_heads * ours.head_dim, ours.d_model)
        assert tuple(attn.k_proj.weight.shape) == (ours.n_kv_heads * ours.head_dim, ours.d_model)
    # bench-cpu by hand: 4 layers x (attention 2 x 512 x 512 + 2 x 512 x 256, MLP 3 x 512 x 2048,
    # norms 2 x 512 + q/k norms 2 x 128) + final norm 512 + untied embedding and head 2 x 8192 x 512
    layer = 2 * 512 * 512 + 2 * 512 * 256 + 3 * 512 * 2048 + 2 * 512 + 2 * 128
    assert models.preset("bench-cpu").num_params == 4 * layer + 512 + 2 * 8192 * 512


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="arch='qwen2'"):
        peers.hf_qwen3_config(models.preset("qwen2.5-0.5b"))
    with pytest.raises(ValueError, match="vocab_size=3"):
        peers.word_tokenizer(3)
    with pytest.raises(ValueError, match="group=1"):
        peers.trl_grpo_step_time(model_config=models.preset("tiny"), group=1)
    with pytest.raises(ValueError, match="omp_wait_policy='SPIN'"):
        peers.trl_grpo_step_time_isolated(omp_wait_policy="SPIN")
    with pytest.raises(ValueError, match="repeats=0"):
        peers.trl_grpo_step_time(model_config=models.preset("tiny"), repeats=0)


def test_trl_step_tiny():
    threads = torch.get_num_threads()
    r = peers.trl_grpo_step_time(
        model_config=models.preset("tiny"),
        prompts=2,
        group=2,
        new_tokens=8,
        prompt_len=6,
        repeats=1,
    )
    assert torch.get_num_threads() == threads  # restored
    assert len(r["step_times_s"]) == 1 and r["warmup_s"] > 0
    assert math.isfinite(r["step_s"]) and r["step_s"] > 0
    # the phases are nested inside the step: generate within generate+score within the step
    assert 0 < r["generate_s"] <= r["score_s"] <= r["step_s"]
    assert math.isclose(r["update_s"], r["step_s"] - r["score_s"])
    assert r["mean_completion_len"] == 8.0  # min_new_tokens forces the full length
    assert r["trl_version"] == trl.__version__ and not r["gradient_checkpointing"]


def test_grpo_step_vs_trl_fills_ratio():
    r = grpo_step.run(True, TINY + ["--vs-trl", "--vs-tunix"])
    s, p = r["summary"], r["peers"]["trl"]
    assert isinstance(s["vs_trl"], float) and s["vs_trl"] > 0
    assert math.isclose(s["vs_trl"], p["step_s"] / s["step_s"])
    assert p["mean_completion_len"] == 8.0
    assert s["vs_tunix"] is None and r["peers"]["tunix"] is None  # no Tunix runner
    # (without the flag vs_trl stays null: tests/bench/test_bench.py checks that)
