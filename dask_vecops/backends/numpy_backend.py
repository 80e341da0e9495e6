"""The pure-NumPy backend: the reference implementation, always available.

Distances are computed from differences (not the expanded ``|a|² + |b|² - 2ab`` form), so they
stay exact for near-identical rows.
"""

from __future__ import annotations

import numpy as np

from . import _select

merge_topk = _select.merge_topk

# Bytes of the (rows, cols, features) difference block materialised at once for distances.
_DIFF_BYTES = 8 * 2**20


def row_norms(x: np.ndarray, norm: str) -> np.ndarray:
    """The ``norm`` ("l2", "l1" or "max") of each row of ``x``."""
    if norm == "l2":
        return _select.row_norms_l2(x)
    if norm == "l1":
        return np.abs(x).sum(axis=1)
    return np.abs(x).max(axis=1, initial=0)


def normalize_block(x: np.ndarray, norm: str) -> np.ndarray:
    """Each row divided by its norm; zero rows stay zero."""
    norms = row_norms(x, norm)
    return x / np.where(norms == 0, 1, norms).astype(x.dtype)[:, None]


def similarity_block(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The ``(len(a), len(b))`` similarity or distance matrix."""
    if metric == "dot":
        return a @ b.T
    if metric == "cosine":
        return normalize_block(a, "l2") @ normalize_block(b, "l2").T
    return _distances(a, b, metric)


def _distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    out = np.empty((len(a), len(b)), dtype=np.result_type(a, b))
    rows = max(1, _DIFF_BYTES // max(1, len(b) * a.shape[1] * a.itemsize))
    for start in range(0, len(a), rows):
        diff = a[start : start + rows, None, :] - b[None, :, :]
        if metric == "euclidean":
            out[start : start + rows] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        else:
            out[start : start + rows] = np.abs(diff).sum(axis=2)
    return out


def topk_block(q, db, k, metric, exclude=None, db_norms=None, lazy_norms=False, bars=None):
    """Best ``k`` rows of ``db`` for each row of ``q``, tile by tile (see the chunk protocol).

    The norms are computed whether ``lazy_norms`` or not: they cost a fraction of the products.
    ``bars`` are ignored: the products of a whole tile come first, so they would save little.
    """
    return _select.tiled_topk(similarity_block, q, db, k, metric, exclude, db_norms)
