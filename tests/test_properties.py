"""Hypothesis: random shapes, chunkings, k, metrics, split_every; all backends give one answer.

Top-k cases use `exact_vectors` (integer-valued rows drawn with repetition): ties are exact and
every score is exactly representable, so all backends and all chunkings must agree with the
reference on ids exactly and on scores bit for bit.
"""

import itertools

import dask.array as da
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import dask_vecops as dv

from . import BACKENDS, METRICS, NORMS, check_topk, exact_vectors, random_vectors
from .reference import (
    assert_similarity_close,
    reference_normalize,
    reference_similarity,
    reference_topk,
    tolerance,
)


@st.composite
def chunk_sizes(draw, n, max_chunks=6):
    """A random split of ``n`` into positive chunk sizes."""
    if n <= 1:
        return (n,)
    cuts = draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, max_chunks - 1)))
    edges = [0, *sorted(cuts), n]
    return tuple(int(b - a) for a, b in itertools.pairwise(edges))


@st.composite
def topk_cases(draw):
    metric = draw(st.sampled_from(METRICS))
    self_join = draw(st.booleans())
    n = draw(st.integers(2, 40))
    m = n if self_join else draw(st.integers(1, 15))
    d = draw(st.integers(4, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    db = exact_vectors(rng, n, d, metric, n_distinct=draw(st.integers(1, 8)), dtype=dtype)
    q = db if self_join else exact_vectors(rng, m, d, metric, dtype=dtype)
    return {
        "non_finite": sorted(draw(st.sets(st.integers(0, n - 1), max_size=3))),
        "metric": metric,
        "self_join": self_join,
        "q": q,
        "db": db,
        "k": draw(st.integers(1, n - 1 if self_join else n)),
        "q_chunks": (draw(chunk_sizes(m)), draw(chunk_sizes(d, 3))),
        "db_chunks": (draw(chunk_sizes(n)), draw(chunk_sizes(d, 3))),
        "split_every": draw(st.sampled_from([None, 2, 3, 4])),
    }


@given(case=topk_cases())
def test_topk_all_backends_and_chunkings_agree(case):
    q, db, k, metric = case["q"], case["db"], case["k"], case["metric"]
    database = None if case["self_join"] else da.from_array(db, chunks=case["db_chunks"])
    queries = da.from_array(q, chunks=case["q_chunks"])
    ref_scores, _ = reference_topk(q, db, k, metric, exclude_self=case["self_join"])
    for backend in BACKENDS:
        result = dv.topk(
            queries,
            k,
            database=database,
            metric=metric,
            backend=backend,
            split_every=case["split_every"],
        )
        scores, _ = check_topk(
            result, q, db, k, metric, exclude_self=case["self_join"], exact_ids=True
        )
        # Exact data: the scores are the reference's, rounded once to the output dtype.
        np.testing.assert_array_equal(scores, ref_scores.astype(scores.dtype))


@given(case=topk_cases())
def test_topk_smaller_k_is_a_prefix(case):
    q, db, k, metric = case["q"], case["db"], case["k"], case["metric"]
    database = None if case["self_join"] else db
    big = dv.topk(q, k, database=database, metric=metric)
    small = dv.topk(q, max(1, k // 2), database=database, metric=metric)
    np.testing.assert_array_equal(small[1].compute(), big[1].compute()[:, : max(1, k // 2)])


@st.composite
def float_matrices(draw, max_rows=30):
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(3, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = random_vectors(rng, n, d, draw(st.sampled_from(["float32", "float64"])))
    x *= 10.0 ** draw(st.integers(-3, 3))
    zero_rows = draw(st.sets(st.integers(0, n - 1), max_size=3))
    x[sorted(zero_rows)] = 0
    return x, (draw(chunk_sizes(n)), draw(chunk_sizes(d, 3)))


@given(a=float_matrices(), b=float_matrices(), metric=st.sampled_from(METRICS))
def test_similarity_random_floats(a, b, metric):
    (a, a_chunks), (b, b_chunks) = a, b
    b = np.ascontiguousarray(np.resize(b, (len(b), a.shape[1])))  # same features as a
    b_chunks = (b_chunks[0], (a.shape[1],))
    expected = np.result_type(a.dtype, b.dtype, np.float32)
    ref = reference_similarity(a, b, metric)
    for backend in BACKENDS:
        s = dv.similarity(
            da.from_array(a, chunks=a_chunks),
            da.from_array(b, chunks=b_chunks),
            metric=metric,
            backend=backend,
        )
        out = s.compute()
        assert out.dtype == expected and out.shape == (len(a), len(b))
        assert_similarity_close(out, ref, metric, tolerance(expected, metric, a, b))


@given(x=float_matrices(), norm=st.sampled_from(NORMS))
def test_normalize_random_floats(x, norm):
    x, chunks = x
    ref = reference_normalize(x, norm)
    for backend in BACKENDS:
        out = dv.normalize(da.from_array(x, chunks=chunks), norm=norm, backend=backend).compute()
        assert out.dtype == x.dtype and out.shape == x.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=tolerance(x.dtype, "normalize", x))
        zero = ~x.any(axis=1)
        np.testing.assert_array_equal(out[zero], 0)


@given(case=topk_cases(), value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_topk_omit_all_backends_agree(case, value):
    # Poison a few rows: omitted as database rows, NaN/-1 as queries, padding when too few remain.
    q, db, k, metric = case["q"].copy(), case["db"].copy(), case["k"], case["metric"]
    db[case["non_finite"], 0] = value
    if case["self_join"]:
        q = db
    else:
        q[[row for row in case["non_finite"] if row < len(q)], -1] = value
    database = None if case["self_join"] else da.from_array(db, chunks=case["db_chunks"])
    queries = da.from_array(q, chunks=case["q_chunks"])
    for backend in BACKENDS:
        result = dv.topk(
            queries,
            k,
            database=database,
            metric=metric,
            backend=backend,
            split_every=case["split_every"],
            nan_policy="omit",
        )
        check_topk(result, q, db, k, metric, exclude_self=case["self_join"], exact_ids=True)
