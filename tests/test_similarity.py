"""similarity against the float64 reference: backends x metrics x dtypes x chunkings."""

import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import (
    Chunking,
    clustered_vectors,
    exact_vectors,
    raise_if_dask_computes,
    random_vectors,
    result_dtype,
)
from .reference import assert_similarity_close, reference_similarity, tolerance

# One-row chunks give (rows of a) x (rows of b) output chunks; dask's blockwise says so with a
# PerformanceWarning, as it does for `da.outer`. That is information, not a failure.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Increasing number of chunks:dask.array.core.PerformanceWarning"
)

pair = pytest.mark.parametrize("pair", [True, False], ids=["a-b", "a-only"])


def check_similarity(s, a, b, metric, dtype=None):
    """``s`` is a lazy matrix of the right shape and dtype whose values match the reference."""
    other = a if b is None else b
    expected = np.dtype(dtype or result_dtype(a.dtype, other.dtype))
    assert isinstance(s, da.Array), type(s)
    assert s.shape == (len(a), len(other)) and s.dtype == expected, (s.shape, s.dtype)
    out = s.compute()
    assert out.shape == s.shape and out.dtype == expected, (out.shape, out.dtype)
    assert_similarity_close(
        out, reference_similarity(a, b, metric), metric, tolerance(expected, metric, a, other)
    )
    return out


@pair
def test_similarity_matches_reference(backend, metric, dtype, chunking, pair, rng):
    a = random_vectors(rng, 23, 8, dtype)
    b = random_vectors(rng, 31, 8, dtype) if pair else None
    s = dv.similarity(chunking(a), chunking(b), metric=metric, backend=backend)
    check_similarity(s, a, b, metric)


@pair
def test_similarity_clustered_and_exact_data(backend, metric, pair, rng):
    for make in (clustered_vectors, lambda rng, n, d: exact_vectors(rng, n, d, metric)):
        a = make(rng, 40, 6)
        b = make(rng, 17, 6) if pair else None
        s = dv.similarity(a, b, metric=metric, backend=backend)
        check_similarity(s, a, b, metric)


def test_similarity_of_a_with_itself(backend, metric, rng):
    a = random_vectors(rng, 19, 5)
    alone = dv.similarity(a, metric=metric, backend=backend).compute()
    twice = dv.similarity(a, a, metric=metric, backend=backend).compute()
    atol = tolerance(np.float64, metric, a)
    assert_similarity_close(alone, twice, metric, atol)
    assert_similarity_close(alone, alone.T, metric, atol)


def test_similarity_exact_data_is_exact(backend, metric, dtype, rng):
    # Integer-valued data: every backend gets the exactly representable answer.
    a = exact_vectors(rng, 15, 8, metric, dtype=dtype)
    b = exact_vectors(rng, 9, 8, metric, dtype=dtype)
    out = dv.similarity(a, b, metric=metric, backend=backend).compute()
    np.testing.assert_array_equal(out, reference_similarity(a, b, metric).astype(dtype))


@pytest.mark.parametrize(
    "a_dtype, b_dtype, expected",
    [
        ("float16", "float16", "float32"),
        ("float32", "float32", "float32"),
        ("float64", "float64", "float64"),
        ("int64", "int64", "float64"),
        ("int32", "int32", "float64"),
        ("float32", "float64", "float64"),
        ("float16", "float32", "float32"),
    ],
)
def test_similarity_output_dtypes(backend, metric, a_dtype, b_dtype, expected, rng):
    a = (4 * random_vectors(rng, 7, 5)).astype(a_dtype)
    b = (4 * random_vectors(rng, 9, 5)).astype(b_dtype)
    check_similarity(dv.similarity(a, b, metric=metric, backend=backend), a, b, metric, expected)


