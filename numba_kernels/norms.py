"""Row norms and row normalisation: one thread block per row, a shared-memory tree reduction."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._device import norm_finish, norm_merge, norm_step

# The most threads a block of these kernels may have (the size of the reduction buffer).
MAX_THREADS = 256


@cuda.jit(device=True)
def _block_norm(x, row, kind, partial):
    """The ``kind`` norm of ``x[row]``, reduced by the whole block through ``partial``."""
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    acc = 0.0
    for j in range(t, x.shape[1], threads):
        acc = norm_step(acc, x[row, j], kind)
    partial[t] = acc
    cuda.syncthreads()  # every thread's partial norm is written
    half = threads // 2
    while half > 0:
        if t < half:
            partial[t] = norm_merge(partial[t], partial[t + half], kind)
        cuda.syncthreads()  # this level of the tree is reduced
        half //= 2
    norm = norm_finish(partial[0], kind)
    cuda.syncthreads()  # everyone has read the result before the buffer is reused
    return norm


@cuda.jit
def row_norms_kernel(x, kind, out):
    """out[i] = the ``kind`` norm of row i of x (block i)."""
    partial = cuda.shared.array(MAX_THREADS, dtype=np.float64)
    row = cuda.blockIdx.x
    if row < x.shape[0]:
        norm = _block_norm(x, row, kind, partial)
        if cuda.threadIdx.x == 0:
            out[row] = norm


@cuda.jit
def normalize_rows_kernel(x, kind, out):
    """out[i] = x[i] / its ``kind`` norm (block i); a zero row stays zero."""
    partial = cuda.shared.array(MAX_THREADS, dtype=np.float64)
    row = cuda.blockIdx.x
    if row < x.shape[0]:
        norm = _block_norm(x, row, kind, partial)
        scale = 1.0 / norm if norm != 0.0 else 1.0
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            out[row, j] = x[row, j] * scale
