"""Host-side reward functions: `fn(prompts, completions, **columns) -> list[float]`.

Submodules: `math` (verifiable math answers), `format` (tag formats), `shaping` (combination,
length and repetition shaping), `code` (sandboxed unit tests), `unsupervised` (majority vote,
confidence), `dense` (step/token-level rewards), `executor` (the process pool that scores a batch
with timeouts). None of them imports JAX.
"""

from jaxrl_lrm.rewards import code, dense, executor, format, math, shaping, unsupervised

__all__ = ["code", "dense", "executor", "format", "math", "shaping", "unsupervised"]
