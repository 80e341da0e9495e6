"""Distance tiles computed from differences (never ``|a|² + |b|² - 2ab``), so exact for near rows."""

from __future__ import annotations

from numba import cuda

from ._device import distance_finish, distance_step


@cuda.jit
def distances_kernel(a, b, kind, out):
    """out[i, j] = the ``kind`` distance between a[i] and b[j] (one thread per pair)."""
    i, j = cuda.grid(2)
    if i < a.shape[0] and j < b.shape[0]:
        acc = 0.0
        for f in range(a.shape[1]):
            acc = distance_step(acc, a[i, f], b[j, f], kind)
        out[i, j] = distance_finish(acc, kind)
