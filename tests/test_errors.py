"""Every error path: eager argument errors (nothing computed, inputs untouched) and compute-time
non-finite errors naming the global row."""

import re

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from dask_vecops._validate import finite_mask

from . import OMIT_REMEDY, Chunking, match_all, raise_if_dask_computes, random_vectors

# Where the array under test goes: each public function, each input position.
PLACES = [
    "topk-queries",
    "topk-database",
    "topk-self",
    "cosine_topk-queries",
    "cosine_topk-database",
    "cosine_topk-self",
    "similarity-a",
    "similarity-b",
    "similarity-self",
    "normalize",
]
TOPK_PLACES = [place for place in PLACES if "topk" in place]


def call(place, bad, good, k=2, **kwargs):
    """Call the public function of ``place`` with ``bad`` in that position, ``good`` elsewhere."""
    func, position = place.split("-") if "-" in place else (place, "x")
    if func == "normalize":
        return dv.normalize(bad, **kwargs)
    if func == "similarity":
        a, b = {"a": (bad, good), "b": (good, bad), "self": (bad, None)}[position]
        return dv.similarity(a, b, **kwargs)
    topk = dv.topk if func == "topk" else dv.cosine_topk
    queries, database = {"queries": (bad, good), "database": (good, bad), "self": (bad, None)}[
        position
    ]
    return topk(queries, k, database=database, **kwargs)


def assert_raises_eagerly(exception, match, func, *inputs):
    """``func()`` raises at call time, computes nothing, leaves the NumPy ``inputs`` unchanged."""
    before = [np.array(x, copy=True) for x in inputs]
    with raise_if_dask_computes(), pytest.raises(exception, match=match) as info:
        func()
    for x, copy in zip(inputs, before, strict=True):
        np.testing.assert_array_equal(x, copy)
    return info


@pytest.fixture
def good(rng):
    return random_vectors(rng, 10, 4)


def as_input(x, kind):
    return da.from_array(x, chunks=3) if kind == "dask" else x


input_kind = pytest.mark.parametrize("kind", ["numpy", "dask"])


# -- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10,), (10, 4, 2), ()], ids=["1-D", "3-D", "0-D"])
@pytest.mark.parametrize("place", PLACES)
@input_kind
def test_not_2d(place, shape, kind, good):
    bad = np.ones(shape)
    assert_raises_eagerly(
        ValueError, match_all("2-D"), lambda: call(place, as_input(bad, kind), good), bad, good
    )


@pytest.mark.parametrize("place", [p for p in PLACES if not p.endswith(("self", "normalize"))])
@input_kind
def test_feature_sizes_differ(place, kind, rng):
    bad, good = random_vectors(rng, 10, 9), random_vectors(rng, 10, 8)
    assert_raises_eagerly(
        ValueError,
        match_all(8, 9, "feature"),
        lambda: call(place, as_input(bad, kind), as_input(good, kind)),
        bad,
        good,
    )


@pytest.mark.parametrize("place", [p for p in PLACES if p != "normalize"])
def test_unknown_chunk_sizes(place, good):
    x = da.from_array(good, chunks=3)
    unknown = x[x[:, 0] > -np.inf]  # boolean indexing: row chunk sizes become nan
    assert np.isnan(unknown.shape[0])
    assert_raises_eagerly(
        ValueError, match_all("compute_chunk_sizes"), lambda: call(place, unknown, good), good
    )


# -- k --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, -10])
@pytest.mark.parametrize("place", TOPK_PLACES)
def test_k_smaller_than_one(place, k, good):
    assert_raises_eagerly(
        ValueError, r"(?<![A-Za-z_])k(?![A-Za-z_])", lambda: call(place, good, good, k=k), good
    )


@pytest.mark.parametrize("k", [2.5, 3.0, "3", None, np.float64(3)])
@pytest.mark.parametrize("place", TOPK_PLACES)
def test_k_not_an_integer(place, k, good):
    assert_raises_eagerly(TypeError, None, lambda: call(place, good, good, k=k), good)


@pytest.mark.parametrize("func", [dv.topk, dv.cosine_topk])
@pytest.mark.parametrize("k", [11, 50])
@input_kind
def test_k_larger_than_database_rows(func, k, kind, rng):
    q, db = random_vectors(rng, 5, 4), random_vectors(rng, 10, 4)
    assert_raises_eagerly(
        ValueError,
        match_all(k, 10),
        lambda: func(as_input(q, kind), k, database=as_input(db, kind)),
        q,
        db,
    )


@pytest.mark.parametrize("func", [dv.topk, dv.cosine_topk])
@pytest.mark.parametrize("k", [10, 11])
@input_kind
def test_k_larger_than_other_rows_in_self_join(func, k, kind, good):
    # A self-join excludes the row itself: 10 rows leave 9 other rows.
    assert_raises_eagerly(
        ValueError, match_all(k, 9, "other rows"), lambda: func(as_input(good, kind), k), good
    )


