"""Database norms are computed once per dask array and reused by later cosine searches."""

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops.graph._norm_cache import NORM_CACHE, NormCache

from . import BACKENDS, clustered_vectors, random_vectors, requires_rust
from .reference import assert_topk_equal, reference_candidates, reference_topk, tolerance

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


def _uncached_search(q, db, **options):
    """A search with the cache off: the backend may skip the norms it does not need."""
    with dask.config.set({"vecops.norm-cache": 0}):
        found = dv.cosine_topk(q, 5, database=db, backend="rust", **options)
    return dask.compute(*found, scheduler="sync")


@requires_rust
@pytest.mark.parametrize("queries", [3, 16, 40])
@pytest.mark.parametrize("chunks", [7, 40, 300])
def test_without_the_cache_bounded_scales_give_the_same_bits(rng, queries, chunks, monkeypatch):
    """The Rust kernel's bounded scales (cache off: no norms to keep) against the cached exact
    norms, on clustered float32 rows full of near ties; both against float64 NumPy."""
    x = clustered_vectors(rng, 300, 24, dtype=np.float32)
    x[::25] *= np.float32(1e20)  # squares beyond float32's range: exact scales for these rows
    db, q = da.from_array(x, chunks=chunks), x[rng.integers(0, 300, queries)] * 0.5
    from dask_vecops.backends import rust_backend

    returned = []
    kernel = rust_backend._rust.topk_block

    def spy(*args):
        found = kernel(*args)
        returned.append((args[6], found[2] is None))  # (lazy_norms, no norms returned)
        return found

    monkeypatch.setattr(rust_backend._rust, "topk_block", spy)
    bounded = _uncached_search(q, db)
    # 40 queries take the bfloat16 filter where the CPU has it, which computes the norms.
    assert all(lazy for lazy, _ in returned) and (queries == 40 or all(n for _, n in returned))
    returned.clear()
    dask.compute(*dv.cosine_topk(q, 5, database=db, backend="rust"), scheduler="sync")
    cached = dask.compute(*dv.cosine_topk(q, 5, database=db, backend="rust"), scheduler="sync")
    assert NORM_CACHE.hits == db.numblocks[0] and not any(lazy for lazy, _ in returned)
    np.testing.assert_array_equal(bounded[0], cached[0])
    np.testing.assert_array_equal(bounded[1], cached[1])
    ref_scores, ref_ids = reference_topk(q, x, 5, "cosine")
    assert_topk_equal(
        *bounded, ref_scores, ref_ids, metric="cosine", atol=tolerance(np.float32, "cosine", q, x),
        ref_full=reference_candidates(q, x, "cosine"),
    )


@requires_rust
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_without_the_cache_rows_not_finite_are_still_screened(rng, value):
    x = random_vectors(rng, 200, 16, dtype=np.float32)
    x[123, 4] = value
    db, q = da.from_array(x, chunks=50), random_vectors(rng, 8, 16, dtype=np.float32)
    with pytest.raises(dv.NonFiniteError, match="123"):
        _uncached_search(q, db)
    scores, ids = _uncached_search(q, db, nan_policy="omit")
    assert 123 not in ids and np.isfinite(scores).all()
    keep = np.arange(200) != 123
    want = _uncached_search(q, da.from_array(x[keep], chunks=50))
    np.testing.assert_array_equal(scores, want[0])
    np.testing.assert_array_equal(ids, np.flatnonzero(keep)[want[1]])


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
