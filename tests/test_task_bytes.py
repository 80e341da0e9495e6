"""Top-k tasks that search several database chunks (``task_bytes``, ``vecops.gpu-task-bytes``).

On a GPU every task adds kernel launches and scheduling on the host while the GPU is parallel
inside each one, so consecutive CuPy chunks are joined up to a size. The graph layer does the
joining for any blocks; here NumPy blocks go through it with the numpy and rust backends.
"""

import importlib

import dask
import dask.array as da
import numpy as np
import pytest

from dask_vecops import graph
from dask_vecops.backends import registry
from dask_vecops.graph._norm_cache import NORM_CACHE

from . import Chunking, check_topk, random_vectors

topk_graph = importlib.import_module("dask_vecops.graph.topk")


def search(q, db, k, metric, backend, task_bytes, self_join=False):
    module = registry.resolve(backend)
    return graph.topk(
        q, db, k, metric, topk_block=module.topk_block, merge_topk=module.merge_topk,
        nan_policy="raise", self_join=self_join, task_bytes=task_bytes,
        names=("x", "x") if self_join else ("queries", "database"), norm_cache_bytes=2**20,
    )


def pair_tasks(result) -> list:
    """Keys of the pair tasks (``vecops-topk-<token>``; merges and picks have longer names)."""
    keys = dict(result[0].__dask_graph__())
    return [key for key in keys if key[0].startswith("vecops-topk-") and key[0].count("-") == 2]


@pytest.mark.parametrize(
    ("task_bytes", "groups"),
    [
        (0, [[0], [1], [2], [3], [4]]),
        (1, [[0], [1], [2], [3], [4]]),  # a chunk larger than the size still gets its task
        (7 * 16, [[0, 1, 2], [3], [4]]),  # an empty chunk joins the group before it
        (9 * 16, [[0, 1, 2, 3], [4]]),
        (10**9, [[0, 1, 2, 3, 4]]),
    ],
)
def test_consecutive_chunks_are_grouped_up_to_the_size(task_bytes, groups):
    db = da.zeros((16, 4), chunks=((3, 4, 0, 2, 7), 4), dtype=np.float32)  # 16 bytes a row
    got = topk_graph._chunk_groups(db, task_bytes)
    assert [list(chunks) for chunks, _, _ in got] == groups
    ends = np.cumsum((0, 3, 4, 0, 2, 7))
    assert [(d0, d1) for _, d0, d1 in got] == [(ends[g[0]], ends[g[-1] + 1]) for g in groups]


@pytest.mark.parametrize("self_join", [False, True])
@pytest.mark.parametrize("task_bytes", [0, 700, 10**9])
def test_joined_chunks_give_the_same_bits(backend, metric, task_bytes, self_join, rng):
    NORM_CACHE.clear()
    db = random_vectors(rng, 70, 5, np.float32)  # 20 bytes a row, chunks of 4 to 30 rows
    q = db if self_join else random_vectors(rng, 9, 5, np.float32)
    chunk = Chunking("uneven")
    darr = chunk(db)
    queries = darr if self_join else chunk(q)
    joined = search(queries, darr, 6, metric, backend, task_bytes, self_join)
    one_each = search(queries, darr, 6, metric, backend, 0, self_join)
    groups = topk_graph._chunk_groups(darr, task_bytes)
    assert len(pair_tasks(joined)) == len(groups) * queries.numblocks[0]
    got = check_topk(joined, q, db, 6, metric, exclude_self=self_join)
    want = dask.compute(*one_each)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)  # BLAS blocks by shape
    NORM_CACHE.clear()
