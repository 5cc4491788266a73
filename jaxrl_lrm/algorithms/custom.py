"""A user's policy loss in place of the built-in surrogate: `algorithm.loss: module:function`.

The function has the built-in losses' signature (`losses.policy_loss`, `losses.cispo_loss`):

    fn(logp, old_logp, advantages, mask, *, agg, max_len, denom, [clip_low, clip_high,
       dual_clip, ratio]) -> (loss, metrics)

- `logp`, `old_logp`, `mask`: `[B, T]`; `advantages`: `[B, T]` (already multiplied by the
  truncated importance weights under `algorithm.tis_max`); `old_logp` is `stop_gradient(logp)`
  for one on-policy update per step.
- `agg`, `max_len`, `denom`: aggregate the per-token loss with `losses.aggregate(l, mask, agg,
  max_len=max_len, denom=denom)`; `denom` carries the whole batch's normalisers, so the loss is
  exact under `train.micro_batches` (the trainer sums the micro-batches' losses).
- `clip_low`, `clip_high`, `dual_clip`, `ratio`: passed when the function names them (the
  algorithm's values). A key the config sets explicitly, or GSPO's sequence ratio, that the
  function does not take is an error: it would be ignored.
- `metrics`: scalars; `clipfrac` and `approx_kl` are logged as `clip/frac` and `approx_kl`, any
  other key as `custom/<key>` (over micro-batches: summed when the key contains `loss`, as the
  shares of a loss are, else averaged weighted by their tokens).

The KL term to the reference (`algorithm.beta`), the entropy bonus and the advantages stay the
trainer's; the function replaces only the surrogate. It runs inside `jit` (pure `jnp`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

REQUIRED_KEYWORDS = ("agg", "max_len", "denom")
OPTIONAL_KEYWORDS = ("clip_low", "clip_high", "dual_clip", "ratio")
_POSITIONAL = ("logp", "old_logp", "advantages", "mask")


def is_reference(name: str) -> bool:
    """Whether `algorithm.loss` names a user function (`module:function`)."""
    return ":" in name


def load(reference: str) -> tuple[Callable, frozenset]:
    """`(fn, keywords it takes)` for `module:function`; `ValueError` naming the reference and
    what is wrong when it cannot be imported, is not callable or has the wrong signature."""
    module, _, attr = reference.partition(":")
    where = f"algorithm.loss={reference!r}"
    if not module or not attr:
        raise ValueError(f"{where}: expected 'module.path:function'")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f"{where}: cannot import {module!r} ({e}); the module must be importable from "
            "the working directory or PYTHONPATH"
        ) from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ValueError(f"{where}: {module!r} has no function {attr!r}")
    return fn, _check_signature(fn, where)


def _check_signature(fn: Callable, where: str) -> frozenset:
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    wants = f"fn({', '.join(_POSITIONAL)}, *, {', '.join(REQUIRED_KEYWORDS)}, ...)"
    if len(positional) < 4 or any(p.default is not p.empty for p in positional[:4]):
        raise ValueError(
            f"{where}: the loss takes {len(positional)} positional arrays; expected {wants} "
            "(the signature of losses.policy_loss)"
        )
    extra = [p.name for p in positional[4:] if p.default is p.empty]
    extra += [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    extra = [n for n in extra if n not in REQUIRED_KEYWORDS + OPTIONAL_KEYWORDS]
    if extra:
        raise ValueError(f"{where}: the trainer cannot pass required argument(s) {extra}")
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return frozenset(REQUIRED_KEYWORDS + OPTIONAL_KEYWORDS)
    names = {p.name for p in params}
    missing = [k for k in REQUIRED_KEYWORDS if k not in names]
    if missing:
        raise ValueError(
            f"{where}: the loss does not take {missing}; expected {wants}: aggregate with "
            "losses.aggregate(l, mask, agg, max_len=max_len, denom=denom) so that micro-batching "
            "stays exact"
        )
    return frozenset(k for k in REQUIRED_KEYWORDS + OPTIONAL_KEYWORDS if k in names)


def check(reference: str, spec_values: dict, explicit: dict) -> None:
    """Loads the loss and refuses what it would silently ignore: an explicitly set clip key it
    does not take, or a sequence-level ratio (GSPO)."""
    _, takes = load(reference)
    for key in OPTIONAL_KEYWORDS:
        ignored = key not in takes and (
            key in explicit or (key == "ratio" and spec_values.get("ratio") != "token")
        )
        if ignored:
            raise ValueError(
                f"algorithm.{key}={spec_values.get(key)!r}: the custom loss "
                f"{reference!r} does not take {key!r}, so it would be ignored; add the "
                "parameter to the function or leave the key unset"
            )


def surrogate(reference: str, values: dict, logp, old, adv, mask, max_len, denom):
    """Calls the loss with the keywords it takes; `(loss, metrics)` as `objective` reads them."""
    fn, takes = load(reference)
    kwargs = {"agg": values["agg"], "max_len": max_len, "denom": denom}
    kwargs |= {k: values[k] for k in OPTIONAL_KEYWORDS if k in takes}
    out = fn(logp, old, adv, mask, **{k: v for k, v in kwargs.items() if k in takes})
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise ValueError(
            f"algorithm.loss={reference!r} returned {type(out).__name__}; expected "
            "(loss, metrics dict), as losses.policy_loss does"
        )
    return out
