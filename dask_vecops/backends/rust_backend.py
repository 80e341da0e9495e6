"""The Rust backend: the NumPy ufuncs compiled from ``rust_ufuncs/`` (``dask_vecops._rust``)."""

from __future__ import annotations

import numpy as np

from .. import _rust
from . import _select

merge_topk = _select.merge_topk

_NORMALIZE = {"l2": _rust.normalize_l2, "l1": _rust.normalize_l1, "max": _rust.normalize_max}
_PAIRWISE = {
    "cosine": _rust.cosine,
    "dot": _rust.dot,
    "euclidean": _rust.euclidean,
    "manhattan": _rust.manhattan,
}
_TOPK = {
    "cosine": _rust.topk_cosine,
    "dot": _rust.topk_dot,
    "euclidean": _rust.topk_euclidean,
    "manhattan": _rust.topk_manhattan,
}


def normalize_block(x: np.ndarray, norm: str) -> np.ndarray:
    """Each row divided by its norm; zero rows stay zero."""
    return _NORMALIZE[norm](x)


def similarity_block(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The ``(len(a), len(b))`` similarity or distance matrix."""
    return _PAIRWISE[metric](a, b)


def topk_block(q, db, k, metric, exclude=None, db_norms=None):
    """Best ``k`` rows of ``db`` for each row of ``q`` by the fused Rust kernel."""
    scores = np.empty((len(q), k), dtype=np.result_type(q, db, np.float32))
    ids = np.empty((len(q), k), dtype=np.int64)
    if len(q):
        exclude = np.int64(-1) if exclude is None else exclude.astype(np.int64, copy=False)
        _TOPK[metric](q, db, exclude, out=(scores, ids))
    return scores, ids, None
