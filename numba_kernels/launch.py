"""Launchers: allocate the outputs (NumPy or CuPy, like the input), size the grid, launch.

On a GPU, NumPy inputs are copied to the device and the results back; CuPy inputs stay there.

CuPy arrays are handed to the kernels without the stream synchronisation Numba does by default
for foreign arrays, and the kernels run on CuPy's current stream, so they queue behind the CuPy
work that made their inputs instead of waiting for the whole GPU at every launch.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run on NumPy arrays on the
CPU, with small blocks (each simulated thread is an OS thread) and one launch at a time (the
simulator does not support launches from several threads at once).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from numba import config

from . import norms, pairwise, scan, select
from ._device import DISTANCE_KINDS, NORM_KINDS

SIMULATOR = bool(config.ENABLE_CUDASIM)
# Grids are as large as the data has rows; Numba's warning about small grids would only say that
# a small search does not fill the GPU, at every launch.
config.CUDA_LOW_OCCUPANCY_WARNINGS = False
# Threads per block: a row's work is split among them (selection reads long score rows; norms read
# one vector, for which one warp is enough).
ROW_THREADS = 2 if SIMULATOR else 256
SCAN_THREADS = 4 if SIMULATOR else 256
NORM_THREADS = 2 if SIMULATOR else 32
NORM_ROWS = 2 if SIMULATOR else 8  # rows per block of the norm kernels, a warp each
# The first pass (:mod:`numba_kernels.scan`): each thread should read many columns (its maximum
# is what the bar is made of); its blocks should fill the GPU; its buffer holds the entries that
# reach a segment's bar (entries of 16 bytes in shared memory).
SCAN_COLUMNS_PER_THREAD = 16
SCAN_BLOCKS_PER_SM = 4
SCAN_CAPACITY = 64 if SIMULATOR else 1024
PAIR_TILE = 4 if SIMULATOR else 16
_SIMULATOR_LOCK = threading.Lock()


def _share_simulated_shared_arrays() -> None:
    """Make the simulator give every thread of a block the same shared array.

    The simulator (numba-cuda 0.30) allocates a block's shared array on the first thread's call
    with a check-then-insert on a dict; two threads can both miss and each get its own array, so a
    block's threads silently stop sharing memory (seen here about once in ten test runs, as a
    duplicated top-k id). The same lookup, under a lock.
    """
    import sys
    import traceback

    from numba.cuda.simulator import kernelapi

    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        assert shape != 0 and alignment is None, "our kernels use static shared arrays only"
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                if isinstance(dtype, kernelapi.types.Type):
                    dtype = kernelapi.numpy_support.as_dtype(dtype)
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if SIMULATOR:
    _share_simulated_shared_arrays()


def array_module(x):
    """``cupy`` for CuPy arrays, else ``numpy``."""
    if _is_cupy(x):
        import cupy

        return cupy
    return np


def _launch(kernel, grid, block, *args) -> None:
    """``kernel[grid, block](*args)`` on CuPy's current stream (one at a time when simulated)."""
    if SIMULATOR:
        with _SIMULATOR_LOCK:
            kernel[grid, block](*args)
        return
    import cupy
    from numba import cuda

    ptr = cupy.cuda.get_current_stream().ptr
    stream = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
    args = [cuda.as_cuda_array(a, sync=False) if _is_cupy(a) else a for a in args]
    kernel[grid, block, stream](*args)


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _numpy_through_the_gpu(launcher):
    """On a real GPU, run ``launcher`` on CuPy copies of NumPy inputs and return NumPy results."""

    @functools.wraps(launcher)
    def wrapper(x, *args, **kwargs):
        if SIMULATOR or not isinstance(x, np.ndarray):
            return launcher(x, *args, **kwargs)
        import cupy

        move = lambda a: cupy.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
        out = launcher(move(x), *map(move, args), **{k: move(v) for k, v in kwargs.items()})
        return tuple(o.get() for o in out) if isinstance(out, tuple) else out.get()

    return wrapper


@_numpy_through_the_gpu
def row_norms(x, norm: str):
    """The ``norm`` ("l2", "l1", "max") of each row of ``x``, as float64.

    Examples
    --------
    >>> import numpy as np
    >>> row_norms(np.array([[3.0, 4.0], [0.0, -2.0]], dtype=np.float32), "l2")
    array([5., 2.])
    """
    xp = array_module(x)
    out = xp.empty(x.shape[0], dtype=np.float64)
    if x.shape[0]:
        _launch(norms.row_norms_kernel, *_norm_grid(x), x, NORM_KINDS[norm], out)
    return out


@_numpy_through_the_gpu
def normalize_rows(x, norm: str):
    """Each row of ``x`` divided by its ``norm``; zero rows stay zero.

    Examples
    --------
    >>> import numpy as np
    >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]), "max")
    array([[0.75, 1.  ],
           [0.  , 0.  ]])
    """
    out = array_module(x).empty_like(x)
    if x.shape[0]:
        _launch(norms.normalize_rows_kernel, *_norm_grid(x), x, NORM_KINDS[norm], out)
    return out


def _norm_grid(x):
    """Grid and block of the norm kernels: a warp per row, ``NORM_ROWS`` rows a block."""
    return math.ceil(x.shape[0] / NORM_ROWS), (NORM_THREADS, NORM_ROWS)


