"""Row norms and row normalisation: a warp of threads per row, several rows per block.

A block is ``(lanes, rows)`` threads: each row's lanes read it with coalesced loads, accumulate in
float64 and reduce their partial norms through shared memory.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._device import norm_finish, norm_merge, norm_step

# The largest block of these kernels: lanes per row and rows per block (the reduction buffer).
MAX_LANES = 32
MAX_ROWS = 8


@cuda.jit(device=True)
def _row_norm(x, row, kind, partial):
    """The ``kind`` norm of ``x[row]`` (0 past the last row), reduced by the row's lanes.

    Every thread of the block must call it: it synchronises the block.
    """
    lane = cuda.threadIdx.x
    lanes = cuda.blockDim.x
    r = cuda.threadIdx.y
    acc = 0.0
    if row < x.shape[0]:
        for j in range(lane, x.shape[1], lanes):
            acc = norm_step(acc, x[row, j], kind)
    partial[r, lane] = acc
    cuda.syncthreads()  # every lane's partial norm is written
    half = lanes // 2
    while half > 0:
        if lane < half:
            partial[r, lane] = norm_merge(partial[r, lane], partial[r, lane + half], kind)
        cuda.syncthreads()  # this level of the tree is reduced
        half //= 2
    norm = norm_finish(partial[r, 0], kind)
    cuda.syncthreads()  # everyone has read the result before the buffer is reused
    return norm


@cuda.jit
def row_norms_kernel(x, kind, out):
    """out[i] = the ``kind`` norm of row i of x."""
    partial = cuda.shared.array((MAX_ROWS, MAX_LANES), dtype=np.float64)
    row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    norm = _row_norm(x, row, kind, partial)
    if row < x.shape[0] and cuda.threadIdx.x == 0:
        out[row] = norm


@cuda.jit
def normalize_rows_kernel(x, kind, out):
    """out[i] = x[i] / its ``kind`` norm; a zero row stays zero."""
    partial = cuda.shared.array((MAX_ROWS, MAX_LANES), dtype=np.float64)
    row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    norm = _row_norm(x, row, kind, partial)
    if row < x.shape[0]:
        scale = 1.0 / norm if norm != 0.0 else 1.0
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            out[row, j] = x[row, j] * scale
