"""NumPy top-k selection and merging shared by the CPU backends.

The order everywhere: best score first, equal scores by the lower id, NaN scores never chosen
(their slots are padding: score NaN, id -1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._protocol import larger_is_better

# A score tile of at most this many bytes is materialised at a time (a FAISS-sized tile).
TILE_BYTES = 16 * 2**20
QUERY_TILE_ROWS = 1024


def _sort_key(scores: np.ndarray, metric: str) -> np.ndarray:
    """Ascending key: smaller is better; NaN sorts last (np.sort and lexsort put NaN at the end)."""
    return -scores if larger_is_better(metric) else scores


def _order_rows(key: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions that sort each row by (key, id)."""
    return np.lexsort((ids, key), axis=-1)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad the columns to k with NaN / -1 and turn NaN-scored entries into padding."""
    missing = k - scores.shape[1]
    if missing > 0:
        rows = scores.shape[0]
        scores = np.concatenate([scores, np.full((rows, missing), np.nan, scores.dtype)], axis=1)
        ids = np.concatenate([ids, np.full((rows, missing), -1, np.int64)], axis=1)
    ids = np.where(np.isnan(scores), -1, ids)
    return scores, ids


def merge_topk(scores: list, ids: list, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of several partial ``(scores, ids)`` results for the same rows."""
    scores = np.concatenate(scores, axis=1)
    ids = np.concatenate(ids, axis=1).astype(np.int64, copy=False)
    key = _sort_key(scores, metric)
    # Padding (id -1) sorts by NaN key, after every real candidate.
    order = _order_rows(key, ids)[:, :k]
    return _pad(np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1), k)


def select_topk(scores: np.ndarray, k: int, metric: str, id_offset: int = 0):
    """Best ``k`` columns of each row of a score tile, with ids ``id_offset + column``.

    ``argpartition`` finds k candidates in linear time but breaks ties arbitrarily; rows where the
    k-th best score is tied beyond the selection are re-selected with a full (key, id) sort.
    """
    rows, cols = scores.shape
    key = _sort_key(scores, metric)
    key = np.where(np.isnan(key), np.inf, key)
    if k >= cols:
        order = _order_rows(key, np.broadcast_to(np.arange(cols), key.shape))
    else:
        order = np.argpartition(key, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(key, order, 1).max(axis=1, keepdims=True)
        tied = np.flatnonzero((key <= kth).sum(axis=1) > k)
        if tied.size:
            full = _order_rows(key[tied], np.broadcast_to(np.arange(cols), (tied.size, cols)))
            order[tied] = full[:, :k]
        order = np.take_along_axis(order, _order_rows(np.take_along_axis(key, order, 1), order), 1)
    picked = np.take_along_axis(scores, order, 1)
    return _pad(picked, order.astype(np.int64) + id_offset, k)


def tiled_topk(
    similarity: Callable, q: np.ndarray, db: np.ndarray, k: int, metric: str, exclude=None,
    db_norms=None,
):
    """Top-k of ``q`` against ``db`` computed tile by tile with ``similarity(a, b, metric)``.

    The ``len(q) x len(db)`` score matrix never exists at once: each tile of at most
    :data:`TILE_BYTES` is reduced to its best k and merged into the running result. Cosine is
    scored as the dot product of the normalised queries with the raw database rows, scaled by the
    rows' inverse L2 norms (``db_norms``, computed here when not given, and returned for caching).
    """
    # Non-finite rows are screened by the caller, which may look at the returned norms first.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _tiled_topk(similarity, q, db, k, metric, exclude, db_norms)


def _tiled_topk(similarity, q, db, k, metric, exclude, db_norms):
    column_scale = None
    if metric == "cosine":
        db_norms = row_norms_l2(db) if db_norms is None else db_norms
        column_scale = _inverse(db_norms).astype(db.dtype, copy=False)
        q = q * _inverse(row_norms_l2(q)).astype(q.dtype, copy=False)[:, None]
    parts = [
        _topk_query_tile(similarity, q[start : start + QUERY_TILE_ROWS], db, k, metric,
                         None if exclude is None else exclude[start : start + QUERY_TILE_ROWS],
                         column_scale)
        for start in range(0, max(len(q), 1), QUERY_TILE_ROWS)
    ]
    scores = np.concatenate([p[0] for p in parts])[: len(q)]
    ids = np.concatenate([p[1] for p in parts])[: len(q)]
    return scores, ids, db_norms


def row_norms_l2(x: np.ndarray) -> np.ndarray:
    """The L2 norm of each row."""
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def _inverse(norms: np.ndarray) -> np.ndarray:
    """1 / norm, and 0 for zero rows (so their cosine similarity is 0)."""
    return np.divide(1, norms, out=np.zeros_like(norms), where=norms != 0)


def _topk_query_tile(similarity, q, db, k, metric, exclude, column_scale):
    db_rows = max(1, TILE_BYTES // (max(len(q), 1) * q.itemsize))
    tile_metric = "dot" if column_scale is not None else metric
    best = (np.full((len(q), k), np.nan, q.dtype), np.full((len(q), k), -1, np.int64))
    for start in range(0, len(db), db_rows):
        tile = similarity(q, db[start : start + db_rows], tile_metric)
        if column_scale is not None:
            tile *= column_scale[start : start + db_rows]
        if exclude is not None:
            _drop_excluded(tile, exclude - start)
        part = select_topk(tile, k, metric, id_offset=start)
        best = merge_topk([best[0], part[0]], [best[1], part[1]], k, metric)
    return best


def _drop_excluded(tile: np.ndarray, local: np.ndarray) -> None:
    """Set each row's excluded column (when it falls in this tile) to NaN: never selected."""
    rows = np.flatnonzero((local >= 0) & (local < tile.shape[1]))
    tile[rows, local[rows]] = np.nan
