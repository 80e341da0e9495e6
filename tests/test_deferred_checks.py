"""Finiteness checks left on the device: what top-k does with float32 GPU blocks under "raise".

Pair tasks then read nothing back from the GPU: each finds its first non-finite query and
database rows on the device, merges keep the least, and the batch's last merge reads them and
raises. These tests make NumPy blocks take the same path, so it runs without a GPU; the GPU tests
(``tests/test_cuda.py``) run it for real on CuPy blocks.
"""

import importlib

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops.graph._norm_cache import NORM_CACHE

from . import OMIT_REMEDY, Chunking, check_topk, match_all, random_vectors

topk_graph = importlib.import_module("dask_vecops.graph.topk")


@pytest.fixture
def deferred(monkeypatch):
    """NumPy float32 blocks defer their checks as float32 GPU blocks do; returns the verdicts."""
    verdicts = []
    real = topk_graph._defers_checks

    def defers(db, nan_policy):
        verdicts.append(nan_policy == "raise" and db.dtype == np.float32)
        assert not real(db, nan_policy)  # NumPy blocks check at once, unless made to defer
        return verdicts[-1]

    monkeypatch.setattr(topk_graph, "_defers_checks", defers)
    NORM_CACHE.clear()
    yield verdicts
    NORM_CACHE.clear()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("place", ["queries", "database", "self"])
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_the_last_merge_raises_naming_the_first_global_row(
    deferred, backend, metric, place, value, rng
):
    q, db = random_vectors(rng, 13, 6, np.float32), random_vectors(rng, 50, 6, np.float32)
    bad, rows = (q, (11, 12)) if place == "queries" else (db, (37, 45))
    bad[rows[1], 0] = value
    bad[rows[0], 2] = value  # the first of two, in another chunk than the second: it is named
    chunk = Chunking("uneven")
    if place == "self":
        name, result = "x", dv.topk(chunk(db), 3, metric=metric, backend=backend)
    else:
        name = place
        result = dv.topk(chunk(q), 3, database=chunk(db), metric=metric, backend=backend)
    match = match_all(f"row {rows[0]} of {name}", OMIT_REMEDY)
    for _ in range(2):  # the second time with the norms the first search cached, for cosine
        with pytest.raises(dv.NonFiniteError, match=match):
            dask.compute(*result, scheduler="sync")
    assert deferred and all(deferred)


def test_queries_are_named_before_the_database(deferred, rng):
    q, db = random_vectors(rng, 8, 5, np.float32), random_vectors(rng, 40, 5, np.float32)
    q[6, 1] = db[2, 3] = np.nan
    result = dv.cosine_topk(q, 2, database=da.from_array(db, chunks=10))
    with pytest.raises(dv.NonFiniteError, match="row 6 of queries"):
        dask.compute(*result)


@pytest.mark.parametrize("self_join", [False, True])
def test_finite_results_are_the_checked_ones(
    deferred, monkeypatch, backend, metric, chunking, self_join, rng
):
    db = random_vectors(rng, 60, 7, np.float32)
    q = db if self_join else random_vectors(rng, 9, 7, np.float32)
    database = None if self_join else chunking(db)

    def search():
        return dv.topk(chunking(q), 4, database=database, metric=metric, backend=backend)

    deferred_scores, deferred_ids = check_topk(search(), q, db, 4, metric, exclude_self=self_join)
    assert deferred and all(deferred)
    monkeypatch.setattr(topk_graph, "_defers_checks", lambda db, nan_policy: False)
    checked = dask.compute(*search())
    np.testing.assert_array_equal(deferred_ids, checked[1])
    np.testing.assert_array_equal(deferred_scores, checked[0])


def test_unchecked_norms_are_cached_apart(deferred, rng):
    """Norms cached without a check may belong to non-finite rows: a checked search (here one
    that omits such rows) never takes them for checked ones."""
    db = random_vectors(rng, 30, 4, np.float32)
    db[21, 0] = np.nan
    database = da.from_array(db, chunks=10)
    with pytest.raises(dv.NonFiniteError, match="row 21 of database"):
        dask.compute(*dv.cosine_topk(db[:3], 2, database=database))
    assert sorted(key[-1] for key in NORM_CACHE._entries) == ["unchecked"] * 3
    omitted = dv.cosine_topk(db[:3], 29, database=database, nan_policy="omit")
    scores, ids = dask.compute(*omitted)
    assert (np.sort(ids, axis=1) == [i for i in range(30) if i != 21]).all()
    assert np.isfinite(scores).all()
    assert deferred == [True] * 3 + [False] * 3
    checked = [key for key in NORM_CACHE._entries if key[-1] != "unchecked"]
    assert sorted(key[1] for key in checked) == [0, 10]  # its own, of the finite chunks only


def test_only_float32_gpu_blocks_under_raise_defer():
    defers = topk_graph._defers_checks
    block = np.zeros((3, 2), np.float32)
    assert not defers(block, "raise") and not defers(block, "omit")  # NumPy: checked at once
