"""Top-k search: a task per (query batch, database chunk), then a tree of merges over the database.

Each pair task returns the best k of its database chunk for every query of its batch, with global
ids; merge tasks combine ``split_every`` partial results at a time (the same tree as
``dask.array.reduction``, which ``da.argtopk`` uses), and the last merge of each query batch
returns its ``(scores, ids)``, picked out by one small task per result. The graph is written
directly (one layer of pair tasks, the merge tree, two picks per query batch) rather than with
``blockwise`` and ``reduction``: a search of a few queries takes about as long as reading the
database once, so the fixed cost of building, optimising and scheduling the graph counts.
Blocks may be NumPy or CuPy arrays; CuPy results stay on the GPU.
"""

from __future__ import annotations

import inspect
import uuid
from functools import partial

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.graph_manipulation import clone
from dask.highlevelgraph import HighLevelGraph

from .. import _metrics
from .._protocol import array_module, take_rows
from .._validate import finite_mask, nonfinite_error
from ._bars import BARS
from ._norm_cache import NORM_CACHE
from ._rows import matrix_meta

# A row number no row has: "none" in the deferred finiteness checks (see _defers_checks).
_NO_ROW = np.iinfo(np.int64).max


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
    task_bytes: int = 0,
) -> tuple[da.Array, da.Array]:
    """Lazy ``(scores, ids)``, each ``(len(q), k)``: the best ``k`` rows of ``db`` for each row of ``q``.

    With ``self_join`` the rows of ``q`` are the rows of ``db`` and each query skips itself.
    Up to ``norm_cache_bytes`` of database norms are kept per process for later searches. With
    ``task_bytes``, a pair task searches consecutive database chunks up to that size.
    """
    q = q.rechunk({1: -1}) if q.numblocks[1] > 1 else q
    db = db.rechunk({1: -1}) if db.numblocks[1] > 1 else db
    split_every = _split_every(split_every)
    token = tokenize(
        q.name, db.name, k, metric, nan_policy, self_join, split_every, names, norm_cache_bytes,
        _function_token(topk_block), _function_token(merge_topk), task_bytes,
    )
    pair_name, merge_name = f"vecops-topk-{token}", f"vecops-topk-merge-{token}"
    score_name, id_name = f"vecops-topk-scores-{token}", f"vecops-topk-ids-{token}"
    backend = _metrics.backend_name(topk_block)  # the merge is the same backend's
    search_token = uuid.uuid4().hex  # this graph's own key to the bars: see _bars
    merge = partial(
        _merge, merge_topk=merge_topk, k=k, metric=metric, backend=backend, names=names
    )
    pair = partial(
        _topk_pair, merge=merge, topk_block=topk_block, k=k, metric=metric,
        nan_policy=nan_policy, self_join=self_join, names=names,
        db_name=db.name, norm_cache_bytes=norm_cache_bytes, backend=backend,
        search_token=search_token,
    )
    databases = _database_per_batch(db, q.numblocks[0])
    groups = _chunk_groups(db, task_bytes)
    tasks, picks = {}, {score_name: {}, id_name: {}}
    for i, (q0, q1) in enumerate(_starts(q.chunks[0])):
        pairs = {
            (pair_name, i, g): (
                pair, (q.name, i, 0), q0, q1, [(databases[i].name, j, 0) for j in chunks], d0, d1
            )
            for g, (chunks, d0, d1) in enumerate(groups)
        }
        tasks.update(pairs)
        last = partial(merge, bars_key=(search_token, q0))
        tasks.update(_merge_tree(merge, list(pairs), (merge_name, i), split_every, last))
        picks[score_name][(score_name, i, 0)] = (_pick, (merge_name, i), 0, q.dtype)
        picks[id_name][(id_name, i, 0)] = (_pick, (merge_name, i), 1, np.int64)
    inputs = {c.name: c for c in (q, *databases)}  # q is db in a self-join of one batch
    searched = HighLevelGraph.from_collections(pair_name, tasks, dependencies=list(inputs.values()))

    def result(name, dtype):
        graph = HighLevelGraph(
            {**searched.layers, name: picks[name]},
            {**searched.dependencies, name: {pair_name}},
        )
        return da.Array(graph, name, (q.chunks[0], (k,)), meta=matrix_meta(q, dtype))

    return result(score_name, q.dtype), result(id_name, np.int64)


