"""The top-k graph stays small: built fast, and its task count linear in the database's chunks."""

import time

import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

SPLIT_EVERY = 8


def search_graph(chunks: int, rows_per_chunk: int = 10, split_every: int = SPLIT_EVERY) -> dict:
    db = da.zeros((chunks * rows_per_chunk, 8), chunks=(rows_per_chunk, 8), dtype=np.float32)
    scores, ids = dv.cosine_topk(np.ones((5, 8), np.float32), 3, database=db, split_every=split_every)
    return dict(scores.__dask_graph__())


def merge_tasks(chunks: int, split_every: int) -> int:
    """Tasks of dask's reduction tree over ``chunks`` inputs: partial merges, then one aggregate."""
    depth = 1
    while split_every**depth < chunks:
        depth += 1
    total = 0
    for _ in range(depth - 1):
        chunks = -(-chunks // split_every)
        total += chunks
    return total + 1


def test_thousand_chunk_graph_builds_in_under_a_second():
    search_graph(10)  # imports and first-call caches
    seconds = min(_timed(lambda: search_graph(1000)) for _ in range(3))
    assert seconds < 1.0, f"{seconds:.2f} s to build a 1,000-chunk top-k graph"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("split_every", [SPLIT_EVERY, 2])
def test_task_count_is_linear_in_database_chunks(split_every):
    counts = {n: len(search_graph(n, split_every=split_every)) for n in (100, 200, 400, 1000)}
    # Take the merge tree out: what is left must be exactly a per-chunk cost plus a constant.
    flat = {n: count - merge_tasks(n, split_every) for n, count in counts.items()}
    per_chunk = (flat[200] - flat[100]) // 100
    constant = flat[100] - 100 * per_chunk
    assert 1 <= per_chunk <= 5, counts
    assert all(flat[n] == per_chunk * n + constant for n in flat), (counts, per_chunk, constant)
    assert 0 <= constant <= 10, (counts, per_chunk, constant)
    # The whole graph: at most (per chunk + 1 / (split_every - 1)) tasks per chunk, plus a few.
    for n, count in counts.items():
        assert count <= (per_chunk + 1 / (split_every - 1)) * n + constant + np.log2(n) + 1


def test_merge_tasks_matches_dask_reduction():
    # The helper above, checked against dask's own reduction on a plain array.
    for n, split_every in [(100, 8), (64, 8), (65, 8), (1000, 2), (9, 3)]:
        x = da.ones((n,), chunks=1)
        graph = dict(x.sum(split_every=split_every).__dask_graph__())
        assert len(graph) - 2 * n == merge_tasks(n, split_every), (n, split_every)
