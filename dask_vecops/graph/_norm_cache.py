"""A bounded, process-wide cache of database row norms, so repeated searches pay only the scan.

Keys are (dask name of the database, first row, rows) of a chunk. Dask names are deterministic
tokens of what an array holds and how it was made, so a key never meets other data. Each process
(each ``distributed`` worker) has its own cache; a miss only costs recomputing the norms.

With the cache off (``vecops.norm-cache: 0``) a search lets the backend skip the norms it does not
need (the Rust kernel, for a few float32 queries, computes only those of the rows that could enter
a top k).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class NormCache:
    """Least-recently-used cache of norm vectors, bounded by their total bytes."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> np.ndarray | None:
        """The cached norms for ``key``, or None."""
        with self._lock:
            norms = self._entries.get(key)
            if norms is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return norms

    def put(self, key: tuple, norms: np.ndarray, capacity: int) -> None:
        """Keep ``norms`` under ``key``, evicting the least recently used beyond ``capacity`` bytes."""
        if norms.nbytes > capacity:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = norms
            self._bytes += norms.nbytes
            while self._bytes > capacity:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


NORM_CACHE = NormCache()