@input_kind
def test_self_join_of_a_single_row(kind, good):
    one = good[:1]
    assert_raises_eagerly(
        ValueError,
        match_all(1, 0, "other rows"),
        lambda: dv.cosine_topk(as_input(one, kind), 1),
        one,
    )


# -- dtypes ---------------------------------------------------------------------------------------


def _bad_dtype_array(dtype):
    if np.dtype(dtype).kind == "M":
        return np.arange(40).astype(dtype).reshape(10, 4)
    if np.dtype(dtype).kind in "SU":
        return np.full((10, 4), "ab", dtype=dtype)
    if np.dtype(dtype).kind == "O":
        return np.ones((10, 4)).astype(object)
    return (np.ones((10, 4)) * (1 + 1j)).astype(dtype)


def _dtype_names(dtype):
    """Any of the names a message may use for ``dtype``."""
    dtype = np.dtype(dtype)
    names = {
        dtype.name,
        str(dtype),
        dtype.type.__name__,
        dtype.type.__name__.rstrip("_"),
        dtype.str,
    }
    return "(" + "|".join(sorted(map(str.lower, map(re.escape, names)))) + ")"


@pytest.mark.parametrize(
    "dtype", ["complex64", "complex128", "object", "U2", "S2", "datetime64[ns]"]
)
@pytest.mark.parametrize("place", PLACES)
@input_kind
def test_unsupported_dtypes(place, dtype, kind, good):
    bad = _bad_dtype_array(dtype)
    info = assert_raises_eagerly(
        TypeError, None, lambda: call(place, as_input(bad, kind), good), bad, good
    )
    assert re.search(_dtype_names(dtype), str(info.value).lower()), (
        f"message does not name the dtype {np.dtype(dtype)}: {info.value}"
    )


# -- unknown names --------------------------------------------------------------------------------


@pytest.mark.parametrize("func", ["topk", "similarity"])
def test_unknown_metric(func, good):
    fn = (
        (lambda: dv.topk(good, 2, metric="cosinus"))
        if func == "topk"
        else (lambda: dv.similarity(good, metric="cosinus"))
    )
    assert_raises_eagerly(
        ValueError, match_all("cosinus", "cosine", "dot", "euclidean", "manhattan"), fn, good
    )


@pytest.mark.parametrize("norm", ["l3", "L2x", "inf"])
def test_unknown_norm(norm, good):
    assert_raises_eagerly(
        ValueError, match_all(norm, "l2", "l1", "max"), lambda: dv.normalize(good, norm=norm), good
    )


@pytest.mark.parametrize(
    "place", ["topk-self", "cosine_topk-database", "similarity-a", "normalize"]
)
def test_unknown_backend(place, good):
    assert_raises_eagerly(
        ValueError,
        match_all("fortran", "numpy", "scipy", "rust", "auto"),
        lambda: call(place, good, good, backend="fortran"),
        good,
    )


@pytest.mark.parametrize(
    "place", ["topk-self", "cosine_topk-database", "similarity-a", "normalize"]
)
def test_unknown_nan_policy(place, good):
    assert_raises_eagerly(
        ValueError,
        match_all("ignore", "raise", "omit"),
        lambda: call(place, good, good, nan_policy="ignore"),
        good,
    )


# -- unavailable backends -------------------------------------------------------------------------

UNAVAILABLE = [entry for entry in dv.backends() if not entry.available]


def test_backend_unavailable_error_is_a_runtime_error():
    assert issubclass(dv.BackendUnavailableError, RuntimeError)


@pytest.mark.parametrize(
    "place", ["topk-self", "cosine_topk-database", "similarity-b", "normalize"]
)
@pytest.mark.parametrize("entry", UNAVAILABLE or [None], ids=lambda e: getattr(e, "name", "none"))
def test_unavailable_backend_raises(entry, place, good):
    if entry is None:
        pytest.skip("every backend is available here")
    info = assert_raises_eagerly(
        dv.BackendUnavailableError, None, lambda: call(place, good, good, backend=entry.name), good
    )
    assert entry.reason and entry.reason in str(info.value), (entry.reason, str(info.value))


@pytest.mark.parametrize(
    "place", ["topk-self", "cosine_topk-database", "similarity-b", "normalize"]
)
def test_cuda_backend_unavailable_here(place, good):
    entry = {e.name: e for e in dv.backends()}["cuda"]
    if entry.available:
        pytest.skip("cuda is available here")
    with pytest.raises(dv.BackendUnavailableError, match=match_all(entry.reason)):
        call(place, good, good, backend="cuda")


# -- non-finite values: raised at compute time ---------------------------------------------------


def test_non_finite_error_is_a_value_error():
    assert issubclass(dv.NonFiniteError, ValueError)


def assert_raises_at_compute(match, build, *inputs):
    """Building the graph succeeds and computes nothing; computing raises NonFiniteError."""
    before = [x.copy() for x in inputs]
    with raise_if_dask_computes():
        lazy = build()
    # The synchronous scheduler runs the tasks in a fixed order: the same task raises every time.
    with pytest.raises(dv.NonFiniteError, match=match):
        dask.compute(lazy, scheduler="sync")
    for x, copy in zip(inputs, before, strict=True):
        np.testing.assert_array_equal(x, copy)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("place", ["queries", "database", "self"])
