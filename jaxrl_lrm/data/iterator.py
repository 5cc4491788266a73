"""Deterministic, resumable, host-sharded batches of prompt rows.

The global stream is the concatenation of one permutation of the source's rows per epoch,
`np.random.default_rng([seed, epoch]).permutation(len(source))` (the identity without
shuffling). Each call of `next_batch` consumes the next `batch_size * process_count` entries of
that stream (crossing into the next epoch when one runs out, so a source smaller than a batch
still works) and returns the slice `[process_index * batch_size, (process_index + 1) *
batch_size)` of them. The stream does not depend on the host layout, so a state saved with one
process count can be restored with another.
"""

from __future__ import annotations

import numpy as np


class PromptIterator:
    """Batches of row dicts from a `PromptSource`; see the module docstring for the order.

    Args:
      source: a `PromptSource` (`__len__`, `__getitem__`), at least one row.
      batch_size: rows per `next_batch()` on this host (the per-host count).
      seed: seeds every epoch's permutation together with the epoch number.
      process_index: this host's index in `[0, process_count)`.
      process_count: the number of hosts reading the same stream.
      shuffle: permute each epoch (else rows come in source order).
    """

    def __init__(
        self,
        source,
        batch_size: int,
        seed: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
    ):
        if len(source) < 1:
            raise ValueError(f"source has {len(source)} rows; expected at least 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected >= 1")
        if process_count < 1:
            raise ValueError(f"process_count={process_count!r}: expected >= 1")
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index={process_index!r}: expected 0 <= process_index < "
                f"process_count={process_count}"
            )
        self.source, self.batch_size, self.seed = source, batch_size, int(seed)
        self.process_index, self.process_count, self.shuffle = (
            process_index,
            process_count,
            shuffle,
        )
        self.num_rows = len(source)
        self.epoch, self.position = 0, 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            else:
                self._perm = np.arange(self.num_rows)
            self._perm_epoch = epoch
        return self._perm

    def _take(self, count: int) -> list[int]:
        """The next `count` indices of the global stream; advances the state."""
        out: list[int] = []
        while len(out) < count:
            order = self._order(self.epoch)
            k = min(count - len(out), self.num_rows - self.position)
            out.extend(int(i) for i in order[self.position : self.position + k])
            self.position += k
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def next_indices(self) -> list[int]:
        """This host's source indices for the next batch (advances like `next_batch`)."""
        glob = self._take(self.batch_size * self.process_count)
        lo = self.process_index * self.batch_size
        return glob[lo : lo + self.batch_size]

    def next_batch(self) -> list[dict]:
        """This host's `batch_size` rows of the next global batch."""
        return [self.source[i] for i in self.next_indices()]

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        return self.next_batch()

    def state(self) -> dict:
        """JSON-serialisable position in the stream (plus seed and size for checking)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_rows": self.num_rows,
        }

    def restore(self, state: dict) -> None:
        """Continues from `state()`: the next batches equal the uninterrupted iterator's."""
        for key in ("epoch", "position"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                raise ValueError(f"state[{key!r}]={state.get(key)!r}: expected an integer >= 0")
        for key, mine in (("seed", self.seed), ("num_rows", self.num_rows)):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"state[{key!r}]={state[key]!r} does not match this iterator's {key}={mine!r}"
                )
        if state["position"] >= self.num_rows:
            raise ValueError(
                f"state['position']={state['position']!r}: expected < {self.num_rows} rows"
            )
        self.epoch, self.position = state["epoch"], state["position"]
