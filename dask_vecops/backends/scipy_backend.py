"""The SciPy backend: BLAS matrix products through ``scipy.linalg.blas`` and ``cdist`` distances."""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas
from scipy.spatial.distance import cdist

from . import _select
from .numpy_backend import normalize_block

merge_topk = _select.merge_topk
_CDIST_METRIC = {"euclidean": "euclidean", "manhattan": "cityblock"}


def _gemm_abt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` by BLAS gemm in the inputs' precision."""
    gemm = blas.sgemm if a.dtype == np.float32 else blas.dgemm
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), a.dtype)
    # A C-ordered (rows, d) array is a Fortran-ordered (d, rows) one, so BLAS reads both without a
    # copy and writes (b @ a.T) in Fortran order, which is (a @ b.T) in C order.
    return gemm(1.0, b.T, a.T, trans_a=True).T


def similarity_block(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The ``(len(a), len(b))`` similarity or distance matrix."""
    if metric == "dot":
        return _gemm_abt(a, b)
    if metric == "cosine":
        return _gemm_abt(normalize_block(a, "l2"), normalize_block(b, "l2"))
    # cdist works in float64; cast back so scores keep the inputs' dtype.
    return cdist(a, b, _CDIST_METRIC[metric]).astype(a.dtype, copy=False)


def topk_block(q, db, k, metric, exclude=None, db_norms=None, lazy_norms=False, bars=None):
    """Best ``k`` rows of ``db`` for each row of ``q``, tile by tile (see the chunk protocol).

    The norms are computed whether ``lazy_norms`` or not: they cost a fraction of the products.
    ``bars`` are ignored: the products of a whole tile come first, so they would save little.
    """
    return _select.tiled_topk(similarity_block, q, db, k, metric, exclude, db_norms)
