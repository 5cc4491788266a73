"""Value / reward model checkpoints: a Hugging Face backbone plus a scalar head beside it.

Hugging Face `*ForCausalLM` checkpoints have no place for a scalar head, so a value model
(a Bradley-Terry reward model, a PRM, PPO's critic) is stored as:

    path/config.json, model.safetensors (or shards + index), tokenizer files   (save_pretrained)
    path/value_head.safetensors: w float32 [D], b float32 []

`models.load_pretrained` never reads `value_head.safetensors` as a backbone shard, and
`transformers` still loads the directory as a plain causal LM. This is the one format the
`reward_model` training stage exports, PPO's `algorithm.value_path` reads, and the
`scorers.reward_model` / `scorers.prm` checkpoint factories load.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lrm import sharding
from jaxrl_lrm.data.tokenizer import CHAR_TOKENIZER_FILE, load_tokenizer
from jaxrl_lrm.models.config import DTYPES
from jaxrl_lrm.models.hf import load_pretrained, save_pretrained
from jaxrl_lrm.models.model import Model

VALUE_HEAD_FILE = "value_head.safetensors"
# What `data.tokenizer.load_tokenizer` reads: the project's char tokenizer or HF files.
_TOKENIZER_FILES = (
    CHAR_TOKENIZER_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
)


def save_value_model(model: Model, path: str | os.PathLike) -> None:
    """Writes `model` (backbone + `params["value_head"]`) as a value-model directory.

    The backbone (and `model.tokenizer`, when set) goes through `models.save_pretrained`; the
    head is written as float32 `w [D]`, `b []` to `path/value_head.safetensors`.

    Raises:
      ValueError: a model without a value head, or a head of the wrong shapes.
    """
    from safetensors.numpy import save_file

    if not model.has_value_head:
        raise ValueError(
            "model has no value_head: expected a reward / value model "
            "(models.with_value_head or load_value_model)"
        )
    head = {
        k: np.asarray(jax.device_get(v), np.float32) for k, v in model.params["value_head"].items()
    }
    _check_head(head, model.config.d_model, "model.params['value_head']")
    backbone = {k: v for k, v in model.params.items() if k != "value_head"}
    path = Path(path)
    save_pretrained(model.replace(params=backbone), path)
    save_file(head, str(path / VALUE_HEAD_FILE))


def load_value_head(path: str | os.PathLike, d_model: int, dtype="float32") -> dict:
    """The `{"w": [D], "b": []}` head stored in `path/value_head.safetensors`, as `dtype`.

    Raises:
      ValueError: the file is missing, or holds other names or shapes.
    """
    from safetensors.numpy import load_file

    file = Path(path) / VALUE_HEAD_FILE
    if not file.is_file():
        raise ValueError(
            f"{str(file)!r} does not exist: expected a value-model directory "
            "written by save_value_model (or `jaxrl-lrm export` of a reward_model "
            "run)"
        )
    head = load_file(str(file))
    _check_head(head, d_model, repr(str(file)))
    return {k: jnp.asarray(v, jnp.dtype(dtype)) for k, v in head.items()}


def load_value_model(path: str | os.PathLike, *, dtype: str = "float32", mesh=None) -> Model:
    """A value model saved by `save_value_model`: backbone plus its scalar head.

    Args:
      path: the directory.
      dtype: parameter dtype of backbone and head, `"float32"` or `"bfloat16"`.
      mesh: if given, the backbone is placed with `sharding.param_shardings` and the head with
        the same rules (`models.init(..., value_head=True, mesh=mesh)`'s layout).

    Returns:
      A `Model` whose `params` hold `value_head`; `tokenizer` is the project's tokenizer
      (`data.tokenizer.load_tokenizer`: `encode`, `eos_id`, `pad_id`) when the directory holds
      tokenizer files, else None.

    Raises:
      ValueError: as `models.load_pretrained`, or a missing / mis-shaped head file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    path = Path(path)
    model = load_pretrained(path, dtype=dtype, mesh=mesh)
    head = load_value_head(path, model.config.d_model, dtype)
    if mesh is not None:
        shardings = sharding.param_shardings(model.config, mesh, value_head=True)
        head = jax.device_put(head, shardings["value_head"])
    tokenizer = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = load_tokenizer(path)
    return model.replace(params={**model.params, "value_head": head}, tokenizer=tokenizer)


def _check_head(head: dict, d_model: int, where: str) -> None:
    shapes = {k: tuple(np.shape(v)) for k, v in head.items()}
    if shapes != {"w": (d_model,), "b": ()}:
        raise ValueError(
            f"{where} holds value head {shapes}: expected w of shape ({d_model},) and a scalar b"
        )
