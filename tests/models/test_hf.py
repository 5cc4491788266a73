"""Hugging Face parity: our forward pass against logits and greedy generations that transformers'
PyTorch classes computed (tests/fixtures/make_fixtures.py), plus save/load round trips and
bad-input errors. Torch is not needed; where it is importable, the saved checkpoint is also
loaded with AutoModelForCausalLM."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jaxrl_lrm import models, sharding
from jaxrl_lrm.models import transformer

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
ARCHS = ["llama", "qwen2", "qwen3"]
NEW_TOKENS = 12


def expected(arch):
    return dict(np.load(FIXTURES / arch / "expected.npz"))


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request):
    arch = request.param
    return arch, models.load_pretrained(FIXTURES / arch), expected(arch)


def test_config_mapping(loaded):
    arch, model, _ = loaded
    c = model.config
    assert (c.arch, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.mlp_dim) == (
        arch,
        300,
        64,
        2,
        4,
        2,
        128,
    )
    assert c.head_dim == (32 if arch == "qwen3" else 16)
    assert c.tie_embeddings == (arch != "qwen2")
    assert (c.qkv_bias, c.qk_norm) == (arch == "qwen2", arch == "qwen3")
    assert c.rope_theta == (10000.0 if arch == "llama" else 1e6)
    assert c.rope_scaling == (("llama3", 8.0, 1.0, 4.0, 64) if arch == "llama" else None)
    assert (c.norm_eps, c.max_seq_len, c.bos_token_id, c.eos_token_id, c.pad_token_id) == (
        1e-5,
        128,
        1,
        2,
        0,
    )


def test_inv_freq_matches_hf(loaded):
    _, model, exp = loaded
    np.testing.assert_allclose(transformer.rope_inv_freq(model.config), exp["inv_freq"], rtol=1e-6)


def test_logits_match_hf(loaded):
    _, model, exp = loaded
    np.testing.assert_allclose(
        models.logits(model, exp["tokens"]), exp["logits"], atol=1e-4, rtol=0
    )


def test_left_padded_logits_match_hf(loaded):
    _, model, exp = loaded
    logits, _ = jax.jit(transformer.forward, static_argnums=1)(
        model.params,
        model.config,
        jnp.asarray(exp["padded_tokens"]),
        kv_mask_BS=jnp.asarray(exp["padded_mask"]),
    )
    real = exp["padded_mask"].astype(bool)
    np.testing.assert_allclose(
        np.asarray(logits)[real], exp["padded_logits"][real], atol=1e-4, rtol=0
    )
    # The padded row's real positions equal the unpadded forward of its real tokens alone.
    alone = models.logits(model, exp["padded_tokens"][1:, 4:])
    np.testing.assert_allclose(np.asarray(logits)[1, 4:], alone[0], atol=1e-5, rtol=0)


def greedy(model, prompt, mask, n):
    """Greedy decoding by repeated full forward passes (no KV cache) over a fixed-size buffer:
    slot t+1 gets argmax of the logits at slot t; unfilled slots are masked out."""
    B, Pn = prompt.shape
    tokens = np.concatenate([prompt, np.zeros((B, n), np.int32)], axis=1)
    kv_mask = np.concatenate([mask, np.zeros((B, n), np.int32)], axis=1)
    fwd = jax.jit(lambda t, m: transformer.forward(model.params, model.config, t, kv_mask_BS=m)[0])
    for t in range(Pn, Pn + n):
        logits = np.asarray(fwd(tokens, kv_mask))
        tokens[:, t] = logits[:, t - 1].argmax(-1)
        kv_mask[:, t] = 1
    return tokens[:, Pn:]


def test_greedy_matches_hf_generate(loaded):
    _, model, exp = loaded
    out = greedy(model, exp["gen_prompt"], exp["gen_mask"], NEW_TOKENS)
    np.testing.assert_array_equal(out, exp["gen_tokens"])


def test_sampling_generate_matches_hf_generate(loaded):
    sampling = pytest.importorskip("jaxrl_lrm.sampling")
    _, model, exp = loaded
    prompts = [p[m.astype(bool)].tolist() for p, m in zip(exp["gen_prompt"], exp["gen_mask"])]
    out = sampling.generate(model, prompts, max_new_tokens=NEW_TOKENS, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.tokens), exp["gen_tokens"])


def test_save_reload_round_trip(loaded, tmp_path):
    arch, model, exp = loaded
    models.save_pretrained(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "model.safetensors.index.json").exists()
    # Same tensor names, shapes and dtypes as the checkpoint transformers wrote.
    ours, theirs = (
        load_file(tmp_path / "model.safetensors"),
        load_file(FIXTURES / arch / "model.safetensors"),
    )
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {
        k: (v.shape, v.dtype) for k, v in theirs.items()
    }
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    reloaded = models.load_pretrained(tmp_path)
    assert reloaded.config == model.config
    jax.tree.map(np.testing.assert_array_equal, reloaded.params, model.params)
    np.testing.assert_allclose(
        models.logits(reloaded, exp["tokens"]), exp["logits"], atol=1e-4, rtol=0
    )


def test_saved_config_loads_with_autoconfig(loaded, tmp_path):
    from transformers import AutoConfig

    arch, model, _ = loaded
    models.save_pretrained(model, tmp_path)
    ours = AutoConfig.from_pretrained(tmp_path).to_dict()
    theirs = AutoConfig.from_pretrained(FIXTURES / arch).to_dict()
    for key in (
        "model_type",
        "architectures",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "tie_word_embeddings",
        "rope_parameters",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "max_position_embeddings",
    ):
        assert ours[key] == theirs[key], key
    assert (ours.get("head_dim") or 16) == (theirs.get("head_dim") or 16)


def test_saved_checkpoint_loads_in_torch(loaded, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    _, model, exp = loaded
    models.save_pretrained(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.as_tensor(exp["tokens"], dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits, exp["logits"], atol=1e-4, rtol=0)


def test_sharded_save_and_load(tmp_path):
    model = models.load_pretrained(FIXTURES / "qwen3")
    limit = 100_000
    models.save_pretrained(model, tmp_path, max_shard_bytes=limit)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    assert files == sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    total = 0
    for name in files:
        tensors = load_file(tmp_path / name)
        size = sum(v.nbytes for v in tensors.values())
        assert size <= limit or len(tensors) == 1, (name, size)
        assert all(index["weight_map"][k] == name for k in tensors)
        total += size
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == set(load_file(FIXTURES / "qwen3" / "model.safetensors"))
    reloaded = models.load_pretrained(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, reloaded.params, model.params)
    # Saving again unsharded removes the stale shards and index.
    models.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors*")) == ["model.safetensors"]


def test_bfloat16_save_and_load(tmp_path):
    exp = expected("qwen2")
    model = models.load_pretrained(FIXTURES / "qwen2", dtype="bfloat16")
    assert model.config.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(model.params))
    models.save_pretrained(model, tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="np") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == jnp.bfloat16
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    as_f32 = models.load_pretrained(tmp_path)  # bf16 file read into float32
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, np.asarray(b, np.float32)),
        as_f32.params,
        model.params,
    )
    # bf16 weights are a small perturbation of the float32 ones.
    err = np.abs(np.asarray(models.logits(as_f32, exp["tokens"])) - exp["logits"]).max()
    assert 0 < err < 0.1 * np.abs(exp["logits"]).max()


def test_tokenizer_and_chat_template(tmp_path):
    from transformers import AutoTokenizer

    model = models.load_pretrained(FIXTURES / "qwen2")
    tok = model.tokenizer
    text = "What is 2 + 3? The answer is 5."
    assert tok.encode(text) == AutoTokenizer.from_pretrained(FIXTURES / "qwen2").encode(text)
    assert tok.decode(tok.encode(text)) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 2
    models.save_pretrained(model, tmp_path)
    again = models.load_pretrained(tmp_path).tokenizer
    assert again.encode(text) == tok.encode(text) and again.chat_template == tok.chat_template
    assert models.load_pretrained(FIXTURES / "qwen3").tokenizer is None


def test_load_on_mesh_shards_by_rules():
    exp = expected("qwen3")
    mesh = sharding.make_mesh(2, 2, 2)
    single = models.load_pretrained(FIXTURES / "qwen3")
    sharded = models.load_pretrained(FIXTURES / "qwen3", mesh=mesh)
    layers = sharded.params["layers"]
    # Hand-derived from RULES: embed->fsdp, vocab/heads/kv_heads/mlp->tensor, the rest replicated.
    hand = {
        "wq": P(None, "fsdp", "tensor", None),
        "wk": P(None, "fsdp", "tensor", None),
        "wo": P(None, "tensor", None, "fsdp"),
        "w_gate": P(None, "fsdp", "tensor"),
        "w_down": P(None, "tensor", "fsdp"),
        "q_norm": P(None, None),
    }
    for name, spec in hand.items():
        assert layers[name].sharding.spec == spec, name
    assert sharded.params["embed"].sharding.spec == P("tensor", "fsdp")
    want = sharding.param_shardings(sharded.config, mesh)
    jax.tree.map(
        lambda x, s: (
            (x.sharding.mesh == mesh and x.sharding.spec == s.spec)
            or pytest.fail(f"{x.sharding} != {s}")
        ),
        sharded.params,
        want,
    )
    jax.tree.map(np.testing.assert_array_equal, sharded.params, single.params)
    # Sharded matmuls sum in another order: float32 rounding (logits here reach |10|).
    np.testing.assert_allclose(
        models.logits(sharded, exp["tokens"]),
        models.logits(single, exp["tokens"]),
        atol=1e-5,
        rtol=1e-5,
    )


# ----------------------------------------------------------------------------- bad input


def copy_fixture(tmp_path, arch="llama"):
    dst = tmp_path / arch
    shutil.copytree(FIXTURES / arch, dst)
    return dst


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(ValueError, match="nope: no such directory"):
        models.load_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json: missing"):
        models.load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"model_type": "mistral"}, "model_type='mistral', expected one of"),
        (
            {"architectures": ["LlamaForSequenceClassification"]},
            "architectures=\\['LlamaForSequenceClassification'\\], expected \\['LlamaForCausalLM'\\]",
        ),
        ({"attention_bias": True}, "attention_bias=True: only False is supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu': only 'silu' is supported"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
            "rope_type='yarn': expected 'default' or 'llama3'",
        ),
    ],
)
def test_unsupported_config(tmp_path, changes, match):
    path = copy_fixture(tmp_path)
    edit_config(path, **changes)
    with pytest.raises(ValueError, match=match):
        models.load_pretrained(path)


def rewrite_weights(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_misshaped_and_unexpected_weights(tmp_path):
    path = copy_fixture(tmp_path)
    rewrite_weights(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="weight 'model.layers.1.mlp.up_proj.weight' is missing"):
        models.load_pretrained(path)

    path = copy_fixture(tmp_path / "b")
    key = "model.layers.0.self_attn.k_proj.weight"
    rewrite_weights(path, lambda t: t.update({key: t[key][:16]}))
    with pytest.raises(
        ValueError,
        match=f"model.safetensors: weight '{key}' has shape \\(16, 64\\), expected \\(32, 64\\)",
    ):
        models.load_pretrained(path)

    path = copy_fixture(tmp_path / "c")
    bias = "model.layers.0.self_attn.o_proj.bias"
    rewrite_weights(path, lambda t: t.update({bias: np.zeros(64, np.float32)}))
    with pytest.raises(ValueError, match=f"unexpected weights \\['{bias}'\\]"):
        models.load_pretrained(path)


def test_bad_files_and_arguments(tmp_path):
    path = copy_fixture(tmp_path)
    with pytest.raises(ValueError, match="dtype='float16': expected one of"):
        models.load_pretrained(path, dtype="float16")
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(ValueError, match="lists 'model-00001-of-00002.safetensors', which is not"):
        models.load_pretrained(path)
    (path / "model.safetensors.index.json").unlink()
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no \\*.safetensors files"):
        models.load_pretrained(path)

    model = models.load_pretrained(FIXTURES / "llama")
    with pytest.raises(ValueError, match="max_shard_bytes=0: expected a positive integer"):
        models.save_pretrained(model, tmp_path / "out", max_shard_bytes=0)
    with pytest.raises(ValueError, match="value_head"):
        models.save_pretrained(models.with_value_head(model), tmp_path / "out")
    bad = model.replace(config=model.config.replace(qkv_bias=True))
    with pytest.raises(ValueError, match="qkv_bias=True with arch='llama'"):
        models.save_pretrained(bad, tmp_path / "out")
