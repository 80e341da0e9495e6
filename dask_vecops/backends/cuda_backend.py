"""The CUDA backend: Numba CUDA kernels (``numba_kernels``) on CuPy blocks, cuBLAS for products.

CuPy blocks stay on their GPU and results come back as CuPy arrays. NumPy blocks (``backend="cuda"``
on a NumPy-backed array) are copied to the GPU and their results back. Under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) NumPy arrays stand in for device arrays and NumPy's matrix
product for cuBLAS, so the kernels are tested on any machine.

Cosine and dot scores come from the matrix product (cuBLAS through CuPy; never TF32, so float32
results stay exact to float32 rounding); distances from :mod:`numba_kernels.pairwise`; the per-row
selection, merging and norms from our kernels. Importing this module needs neither Numba nor CuPy.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from .._protocol import larger_is_better

_INSTALL = "pip install 'dask-vecops[cuda]'"
# Bytes of one (queries x database rows) score tile on the GPU at a time.
TILE_BYTES = 512 * 2**20


def unavailable_reason() -> str:
    """Why the CUDA backend cannot run here ("" if it can)."""
    if importlib.util.find_spec("numba") is None:
        return f"numba is not installed ({_INSTALL})"
    from numba import config

    if config.ENABLE_CUDASIM:
        return ""
    return _gpu_unavailable_reason()


def _gpu_unavailable_reason() -> str:
    if importlib.util.find_spec("cupy") is None:
        return f"cupy is not installed ({_INSTALL})"
    import cupy
    from numba import cuda

    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as err:  # no driver, or a driver too old
        return f"no usable CUDA GPU: {err}"
    if devices == 0:
        return "no CUDA GPU found"
    if not cuda.is_available():
        return "Numba cannot use the CUDA driver (see `numba -s`)"
    if os.environ.get("CUPY_TF32") == "1":
        return "CUPY_TF32=1 would compute float32 products in TF32 (inexact); unset it"
    return ""


@functools.cache
def _kernels():
    from numba_kernels import launch

    return launch


def _on_gpu(x):
    """``x`` where the kernels read it: NumPy blocks go to the GPU unless simulated."""
    if x is None or _kernels().SIMULATOR or not isinstance(x, np.ndarray):
        return x
    import cupy

    return cupy.asarray(x)


def _like(result, block):
    """``result`` brought back to the host when ``block`` came from there."""
    if isinstance(block, np.ndarray) and not isinstance(result, np.ndarray) and result is not None:
        return result.get()
    return result


def normalize_block(x, norm: str):
    """Each row divided by its norm; zero rows stay zero."""
    return _like(_kernels().normalize_rows(_on_gpu(x), norm), x)


def similarity_block(a, b, metric: str):
    """The ``(len(a), len(b))`` similarity or distance matrix."""
    return _like(_similarity(_on_gpu(a), _on_gpu(b), metric), a)


def _similarity(a, b, metric):
    launch = _kernels()
    if metric == "dot":
        return a @ b.T
    if metric == "cosine":
        return launch.normalize_rows(a, "l2") @ launch.normalize_rows(b, "l2").T
    return launch.distances(a, b, metric)


def topk_block(q, db, k, metric, exclude=None, db_norms=None, lazy_norms=False, bars=None):
    """Best ``k`` rows of ``db`` for each row of ``q`` (see the chunk protocol; ``bars`` are
    ignored).

    The database is scored in tiles of at most :data:`TILE_BYTES`; each tile's best k per query
    are selected by the kernel and merged into the running result. For cosine the queries are
    normalised and each tile is scaled by its rows' inverse norms before the product, which are
    computed whether ``lazy_norms`` or not.
    """
    scores, ids, norms = _topk(
        _on_gpu(q), _on_gpu(db), k, metric, _on_gpu(exclude), _on_gpu(db_norms)
    )
    return _like(scores, q), _like(ids, q), _like(norms, q)


def _topk(q, db, k, metric, exclude, db_norms):
    launch = _kernels()
    xp = launch.array_module(q)
    scale = None
    if metric == "cosine":
        db_norms = launch.row_norms(db, "l2") if db_norms is None else db_norms
        nonzero = db_norms != 0
        scale = xp.where(nonzero, 1 / xp.where(nonzero, db_norms, 1), 0).astype(db.dtype)
        q = launch.normalize_rows(q, "l2")
    tile_rows = max(1, TILE_BYTES // max(1, len(q) * q.itemsize))
    best = None
    for start in range(0, max(len(db), 1), tile_rows):
        tile = db[start : start + tile_rows]
        if scale is not None:
            tile = tile * scale[start : start + tile_rows, None]
        part = _tile_topk(q, tile, k, metric, exclude, start)
        best = part if best is None else _merge([best, part], k, metric)
    return best[0], best[1], db_norms


def _tile_topk(q, tile, k, metric, exclude, start):
    """Best k of one tile, with ids counted from the start of the block."""
    launch = _kernels()
    xp = launch.array_module(q)
    tile_scores = q @ tile.T if metric in ("cosine", "dot") else launch.distances(q, tile, metric)
    skip = None if exclude is None else exclude - start
    scores, ids = launch.topk_rows(tile_scores, k, larger_is_better(metric), exclude=skip)
    return scores, (xp.where(ids >= 0, ids + start, -1) if start else ids)


def merge_topk(scores: list, ids: list, k: int, metric: str):
    """Best ``k`` of several partial results for the same queries (ids already global)."""
    merged = _merge(
        [(_on_gpu(s), _on_gpu(i)) for s, i in zip(scores, ids, strict=True)], k, metric
    )
    return _like(merged[0], scores[0]), _like(merged[1], scores[0])


def _merge(parts, k, metric):
    launch = _kernels()
    xp = launch.array_module(parts[0][0])
    scores = xp.concatenate([p[0] for p in parts], axis=1)
    ids = xp.concatenate([p[1] for p in parts], axis=1)
    return launch.topk_rows(scores, k, larger_is_better(metric), ids=ids)
