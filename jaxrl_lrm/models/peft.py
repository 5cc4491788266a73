"""PEFT LoRA adapter directories in and out (`adapter_config.json` + `adapter_model.safetensors`),
the format the `peft` library saves and `PeftModel.from_pretrained` loads onto a base
`transformers` model.

PEFT stores, per layer and projection, `lora_A.weight [r, in]` and `lora_B.weight [out, r]`
(`nn.Linear` layout) under `base_model.model.model.layers.{i}.<module>.`; the adapted weight is
`W + (lora_alpha / r) * B @ A`. Ours (`models.lora`) are layer-stacked `A [L, *in, r]`,
`B [L, r, *out]` on `W [L, *in, *out]`, so `A_peft = A[i].reshape(in, r).T` and
`B_peft = B[i].reshape(r, out).T`. Only what both sides mean the same by is read: plain LoRA
(no rsLoRA, DoRA, per-module ranks, `modules_to_save`, biases or `fan_in_fan_out`) on the
attention and MLP projections; anything else is refused with its name.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np

from jaxrl_lrm.models import lora
from jaxrl_lrm.models.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MODULES = {
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "w_gate": "mlp.gate_proj",
    "w_up": "mlp.up_proj",
    "w_down": "mlp.down_proj",
}
_BY_SHORT = {m.split(".")[-1]: t for t, m in MODULES.items()}  # q_proj -> wq
_PREFIX = "base_model.model.model.layers.{i}.{module}.lora_{ab}.weight"
# adapter_config.json keys whose non-default values change what the adapter computes
_UNSUPPORTED = {
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
    "layers_to_transform": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "lora_bias": False,
    "layer_replication": None,
    "trainable_token_indices": None,
    "target_parameters": None,
    "alora_invocation_tokens": None,
    "use_qalora": False,
}


def _name(i: int, target: str, ab: str) -> str:
    return _PREFIX.format(i=i, module=MODULES[target], ab=ab)


def save_adapter(
    adapters: dict,
    spec: lora.LoraConfig,
    config: ModelConfig,
    path: str | os.PathLike,
    *,
    base_model: str | None = None,
) -> None:
    """Writes `adapters` as a PEFT adapter directory (float32 tensors)."""
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for t in spec.targets:
        a = np.asarray(adapters["layers"][t]["lora_a"], np.float32)
        b = np.asarray(adapters["layers"][t]["lora_b"], np.float32)
        r = spec.rank
        for i in range(config.n_layers):
            tensors[_name(i, t, "A")] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            tensors[_name(i, t, "B")] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "target_modules": sorted(MODULES[t].split(".")[-1] for t in spec.targets),
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
        **_UNSUPPORTED,
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_config(path: str | os.PathLike) -> lora.LoraConfig:
    """The `LoraConfig` of a PEFT adapter directory, or a ValueError naming what we cannot
    read the same way PEFT does."""
    file = pathlib.Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{str(path)!r}: no {CONFIG_FILE}; expected a PEFT LoRA adapter directory")
    meta = json.loads(file.read_text())
    if meta.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type={meta.get('peft_type')!r}; expected 'LORA'")
    for key, default in _UNSUPPORTED.items():
        value = meta.get(key, default)
        if value != default and not (value in (None, {}) and default in (None, {})):
            raise ValueError(f"{file}: {key}={meta[key]!r} is not supported; expected {default!r}")
    modules = meta.get("target_modules")
    if modules == "all-linear":
        modules = list(_BY_SHORT)
    if not isinstance(modules, list) or any(m.split(".")[-1] not in _BY_SHORT for m in modules):
        raise ValueError(
            f"{file}: target_modules={modules!r}; expected a list of {sorted(_BY_SHORT)} "
            "or 'all-linear'"
        )
    targets = tuple(t for t in lora.TARGETS if t in {_BY_SHORT[m.split(".")[-1]] for m in modules})
    return lora.LoraConfig(rank=int(meta["r"]), alpha=float(meta["lora_alpha"]), targets=targets)


def load_adapter(
    path: str | os.PathLike, config: ModelConfig, *, expect: lora.LoraConfig | None = None
) -> tuple[dict, lora.LoraConfig]:
    """`(adapters, spec)` of a PEFT adapter directory for a model of `config` (host arrays).

    `expect`: the run's `model.lora` settings, which must equal the adapter's."""
    from safetensors.numpy import load_file

    spec = read_config(path)
    if expect is not None and (spec.rank, spec.alpha, set(spec.targets)) != (
        expect.rank,
        float(expect.alpha),
        set(expect.targets),
    ):
        raise ValueError(
            f"model.lora.path={str(path)!r} holds rank={spec.rank}, alpha={spec.alpha}, "
            f"targets={list(spec.targets)}; model.lora sets rank={expect.rank}, "
            f"alpha={expect.alpha}, targets={list(expect.targets)}: expected the same"
        )
    tensors = load_file(str(pathlib.Path(path) / WEIGHTS_FILE))
    shapes = lora.adapter_shapes(config, spec)["layers"]
    out, used = {}, set()
    for t in spec.targets:
        a_shape, b_shape = shapes[t]["lora_a"], shapes[t]["lora_b"]
        n_in, r = math.prod(a_shape[1:-1]), spec.rank
        per = {"A": [], "B": []}
        for i in range(config.n_layers):
            for ab, want in (("A", (r, n_in)), ("B", (math.prod(b_shape[2:]), r))):
                name = _name(i, t, ab)
                if name not in tensors or tensors[name].shape != want:
                    got = tensors[name].shape if name in tensors else "missing"
                    raise ValueError(f"{path}: tensor {name} is {got}; expected shape {want}")
                per[ab].append(np.asarray(tensors[name], np.float32).T)
                used.add(name)
        out[t] = {
            "lora_a": np.stack(per["A"]).reshape(a_shape),
            "lora_b": np.stack(per["B"]).reshape(b_shape),
        }
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(f"{path}: tensors {extra[:3]} are not adapters of this model's layers")
    return {"layers": out}, spec