@pytest.mark.parametrize("nan_policy", [None, "raise"])
def test_topk_non_finite_raises_naming_the_global_row(backend, place, value, nan_policy, rng):
    q, db = random_vectors(rng, 13, 6), random_vectors(rng, 50, 6)
    bad, row = (q, 11) if place == "queries" else (db, 37)
    bad[row, 2] = value
    chunk = Chunking("uneven")  # row 37 of 50 and row 11 of 13 lie in later chunks
    if place == "self":
        name, build = "x", lambda: dv.topk(chunk(db), 3, backend=backend, nan_policy=nan_policy)
    else:
        name = place
        build = lambda: dv.topk(
            chunk(q), 3, database=chunk(db), backend=backend, nan_policy=nan_policy
        )  # noqa: E731
    assert_raises_at_compute(match_all(row, name, OMIT_REMEDY), build, q, db)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cosine_topk_and_metrics_raise_too(backend, metric, rng):
    db = random_vectors(rng, 20, 4)
    db[15, 0] = np.nan
    assert_raises_at_compute(
        match_all(15, OMIT_REMEDY),
        lambda: dv.topk(da.from_array(db, chunks=6), 2, metric=metric, backend=backend),
        db,
    )
    assert_raises_at_compute(
        match_all(15, "database", OMIT_REMEDY),
        lambda: dv.cosine_topk(db[:3], 2, database=db, backend=backend),
        db,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_finite_values_are_not_taken_for_non_finite(dtype, rng):
    """A block whose sum of squares overflows (the quick check a task makes first) holds only
    finite rows: the row by row check clears it. A bad row is still named by its global id,
    also when the task's row ids are a range."""
    x = random_vectors(rng, 30, 6, dtype)
    x[7] *= np.sqrt(np.finfo(dtype).max)
    assert np.isinf(np.einsum("ij,ij->", x, x)) and np.isfinite(x).all()
    assert finite_mask(x, range(100, 130), "database", "raise") is None
    x[9, 2] = np.nan
    with pytest.raises(dv.NonFiniteError, match=match_all(109, "database", OMIT_REMEDY)):
        finite_mask(x, range(100, 130), "database", "raise")
    keep = finite_mask(x, range(100, 130), "database", "omit")
    assert keep.tolist() == [i != 9 for i in range(30)]


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("position", ["a", "b", "self"])
def test_similarity_non_finite_raises_naming_the_global_row(backend, metric, position, value, rng):
    a, b = random_vectors(rng, 20, 5), random_vectors(rng, 30, 5)
    # (Row 3 of a alone sits in its second chunk: it is met first as a column, as "b" would be.)
    bad, row = {"a": (a, 17), "b": (b, 23), "self": (a, 3)}[position]
    bad[row, 1] = value
    chunk = Chunking("uneven")
    other = None if position == "self" else chunk(b)
    # the input's name as a word: "a", "b" (or "x"/"a" for a alone)
    name = {"a": r"\ba\b", "b": r"\bb\b", "self": r"\b(a|x)\b"}[position]
    assert_raises_at_compute(
        match_all(row, re.compile(name), OMIT_REMEDY),
        lambda: dv.similarity(chunk(a), other, metric=metric, backend=backend),
        a,
        b,
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm", ["l2", "l1", "max"])
def test_normalize_non_finite_raises_naming_the_global_row(backend, norm, value, rng):
    x = random_vectors(rng, 40, 5)
    x[33, 4] = value
    assert_raises_at_compute(
        match_all(33, re.compile(r"\bx\b"), OMIT_REMEDY),
        lambda: dv.normalize(Chunking("uneven")(x), norm=norm, backend=backend),
        x,
    )


# -- the CUDA backend's reasons, whatever this machine has ---------------------------------------


def test_cuda_unavailable_reasons_name_what_is_missing(monkeypatch):
    import importlib.util

    from dask_vecops.backends import cuda_backend

    real_find_spec = importlib.util.find_spec
    for missing in ("numba", "cupy"):
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == missing else real_find_spec(name, *a)
        )
        reason = (
            cuda_backend._gpu_unavailable_reason() if missing == "cupy" else cuda_backend.unavailable_reason()
        )
        assert missing in reason and "dask-vecops[cuda]" in reason, reason
    monkeypatch.undo()


def test_cuda_unavailable_reason_reaches_the_caller(monkeypatch, good):
    from dask_vecops.backends import cuda_backend, registry

    monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda: "no GPU in this test")
    registry._load.cache_clear()
    try:
        assert {b.name: b.reason for b in dv.backends()}["cuda"] == "no GPU in this test"
        with pytest.raises(dv.BackendUnavailableError, match=match_all("'cuda'", "no GPU in this test")):
            dv.cosine_topk(good, 2, backend="cuda")
    finally:
        monkeypatch.undo()
        registry._load.cache_clear()