def test_similarity_numpy_input(backend, metric, rng):
    a, b = random_vectors(rng, 7, 5), random_vectors(rng, 9, 5)
    check_similarity(dv.similarity(a, b, metric=metric, backend=backend), a, b, metric)
    check_similarity(
        dv.similarity(a, da.from_array(b, chunks=4), metric=metric, backend=backend), a, b, metric
    )


def test_similarity_is_lazy(backend, metric, chunking, rng):
    a, b = random_vectors(rng, 20, 6), random_vectors(rng, 13, 6)
    with raise_if_dask_computes():
        s = dv.similarity(chunking(a), chunking(b), metric=metric, backend=backend)
        s_self = dv.similarity(a, metric=metric, backend=backend)
    check_similarity(s, a, b, metric)
    check_similarity(s_self, a, None, metric)


def test_cosine_similarity_of_zero_vectors_is_zero(backend, chunking, rng):
    a = random_vectors(rng, 12, 5)
    a[[0, 7]] = 0
    b = random_vectors(rng, 10, 5)
    b[[4]] = 0
    out = check_similarity(dv.similarity(chunking(a), chunking(b), backend=backend), a, b, "cosine")
    np.testing.assert_array_equal(out[[0, 7]], 0)
    np.testing.assert_array_equal(out[:, 4], 0)
    alone = dv.similarity(chunking(a), backend=backend).compute()
    np.testing.assert_array_equal(alone[[0, 7]][:, [0, 7]], 0)  # zero vs zero is 0 too


def test_similarity_does_not_modify_inputs(backend, metric, rng):
    a, b = 3 * random_vectors(rng, 8, 5) + 1, 3 * random_vectors(rng, 6, 5) + 1
    a_before, b_before = a.copy(), b.copy()
    dv.similarity(a, b, metric=metric, backend=backend).compute()
    dv.similarity(da.from_array(a, chunks=3), metric=metric, backend=backend).compute()
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pair
def test_similarity_omit(backend, metric, chunking, value, pair, rng):
    a = random_vectors(rng, 15, 6)
    a[[3, 11], [0, 5]] = value
    b = random_vectors(rng, 12, 6) if pair else None
    if pair:
        b[[0, 9], [2, 2]] = value
    s = dv.similarity(chunking(a), chunking(b), metric=metric, backend=backend, nan_policy="omit")
    out = check_similarity(s, a, b, metric)
    assert np.isnan(out[[3, 11]]).all()
    bad_columns = [0, 9] if pair else [3, 11]
    assert np.isnan(out[:, bad_columns]).all()
    good_rows = np.delete(np.arange(15), [3, 11])
    good_columns = np.delete(np.arange(out.shape[1]), bad_columns)
    assert np.isfinite(out[np.ix_(good_rows, good_columns)]).all()


def test_similarity_split_features_only(backend, metric, rng):
    # A dask array chunked only along features: the library rechunks it to one feature chunk.
    a, b = random_vectors(rng, 9, 12), random_vectors(rng, 11, 12)
    s = dv.similarity(
        da.from_array(a, chunks=(9, 5)),
        da.from_array(b, chunks=(4, 3)),
        metric=metric,
        backend=backend,
    )
    check_similarity(s, a, b, metric)


def test_similarity_single_rows(backend, metric, rng):
    a, b = random_vectors(rng, 1, 4), random_vectors(rng, 1, 4)
    check_similarity(dv.similarity(a, b, metric=metric, backend=backend), a, b, metric)
    check_similarity(
        dv.similarity(Chunking("one-row")(a), metric=metric, backend=backend), a, None, metric
    )


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_similarity_non_contiguous_inputs(backend, metric, layout, rng):
    base = random_vectors(rng, 30, 10)
    a = np.asfortranarray(base[:, :5]) if layout == "fortran" else base[::2, ::2]
    b = a[3:]
    check_similarity(dv.similarity(a, b, metric=metric, backend=backend), a, b, metric)
    check_similarity(
        dv.similarity(da.from_array(a, chunks=(4, 5)), metric=metric, backend=backend),
        a,
        None,
        metric,
    )