def _database_per_batch(db: da.Array, batches: int) -> list[da.Array]:
    """The database each query batch reads: its own copy of the reads when there are several.

    With one shared read task per chunk, Dask's order runs batch after batch and every chunk stays
    in memory until the last batch has used it; cloned reads are released chunk by chunk. Each
    chunk is read once per batch either way. (The norm cache keys on the original name.)
    """
    if batches == 1:
        return [db]
    return [db, *(clone(db, seed=i) for i in range(1, batches))]


def _chunk_groups(db: da.Array, task_bytes: int) -> list[tuple[range, int, int]]:
    """``(chunk indices, first row, end row)`` of the database each pair task searches:
    consecutive chunks up to ``task_bytes`` together (at least one chunk; 0: one each)."""
    row_bytes = db.shape[1] * db.dtype.itemsize
    groups, first, size = [], 0, 0
    starts = _starts(db.chunks[0])
    for j, (d0, d1) in enumerate(starts):
        if j > first and size + (d1 - d0) * row_bytes > task_bytes:
            groups.append((range(first, j), starts[first][0], d0))
            first, size = j, 0
        size += (d1 - d0) * row_bytes
    groups.append((range(first, len(starts)), starts[first][0], db.shape[0]))
    return groups


def _merge_tree(merge, parts: list, final: tuple, split_every: int, last) -> dict:
    """Merge tasks reducing ``parts`` to the key ``final``, ``split_every`` at a time, the
    last of them by ``last``.

    The tree of ``dask.array.reduction``: the same depth and the same groups.
    """
    name, batch = final
    tasks, level = {}, 0
    while len(parts) > split_every:
        groups = [parts[s : s + split_every] for s in range(0, len(parts), split_every)]
        parts = [(f"{name}-{level}", batch, g) for g in range(len(groups))]
        tasks.update((key, (merge, group)) for key, group in zip(parts, groups, strict=True))
        level += 1
    tasks[final] = (last, parts)
    return tasks


def _split_every(split_every) -> int:
    """Partial results per merge, normalised as ``dask.array.reduction`` does for one axis."""
    split_every = split_every or dask.config.get("split_every", 4)
    if isinstance(split_every, dict):
        split_every = split_every.get(1, 2)
    return max(int(split_every), 2)


def _starts(chunks) -> list[tuple[int, int]]:
    """``(first row, end row)`` of each chunk."""
    ends = np.cumsum(chunks).tolist()
    return [(end - size, end) for size, end in zip(chunks, ends)]


def _function_token(f) -> object:
    """A deterministic token of a backend function: its name for module-level functions (cheap),
    else dask's own token (which pickles it)."""
    if inspect.isfunction(f) and "<" not in f.__qualname__:
        return f"{f.__module__}.{f.__qualname__}"
    return tokenize(f)


def _pick(result, index, dtype):
    """One of the final merge's ``(scores, ids)``, in the result's dtype."""
    return result[index].astype(dtype, copy=False)


def _topk_pair(q, q0, q1, db, d0, d1, *, merge, **options):
    """Pair task of topk: best k of database rows ``d0:d1`` for query rows ``q0:q1``, global ids.

    ``db`` is the list of consecutive chunks the task searches (several with ``task_bytes``).
    Chunks on a GPU are joined: it is parallel inside one kernel call. NumPy chunks are searched
    one after another (joining would copy them), each counted and cached as a chunk of its own,
    and their results merged.
    """
    if len(db) == 1 or _joins(db):
        return _search_chunk(q, q0, q1, _joined(db), d0, d1, **options)
    parts, start = [], d0
    for block in db:
        parts.append(_search_chunk(q, q0, q1, block, start, start + len(block), **options))
        start += len(block)
    return merge(parts)


