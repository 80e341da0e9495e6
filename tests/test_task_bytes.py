"""Top-k tasks that search several database chunks (``task_bytes``; ``vecops.gpu-task-bytes``,
``vecops.cpu-task-bytes``).

On a GPU every task adds kernel launches and scheduling on the host while the GPU is parallel
inside each one, so consecutive CuPy chunks are joined up to a size. On the CPU a search of a few
queries takes a few milliseconds a chunk, so a task searches a few NumPy chunks one after another.
Both ways run here on NumPy blocks (the joining one forced), with the numpy and rust backends.
"""

import importlib

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops import graph
from dask_vecops.backends import registry
from dask_vecops.graph._norm_cache import NORM_CACHE

from . import Chunking, check_topk, random_vectors

topk_graph = importlib.import_module("dask_vecops.graph.topk")
api = importlib.import_module("dask_vecops.api")


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


@pytest.mark.parametrize("joins", [False, True], ids=["one-after-another", "joined"])
@pytest.mark.parametrize("self_join", [False, True])
@pytest.mark.parametrize("task_bytes", [0, 700, 10**9])
def test_grouped_chunks_give_the_same_bits(
    backend, metric, task_bytes, self_join, joins, rng, monkeypatch
):
    monkeypatch.setattr(topk_graph, "_joins", lambda blocks: joins)
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


def test_chunks_searched_one_after_another_cache_their_norms_each(rng):
    """The norm cache keys a chunk the same whether its task searched it alone or in a group,
    so a grouped first search serves a later search of one chunk a task, and the bits agree."""
    NORM_CACHE.clear()
    db = random_vectors(rng, 60, 8, np.float32)
    darr = da.from_array(db, chunks=(10, 8))
    q = da.from_array(random_vectors(rng, 3, 8, np.float32))
    grouped = dask.compute(*search(q, darr, 4, "cosine", "rust", 10**9))
    assert sorted(key[1:] for key in NORM_CACHE._entries) == [(r, 10) for r in range(0, 60, 10)]
    one_each = dask.compute(*search(q, darr, 4, "cosine", "rust", 0))
    np.testing.assert_array_equal(grouped[1], one_each[1])
    np.testing.assert_array_equal(grouped[0], one_each[0])
    NORM_CACHE.clear()


def groups_of(result) -> list[int]:
    """How many database chunks each pair task of a search reads."""
    tasks = dict(result[0].__dask_graph__())
    return [len(tasks[key][4]) for key in pair_tasks(result)]


@pytest.mark.parametrize(
    ("queries", "chunks", "threads", "cap", "groups"),
    [
        (1, 10, 2, "1GiB", [5, 5]),  # as many tasks as threads
        (64, 10, 2, "1GiB", [5, 5]),
        (65, 10, 2, "1GiB", [1] * 10),  # more queries: a chunk a task
        (1, 10, 2, 0, [1] * 10),  # turned off
        (1, 10, 2, "3MiB", [1] * 10),  # two a task would make five tasks for two threads
        (1, 12, 2, "5MiB", [3] * 4),
        (1, 12, 3, "5MiB", [2] * 6),
        (1, 10, 3, "1GiB", [4, 4, 2]),
        (1, 80, 2, "12MiB", [8] * 10),
        (1, 1, 2, "1GiB", [1]),
    ],
)
def test_few_queries_on_the_cpu_search_several_chunks_a_task(queries, chunks, threads, cap, groups):
    db = np.zeros((chunks * 1000, 384), np.float32)  # 1.5 MB a chunk
    q = np.ones((queries, 384), np.float32)
    with dask.config.set({"vecops.cpu-task-bytes": cap, "num_workers": threads}):
        for in_memory in (da.from_array(db, chunks=(1000, 384)), _persisted(db)):
            result = dv.cosine_topk(q, 3, database=in_memory, backend="rust")
            assert groups_of(result) == groups


def _persisted(db):
    return (da.from_array(db, chunks=(1000, 384)) + 0).persist(scheduler="sync")


@pytest.mark.parametrize(
    "database",
    [
        lambda db: da.from_array(db, chunks=(1000, 16)) + 0,  # chunks computed by tasks
        lambda db: da.from_array(ArrayLike(db), chunks=(1000, 16)),  # read by tasks (a store)
        lambda db: da.from_array(db, chunks=(1000, 8)),  # joined into whole rows by tasks
    ],
    ids=["computed", "read", "column-chunks"],
)
def test_chunks_that_tasks_make_get_a_task_each(database):
    """A task that searched several would wait for all of them, and hold them together."""
    db = database(np.zeros((10_000, 16), np.float32))
    result = dv.cosine_topk(np.ones((1, 16), np.float32), 3, database=db, backend="rust")
    assert groups_of(result) == [1] * 10


class ArrayLike:
    """An array-like that is not a NumPy array, as a store's array is."""

    def __init__(self, x):
        self.x, self.shape, self.dtype, self.ndim = x, x.shape, x.dtype, x.ndim

    def __getitem__(self, key):
        return self.x[key]


class FourThreadClient:
    """What the api asks of a default distributed client."""

    def scheduler_info(self, n_workers):
        return {"total_threads": 4}


def test_several_chunks_a_task_are_not_used_under_distributed(monkeypatch):
    monkeypatch.setattr(api, "_default_client", FourThreadClient)
    db = da.from_array(np.zeros((10_000, 16), np.float32), chunks=(1000, 16))
    result = dv.cosine_topk(np.ones((1, 16), np.float32), 3, database=db, backend="rust")
    assert groups_of(result) == [1] * 10
