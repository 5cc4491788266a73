"""Model configuration and named presets for the Llama 3 / Qwen2 / Qwen3 decoder family."""

from __future__ import annotations

import dataclasses
from typing import Any

ARCHITECTURES = ("llama", "qwen2", "qwen3")
DTYPES = ("float32", "bfloat16")
ROPE_TYPES = ("default", "llama3")
UNROLL_MAX_LAYERS = 8  # default `scan_unroll`: models this shallow run their layers unrolled
# `remat` values: no rematerialisation, the whole layer recomputed in the backward pass, or a
# named `jax.checkpoint_policies` policy (what the backward may keep instead of recomputing)
REMAT_POLICIES = (
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
    "everything_saveable",
    "nothing_saveable",
)
REMAT_MODES = ("none", "full", *REMAT_POLICIES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and numerics of one decoder-only transformer.

    `arch` only records the family; the behaviour is carried by the flags (`qkv_bias` for
    Qwen2, `qk_norm` for Qwen3), so a new family that mixes them needs no new code.
    """

    arch: str = "llama"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10000.0
    # ("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    # or None for plain RoPE. A tuple keeps the config hashable (it is a static jit argument).
    rope_scaling: tuple | None = None
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    max_seq_len: int = 2048
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Layers run as one `lax.scan`; this is its `unroll`: an int (iterations per loop trip),
    # True (straight-line code) or None for the default, True up to `UNROLL_MAX_LAYERS` layers
    # (on XLA:CPU a rolled scan's stacked residuals and per-layer cache copies made the
    # backward ~5x the forward instead of ~3x) and 1 above (compile time flat in depth).
    scan_unroll: int | bool | None = None
    # The XLA:CPU formulations of the layer (2-D projection matmuls, GQA as batched matmuls,
    # KV cache written in place in the scan's carry). False: the plain einsum formulation.
    # Both give the same numbers to float32 round-off.
    cpu_kernels: bool = True
    # Rematerialisation of the scanned layer body under differentiation (`REMAT_MODES`):
    # "none" keeps every residual the backward needs, "full" keeps only each layer's input
    # and recomputes the rest, a policy name keeps what that policy saves. Only
    # differentiated passes change; sampling and scoring run the same program either way.
    remat: str = "none"

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}: expected one of {ARCHITECTURES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {DTYPES}")
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "mlp_dim",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim}: RoPE needs an even head dimension")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, tuple) or self.rope_scaling[0] not in ROPE_TYPES:
                raise ValueError(
                    f"rope_scaling={self.rope_scaling!r}: expected None or "
                    "('llama3', factor, low_freq_factor, high_freq_factor, "
                    "original_max_position_embeddings)"
                )
        if not (
            self.scan_unroll is None
            or isinstance(self.scan_unroll, bool)
            or (isinstance(self.scan_unroll, int) and self.scan_unroll >= 1)
        ):
            raise ValueError(
                f"scan_unroll={self.scan_unroll!r}: expected None, a bool or a positive integer"
            )
        if not isinstance(self.cpu_kernels, bool):
            raise ValueError(f"cpu_kernels={self.cpu_kernels!r}: expected a bool")
        if self.remat not in REMAT_MODES:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT_MODES}")

    @property
    def layer_unroll(self) -> int:
        """The `unroll` the layer scan runs with (`scan_unroll` resolved, in `[1, n_layers]`)."""
        if self.scan_unroll is None:
            return self.n_layers if self.n_layers <= UNROLL_MAX_LAYERS else 1
        if isinstance(self.scan_unroll, bool):
            return self.n_layers if self.scan_unroll else 1
        return min(self.scan_unroll, self.n_layers)

    def param_axes(self, *, value_head: bool = False) -> dict:
        """Logical axis names of every parameter (see `param_axes`)."""
        return param_axes(self, value_head=value_head)

    def param_shapes(self, *, value_head: bool = False) -> dict:
        """Shapes of every parameter (see `param_shapes`)."""
        return param_shapes(self, value_head=value_head)

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, h = self.d_model, self.mlp_dim, self.head_dim
        attn = d * h * (2 * self.n_heads + 2 * self.n_kv_heads)
        if self.qkv_bias:
            attn += h * (self.n_heads + 2 * self.n_kv_heads)
        if self.qk_norm:
            attn += 2 * h
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + emb + d

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)


def param_axes(config: ModelConfig, *, value_head: bool = False) -> dict:
    """Logical axis names of every parameter (the tree `transformer.init_params` returns)."""
    layers = {
        "attn_norm": ("layers", "norm"),
        "wq": ("layers", "embed", "heads", "head_dim"),
        "wk": ("layers", "embed", "kv_heads", "head_dim"),
        "wv": ("layers", "embed", "kv_heads", "head_dim"),
        "wo": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm": ("layers", "norm"),
        "w_gate": ("layers", "embed", "mlp"),
        "w_up": ("layers", "embed", "mlp"),
        "w_down": ("layers", "mlp", "embed"),
    }
    if config.qkv_bias:
        layers |= {
            "bq": ("layers", "heads", "head_dim"),
            "bk": ("layers", "kv_heads", "head_dim"),
            "bv": ("layers", "kv_heads", "head_dim"),
        }
    if config.qk_norm:
        layers |= {"q_norm": ("layers", "norm"), "k_norm": ("layers", "norm")}
    axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
    if not config.tie_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    if value_head:
        axes["value_head"] = {"w": ("embed",), "b": ()}
    return axes


def param_shapes(config: ModelConfig, *, value_head: bool = False) -> dict:
    """Shapes of every parameter (same tree structure as `param_axes`)."""
    c = config
    L, D, N, K, H, F, V = (
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.mlp_dim,
        c.vocab_size,
    )
    layers = {
        "attn_norm": (L, D),
        "wq": (L, D, N, H),
        "wk": (L, D, K, H),
        "wv": (L, D, K, H),
        "wo": (L, N, H, D),
        "mlp_norm": (L, D),
        "w_gate": (L, D, F),
        "w_up": (L, D, F),
        "w_down": (L, F, D),
    }
    if c.qkv_bias:
        layers |= {"bq": (L, N, H), "bk": (L, K, H), "bv": (L, K, H)}
    if c.qk_norm:
        layers |= {"q_norm": (L, H), "k_norm": (L, H)}
    shapes = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not c.tie_embeddings:
        shapes["lm_head"] = (D, V)
    if value_head:
        shapes["value_head"] = {"w": (D,), "b": ()}
    return shapes


PRESETS: dict[str, ModelConfig] = {
    # Tests only: small enough to compile in a second on one CPU core.
    "tiny": ModelConfig(
        arch="qwen3",
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_dim=128,
        qk_norm=True,
        max_seq_len=512,
        rope_theta=10000.0,
    ),
    # The shape TRL and Tunix were timed at on the 2-vCPU machine (24.1 M parameters).
    "bench-cpu": ModelConfig(
        arch="qwen3",
        vocab_size=8192,
        d_model=512,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=128,
        mlp_dim=2048,
        qk_norm=True,
        rope_theta=1_000_000.0,
        max_seq_len=2048,
    ),
    "qwen2.5-0.5b": ModelConfig(
        arch="qwen2",
        vocab_size=151936,
        d_model=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        head_dim=64,
        mlp_dim=4864,
        qkv_bias=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=32768,
    ),
    "qwen2.5-1.5b": ModelConfig(
        arch="qwen2",
        vocab_size=151936,
        d_model=1536,
        n_layers=28,
        n_heads=12,
        n_kv_heads=2,
        head_dim=128,
        mlp_dim=8960,
        qkv_bias=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=32768,
    ),
    "qwen2.5-7b": ModelConfig(  # Qwen/Qwen2.5-7B config.json
        arch="qwen2",
        vocab_size=152064,
        d_model=3584,
        n_layers=28,
        n_heads=28,
        n_kv_heads=4,
        head_dim=128,
        mlp_dim=18944,
        qkv_bias=True,
        tie_embeddings=False,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=32768,
    ),
    "qwen3-0.6b": ModelConfig(
        arch="qwen3",
        vocab_size=151936,
        d_model=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        mlp_dim=3072,
        qk_norm=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=40960,
    ),
    "qwen3-1.7b": ModelConfig(
        arch="qwen3",
        vocab_size=151936,
        d_model=2048,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        mlp_dim=6144,
        qk_norm=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=40960,
    ),
    "qwen3-8b": ModelConfig(  # Qwen/Qwen3-8B config.json
        arch="qwen3",
        vocab_size=151936,
        d_model=4096,
        n_layers=36,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        mlp_dim=12288,
        qk_norm=True,
        tie_embeddings=False,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=40960,
    ),
    "llama-3.2-1b": ModelConfig(
        arch="llama",
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        mlp_dim=8192,
        tie_embeddings=True,
        rope_theta=500000.0,
        norm_eps=1e-5,
        rope_scaling=("llama3", 32.0, 1.0, 4.0, 8192),
        max_seq_len=131072,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Returns the named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
