"""topk and cosine_topk against the float64 reference: backends x metrics x dtypes x chunkings."""

import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import (
    METRICS,
    Chunking,
    check_topk,
    clustered_vectors,
    exact_vectors,
    raise_if_dask_computes,
    random_vectors,
)
from .reference import reference_topk

N_DB, N_Q, D = 50, 13, 8

self_join = pytest.mark.parametrize("self_join", [False, True], ids=["database", "self-join"])


SINGLE_CHUNK = Chunking("single")


def run_topk(x, k, db=None, *, chunking=SINGLE_CHUNK, **kwargs):
    """dv.topk on chunked copies of the NumPy inputs (``db=None``: self-join)."""
    return dv.topk(chunking(x), k, database=chunking(db), **kwargs)


@self_join
def test_topk_matches_reference(backend, metric, dtype, chunking, self_join, rng):
    db = random_vectors(rng, N_DB, D, dtype)
    q = db if self_join else random_vectors(rng, N_Q, D, dtype)
    result = run_topk(
        q, 7, None if self_join else db, chunking=chunking, metric=metric, backend=backend
    )
    check_topk(result, q, db, 7, metric, exclude_self=self_join)


@self_join
def test_cosine_topk_matches_reference(backend, dtype, chunking, self_join, rng):
    db = random_vectors(rng, N_DB, D, dtype)
    q = db if self_join else random_vectors(rng, N_Q, D, dtype)
    database = None if self_join else chunking(db)
    result = dv.cosine_topk(chunking(q), 5, database=database, backend=backend)
    check_topk(result, q, db, 5, "cosine", exclude_self=self_join)


@pytest.mark.parametrize("k", [1, 2, 24, "all"])
@self_join
def test_topk_k_from_one_to_all_rows(backend, metric, k, self_join, rng):
    db = random_vectors(rng, 25, 6)
    q = db if self_join else random_vectors(rng, 9, 6)
    if k == "all":  # every row there is: the other rows for a self-join
        k = len(db) - 1 if self_join else len(db)
    result = run_topk(
        q, k, None if self_join else db, chunking=Chunking("uneven"), metric=metric, backend=backend
    )
    scores, ids = check_topk(result, q, db, k, metric, exclude_self=self_join)
    if k == len(db):
        assert (np.sort(ids, axis=1) == np.arange(len(db))).all()


@pytest.mark.parametrize("split_every", [None, 2, 3, 4])
@self_join
def test_topk_split_every_irregular_chunks(backend, metric, split_every, self_join, rng):
    # dask's test_topk_argtopk chunks, to stress the chunk, combine and aggregate steps.
    db = random_vectors(rng, 800, 16, np.float32)
    q = db if self_join else random_vectors(rng, 30, 16, np.float32)
    x = da.from_array(db, chunks=((120, 80, 100, 200, 300), (16,)))
    queries = x if self_join else da.from_array(q, chunks=((10, 3, 17), (16,)))
    result = dv.topk(
        queries,
        10,
        database=None if self_join else x,
        metric=metric,
        backend=backend,
        split_every=split_every,
    )
    check_topk(result, q, db, 10, metric, exclude_self=self_join)


@self_join
def test_topk_exact_ties_go_to_lower_id(backend, metric, dtype, chunking, self_join, rng):
    # Few distinct rows, many duplicates, exact scores: the tie rule alone decides the order.
    db = exact_vectors(rng, 40, 8, metric, n_distinct=6, dtype=dtype)
    q = db if self_join else exact_vectors(rng, 11, 8, metric, n_distinct=4, dtype=dtype)
    result = run_topk(
        q, 12, None if self_join else db, chunking=chunking, metric=metric, backend=backend
    )
    check_topk(result, q, db, 12, metric, exclude_self=self_join, exact_ids=True)


def _unit(*indices, d=4):
    out = np.zeros((len(indices), d))
    out[np.arange(len(indices)), indices] = 1.0
    return out


