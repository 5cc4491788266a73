"""Model configs to and from Hugging Face `config.json` (Llama, Qwen2, Qwen3)."""

from __future__ import annotations

from jaxrl_lrm.models.config import ModelConfig

HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_CONFIG_CLASSES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}


def config_from_hf(hf_config, *, dtype: str = "float32") -> ModelConfig:
    """Our `ModelConfig` for a `transformers` Llama / Qwen2 / Qwen3 config object.

    Raises:
      ValueError: for a model type or feature our transformer does not implement (another
        activation, MLP or output-projection biases, sliding-window attention, a RoPE type
        other than default/llama3, partial rotary embeddings).
    """
    arch = hf_config.model_type
    if arch not in HF_ARCHITECTURES:
        raise ValueError(f"model_type={arch!r}: expected one of {sorted(HF_ARCHITECTURES)}")
    get = lambda name, default=None: getattr(hf_config, name, default)
    unsupported = {
        "hidden_act": (get("hidden_act", "silu"), "silu"),
        "attention_bias": (get("attention_bias", False), False),
        "mlp_bias": (get("mlp_bias", False), False),
        "use_sliding_window": (get("use_sliding_window", False), False),
    }
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise ValueError(f"{arch} config has {name}={value!r}: only {expected!r} is supported")
    rope = dict(get("rope_parameters") or {})
    if "rope_theta" not in rope:  # transformers < 5 keeps these at the top level
        rope = {
            "rope_type": "default",
            **(get("rope_scaling") or {}),
            "rope_theta": get("rope_theta", 10000.0),
        }
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor={rope['partial_rotary_factor']}: expected 1.0")
    if rope_type == "default":
        scaling = None
    elif rope_type == "llama3":
        scaling = (
            "llama3",
            float(rope["factor"]),
            float(rope["low_freq_factor"]),
            float(rope["high_freq_factor"]),
            int(rope["original_max_position_embeddings"]),
        )
    else:
        raise ValueError(f"rope_type={rope_type!r}: expected 'default' or 'llama3'")
    heads = hf_config.num_attention_heads
    eos = get("eos_token_id")
    if isinstance(eos, list | tuple):  # Llama 3 instruct lists several; the first is the EOS
        eos = eos[0] if eos else None
    return ModelConfig(
        arch=arch,
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=heads,
        n_kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or hf_config.hidden_size // heads,
        mlp_dim=hf_config.intermediate_size,
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=scaling,
        norm_eps=float(hf_config.rms_norm_eps),
        tie_embeddings=bool(get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        max_seq_len=get("max_position_embeddings") or 2048,
        dtype=dtype,
        bos_token_id=get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=get("pad_token_id"),
    )


def config_to_hf(config: ModelConfig):
    """The `transformers` config object (LlamaConfig / Qwen2Config / Qwen3Config) for ours."""
    import transformers

    c = config
    expected = {"qkv_bias": c.arch == "qwen2", "qk_norm": c.arch == "qwen3"}
    for name, want in expected.items():
        if getattr(c, name) != want:
            raise ValueError(
                f"{name}={getattr(c, name)} with arch={c.arch!r}: the Hugging Face "
                f"{HF_ARCHITECTURES[c.arch]} needs {name}={want}"
            )
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        _, factor, low, high, old_ctx = c.rope_scaling
        rope = {
            "rope_type": "llama3",
            "rope_theta": c.rope_theta,
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": old_ctx,
        }
    kw = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.mlp_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings,
        max_position_embeddings=c.max_seq_len,
        rope_parameters=rope,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        architectures=[HF_ARCHITECTURES[c.arch]],
        dtype=c.dtype,
    )
    if c.arch != "qwen2" or c.head_dim != c.d_model // c.n_heads:
        kw["head_dim"] = c.head_dim
    return getattr(transformers, _CONFIG_CLASSES[c.arch])(**kw)


# ----------------------------------------------------------------------------- weight layout
