"""Top-k selection per row of a score tile: radix select, gather, bitonic sort (block per row).

For each row the block finds the k-th best sort key with a most-significant-digit radix select
(8 bits per pass, a 256-bin histogram in shared memory), then, when several entries share that
key, the lowest ids among them with the same select on the ids. Exactly k entries are then
gathered and sorted by (key, id) with a bitonic sort, so equal scores always come out lowest id
first, whatever k is: there is no ceiling on k (the sort works in global scratch rows).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from ._device import KeyBits, order_key

BINS = 256
_DIGIT = np.uint64(BINS - 1)
_EIGHT = np.uint64(8)
_ZERO = np.uint64(0)
_NO_ID = np.iinfo(np.int64).max


@cuda.jit(device=True)
def _pick_digit(hist, want, state):
    """Thread 0: the bin holding the ``want``-th entry; how many of it to take; its size."""
    before = 0
    for d in range(BINS):
        if before + hist[d] >= want:
            state[0] = d
            state[1] = want - before
            state[2] = hist[d]
            return
        before += hist[d]


@cuda.jit(device=True)
def _count(hist, digit, run_digit, run_length):
    """Add ``digit`` to this thread's run; a run of equal digits costs one atomic at its end.

    Most entries of a score row share their leading digits, so counting runs keeps the threads
    of a block from queueing on the same histogram bin. Returns the new (run_digit, run_length).
    """
    if digit == run_digit:
        return run_digit, run_length + np.int32(1)
    if run_length:
        cuda.atomic.add(hist, run_digit, run_length)
    return digit, np.int32(1)


@cuda.jit(device=True)
def _clear(hist):
    for d in range(cuda.threadIdx.x, BINS, cuda.blockDim.x):
        hist[d] = 0


@cuda.jit(device=True)
def sort_by_key_and_id(keys, ids, moved, size):
    """Sort ``keys[:size]`` (a power of two) ascending by (key, id), moving ``ids`` and, unless it
    is None, ``moved``: a bitonic sort by the whole block (every thread must call it)."""
    t = cuda.threadIdx.x
    span = 2
    while span <= size:
        stride = span // 2
        while stride > 0:
            for i in range(t, size // 2, cuda.blockDim.x):
                lo = 2 * stride * (i // stride) + i % stride
                hi = lo + stride
                after = keys[lo] > keys[hi] or (keys[lo] == keys[hi] and ids[lo] > ids[hi])
                if after == ((lo & span) == 0):
                    keys[lo], keys[hi] = keys[hi], keys[lo]
                    ids[lo], ids[hi] = ids[hi], ids[lo]
                    if moved is not None:
                        moved[lo], moved[hi] = moved[hi], moved[lo]
            cuda.syncthreads()  # this compare-exchange step is done everywhere
            stride //= 2
        span *= 2


@functools.cache
def topk_rows_kernel(nbits: int):
    """The selection kernel for scores of ``nbits`` bits (32: float32, 64: float64)."""
    c = KeyBits(nbits)
    all_ones, sign, magnitude, inf = c.all_ones, c.sign, c.magnitude, c.inf
    top_shift = np.uint64(nbits)

    @cuda.jit(device=True)
    def key_at(bits, row, j, skip, larger_better):
        if j == skip:
            return all_ones
        return order_key(bits[row, j], larger_better, all_ones, sign, magnitude, inf)

    @cuda.jit(device=True)
    def id_at(ids, has_ids, row, j):
        if not has_ids:
            return np.uint64(j)
        i = ids[row, j]
        return np.uint64(i) if i >= 0 else all_ones

    @cuda.jit
    def topk_rows(scores, bits, ids, has_ids, exclude, has_exclude, larger_better, take, k,
                  work_key, work_id, work_col, out_score, out_id, has_only, only):
        """Best ``take`` (<= k) entries of each row of ``scores``, sorted; the rest is padding.
        With ``has_only``, only the rows whose ``only`` flag is set (the others are left as
        they are)."""
        hist = cuda.shared.array(BINS, dtype=np.int32)
        state = cuda.shared.array(3, dtype=np.int64)
        count = cuda.shared.array(1, dtype=np.int32)
        row = cuda.blockIdx.x
        if row >= scores.shape[0] or (has_only and only[row] == 0):
            return
        t = cuda.threadIdx.x
        threads = cuda.blockDim.x
        n = scores.shape[1]
        skip = exclude[row] if has_exclude else -1
        select_all = take >= n

        # Radix select of the take-th smallest key: prefix holds its digits found so far.
        prefix = _ZERO
        mask = _ZERO
        want = np.int64(take)
        equal = np.int64(0)
        shift = top_shift
        while shift > _ZERO and not select_all:
            shift -= _EIGHT
            _clear(hist)
            cuda.syncthreads()  # the histogram is zero
            run_digit, run_length = np.int64(-1), np.int32(0)
            for j in range(t, n, threads):
                key = key_at(bits, row, j, skip, larger_better)
                if (key & mask) == prefix:
                    digit = np.int64((key >> shift) & _DIGIT)
                    run_digit, run_length = _count(hist, digit, run_digit, run_length)
            if run_length:
                cuda.atomic.add(hist, run_digit, run_length)
            cuda.syncthreads()  # the histogram is complete
            if t == 0:
                _pick_digit(hist, want, state)
            cuda.syncthreads()  # the digit is chosen
            prefix |= np.uint64(state[0]) << shift
            mask |= _DIGIT << shift
            want = state[1]
            equal = state[2]
            cuda.syncthreads()  # everyone has read the state

        # Entries tied at the threshold key: the `want` lowest ids among them.
        ties = not select_all and equal > want
        id_prefix = _ZERO
        id_mask = _ZERO
        shift = np.uint64(64)
        while shift > _ZERO and ties:
            shift -= _EIGHT
            _clear(hist)
            cuda.syncthreads()  # the histogram is zero
            for j in range(t, n, threads):
                if key_at(bits, row, j, skip, larger_better) == prefix:
                    ident = id_at(ids, has_ids, row, j)
                    if (ident & id_mask) == id_prefix:
                        cuda.atomic.add(hist, np.int64((ident >> shift) & _DIGIT), 1)
            cuda.syncthreads()  # the histogram is complete
            if t == 0:
                _pick_digit(hist, want, state)
            cuda.syncthreads()  # the digit is chosen
            id_prefix |= np.uint64(state[0]) << shift
            id_mask |= _DIGIT << shift
            want = state[1]
            cuda.syncthreads()  # everyone has read the state

        # Gather the (at most `take`) chosen numbers into this row's scratch, then pad it to its
        # width. NaN and padding (the worst key) are never output, so they are not gathered: when
        # a row has fewer numbers than `take`, they would tie with its padding for the slots.
        if t == 0:
            count[0] = 0
        cuda.syncthreads()  # the counter is zero
        for j in range(t, n, threads):
            key = key_at(bits, row, j, skip, larger_better)
            ident = id_at(ids, has_ids, row, j)
            if key != all_ones and (
                select_all or key < prefix or (key == prefix and (not ties or ident <= id_prefix))
            ):
                slot = cuda.atomic.add(count, 0, 1)
                if slot >= take:  # only when given ids repeat in a row
                    continue
                work_key[row, slot] = key
                work_id[row, slot] = ids[row, j] if has_ids else j
                work_col[row, slot] = j
        cuda.syncthreads()  # every chosen entry is counted
        width = work_key.shape[1]
        for i in range(min(count[0], take) + t, width, threads):
            work_key[row, i] = all_ones
            work_id[row, i] = _NO_ID
            work_col[row, i] = -1
        cuda.syncthreads()  # the scratch row is filled

        sort_by_key_and_id(work_key[row], work_id[row], work_col[row], width)
        for i in range(t, k, threads):
            if i < take and work_key[row, i] != all_ones:
                out_score[row, i] = scores[row, work_col[row, i]]
                out_id[row, i] = work_id[row, i]
            else:
                out_score[row, i] = np.nan
                out_id[row, i] = -1

    return topk_rows
