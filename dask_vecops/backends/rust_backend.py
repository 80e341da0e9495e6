"""The Rust backend: the NumPy ufuncs compiled from ``rust_ufuncs/`` (``dask_vecops._rust``)."""

from __future__ import annotations

import numpy as np

from .. import _rust
from .._protocol import larger_is_better
from . import _select

_NORMALIZE = {"l2": _rust.normalize_l2, "l1": _rust.normalize_l1, "max": _rust.normalize_max}
_PAIRWISE = {
    "cosine": _rust.cosine,
    "dot": _rust.dot,
    "euclidean": _rust.euclidean,
    "manhattan": _rust.manhattan,
}
def normalize_block(x: np.ndarray, norm: str) -> np.ndarray:
    """Each row divided by its norm; zero rows stay zero."""
    return _NORMALIZE[norm](x)


def similarity_block(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The ``(len(a), len(b))`` similarity or distance matrix."""
    return _PAIRWISE[metric](a, b)


def topk_block(q, db, k, metric, exclude=None, db_norms=None, lazy_norms=False, bars=None):
    """Best ``k`` rows of ``db`` for each row of ``q`` by the fused Rust kernel.

    For cosine the kernel returns the database norms it computed in its pass over ``db`` (or the
    ``db_norms`` it was given), so the caller can cache them. With ``lazy_norms`` a few float32
    queries skip the norms of the rows that cannot enter a top k, and get None for them when
    every row is finite. ``bars`` (one score per query, NaN for none) start each query's
    selection with its bar already up: rows scoring worse are never candidates.
    """
    q, db = _in_place(q), _in_place(db)
    if exclude is not None:
        exclude = _in_place(exclude, np.int64)
    if db_norms is not None:
        db_norms = _in_place(db_norms, db.dtype)
    if bars is not None:
        bars = _in_place(bars, q.dtype)
    return _rust.topk_block(q, db, k, metric, exclude, db_norms, lazy_norms, bars)


def merge_topk(scores: list, ids: list, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of several partial results for the same queries (ids already global), by the
    Rust merge: a selection per row, where the NumPy merge sorts every candidate."""
    scores = [_in_place(s) for s in scores]
    if len({s.dtype for s in scores}) != 1 or scores[0].dtype not in (np.float32, np.float64):
        return _select.merge_topk(scores, ids, k, metric)
    ids = [_in_place(i, np.int64) for i in ids]
    return _rust.merge_topk(scores, ids, k, larger_is_better(metric))


def _in_place(x: np.ndarray, dtype=None) -> np.ndarray:
    """``x`` as the kernel reads it in place: C-contiguous and aligned (blocks unpickled on a
    ``distributed`` worker may not be aligned); copies only when it is not."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return x if x.flags.aligned else x.copy()
