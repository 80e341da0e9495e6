"""Bars shared by the pair tasks of a search within a process: the best k-th scores seen so far.

A pair task's k-th best score for a query is reached by k rows of the database, so no row that
scores worse can be in that query's top k. Every later pair task of the same search (the same
query batch against other chunks) hands these bars to its backend, which may then leave such rows
out from the start instead of waiting for its own selection to fill: the Rust kernel's filters
then reject most rows of a chunk from its first row on. The merged result is the same bits
either way (rows that reach a bar are kept, ties included); only the work changes.

Keys are (a token drawn when the search's graph is built, the query batch's first row), so a
bar never meets another search: not even a new search of the same arrays (whose data may have
changed in place since). The batch's last merge drops its bars in its process, so a later
computation of the same graph starts afresh there too. Each process (each ``distributed``
worker) has its own board, bounded; a task that finds no bars searches as it would have
without.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .._protocol import larger_is_better


class BarBoard:
    """The best k-th scores per query of the most recent searches, least recently used out."""

    def __init__(self, searches: int = 256) -> None:
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._searches = searches
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        """The bars for ``key`` (one per query, NaN for none yet), or None."""
        with self._lock:
            bars = self._entries.get(key)
            if bars is not None:
                self._entries.move_to_end(key)
            return bars

    def publish(self, key: tuple, scores, metric: str) -> None:
        """Raise the bars of ``key`` to the k-th best of ``scores`` (a pair task's result,
        ``(queries, k)``, padded with NaN) where they are better. Results on a GPU are left
        out: reading them would wait for the device, and only the Rust kernel uses bars."""
        if not isinstance(scores, np.ndarray) or scores.ndim != 2 or not scores.shape[1]:
            return
        kth = scores[:, -1]
        better = np.fmax if larger_is_better(metric) else np.fmin
        with self._lock:
            old = self._entries.get(key)
            # A new array rather than an update in place: a task may be reading the old one.
            self._entries[key] = kth.copy() if old is None else better(old, kth)
            self._entries.move_to_end(key)
            while len(self._entries) > self._searches:
                self._entries.popitem(last=False)

    def discard(self, key: tuple) -> None:
        """Forget the bars of ``key``, if any."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget every search."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


BARS = BarBoard()
