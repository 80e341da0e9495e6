"""First pass of top-k for small k over long score rows: a bar, then the few entries that reach it.

The radix select in :mod:`numba_kernels.select` reads a row once per 8-bit digit and once more to
gather: for small k that costs more than the matrix product that made the scores. Here a block
reads its segment of a row twice, with coalesced loads, several in flight per thread:

1. Each thread finds the best score among its columns, one comparison per entry. The ``take``-th
   best of these maxima is the segment's *bar*: ``take`` distinct entries reach it, so every entry
   of the segment's best ``take`` does too.
2. The entries that reach the bar (about ``take`` of them, unless scores tie massively) go to a
   buffer in shared memory; the block sorts them by (key, column), as the exact selection orders
   them, and writes the best ``take``.

A segment with more entries at or above its bar than the buffer holds (say a row of equal scores)
flags its row, and the exact selection redoes that row: the result never depends on the buffer.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float32, float64

from ._device import KeyBits, order_key
from .select import sort_by_key_and_id

# The largest k this pass serves: the bar needs a thread maximum for each of the best k.
MAX_K = 32
# The most threads a block of this kernel may have (the buffer of their maxima).
MAX_THREADS = 256
_NO_COLUMN = np.iinfo(np.int64).max


@functools.cache
def bar_select_kernel(nbits: int, capacity: int):
    """The first-pass kernel for scores of ``nbits`` bits, with a buffer of ``capacity`` entries
    (a power of two)."""
    assert capacity & (capacity - 1) == 0, capacity
    c = KeyBits(nbits)
    all_ones, sign, magnitude, inf = c.all_ones, c.sign, c.magnitude, c.inf
    value_type = float32 if nbits == 32 else float64

    @cuda.jit(device=True)
    def value_at(scores, row, j, skip, larger_better):
        """The score at ``j`` with larger better; NaN for the excluded column."""
        s = scores[row, j]
        if j == skip:
            return value_type(np.nan)
        return s if larger_better else -s

    @cuda.jit(device=True)
    def better(v, best):
        """``v`` replaces a running best (NaN: none yet); NaN never replaces a number."""
        return v > best or best != best

    @cuda.jit(device=True)
    def thread_maximum(scores, row, begin, stop, skip, larger_better):
        """The best value among this thread's columns of ``begin:stop`` (NaN if none)."""
        step = cuda.blockDim.x
        best = value_type(np.nan)
        j = begin + cuda.threadIdx.x
        while j + 3 * step < stop:  # four independent loads before the comparisons
            v0 = value_at(scores, row, j, skip, larger_better)
            v1 = value_at(scores, row, j + step, skip, larger_better)
            v2 = value_at(scores, row, j + 2 * step, skip, larger_better)
            v3 = value_at(scores, row, j + 3 * step, skip, larger_better)
            best = v0 if better(v0, best) else best
            best = v1 if better(v1, best) else best
            best = v2 if better(v2, best) else best
            best = v3 if better(v3, best) else best
            j += 4 * step
        while j < stop:
            v = value_at(scores, row, j, skip, larger_better)
            best = v if better(v, best) else best
            j += step
        return best

    @cuda.jit(device=True)
    def offer(bits, row, j, v, bar, larger_better, keys, cols, count):
        """Put column ``j`` (value ``v``) in the buffer if it reaches the bar (counted even when
        the buffer is full)."""
        if v >= bar:
            slot = cuda.atomic.add(count, 0, 1)
            if slot < capacity:
                keys[slot] = order_key(bits[row, j], larger_better, all_ones, sign, magnitude, inf)
                cols[slot] = j

    @cuda.jit
    def bar_select(scores, bits, exclude, has_exclude, larger_better, take, segment, out_score,
                   out_id, overflow):
        """Block (row, part): the best ``take`` of the row's ``part``-th ``segment`` columns into
        ``out[row, part * take:][:take]``, sorted (padding: NaN, -1); or ``overflow[row] = 1``."""
        maxima = cuda.shared.array(MAX_THREADS, value_type)
        keys = cuda.shared.array(capacity, np.uint64)
        cols = cuda.shared.array(capacity, np.int64)
        count = cuda.shared.array(1, np.int32)
        bar = cuda.shared.array(1, value_type)
        row = cuda.blockIdx.x
        part = cuda.blockIdx.y
        t = cuda.threadIdx.x
        step = cuda.blockDim.x
        skip = exclude[row] if has_exclude else -1
        begin = part * segment
        stop = min(scores.shape[1], begin + segment)

        mine = thread_maximum(scores, row, begin, stop, skip, larger_better)
        maxima[t] = mine
        if t == 0:
            count[0] = 0
            bar[0] = -value_type(np.inf)  # with fewer than `take` maxima, every number qualifies
        cuda.syncthreads()  # the maxima are written
        if mine == mine:
            above = 0  # maxima ranked before this one: better, or equal from a lower thread
            for u in range(step):
                m = maxima[u]
                if m > mine or (m == mine and u < t):
                    above += 1
            if above == take - 1:
                bar[0] = mine
        cuda.syncthreads()  # the bar is set
        level = bar[0]
        j = begin + t
        while j + 3 * step < stop:  # four independent loads before the comparisons
            v0 = value_at(scores, row, j, skip, larger_better)
            v1 = value_at(scores, row, j + step, skip, larger_better)
            v2 = value_at(scores, row, j + 2 * step, skip, larger_better)
            v3 = value_at(scores, row, j + 3 * step, skip, larger_better)
            offer(bits, row, j, v0, level, larger_better, keys, cols, count)
            offer(bits, row, j + step, v1, level, larger_better, keys, cols, count)
            offer(bits, row, j + 2 * step, v2, level, larger_better, keys, cols, count)
            offer(bits, row, j + 3 * step, v3, level, larger_better, keys, cols, count)
            j += 4 * step
        while j < stop:
            v = value_at(scores, row, j, skip, larger_better)
            offer(bits, row, j, v, level, larger_better, keys, cols, count)
            j += step
        cuda.syncthreads()  # every entry that reaches the bar is offered
        found = count[0]
        base = part * take
        if found > capacity:
            if t == 0:
                overflow[row] = 1
            for i in range(t, take, step):
                out_score[row, base + i] = np.nan
                out_id[row, base + i] = -1
            return
        size = 1
        while size < found:
            size *= 2
        for i in range(found + t, size, step):
            keys[i] = all_ones
            cols[i] = _NO_COLUMN
        cuda.syncthreads()  # the buffer is padded to a power of two
        sort_by_key_and_id(keys, cols, None, size)
        for i in range(t, take, step):
            if i < found:
                out_score[row, base + i] = scores[row, cols[i]]  # the original bits
                out_id[row, base + i] = cols[i]
            else:
                out_score[row, base + i] = np.nan
                out_id[row, base + i] = -1

    return bar_select
