"""First pass of top-k over long score rows: each thread keeps the best k of the columns it reads.

The radix select in :mod:`numba_kernels.select` reads a row once per 8-bit digit, and then once
more to gather; for small k that costs more than the matrix product that made the scores. Here a
row is read once: blocks of threads split it into segments, each thread walks its segment with
the block's stride (coalesced loads, several in flight) and keeps its best ``take`` entries sorted
in registers and local memory. Most entries are rejected by one comparison against the thread's
current worst. The threads' lists are written out as candidates, a superset of the row's best
``take`` (the best k of a union are among the best k of its parts), and the exact selection with
its tie rules runs on those few candidates.

Ties: a thread reads its columns in ascending order and keeps an equal score only if it came
first, so among equal scores each thread keeps its lowest columns, as the final order wants.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32, float64

# Entries each thread can keep: the largest k this pass serves.
MAX_SLOTS = 32
# Loads a thread issues before it compares them (independent loads hide memory latency).
_UNROLL = 4


@cuda.jit(device=True)
def _offer(values, cols, filled, take, worst, v, j):
    """Offer ``v`` (larger is better) at column ``j``; returns the new (filled, worst)."""
    if filled == take:
        if not v > worst:  # also rejects NaN
            return filled, worst
        i = take - 1  # the worst entry drops out
    elif v == v:
        i = filled
        filled += 1
    else:
        return filled, worst
    while i > 0 and values[i - 1] < v:  # after equal values: they have lower columns
        values[i] = values[i - 1]
        cols[i] = cols[i - 1]
        i -= 1
    values[i] = v
    cols[i] = j
    if filled == take:
        worst = values[take - 1]
    return filled, worst


@functools.cache
def thread_best_kernel(nbits: int):
    """The first-pass kernel for scores of ``nbits`` bits (32: float32, 64: float64)."""
    value_type = float32 if nbits == 32 else float64

    @cuda.jit(device=True)
    def value_at(scores, row, j, skip, larger_better):
        """The score at ``j`` with larger better, NaN for the excluded column."""
        s = scores[row, j]
        if j == skip:
            return value_type(np.nan)
        return s if larger_better else -s

    @cuda.jit
    def thread_best(scores, exclude, has_exclude, larger_better, take, segment, cand_score, cand_id):
        """Block (row, part): each thread's best ``take`` columns of the row's ``part``-th
        ``segment`` columns, into the row's candidate slots (padding: NaN, -1)."""
        values = cuda.local.array(MAX_SLOTS, value_type)
        cols = cuda.local.array(MAX_SLOTS, np.int64)
        row = cuda.blockIdx.x
        part = cuda.blockIdx.y
        t = cuda.threadIdx.x
        step = cuda.blockDim.x
        if row >= scores.shape[0]:
            return
        skip = exclude[row] if has_exclude else -1
        stop = min(scores.shape[1], (part + 1) * segment)
        filled = 0
        values[0] = 0
        worst = values[0]
        j = part * segment + t
        while j + (_UNROLL - 1) * step < stop:
            v0 = value_at(scores, row, j, skip, larger_better)
            v1 = value_at(scores, row, j + step, skip, larger_better)
            v2 = value_at(scores, row, j + 2 * step, skip, larger_better)
            v3 = value_at(scores, row, j + 3 * step, skip, larger_better)
            filled, worst = _offer(values, cols, filled, take, worst, v0, j)
            filled, worst = _offer(values, cols, filled, take, worst, v1, j + step)
            filled, worst = _offer(values, cols, filled, take, worst, v2, j + 2 * step)
            filled, worst = _offer(values, cols, filled, take, worst, v3, j + 3 * step)
            j += _UNROLL * step
        while j < stop:
            v = value_at(scores, row, j, skip, larger_better)
            filled, worst = _offer(values, cols, filled, take, worst, v, j)
            j += step
        base = (part * step + t) * take
        for i in range(take):
            if i < filled:
                cand_score[row, base + i] = scores[row, cols[i]]  # the original bits
                cand_id[row, base + i] = cols[i]
            else:
                cand_score[row, base + i] = np.nan
                cand_id[row, base + i] = -1

    return thread_best