def test_topk_ties_by_hand(backend, metric, chunking):
    # Rows 0, 2, 3 equal the query: they come first, in id order; rows 1, 4, 5 tie after them.
    db = _unit(0, 1, 0, 0, 1, 2)
    scores, ids = run_topk(_unit(0), 5, db, chunking=chunking, metric=metric, backend=backend)
    np.testing.assert_array_equal(ids.compute(), [[0, 2, 3, 1, 4]])
    best, rest = {"cosine": (1, 0), "dot": (1, 0), "euclidean": (0, 2**0.5), "manhattan": (0, 2)}[
        metric
    ]
    np.testing.assert_allclose(scores.compute(), [[best, best, best, rest, rest]])


def test_self_join_excludes_self_not_duplicates_by_hand(backend, metric, chunking):
    x = _unit(0, 1, 0, 0, 1, 2)
    scores, ids = run_topk(x, 2, chunking=chunking, metric=metric, backend=backend)
    # Each row's duplicates come first (lowest id first), never the row itself.
    expected = [[2, 3], [4, 0], [0, 3], [0, 2], [1, 0], [0, 1]]
    np.testing.assert_array_equal(ids.compute(), expected)


@self_join
def test_topk_clustered_data(backend, metric, self_join, rng):
    db = clustered_vectors(rng, 300, 16, dtype=np.float32)
    q = db if self_join else clustered_vectors(rng, 40, 16, dtype=np.float32)
    result = run_topk(
        q,
        15,
        None if self_join else db,
        chunking=Chunking("uneven"),
        metric=metric,
        backend=backend,
    )
    check_topk(result, q, db, 15, metric, exclude_self=self_join)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_topk_integer_input(backend, metric, dtype, rng):
    db = rng.integers(-5, 6, (30, 5)).astype(dtype)
    q = rng.integers(-5, 6, (7, 5)).astype(dtype)
    result = run_topk(q, 6, db, chunking=Chunking("uneven"), metric=metric, backend=backend)
    check_topk(result, q, db, 6, metric, dtype=np.float64)


@pytest.mark.parametrize(
    "q_dtype, db_dtype, expected",
    [
        ("float16", "float16", "float32"),
        ("float32", "float32", "float32"),
        ("float64", "float64", "float64"),
        ("int64", "int64", "float64"),
        ("float32", "float64", "float64"),
        ("float64", "float32", "float64"),
        ("float16", "float32", "float32"),
        ("int32", "float32", "float64"),
    ],
)
def test_topk_output_dtypes(backend, metric, q_dtype, db_dtype, expected, rng):
    db = (4 * random_vectors(rng, 20, 5)).astype(db_dtype)
    q = (4 * random_vectors(rng, 6, 5)).astype(q_dtype)
    result = run_topk(q, 4, db, metric=metric, backend=backend)
    check_topk(result, q, db, 4, metric, dtype=expected)


@pytest.mark.parametrize("dtype", ["float16", "int64"])
def test_self_join_output_dtypes(backend, dtype, rng):
    x = (4 * random_vectors(rng, 20, 5)).astype(dtype)
    expected = {"float16": "float32", "int64": "float64"}[dtype]
    check_topk(
        dv.cosine_topk(x, 3, backend=backend), x, x, 3, "cosine", exclude_self=True, dtype=expected
    )


@self_join
def test_topk_numpy_input(backend, metric, self_join, rng):
    db = random_vectors(rng, 30, 6, np.float32)
    q = db if self_join else random_vectors(rng, 5, 6, np.float32)
    result = dv.topk(q, 4, database=None if self_join else db, metric=metric, backend=backend)
    check_topk(result, q, db, 4, metric, exclude_self=self_join)


def test_topk_mixed_numpy_and_dask_inputs(backend, rng):
    db = random_vectors(rng, 30, 6)
    q = random_vectors(rng, 5, 6)
    for queries, database in [(q, da.from_array(db, chunks=7)), (da.from_array(q, chunks=2), db)]:
        check_topk(
            dv.cosine_topk(queries, 4, database=database, backend=backend), q, db, 4, "cosine"
        )


@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), np.uint8(3)])
def test_topk_accepts_numpy_integer_k(k, rng):
    db = random_vectors(rng, 20, 4)
    check_topk(dv.topk(db, k, metric="dot"), db, db, 3, "dot", exclude_self=True)


