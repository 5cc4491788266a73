"""Prompts longer than `data.max_prompt_len`, handled once when the data is loaded.

`data.overlong` says what happens to them: "filter" (the default) drops them, "truncate" keeps
their last `max_prompt_len` tokens (where the chat template's generation prompt is; TRL's
rule), "error" stops with the first one. Every row is measured when the data is loaded, so an
overlong prompt never surfaces in the middle of training, and a filtered source is the same
list of rows at every start of the run: the iterator's checkpointed position resumes exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from jaxrl_lrm.data.sources import PromptSource

log = logging.getLogger(__name__)

OVERLONG = ("filter", "truncate", "error")


class KeptSource:
    """The rows `indices` (in order) of another source."""

    def __init__(self, source: PromptSource, indices: list[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.indices[i]]


def overlong_indices(
    items, length: Callable[[object], int], max_len: int, mode: str, what: str
) -> list[int]:
    """Indices of `items` to keep under `mode`, after measuring every item with `length`.

    Args:
      items: a sized, indexable collection (a `PromptSource`, a list of pairs).
      length: item -> its prompt's length in tokens, after the template.
      max_len: `data.max_prompt_len`.
      mode: one of `OVERLONG`.
      what: names the items in the log line and errors ("train prompts").

    Returns:
      The kept indices: all of them for "truncate" and "error", the fitting ones for "filter".
      The count of overlong items is logged.

    Raises:
      ValueError: for "error" (naming the first overlong item, its length and the count), and
        when "filter" would keep nothing.
    """
    if mode not in OVERLONG:
        raise ValueError(f"data.overlong={mode!r}: expected one of {OVERLONG}")
    lengths = [length(items[i]) for i in range(len(items))]
    over = [i for i, n in enumerate(lengths) if n > max_len]
    if not over:
        return list(range(len(items)))
    first = f"the first is item {over[0]}, {lengths[over[0]]} tokens: {items[over[0]]!r:.120}"
    head = f"{len(over)} of {len(items)} {what} are longer than data.max_prompt_len={max_len}"
    if mode == "error":
        raise ValueError(
            f"{head} ({first}); raise data.max_prompt_len, or set data.overlong to 'filter' "
            "or 'truncate'"
        )
    if mode == "truncate":
        log.info("%s: each keeps its last %d tokens (data.overlong=truncate)", head, max_len)
        return list(range(len(items)))
    if len(over) == len(items):
        raise ValueError(f"{head}: data.overlong=filter would leave none ({first})")
    log.info("%s: dropped (data.overlong=filter; %s)", head, first)
    over_set = set(over)
    return [i for i in range(len(items)) if i not in over_set]


def fit_source(
    source: PromptSource, length: Callable[[dict], int], max_len: int, mode: str, what: str
) -> PromptSource:
    """`source` with its overlong prompts handled by `mode` (see `overlong_indices`)."""
    kept = overlong_indices(source, length, max_len, mode, what)
    return source if len(kept) == len(source) else KeptSource(source, kept)
