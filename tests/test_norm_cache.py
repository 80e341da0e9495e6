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


def _search(q, db, **options):
    return dask.compute(*dv.cosine_topk(q, 5, database=db, **options), scheduler="sync")


@pytest.mark.parametrize("backend", BACKENDS)
def test_later_searches_reuse_every_chunk_norm(data, backend):
    """A chunk's first search may leave the norms to the backend: the Rust kernel skips them
    for a few float32 queries; NumPy and SciPy compute them anyway. The second caches them."""
    q, db = data
    first = _search(q, db, backend=backend)
    cached = 0 if backend == "rust" else db.numblocks[0]
    assert (NORM_CACHE.hits, len(NORM_CACHE)) == (0, cached)
    second = _search(q[:3], db, backend=backend)
    assert (NORM_CACHE.hits, len(NORM_CACHE)) == (cached, db.numblocks[0])
    third = _search(q[:3], db, backend=backend)
    assert NORM_CACHE.hits == cached + db.numblocks[0]
    for later in (second, third):
        np.testing.assert_array_equal(later[1], first[1][:3])
        np.testing.assert_allclose(later[0], first[0][:3], rtol=1e-6)  # BLAS blocking differs


@requires_rust
@pytest.mark.parametrize("queries", [3, 16, 40])
@pytest.mark.parametrize("chunks", [7, 40, 300])
def test_a_first_search_without_norms_gives_the_same_bits(rng, queries, chunks):
    """The Rust kernel's bounded scales (first search) against the cached exact norms (later
    searches), on clustered float32 rows full of near ties; both against float64 NumPy."""
    x = clustered_vectors(rng, 300, 24, dtype=np.float32)
    x[::25] *= np.float32(1e20)  # squares beyond float32's range: exact scales for these rows
    db, q = da.from_array(x, chunks=chunks), x[rng.integers(0, 300, queries)] * 0.5
    first = _search(q, db, backend="rust")
    assert len(NORM_CACHE) == 0 or queries == 40  # 40 queries: the bfloat16 filter's norms
    _search(q, db, backend="rust")
    again = _search(q, db, backend="rust")
    assert NORM_CACHE.hits >= db.numblocks[0]
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    ref_scores, ref_ids = reference_topk(q, x, 5, "cosine")
    assert_topk_equal(
        *first, ref_scores, ref_ids, metric="cosine", atol=tolerance(np.float32, "cosine", q, x),
        ref_full=reference_candidates(q, x, "cosine"),
    )


@requires_rust
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_first_search_without_norms_still_screens_rows(rng, value):
    x = random_vectors(rng, 200, 16, dtype=np.float32)
    x[123, 4] = value
    db, q = da.from_array(x, chunks=50), random_vectors(rng, 8, 16, dtype=np.float32)
    with pytest.raises(dv.NonFiniteError, match="123"):
        _search(q, db, backend="rust")
    scores, ids = _search(q, db, backend="rust", nan_policy="omit")
    assert 123 not in ids and np.isfinite(scores).all()
    keep = np.arange(200) != 123
    want = _search(q, da.from_array(x[keep], chunks=50), backend="rust")
    np.testing.assert_array_equal(scores, want[0])
    np.testing.assert_array_equal(ids, np.flatnonzero(keep)[want[1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_norms_are_what_the_search_uses(data, backend):
    """Poisoning the cache changes the scores: proof that a hit skips recomputing."""
    q, db = data
    _search(q, db, backend=backend)
    scores, _ = _search(q, db, backend=backend)  # the second search caches them in any case
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
    for _ in range(2):
        _search(q, da.from_array(bad, chunks=100), nan_policy="omit")
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


def test_misses_are_remembered_boundedly(monkeypatch):
    cache = NormCache()
    monkeypatch.setattr(NormCache, "MISSED_KEYS", 2)
    assert [cache.missed_before(("x", i)) for i in (0, 1, 0, 2, 1, 0)] == [
        False, False, True, False, False, False  # 1 was forgotten when 2 came, then 0
    ]
    cache.clear()
    assert not cache.missed_before(("x", 2))