@_numpy_through_the_gpu
def distances(a, b, metric: str):
    """The ``(len(a), len(b))`` matrix of euclidean or manhattan distances.

    Examples
    --------
    >>> import numpy as np
    >>> distances(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [1.0, 1.0]]), "manhattan")
    array([[7., 2.]])
    """
    out = array_module(a).empty((a.shape[0], b.shape[0]), dtype=a.dtype)
    if out.size:
        grid = (math.ceil(a.shape[0] / PAIR_TILE), math.ceil(b.shape[0] / PAIR_TILE))
        _launch(pairwise.distances_kernel, grid, (PAIR_TILE, PAIR_TILE), a, b, DISTANCE_KINDS[metric], out)
    return out


@_numpy_through_the_gpu
def topk_rows(scores, k: int, larger_better: bool, exclude=None, ids=None, first_pass=None):
    """Best ``k`` entries of each row of ``scores``: ``(scores, ids)``, sorted, lowest id first on ties.

    ids are column positions, or taken from ``ids`` (same shape as ``scores``) when given.
    ``exclude`` holds for each row a column to leave out (-1: none). NaN scores are never chosen;
    missing entries are padding (score NaN, id -1). ``first_pass`` cuts long rows to a few
    candidates with :mod:`numba_kernels.scan` before the exact selection (``None``: when the rows
    are long for k; only for column positions and k up to ``scan.MAX_K``).

    Examples
    --------
    >>> import numpy as np
    >>> scores = np.array([[0.5, 0.9, 0.5, np.nan]], dtype=np.float32)
    >>> topk_rows(scores, 3, larger_better=True)
    (array([[0.9, 0.5, 0.5]], dtype=float32), array([[1, 0, 2]]))
    >>> topk_rows(scores, 3, larger_better=True, exclude=np.array([1]))
    (array([[0.5, 0.5, nan]], dtype=float32), array([[ 0,  2, -1]]))
    >>> topk_rows(scores, 2, larger_better=False, first_pass=True)
    (array([[0.5, 0.5]], dtype=float32), array([[0, 2]]))
    """
    xp = array_module(scores)
    scores = xp.ascontiguousarray(scores)
    take = min(k, scores.shape[1])
    if first_pass is None:
        first_pass = ids is None and take <= scan.MAX_K and (
            scores.shape[1] >= SCAN_COLUMNS_PER_THREAD * SCAN_THREADS
        )
    if not first_pass:
        return _select(scores, k, larger_better, exclude, ids)
    if ids is not None or take > scan.MAX_K:
        raise ValueError(f"the first pass takes no ids and k <= {scan.MAX_K}")
    if not len(scores) or not take:
        return _select(scores, k, larger_better, exclude, ids)
    return _first_pass(scores, k, take, larger_better, exclude)


def _first_pass(scores, k, take, larger_better, exclude):
    """Top-k through the bar kernel: each segment's best ``take``, merged when a row has several
    segments; rows whose buffer overflowed are redone by the exact selection."""
    xp = array_module(scores)
    rows, cols = scores.shape
    parts = _scan_parts(rows, cols)
    segment = SCAN_THREADS * math.ceil(cols / (parts * SCAN_THREADS))
    parts = math.ceil(cols / segment)
    width = parts * take
    best = xp.empty((rows, width), dtype=scores.dtype), xp.empty((rows, width), dtype=np.int64)
    overflow = xp.zeros(rows, dtype=np.int32)
    skip = xp.asarray(exclude, dtype=np.int64) if exclude is not None else xp.empty(1, np.int64)
    kernel = scan.bar_select_kernel(8 * scores.dtype.itemsize, SCAN_CAPACITY)
    _launch(
        kernel, (rows, parts), SCAN_THREADS, scores, _bits(scores), skip, exclude is not None,
        larger_better, take, segment, *best, overflow,
    )
    if parts > 1 or take < k:
        best = _select(best[0], k, larger_better, None, best[1])
    return _select(scores, k, larger_better, exclude, None, out=best, only=overflow)


def _scan_parts(rows, cols) -> int:
    """Segments per row: enough blocks to fill the GPU, each thread reading many columns."""
    most = max(1, cols // (SCAN_COLUMNS_PER_THREAD * SCAN_THREADS))
    wanted = math.ceil(SCAN_BLOCKS_PER_SM * _multiprocessors() / rows)
    return max(1, min(most, wanted))


@functools.cache
def _multiprocessors() -> int:
    if SIMULATOR:
        return 1
    import cupy

    return cupy.cuda.Device().attributes["MultiProcessorCount"]


def _bits(scores):
    """The scores' bit patterns, as unsigned integers of their width."""
    return scores.view(np.uint32 if scores.dtype.itemsize == 4 else np.uint64)


def _select(scores, k, larger_better, exclude, ids, out=None, only=None):
    """The exact selection (:mod:`numba_kernels.select`): radix select, gather, sort. With
    ``only``, just the flagged rows, into ``out``."""
    xp = array_module(scores)
    rows, cols = scores.shape
    take = min(k, cols)
    width = 1 << max(take - 1, 0).bit_length()
    work = [xp.empty((rows, width), dtype=t) for t in (np.uint64, np.int64, np.int64)]
    if out is None:
        out = xp.empty((rows, k), dtype=scores.dtype), xp.empty((rows, k), dtype=np.int64)
    if rows:
        ids_arg = xp.ascontiguousarray(ids, dtype=np.int64) if ids is not None else xp.empty((1, 1), np.int64)
        skip = xp.asarray(exclude, dtype=np.int64) if exclude is not None else xp.empty(1, np.int64)
        flags = only if only is not None else xp.empty(1, np.int32)
        kernel = select.topk_rows_kernel(8 * scores.dtype.itemsize)
        _launch(
            kernel, rows, ROW_THREADS, scores, _bits(scores), ids_arg, ids is not None, skip,
            exclude is not None, larger_better, take, k, *work, *out, only is not None, flags,
        )
    return out
