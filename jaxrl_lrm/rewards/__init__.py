"""Host-side reward functions: `fn(prompts, completions, **columns) -> list[float]`.

Submodules: `math` (verifiable math answers), `format` (tag formats), `shaping` (combination,
length and repetition shaping), `code` (sandboxed unit tests), `unsupervised` (majority vote,
confidence), `dense` (step/token-level rewards), `rubric` (the LLM judge's rubric and score
parsing), `executor` (the process pool that scores a batch with timeouts). None of them
imports JAX; the model-based rewards that do live in `jaxrl_lrm.scorers`.

`model_based` and `generative` are deprecated aliases of `jaxrl_lrm.scorers`, kept for one
release and loaded only on first access (`jaxrl_lrm.rewards.model_based`, or importing them),
so that importing this package never imports JAX.
"""

import importlib

from jaxrl_lrm.rewards import code, dense, executor, format, math, rubric, shaping, unsupervised

__all__ = ["code", "dense", "executor", "format", "math", "rubric", "shaping", "unsupervised"]

_DEPRECATED = ("model_based", "generative")


def __getattr__(name: str):
    if name in _DEPRECATED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
