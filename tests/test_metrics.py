"""``dv.metrics()``: the counts of blocks and rows add up to the work done, in this process and
summed over the workers of a cluster; reset clears them; the table displays."""

import importlib

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops import _metrics

from . import random_vectors, requires_distributed


@pytest.fixture(autouse=True)
def clean_metrics():
    dv.metrics(reset=True)
    yield
    dv.metrics(reset=True)


def _expected_topk(scores: da.Array, db: da.Array) -> dict:
    """The counts a top-k search should record: from its graph's pair and merge tasks (a pair
    task that searches several chunks merges them too)."""
    batches = scores.chunks[0]
    tasks = dict(scores.__dask_graph__())
    keys = [k for k in tasks if isinstance(k, tuple)]
    merges = [k for k in keys if k[0].startswith("vecops-topk-merge-")]
    merges += [k for k in keys if k[0].count("-") == 2 and len(tasks[k][4]) > 1]
    return {
        "topk": (len(batches) * db.numblocks[0], len(batches) * len(db)),
        "topk-merge": (len(merges), sum(batches[k[1]] for k in merges)),
    }


def _search(rng, backend="numpy", n=500, d=8, db_chunks=60, q_rows=40):
    db = da.from_array(random_vectors(rng, n, d, np.float32), chunks=(db_chunks, d))
    q = random_vectors(rng, q_rows, d, np.float32)
    scores, ids = dv.topk(q, 5, database=db, backend=backend, split_every=3)
    return scores, ids, db


def _counts(m, operation, backend):
    row = m[operation, backend]
    return row.blocks, row.rows


def test_topk_counts_add_up(rng, backend):
    scores, ids, db = _search(rng, backend)
    expected = _expected_topk(scores, db)
    dask.compute(scores, ids, scheduler="threads")
    m = dv.metrics()
    assert _counts(m, "topk", backend) == expected["topk"]
    assert _counts(m, "topk-merge", backend) == expected["topk-merge"]
    assert expected["topk-merge"][0] > 1  # a tree of merges, not one
    assert {r.operation for r in m} == {"topk", "topk-merge"}
    assert all(r.seconds > 0 for r in m)


def test_several_query_batches(rng):
    db = da.from_array(random_vectors(rng, 300, 8, np.float32), chunks=(70, 8))
    q = da.from_array(random_vectors(rng, 90, 8, np.float32), chunks=(30, 8))
    # three query batches, whatever the memory budget would choose
    from dask_vecops import graph
    from dask_vecops.backends import numpy_backend as nb

    scores, ids = graph.topk(
        q, db, 4, "dot", topk_block=nb.topk_block, merge_topk=nb.merge_topk, nan_policy="raise",
    )
    assert scores.numblocks[0] == 3
    expected = _expected_topk(scores, db)
    dask.compute(scores, ids, scheduler="sync")
    m = dv.metrics()
    assert _counts(m, "topk", "numpy") == expected["topk"] == (15, 900)


def test_normalize_and_similarity_counts(rng, backend):
    a = da.from_array(random_vectors(rng, 70, 6, np.float64), chunks=(20, 6))
    b = da.from_array(random_vectors(rng, 50, 6, np.float64), chunks=(15, 6))
    dask.compute(
        dv.normalize(a, backend=backend), dv.similarity(a, b, backend=backend),
        scheduler="threads",
    )
    m = dv.metrics()
    # The scipy backend's normalisation is NumPy's code: counted under the module that ran it.
    module = importlib.import_module(f"dask_vecops.backends.{backend}_backend")
    normalizer = _metrics.backend_name(module.normalize_block)
    assert _counts(m, "normalize", normalizer) == (4, 70)
    assert _counts(m, "similarity", backend) == (4 * 4, 4 * 50)


