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
from jaxrl_lrm.models.hf_config import HF_ARCHITECTURES, config_from_hf, config_to_hf  # noqa: F401
from jaxrl_lrm.models.model import Model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Buffers some exporters store that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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
        layers |= {
            "bq": (p + "self_attn.q_proj.bias", (N * H,), False),
            "bk": (p + "self_attn.k_proj.bias", (K * H,), False),
            "bv": (p + "self_attn.v_proj.bias", (K * H,), False),
        }
    if c.qk_norm:
        layers |= {
            "q_norm": (p + "self_attn.q_norm.weight", (H,), False),
            "k_norm": (p + "self_attn.k_norm.weight", (H,), False),
        }
    layout = {
        "embed": ("model.embed_tokens.weight", (V, D), False),
        "layers": layers,
        "final_norm": ("model.norm.weight", (D,), False),
    }
    if not c.tie_embeddings:
        layout["lm_head"] = ("lm_head.weight", (V, D), True)
    return layout


def _is_entry(x) -> bool:
    return isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], str)


def _to_ours(hf: np.ndarray, transposed: bool, shape: tuple) -> np.ndarray:
    return (hf.T if transposed else hf).reshape(shape)


def _to_hf(ours: np.ndarray, transposed: bool, hf_shape: tuple) -> np.ndarray:
    return np.ascontiguousarray(
        ours.reshape(hf_shape[::-1]).T if transposed else ours.reshape(hf_shape)
    )


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
            files = sorted(
                f.name for f in path.glob("*.safetensors") if f.name != "value_head.safetensors"
            )
            if not files:
                raise ValueError(
                    f"{path}: no *.safetensors files (expected {SINGLE_FILE} or "
                    f"shards listed in {INDEX_FILE}; PyTorch .bin is not read)"
                )
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
            raise ValueError(f"{self.path}: weight {key!r} is missing from {sorted(self.handles)}")
        handle = self.handles[self.where[key]]
        got = tuple(handle.get_slice(key).get_shape())
        if got != tuple(shape):
            raise ValueError(
                f"{self.path / self.where[key]}: weight {key!r} has shape {got}, "
                f"expected {tuple(shape)}"
            )
        return handle.get_tensor(key)


def _read_config_json(path: pathlib.Path) -> dict:
    if not path.is_dir():
        raise ValueError(
            f"{path}: no such directory (expected a Hugging Face checkpoint "
            "directory with config.json and *.safetensors)"
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{cfg_file}: missing (expected the model's Hugging Face config)")
    raw = json.loads(cfg_file.read_text())
    model_type = raw.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(
            f"{cfg_file}: model_type={model_type!r}, expected one of {sorted(HF_ARCHITECTURES)}"
        )
    archs = raw.get("architectures") or [HF_ARCHITECTURES[model_type]]
    if archs != [HF_ARCHITECTURES[model_type]]:
        raise ValueError(
            f"{cfg_file}: architectures={archs!r}, expected [{HF_ARCHITECTURES[model_type]!r}]"
        )
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
    extra = sorted(
        k for k in reader.where if k not in expected and not k.endswith(_IGNORED_SUFFIXES)
    )
    if extra:
        raise ValueError(
            f"{path}: unexpected weights {extra[:5]}{'...' if len(extra) > 5 else ''}"
            f" for {HF_ARCHITECTURES[config.arch]} (expected only the tensors of "
            "weight_layout(config))"
        )
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
                yield (
                    name.format(i=i),
                    lambda leaf=leaf, i=i, s=hf_shape, t=transposed: _to_hf(
                        np.asarray(leaf[i]), t, s
                    ),
                    nbytes,
                )
        else:
            yield (
                name,
                lambda leaf=leaf, s=hf_shape, t=transposed: _to_hf(np.asarray(leaf), t, s),
                nbytes,
            )


def save_pretrained(
    model: Model, path: str | os.PathLike, *, max_shard_bytes: int = 5 * 2**30
) -> None:
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
        raise ValueError(
            "model has a value_head, which Hugging Face *ForCausalLM checkpoints "
            "cannot hold: save model.replace(params=<params without 'value_head'>)"
        )
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
    names = (
        [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    )
    for fname, shard in zip(names, shards):
        save_file(
            {key: make() for key, make, _ in shard}, str(path / fname), metadata={"format": "pt"}
        )
    if n > 1:
        index = {
            "metadata": {"total_size": sum(e[2] for s in shards for e in s)},
            "weight_map": {key: fname for fname, s in zip(names, shards) for key, _, _ in s},
        }
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    hf_config.save_pretrained(path)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(path)
