"""Database norms are computed once per dask array and reused by later cosine searches."""

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops.graph._norm_cache import NORM_CACHE, NormCache

from . import BACKENDS

@pytest.fixture(autouse=True)
def empty_cache():
    NORM_CACHE.clear()
    yield
    NORM_CACHE.clear()


@pytest.fixture
def data(rng):
    db = da.from_array(rng.standard_normal((300, 8)).astype("float32"), chunks=100)
    return rng.standard_normal((7, 8)).astype("float32"), db


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_search_reuses_every_chunk_norm(data, backend):
    q, db = data
    first = dask.compute(*dv.cosine_topk(q, 5, database=db, backend=backend), scheduler="sync")
    assert (NORM_CACHE.hits, len(NORM_CACHE)) == (0, db.numblocks[0])
    second = dask.compute(*dv.cosine_topk(q[:3], 5, database=db, backend=backend), scheduler="sync")
    assert NORM_CACHE.hits == db.numblocks[0]
    np.testing.assert_array_equal(second[1], first[1][:3])
    np.testing.assert_allclose(second[0], first[0][:3], rtol=1e-6)  # BLAS blocking differs by shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_norms_are_what_the_search_uses(data, backend):
    """Poisoning the cache changes the scores: proof that a hit skips recomputing."""
    q, db = data
    scores, _ = dask.compute(*dv.cosine_topk(q, 5, database=db, backend=backend), scheduler="sync")
    for key in list(NORM_CACHE._entries):
        NORM_CACHE._entries[key] = NORM_CACHE._entries[key] * 2
    halved, _ = dask.compute(*dv.cosine_topk(q, 5, database=db, backend=backend), scheduler="sync")
    np.testing.assert_allclose(halved, scores / 2, rtol=1e-5)


def test_other_metrics_and_other_data_do_not_hit(data, rng):
    q, db = data
    dask.compute(*dv.topk(q, 5, database=db, metric="dot"), scheduler="sync")
    assert len(NORM_CACHE) == 0
    dask.compute(*dv.cosine_topk(q, 5, database=db), scheduler="sync")
    other = da.from_array(rng.standard_normal((300, 8)).astype("float32"), chunks=100)
    dask.compute(*dv.cosine_topk(q, 5, database=other), scheduler="sync")
    assert NORM_CACHE.hits == 0


def test_cache_can_be_turned_off(data):
    q, db = data
    with dask.config.set({"vecops.norm-cache": 0}):
        dask.compute(*dv.cosine_topk(q, 5, database=db), scheduler="sync")
    assert len(NORM_CACHE) == 0


def test_omitted_rows_are_not_cached(data):
    q, db = data
    bad = db.compute()
    bad[150] = np.nan
    dask.compute(*dv.cosine_topk(q, 5, database=da.from_array(bad, chunks=100), nan_policy="omit"))
    assert len(NORM_CACHE) == 2  # the chunk holding row 150 is left out


def test_least_recently_used_entries_are_evicted():
    cache = NormCache()
    for i in range(4):
        cache.put(("x", i), np.zeros(10, np.float32), capacity=120)
    assert len(cache) == 3 and cache.get(("x", 0)) is None
    cache.get(("x", 1))
    cache.put(("x", 4), np.zeros(10, np.float32), capacity=120)
    assert cache.get(("x", 1)) is not None and cache.get(("x", 2)) is None
    cache.put(("big", 0), np.zeros(100, np.float32), capacity=120)
    assert cache.get(("big", 0)) is None