def test_non_finite_rows_omitted_still_count_the_chunk(rng):
    x = random_vectors(rng, 40, 4, np.float64)
    x[3] = np.nan
    db = da.from_array(x, chunks=(10, 4))
    scores, ids = dv.topk(x[:5], 2, database=db, backend="numpy", nan_policy="omit")
    dask.compute(scores, ids)
    assert _counts(dv.metrics(), "topk", "numpy") == (4, 40)


def test_reset_returns_the_counts_and_clears_them(rng):
    dv.normalize(np.ones((10, 3)), backend="numpy").compute()
    before = dv.metrics(reset=True)
    assert _counts(before, "normalize", "numpy") == (1, 10)
    assert len(dv.metrics()) == 0
    dv.normalize(np.ones((10, 3)), backend="numpy").compute()
    assert _counts(dv.metrics(), "normalize", "numpy") == (1, 10)


def test_display_and_dict():
    _metrics.record("topk", "rust", 1000, 0.5)
    _metrics.record("topk", "rust", 500, 0.25)
    _metrics.record("normalize", "numpy", 7, 0.001)
    m = dv.metrics()
    assert [tuple(r) for r in m] == [
        ("normalize", "numpy", 1, 7, 0.001), ("topk", "rust", 2, 1500, 0.75),
    ]
    assert repr(m).splitlines() == [
        "operation  backend  blocks  rows  seconds",
        "normalize  numpy         1     7   0.0010",
        "topk       rust          2  1500   0.7500",
    ]
    html = m._repr_html_()
    assert html.startswith("<table>") and "<th>seconds</th>" in html and ">1500</td>" in html
    assert m.to_dict() == {
        "normalize": {"numpy": {"blocks": 1, "rows": 7, "seconds": 0.001}},
        "topk": {"rust": {"blocks": 2, "rows": 1500, "seconds": 0.75}},
    }
    with pytest.raises(KeyError):
        m["similarity", "rust"]
    dv.metrics(reset=True)
    assert repr(dv.metrics()) == "Metrics: nothing recorded"
    assert "<tbody></tbody>" in dv.metrics()._repr_html_()


def test_recording_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    def work(_):
        for _ in range(2000):
            _metrics.record("topk", "numpy", 3, 0.0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert _counts(dv.metrics(), "topk", "numpy") == (16000, 48000)


@pytest.mark.slow
@requires_distributed
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_cluster_counts_add_up(rng):
    from distributed import Client, LocalCluster

    scores, ids, db = _search(rng, "numpy", n=2000, db_chunks=100, q_rows=50)
    expected = _expected_topk(scores, db)
    b = da.from_array(random_vectors(rng, 90, 8, np.float32), chunks=(30, 8))
    normalized = dv.normalize(b, backend="numpy")
    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        dask.compute(scores, ids, normalized, scheduler=client)
        m = dv.metrics(client)
        assert _counts(m, "topk", "numpy") == expected["topk"]
        assert _counts(m, "topk-merge", "numpy") == expected["topk-merge"]
        assert _counts(m, "normalize", "numpy") == (3, 90)
        assert len(m.workers) == 2
        # each worker's own table sums to the whole
        per_worker = [r.rows for w in m.workers.values() for r in w if r.operation == "topk"]
        assert sum(per_worker) == expected["topk"][1]
        assert "summed over 2 workers" in repr(m)
        assert len(dv.metrics()) == 0  # nothing ran in this process

        assert dv.metrics(client, reset=True) == m
        assert len(dv.metrics(client)) == 0
        dask.compute(normalized, scheduler=client)
        assert _counts(dv.metrics(client), "normalize", "numpy") == (3, 90)


@pytest.mark.slow
@requires_distributed
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_workers_sharing_a_process_are_counted_once():
    from distributed import Client, LocalCluster

    x = da.ones((60, 4), chunks=(10, 4))
    with (
        LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        dv.normalize(x, backend="numpy").compute(scheduler=client)
        m = dv.metrics(client)
        assert _counts(m, "normalize", "numpy") == (6, 60)
        assert len(m.workers) == 2
        assert m == dv.metrics()  # the workers are this process
