"""Hugging Face checkpoints in and out: `load_pretrained` and `save_pretrained`.

A checkpoint directory is what `transformers` writes for `LlamaForCausalLM`,
`Qwen2ForCausalLM` and `Qwen3ForCausalLM`: `config.json`, one `model.safetensors` or several
shards listed in `model.safetensors.index.json`, and optionally tokenizer files. Tensors are read
with `safetensors`' NumPy backend (no torch; bfloat16 arrives as `ml_dtypes.bfloat16`), converted
from HF's per-layer `[out, in]` Linear weights to our stacked `[L, in, ...out]` layout, and placed
on devices one leaf at a time.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.models import transformer
from jaxrl_lrm.models.config import DTYPES, ModelConfig
from jaxrl_lrm.models.model import Model

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "qwen3": "Qwen3ForCausalLM"}
_CONFIG_CLASSES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Buffers some exporters store that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------- config


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
    unsupported = {"hidden_act": (get("hidden_act", "silu"), "silu"),
                   "attention_bias": (get("attention_bias", False), False),
                   "mlp_bias": (get("mlp_bias", False), False),
                   "use_sliding_window": (get("use_sliding_window", False), False)}
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise ValueError(f"{arch} config has {name}={value!r}: only {expected!r} is supported")
    rope = dict(get("rope_parameters") or {})
    if "rope_theta" not in rope:  # transformers < 5 keeps these at the top level
        rope = {"rope_type": "default", **(get("rope_scaling") or {}),
                "rope_theta": get("rope_theta", 10000.0)}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor={rope['partial_rotary_factor']}: expected 1.0")
    if rope_type == "default":
        scaling = None
    elif rope_type == "llama3":
        scaling = ("llama3", float(rope["factor"]), float(rope["low_freq_factor"]),
                   float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
    else:
        raise ValueError(f"rope_type={rope_type!r}: expected 'default' or 'llama3'")
    heads = hf_config.num_attention_heads
    eos = get("eos_token_id")
    if isinstance(eos, list | tuple):  # Llama 3 instruct lists several; the first is the EOS
        eos = eos[0] if eos else None
    return ModelConfig(
        arch=arch, vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers, n_heads=heads,
        n_kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or hf_config.hidden_size // heads,
        mlp_dim=hf_config.intermediate_size, rope_theta=float(rope["rope_theta"]),
        rope_scaling=scaling, norm_eps=float(hf_config.rms_norm_eps),
        tie_embeddings=bool(get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
        max_seq_len=get("max_position_embeddings") or 2048, dtype=dtype,
        bos_token_id=get("bos_token_id"), eos_token_id=eos, pad_token_id=get("pad_token_id"))


def config_to_hf(config: ModelConfig):
    """The `transformers` config object (LlamaConfig / Qwen2Config / Qwen3Config) for ours."""
    import transformers

    c = config
    expected = {"qkv_bias": c.arch == "qwen2", "qk_norm": c.arch == "qwen3"}
    for name, want in expected.items():
        if getattr(c, name) != want:
            raise ValueError(f"{name}={getattr(c, name)} with arch={c.arch!r}: the Hugging Face "
                             f"{HF_ARCHITECTURES[c.arch]} needs {name}={want}")
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        _, factor, low, high, old_ctx = c.rope_scaling
        rope = {"rope_type": "llama3", "rope_theta": c.rope_theta, "factor": factor,
                "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": old_ctx}
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_dim,
              num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
              num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps,
              tie_word_embeddings=c.tie_embeddings, max_position_embeddings=c.max_seq_len,
              rope_parameters=rope, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
              pad_token_id=c.pad_token_id, architectures=[HF_ARCHITECTURES[c.arch]],
              dtype=c.dtype)
    if c.arch != "qwen2" or c.head_dim != c.d_model // c.n_heads:
        kw["head_dim"] = c.head_dim
    return getattr(transformers, _CONFIG_CLASSES[c.arch])(**kw)


# ----------------------------------------------------------------------------- weight layout


def weight_layout(config: ModelConfig) -> dict:
    """Our parameter tree with, at each leaf, `(hf_name, hf_shape, transposed)`.

    Layer leaves name the tensor with `{i}` for the layer index. A `transposed` HF weight is an
    `nn.Linear` weight `[out, in]`; ours is `[in, ...out]` (split into heads where needed), i.e.
    `ours = hf.T.reshape(our_shape)` and `hf = ours.reshape(hf_shape[::-1]).T`.
    """
    c = config
    D, N, K, H, F, V = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
    p = "model.layers.{i}."
    layers = {
        "attn_norm": (p + "input_layernorm.weight", (D,), False),
        "wq": (p + "self_attn.q_proj.weight", (N * H, D), True),
        "wk": (p + "self_attn.k_proj.weight", (K * H, D), True),
        "wv": (p + "self_attn.v_proj.weight", (K * H, D), True),
        "wo": (p + "self_attn.o_proj.weight", (D, N * H), True),
        "mlp_norm": (p + "post_attention_layernorm.weight", (D,), False),
        "w_gate": (p + "mlp.gate_proj.weight", (F, D), True),
        "w_up": (p + "mlp.up_proj.weight", (F, D), True),
        "w_down": (p + "mlp.down_proj.weight", (D, F), True),
    }
    if c.qkv_bias:
        layers |= {"bq": (p + "self_attn.q_proj.bias", (N * H,), False),
                   "bk": (p + "self_attn.k_proj.bias", (K * H,), False),
                   "bv": (p + "self_attn.v_proj.bias", (K * H,), False)}
    if c.qk_norm:
        layers |= {"q_norm": (p + "self_attn.q_norm.weight", (H,), False),
                   "k_norm": (p + "self_attn.k_norm.weight", (H,), False)}
    layout = {"embed": ("model.embed_tokens.weight", (V, D), False), "layers": layers,
              "final_norm": ("model.norm.weight", (D,), False)}
    if not c.tie_embeddings:
        layout["lm_head"] = ("lm_head.weight", (V, D), True)
    return layout


def _is_entry(x) -> bool:
    return isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], str)


def _to_ours(hf: np.ndarray, transposed: bool, shape: tuple) -> np.ndarray:
    return (hf.T if transposed else hf).reshape(shape)


def _to_hf(ours: np.ndarray, transposed: bool, hf_shape: tuple) -> np.ndarray:
    return np.ascontiguousarray(ours.reshape(hf_shape[::-1]).T if transposed
                                else ours.reshape(hf_shape))


# ----------------------------------------------------------------------------- files


class _Reader:
    """Lazy access to the tensors of a checkpoint directory, by HF name."""

    def __init__(self, path: pathlib.Path):
        from safetensors import safe_open

        index = path / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: expected a JSON object with a 'weight_map' object")
            files = sorted(set(weight_map.values()))
        else:
            # value_head.safetensors is a reward/value model's scalar head, not a backbone shard
            files = sorted(f.name for f in path.glob("*.safetensors")
                           if f.name != "value_head.safetensors")
            if not files:
                raise ValueError(f"{path}: no *.safetensors files (expected {SINGLE_FILE} or "
                                 f"shards listed in {INDEX_FILE}; PyTorch .bin is not read)")
        self.handles, self.where = {}, {}
        for name in files:
            if not (path / name).is_file():
                raise ValueError(f"{index}: lists {name!r}, which is not in {path}")
            handle = safe_open(str(path / name), framework="np")
            self.handles[name] = handle
            for key in handle.keys():
                self.where[key] = name
        self.path = path

    def get(self, key: str, shape: tuple) -> np.ndarray:
        if key not in self.where:
            raise ValueError(f"{self.path}: weight {key!r} is missing from "
                             f"{sorted(self.handles)}")
        handle = self.handles[self.where[key]]
        got = tuple(handle.get_slice(key).get_shape())
        if got != tuple(shape):
            raise ValueError(f"{self.path / self.where[key]}: weight {key!r} has shape {got}, "
                             f"expected {tuple(shape)}")
        return handle.get_tensor(key)


def _read_config_json(path: pathlib.Path) -> dict:
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory (expected a Hugging Face checkpoint "
                         "directory with config.json and *.safetensors)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{cfg_file}: missing (expected the model's Hugging Face config)")
    raw = json.loads(cfg_file.read_text())
    model_type = raw.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(f"{cfg_file}: model_type={model_type!r}, expected one of "
                         f"{sorted(HF_ARCHITECTURES)}")
    archs = raw.get("architectures") or [HF_ARCHITECTURES[model_type]]
    if archs != [HF_ARCHITECTURES[model_type]]:
        raise ValueError(f"{cfg_file}: architectures={archs!r}, expected "
                         f"[{HF_ARCHITECTURES[model_type]!r}]")
    return raw


def load_pretrained(path: str | os.PathLike, *, dtype: str = "float32", mesh=None) -> Model:
    """Reads a local Hugging Face Llama / Qwen2 / Qwen3 checkpoint directory.

    Args:
      path: a directory with `config.json`, `model.safetensors` (or shards with
        `model.safetensors.index.json`) and optionally tokenizer files, which are loaded with
        `AutoTokenizer` (chat template included) into `Model.tokenizer`.
      dtype: the parameter dtype, `"float32"` or `"bfloat16"` (the stored dtype is converted).
      mesh: if given, every parameter is placed with `sharding.param_shardings(config, mesh)`;
        each device receives only its own slices.

    Raises:
      ValueError: a missing directory or `config.json`, an unsupported architecture, a missing,
        mis-shaped or unexpected weight.
    """
    import transformers

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    path = pathlib.Path(path)
    _read_config_json(path)
    config = config_from_hf(transformers.AutoConfig.from_pretrained(path), dtype=dtype)
    reader = _Reader(path)
    layout = weight_layout(config)
    expected = set()
    shapes = transformer.param_shapes(config)
    np_dtype = np.dtype(jnp.dtype(dtype))
    shardings = None
    if mesh is not None:
        shardings = sharding.param_shardings(config, mesh)

    def load_leaf(path_keys, entry, shape):
        name, hf_shape, transposed = entry
        if "{i}" in name:
            out = np.empty(shape, np_dtype)
            for i in range(config.n_layers):
                key = name.format(i=i)
                expected.add(key)
                out[i] = _to_ours(reader.get(key, hf_shape), transposed, shape[1:])
        else:
            expected.add(name)
            out = _to_ours(reader.get(name, hf_shape), transposed, shape).astype(np_dtype)
        if shardings is None:
            return jnp.asarray(out)
        sh = _tree_get(shardings, path_keys)
        return jax.make_array_from_callback(out.shape, sh, lambda idx: out[idx])

    params = jax.tree_util.tree_map_with_path(load_leaf, layout, shapes, is_leaf=_is_entry)
    if config.tie_embeddings:
        expected.add("lm_head.weight")  # some exporters store the tied copy too
    extra = sorted(k for k in reader.where if k not in expected
                   and not k.endswith(_IGNORED_SUFFIXES))
    if extra:
        raise ValueError(f"{path}: unexpected weights {extra[:5]}{'...' if len(extra) > 5 else ''}"
                         f" for {HF_ARCHITECTURES[config.arch]} (expected only the tensors of "
                         "weight_layout(config))")
    tokenizer = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return Model(config=config, params=params, tokenizer=tokenizer)


def _tree_get(tree, path_keys):
    for k in path_keys:
        tree = tree[k.key]
    return tree


def _hf_tensors(model: Model) -> Iterator[tuple[str, Callable[[], np.ndarray], int]]:
    """`(hf_name, make_tensor, nbytes)` for every HF tensor, without materialising any yet."""
    config = model.config
    layout = weight_layout(config)
    itemsize = jnp.dtype(config.dtype).itemsize
    flat = jax.tree_util.tree_flatten_with_path(layout, is_leaf=_is_entry)[0]
    for path_keys, (name, hf_shape, transposed) in flat:
        leaf = _tree_get(model.params, path_keys)
        nbytes = math.prod(hf_shape) * itemsize
        if "{i}" in name:
            for i in range(config.n_layers):
                yield (name.format(i=i),
                       lambda leaf=leaf, i=i, s=hf_shape, t=transposed: _to_hf(
                           np.asarray(leaf[i]), t, s), nbytes)
        else:
            yield name, lambda leaf=leaf, s=hf_shape, t=transposed: _to_hf(
                np.asarray(leaf), t, s), nbytes


def save_pretrained(model: Model, path: str | os.PathLike, *,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes `model` as a Hugging Face checkpoint directory that `transformers` loads.

    Writes `config.json` (through the transformers config class), the weights in the model's
    dtype as `model.safetensors`, or as `model-0000k-of-0000n.safetensors` shards plus
    `model.safetensors.index.json` when they exceed `max_shard_bytes`, and the tokenizer files
    when `model.tokenizer` is set. Earlier weight files of these names in `path` are removed.

    Raises:
      ValueError: a model with a value head (save the backbone alone), a config the HF
        classes cannot express, or a non-positive `max_shard_bytes`.
    """
    from safetensors.numpy import save_file

    if model.has_value_head:
        raise ValueError("model has a value_head, which Hugging Face *ForCausalLM checkpoints "
                         "cannot hold: save model.replace(params=<params without 'value_head'>)")
    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes={max_shard_bytes!r}: expected a positive integer")
    hf_config = config_to_hf(model.config)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in [path / INDEX_FILE, path / SINGLE_FILE, *path.glob("model-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)

    shards: list[list] = [[]]
    size = 0
    for entry in _hf_tensors(model):
        if shards[-1] and size + entry[2] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry[2]
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                                          for k in range(n)]
    for fname, shard in zip(names, shards):
        save_file({key: make() for key, make, _ in shard}, str(path / fname),
                  metadata={"format": "pt"})
    if n > 1:
        index = {"metadata": {"total_size": sum(e[2] for s in shards for e in s)},
                 "weight_map": {key: fname for fname, s in zip(names, shards)
                                for key, _, _ in s}}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    hf_config.save_pretrained(path)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(path)