def _search_chunk(
    q, q0, q1, db, d0, d1, *, topk_block, k, metric, nan_policy, self_join, names,
    db_name, norm_cache_bytes, backend, search_token,
):
    """Best k of database rows ``d0:d1`` (one block) for query rows ``q0:q1``, global ids.

    Counted as one ``topk`` block of ``d1 - d0`` database rows, timed over the backend's calls.
    Starts from the bars the search's other pair tasks in this process have published, and
    publishes its own (``_bars``).
    """
    # Ranges until rows are dropped: a pair task runs once per chunk (or group of chunks), and an
    # array of a chunk's row ids (800 kB for 100,000 rows) cost it more than the rest of its Python.
    q_rows, db_rows = range(q0, q1), range(d0, d1)
    bars_key = (search_token, q0)
    bars = BARS.get(bars_key)
    deferred = _defers_checks(db, nan_policy)
    keep_q = None if deferred else finite_mask(q, q_rows, names[0], nan_policy)
    if keep_q is not None:
        q, q_rows = take_rows(q, keep_q), _row_ids(q_rows)[keep_q]
        bars = bars[keep_q] if bars is not None else None
    search = partial(
        _search, topk_block, q, q_rows, k=k, metric=metric, self_join=self_join, bars=bars
    )
    if deferred:
        scores, ids, seconds, bad_db = _deferred_search(
            search, db, db_rows, metric=metric, db_name=db_name, norm_cache_bytes=norm_cache_bytes
        )
        problems = _stack_rows(_first_nonfinite_row(q, q0), bad_db)
    else:
        scores, ids, seconds = _pair_search(
            search, db, db_rows, metric=metric, nan_policy=nan_policy,
            db_name=db_name, db_label=names[1], norm_cache_bytes=norm_cache_bytes,
        )
        problems = None
    _metrics.record("topk", backend, d1 - d0, seconds)
    scores, ids = _with_all_queries(scores, ids, keep_q)
    BARS.publish(bars_key, scores, metric)
    return scores, ids, problems


def _joins(blocks: list) -> bool:
    """Whether a pair task joins its chunks into one block: on a GPU (not NumPy blocks)."""
    return array_module(blocks[0]) is not np


def _joined(blocks: list):
    """One block of a pair task's database chunks (joined on their device when several)."""
    if len(blocks) == 1:
        return blocks[0]
    return array_module(blocks[0]).concatenate(blocks)


def _defers_checks(db, nan_policy: str) -> bool:
    """Whether a pair task leaves its finiteness verdict on the device, for the batch's last
    merge to read: float32 GPU blocks under ``nan_policy="raise"``.

    Reading a flag back from a GPU waits for all the work queued before it, so a check in every
    pair task stalls the launches of the others (on an H200, a first search of 1M x 384 took
    41.0 ms with the checks read in each task, 37.8 ms with them deferred). Under
    "raise" no row is dropped, so nothing in a pair task depends on the verdict. Float32 only:
    the norms of float32 rows (summed in float64) are finite exactly when the rows are.
    """
    return nan_policy == "raise" and array_module(db) is not np and db.dtype == np.float32


def _deferred_search(search, db, db_rows, *, metric, db_name, norm_cache_bytes):
    """``(scores, ids, seconds, first non-finite database row)`` of a pair task with deferred
    checks: nothing here reads from the device.

    Its cached norms are kept apart from the checked ones, which are known to be finite: these
    may hold the norms of non-finite rows, which tell the next search about them.
    """
    if metric != "cosine":
        scores, ids, _, seconds = search(db, db_rows)
        return scores, ids, seconds, _first_nonfinite_row(db, db_rows.start)
    key = None
    if len(db_rows) and norm_cache_bytes:
        key = (db_name, db_rows.start, len(db_rows), "unchecked")
    norms = NORM_CACHE.get(key) if key else None
    scores, ids, computed, seconds = search(db, db_rows, db_norms=norms)
    if norms is None:
        norms = computed
        if key:
            NORM_CACHE.put(key, norms, norm_cache_bytes)
    xp = array_module(norms)
    return scores, ids, seconds, _first_row(~xp.isfinite(norms), db_rows.start)


def _first_nonfinite_row(x, start: int):
    """The global row (rows numbered from ``start``) of ``x``'s first row holding a NaN or an
    inf, as a 0-d array on ``x``'s device; ``_NO_ROW`` if none."""
    return _first_row(~array_module(x).isfinite(x).all(axis=1), start)


def _first_row(mask, start: int):
    xp = array_module(mask)
    if not len(mask):
        return xp.asarray(_NO_ROW)
    return xp.where(mask, xp.arange(start, start + len(mask)), _NO_ROW).min()


def _stack_rows(bad_q, bad_db):
    return array_module(bad_q).stack([bad_q, bad_db])