@pytest.mark.parametrize("backend", ["auto", None])
def test_topk_auto_backend(backend, metric, rng):
    db = random_vectors(rng, 30, 6)
    q = random_vectors(rng, 5, 6)
    check_topk(run_topk(q, 4, db, metric=metric, backend=backend), q, db, 4, metric)


@self_join
def test_topk_is_lazy(backend, metric, chunking, self_join, rng):
    db = random_vectors(rng, N_DB, D)
    q = db if self_join else random_vectors(rng, N_Q, D)
    with raise_if_dask_computes():
        lazy = run_topk(
            q, 3, None if self_join else db, chunking=chunking, metric=metric, backend=backend
        )
        numpy_lazy = dv.topk(
            q, 3, database=None if self_join else db, metric=metric, backend=backend
        )
    check_topk(lazy, q, db, 3, metric, exclude_self=self_join)
    check_topk(numpy_lazy, q, db, 3, metric, exclude_self=self_join)


def test_topk_best_first(backend, metric, rng):
    db = random_vectors(rng, 40, 6)
    scores, ids = dv.topk(db[:9], 10, database=db, metric=metric, backend=backend)
    scores = scores.compute()
    steps = np.diff(scores, axis=1)
    assert (steps <= 0).all() if metric in ("cosine", "dot") else (steps >= 0).all()


def test_topk_does_not_modify_inputs(backend, metric, rng):
    db = 3 * random_vectors(rng, 30, 6) + 1
    q = 3 * random_vectors(rng, 5, 6) + 1
    db_before, q_before = db.copy(), q.copy()
    for database in (db, da.from_array(db, chunks=7)):
        for queries in (q, da.from_array(q, chunks=2)):
            dv.topk(queries, 4, database=database, metric=metric, backend=backend)[0].compute()
    dv.topk(db, 4, metric=metric, backend=backend)[1].compute()
    np.testing.assert_array_equal(db, db_before)
    np.testing.assert_array_equal(q, q_before)


@self_join
def test_cosine_zero_vectors(backend, chunking, self_join, rng):
    db = random_vectors(rng, 30, 6)
    db[[3, 17, 18]] = 0  # zero database rows score exactly 0 against everything
    q = db if self_join else np.concatenate([random_vectors(rng, 4, 6), np.zeros((2, 6))])
    k = 29 if self_join else 30
    scores, ids = check_topk(
        run_topk(
            q, k, None if self_join else db, chunking=chunking, backend=backend, metric="cosine"
        ),
        q,
        db,
        k,
        "cosine",
        exclude_self=self_join,
    )
    for row in np.flatnonzero(~q.any(axis=1)):  # a zero query ties everything at 0: id order
        expected = [i for i in range(len(db)) if not (self_join and i == row)][:k]
        np.testing.assert_array_equal(ids[row], expected)
        np.testing.assert_array_equal(scores[row], 0)
    for zero_row in (3, 17, 18):
        np.testing.assert_array_equal(scores[ids == zero_row], 0)


def test_cosine_all_zero_database(backend, rng):
    scores, ids = dv.cosine_topk(
        random_vectors(rng, 3, 5), 4, database=np.zeros((6, 5)), backend=backend
    )
    np.testing.assert_array_equal(scores.compute(), 0)
    np.testing.assert_array_equal(ids.compute(), [[0, 1, 2, 3]] * 3)


# -- nan_policy="omit" ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_topk_omit_skips_non_finite_database_rows(backend, metric, chunking, value, rng):
    db = random_vectors(rng, N_DB, D)
    db[[0, 21, 37], [2, 0, 7]] = value
    q = random_vectors(rng, N_Q, D)
    result = run_topk(
        q, 9, db, chunking=chunking, metric=metric, backend=backend, nan_policy="omit"
    )
    _, ids = check_topk(result, q, db, 9, metric)
    assert not np.isin(ids, [0, 21, 37]).any()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_topk_omit_non_finite_query_gets_nan_and_minus_one(backend, metric, chunking, value, rng):
    db = random_vectors(rng, N_DB, D)
    q = random_vectors(rng, N_Q, D)
    q[[4, 12], [1, 5]] = value
    result = run_topk(
        q, 6, db, chunking=chunking, metric=metric, backend=backend, nan_policy="omit"
    )
    scores, ids = check_topk(result, q, db, 6, metric)
    assert np.isnan(scores[[4, 12]]).all()
    np.testing.assert_array_equal(ids[[4, 12]], -1)


