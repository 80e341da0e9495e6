"""Top-k search: a task per (query batch, database chunk), then a tree of merges over the database.

Each pair task returns the best k of its database chunk for every query of its batch, with global
ids; ``dask.array.reduction`` merges ``split_every`` partial results at a time (as ``da.argtopk``
does) and the last merge packs scores and ids side by side into one float64 array (exact for
float32/float64 scores and for ids below 2**53), split lazily into the two results. Blocks may be
NumPy or CuPy arrays; CuPy results stay on the GPU.
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

from .._protocol import array_module, take_rows
from .._validate import finite_mask
from ._norm_cache import NORM_CACHE
from ._rows import matrix_meta, row_ids, single_block


def topk(
    q: da.Array,
    db: da.Array,
    k: int,
    metric: str,
    *,
    topk_block,
    merge_topk,
    nan_policy: str,
    self_join: bool = False,
    split_every: int | None = None,
    names=("queries", "database"),
    norm_cache_bytes: int = 0,
) -> tuple[da.Array, da.Array]:
    """Lazy ``(scores, ids)``, each ``(len(q), k)``: the best ``k`` rows of ``db`` for each row of ``q``.

    With ``self_join`` the rows of ``q`` are the rows of ``db`` and each query skips itself.
    Up to ``norm_cache_bytes`` of database norms are kept per process for later searches.
    """
    pair = partial(
        _topk_pair, topk_block=topk_block, k=k, metric=metric,
        nan_policy=nan_policy, self_join=self_join, names=names,
        db_name=db.name, norm_cache_bytes=norm_cache_bytes,
    )
    candidates = da.blockwise(
        pair, "ij", q, "ik", row_ids(q), "i", db, "jk", row_ids(db), "j",
        dtype=object, meta=np.empty((0, 0), dtype=object), concatenate=False, token="vecops-topk",
    )
    packed = da.reduction(
        candidates,
        chunk=_as_candidates,
        combine=partial(_merge_chunk, merge_topk=merge_topk, k=k, metric=metric),
        aggregate=partial(_merge_aggregate, merge_topk=merge_topk, k=k, metric=metric),
        axis=1, keepdims=True, output_size=2 * k, concatenate=False, split_every=split_every,
        dtype=np.float64, meta=matrix_meta(q, np.float64), name="vecops-topk-merge",
    )
    return packed[:, :k].astype(q.dtype), packed[:, k:].astype(np.int64)


def _topk_pair(
    q, q_rows, db, db_rows, *, topk_block, k, metric, nan_policy, self_join, names,
    db_name, norm_cache_bytes,
):
    """Chunk function of topk: best k of one database chunk for one query batch, global ids."""
    q, db = single_block(q), single_block(db)
    keep_q = finite_mask(q, q_rows, names[0], nan_policy)
    if keep_q is not None:
        q, q_rows = take_rows(q, keep_q), q_rows[keep_q]
    search = partial(_search, topk_block, q, q_rows, k=k, metric=metric, self_join=self_join)
    key = (db_name, int(db_rows[0]), len(db_rows)) if len(db_rows) and norm_cache_bytes else None
    norms = NORM_CACHE.get(key) if key else None
    if metric == "cosine" and norms is None:
        # The norms the kernel computes tell whether every row is finite, sparing a pass.
        scores, ids, norms = search(db, db_rows)
        if norms is not None and bool(array_module(norms).isfinite(norms).all()):
            if key:
                NORM_CACHE.put(key, norms, norm_cache_bytes)
            return _with_all_queries(scores, ids, keep_q)
        norms = None
    if norms is None:  # cached norms were made from finite rows only
        keep_db = finite_mask(db, db_rows, names[1], nan_policy)
        if keep_db is not None:
            db, db_rows = take_rows(db, keep_db), db_rows[keep_db]
    scores, ids, _ = search(db, db_rows, db_norms=norms)
    return _with_all_queries(scores, ids, keep_q)


def _search(topk_block, q, q_rows, db, db_rows, *, k, metric, self_join, db_norms=None):
    """The backend's top-k of one pair of blocks, with global database ids."""
    exclude = _local_positions(q_rows, db_rows) if self_join else None
    scores, local, norms = topk_block(q, db, k, metric, exclude, db_norms)
    return scores, _global_ids(local, db_rows), norms


def _global_ids(local, db_rows: np.ndarray):
    """Global database ids of a block's local ones (-1 stays -1), on the block's device."""
    if not len(db_rows):
        return local
    xp = array_module(local)
    if db_rows[-1] - db_rows[0] == len(db_rows) - 1:  # consecutive rows: no table to copy over
        return xp.where(local >= 0, local + int(db_rows[0]), -1)
    return xp.where(local >= 0, xp.asarray(db_rows)[xp.maximum(local, 0)], -1)


def _with_all_queries(scores, ids, keep_q):
    """Results of the kept queries placed back among all; omitted queries get NaN / -1."""
    if keep_q is None:
        return scores, ids
    xp = array_module(scores)
    all_scores = xp.full((len(keep_q), scores.shape[1]), np.nan, scores.dtype)
    all_ids = xp.full((len(keep_q), ids.shape[1]), -1, np.int64)
    keep_q = xp.asarray(keep_q)
    all_scores[keep_q], all_ids[keep_q] = scores, ids
    return all_scores, all_ids


def _local_positions(wanted: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each global row in ``wanted``, its position in the sorted ``rows``, or -1 if absent."""
    pos = np.searchsorted(rows, wanted)
    found = pos < len(rows)
    found[found] = rows[pos[found]] == wanted[found]
    return np.where(found, pos, -1)


def _as_candidates(pair, axis, keepdims):
    """Chunk function of the reduction: the pair task already selected its candidates."""
    return pair


def _flat(parts) -> list:
    """The (scores, ids) tuples of a possibly nested list of reduction inputs."""
    if isinstance(parts, tuple):
        return [parts]
    return [p for part in parts for p in _flat(part)]


def _merge_chunk(parts, axis, keepdims, *, merge_topk, k, metric):
    """Combine function of topk: best k of several partial results."""
    parts = _flat(parts)
    return merge_topk([p[0] for p in parts], [p[1] for p in parts], k, metric)


def _merge_aggregate(parts, axis, keepdims, *, merge_topk, k, metric):
    """Aggregate function of topk: the final merge, scores then ids packed in one float64 array."""
    scores, ids = _merge_chunk(parts, axis, keepdims, merge_topk=merge_topk, k=k, metric=metric)
    return array_module(scores).concatenate([scores, ids], axis=1, dtype=np.float64)