def _raise_if_nonfinite(problems, names) -> None:
    """Raise for the first non-finite query row, else database row, that pair tasks found with
    deferred checks (``problems``: ``[query row, database row]``, or None: checked already)."""
    if problems is None:
        return
    for row, name in zip(problems.tolist(), names, strict=True):  # one read-back per batch
        if row != _NO_ROW:
            raise nonfinite_error(row, name)


def _pair_search(search, db, db_rows, *, metric, nan_policy, db_name, db_label, norm_cache_bytes):
    """``(scores, ids, seconds)`` of a pair task's search, with the norm cache and the
    database's non-finite rows handled."""
    key = (db_name, db_rows.start, len(db_rows)) if len(db_rows) and norm_cache_bytes else None
    norms = NORM_CACHE.get(key) if key else None
    seconds = 0.0
    if metric == "cosine" and norms is None:
        # The norms the kernel computes tell whether every row is finite, sparing a pass. With
        # no cache to keep them, the backend may skip them (it then returns None, every row
        # finite). Skipping them when caching would save a first search less than it costs
        # the second, which would then compute them.
        scores, ids, norms, seconds = search(db, db_rows, lazy_norms=key is None)
        if norms is None or _all_finite_norms(norms):
            if key and norms is not None:
                NORM_CACHE.put(key, norms, norm_cache_bytes)
            return scores, ids, seconds
        norms = None
    if norms is None:  # cached norms were made from finite rows only
        keep_db = finite_mask(db, db_rows, db_label, nan_policy)
        if keep_db is not None:
            db, db_rows = take_rows(db, keep_db), _row_ids(db_rows)[keep_db]
    scores, ids, _, more_seconds = search(db, db_rows, db_norms=norms)
    return scores, ids, seconds + more_seconds


def _row_ids(rows) -> np.ndarray:
    """Global row ids as an int64 array (from a ``range`` or an array of them)."""
    if isinstance(rows, range):
        return np.arange(rows.start, rows.stop, dtype=np.int64)
    return rows


def _all_finite_norms(norms) -> bool:
    """Whether every norm is finite: their maximum is (NaN propagates; norms are not negative)."""
    return bool(array_module(norms).isfinite(norms.max())) if len(norms) else True


def _search(
    topk_block, q, q_rows, db, db_rows, *, k, metric, self_join, bars, db_norms=None,
    lazy_norms=False,
):
    """The backend's top-k of one pair of blocks, with global database ids, and its seconds."""
    exclude = _local_positions(q_rows, db_rows) if self_join else None
    start = _metrics.clock()
    scores, local, norms = topk_block(q, db, k, metric, exclude, db_norms, lazy_norms, bars)
    seconds = _metrics.clock() - start
    return scores, _global_ids(local, db_rows), norms, seconds


def _global_ids(local, db_rows):
    """Global database ids of a block's local ones (-1 stays -1), on the block's device;
    ``db_rows`` is a range or an array of the block's global rows."""
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
    wanted, rows = _row_ids(wanted), _row_ids(rows)
    pos = np.searchsorted(rows, wanted)
    found = pos < len(rows)
    found[found] = rows[pos[found]] == wanted[found]
    return np.where(found, pos, -1)


def _merge(parts, *, merge_topk, k, metric, backend, names, bars_key=None):
    """Merge task of topk: best k of several partial ``(scores, ids, problems)`` results.

    The last merge of a query batch (``bars_key`` given) drops the batch's bars in this process
    (every pair task of the batch has run, and a later computation of the graph starts afresh)
    and raises for the non-finite rows that pair tasks with deferred checks found.
    """
    if bars_key is not None:
        BARS.discard(bars_key)
    start = _metrics.clock()
    merged = merge_topk([p[0] for p in parts], [p[1] for p in parts], k, metric)
    _metrics.record("topk-merge", backend, len(parts[0][0]), _metrics.clock() - start)
    problems = _merge_problems([p[2] for p in parts])
    if bars_key is not None:
        _raise_if_nonfinite(problems, names)
    return (*merged, problems)


def _merge_problems(problems: list):
    """The first non-finite rows over several pair tasks (elementwise least), or None."""
    found = [p for p in problems if p is not None]
    if not found:
        return None
    xp = array_module(found[0])
    return xp.min(xp.stack(found), axis=0)