def test_topk_omit_pads_when_too_few_rows_remain(backend, metric, rng):
    db = random_vectors(rng, 6, 4)
    db[[1, 3, 4], 0] = np.nan
    q = random_vectors(rng, 3, 4)
    scores, ids = check_topk(
        run_topk(
            q, 5, db, chunking=Chunking("uneven"), metric=metric, backend=backend, nan_policy="omit"
        ),
        q,
        db,
        5,
        metric,
    )
    np.testing.assert_array_equal(np.sort(ids[:, :3], axis=1), [[0, 2, 5]] * 3)
    np.testing.assert_array_equal(ids[:, 3:], -1)
    assert np.isnan(scores[:, 3:]).all() and np.isfinite(scores[:, :3]).all()


def test_self_join_omit(backend, metric, chunking, rng):
    x = random_vectors(rng, 20, 5)
    x[[2, 11], [0, 4]] = [np.nan, -np.inf]
    k = len(x) - 1  # every valid row gets 17 neighbours and 2 padding columns
    scores, ids = check_topk(
        run_topk(x, k, chunking=chunking, metric=metric, backend=backend, nan_policy="omit"),
        x,
        x,
        k,
        metric,
        exclude_self=True,
    )
    np.testing.assert_array_equal(ids[[2, 11]], -1)
    assert np.isnan(scores[[2, 11]]).all()
    valid = np.delete(np.arange(20), [2, 11])
    np.testing.assert_array_equal(ids[valid, -2:], -1)
    assert not np.isin(ids, [2, 11]).any()


@pytest.mark.parametrize("metric", METRICS)
def test_topk_reference_agrees_with_itself(metric, rng):
    # The oracle's own invariant: a self-join equals a database search with the diagonal removed.
    x = exact_vectors(rng, 12, 5, metric)
    s_self, i_self = reference_topk(x, x, 11, metric, exclude_self=True)
    assert not (i_self == np.arange(12)[:, None]).any()
    s_all, i_all = reference_topk(x, x, 12, metric)
    for row in range(12):
        keep = i_all[row] != row
        np.testing.assert_array_equal(i_self[row], i_all[row][keep])


def test_topk_default_metric_is_cosine(backend, rng):
    db, q = random_vectors(rng, 30, 5), random_vectors(rng, 4, 5)
    check_topk(dv.topk(q, 3, database=db, backend=backend), q, db, 3, "cosine")


@pytest.mark.parametrize("split_every", [2, 3])
def test_cosine_topk_split_every(backend, split_every, rng):
    x = random_vectors(rng, 90, 5, np.float32)
    result = dv.cosine_topk(
        da.from_array(x, chunks=((10, 20, 5, 25, 30), (5,))),
        4,
        backend=backend,
        split_every=split_every,
    )
    check_topk(result, x, x, 4, "cosine", exclude_self=True)


@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed"])
def test_topk_non_contiguous_inputs(backend, metric, layout, rng):
    base = random_vectors(rng, 60, 12, np.float32)
    db = {
        "fortran": np.asfortranarray(base[:, :6]),
        "strided": base[::2, ::2],
        "transposed": np.ascontiguousarray(base[:, :6].T).T,
    }[layout]
    q = db[:7]
    assert not db.flags.c_contiguous
    for database in (db, da.from_array(db, chunks=(11, 6))):
        check_topk(
            dv.topk(q, 5, database=database, metric=metric, backend=backend), q, db, 5, metric
        )


def test_database_same_array_is_not_a_self_join(backend, metric, rng):
    # Passing the array as its own database searches all rows: each row may find itself.
    x = random_vectors(rng, 25, 5)
    dx = da.from_array(x, chunks=6)
    _, ids = check_topk(
        dv.topk(dx, 3, database=dx, metric=metric, backend=backend), x, x, 3, metric
    )
    if metric != "dot":  # a row is its own best match (dot may prefer a longer vector)
        np.testing.assert_array_equal(ids[:, 0], np.arange(25))
