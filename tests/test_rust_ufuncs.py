"""The Rust ufuncs (``dask_vecops.ufuncs`` / ``dask_vecops._rust``) against float64 NumPy references."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from dask_vecops import ufuncs as u

DTYPES = [np.float32, np.float64]
NORMALIZERS = {"l2": u.normalize_l2, "l1": u.normalize_l1, "max": u.normalize_max}
NORMS = {"l2": u.norm_l2, "l1": u.norm_l1, "max": u.norm_max}
PAIRWISE = {"cosine": u.cosine, "dot": u.dot, "euclidean": u.euclidean, "manhattan": u.manhattan}
SIMILARITIES = {"cosine", "dot"}
BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}


# ----------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------


def ref_norm(x, kind):
    x = np.asarray(x, dtype=np.float64)
    if kind == "l2":
        return np.sqrt((x * x).sum(-1))
    if kind == "l1":
        return np.abs(x).sum(-1)
    return np.abs(x).max(-1, initial=0.0)


def ref_normalize(x, kind):
    x = np.asarray(x, dtype=np.float64)
    n = ref_norm(x, kind)[..., None]
    return x / np.where(n == 0, 1.0, n)


def ref_pairwise(a, b, metric):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if metric == "dot":
        return a @ b.T
    if metric == "cosine":
        na, nb = ref_norm(a, "l2"), ref_norm(b, "l2")
        denom = np.outer(na, nb)
        return np.where(denom == 0, 0.0, (a @ b.T) / np.where(denom == 0, 1.0, denom))
    diff = a[:, None, :] - b[None, :, :]
    if metric == "euclidean":
        return np.sqrt((diff * diff).sum(-1))
    return np.abs(diff).sum(-1)


def ref_topk(q, db, k, metric, exclude=None):
    """Stable full sort of the float64 scores: ties keep the lower id; NaN never selected."""
    s = ref_pairwise(q, db, metric)
    if exclude is not None:
        for i, e in enumerate(np.broadcast_to(exclude, (len(q),))):
            if 0 <= e < s.shape[1]:
                s[i, e] = np.nan
    key = -s if metric in SIMILARITIES else s
    key = np.where(np.isnan(key), np.inf, key)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(s, order, axis=1)
    ids = np.where(np.isnan(scores), -1, order)
    pad = k - order.shape[1]
    if pad > 0:
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, ids


def tol(dtype, d=1):
    """rtol/atol for results of order 1 from inputs in [-1, 1] with d coordinates."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-5, "atol": 2e-6 * max(d, 1) ** 0.5}
    return {"rtol": 1e-12, "atol": 1e-13 * max(d, 1)}


def random(shape, dtype, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Interface
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ufunc, signature, types",
    [(f, "(d)->(d)", ["f->f", "d->d"]) for f in NORMALIZERS.values()]
    + [(f, "(d)->()", ["f->f", "d->d"]) for f in NORMS.values()]
    + [(f, "(d),(n,d)->(n)", ["ff->f", "dd->d"]) for f in PAIRWISE.values()]
    + [(f, "(d),(n,d),()->(k),(k)", ["ffl->fl", "ddl->dl"]) for f in u.TOPK_UFUNCS.values()]
    + [(getattr(u, name), None, ["ff->f", "dd->d"]) for name in BINARY]
    + [(u.scale, "(d),()->(d)", ["ff->f", "dd->d"])],
)
def test_ufuncs_are_real_ufuncs_with_f32_loop_first(ufunc, signature, types):
    assert isinstance(ufunc, np.ufunc)
    assert ufunc.signature == signature
    assert ufunc.types == types
    assert ufunc.__name__ in ufunc.__doc__ and "Examples" in ufunc.__doc__


def test_identities():
    assert u.add.identity == 0
    assert u.multiply.identity == 1
    assert u.subtract.identity is None and u.divide.identity is None
    assert u.cosine.identity is None


def test_public_names():
    expected = set(NORMALIZERS.values()) | set(NORMS.values()) | set(PAIRWISE.values())
    expected |= set(u.TOPK_UFUNCS.values()) | {u.scale} | {getattr(u, n) for n in BINARY}
    assert {getattr(u, name) for name in u.__all__ if isinstance(getattr(u, name), np.ufunc)} == expected


def test_missing_extension_gives_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_vecops._rust", None)
    monkeypatch.delitem(sys.modules, "dask_vecops.ufuncs")
    with pytest.raises(ImportError, match=r"make build.*pip install -e \."):
        importlib.import_module("dask_vecops.ufuncs")


# ----------------------------------------------------------------------------------------------
# Row-wise ufuncs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["l2", "l1", "max"])
def test_normalize_and_norm_match_reference(dtype, kind):
    x = random((37, 19), dtype)
    x[3] = 0
    got = NORMALIZERS[kind](x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref_normalize(x, kind), **tol(dtype))
    assert np.all(got[3] == 0)
    n = NORMS[kind](x)
    assert n.dtype == dtype and n.shape == (37,)
    np.testing.assert_allclose(n, ref_norm(x, kind), **tol(dtype, 19))


def test_large_f32_rows_do_not_overflow():
    x = np.array([[3e30, 4e30]], dtype=np.float32)
    np.testing.assert_allclose(u.norm_l2(x), [5e30], rtol=1e-6)
    np.testing.assert_allclose(u.normalize_l2(x), [[0.6, 0.8]], rtol=1e-6)


def test_nan_and_inf_propagate_without_warnings():
    x = np.array([[np.nan, 1.0], [np.inf, 1.0], [0.0, 0.0]])
    got = u.normalize_l2(x)
    assert np.isnan(got[0]).all()
    assert np.isnan(got[1, 0]) and got[1, 1] == 0
    assert (got[2] == 0).all()
    assert np.isnan(u.norm_max(x)[0]) and u.norm_max(x)[1] == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale(dtype):
    x, w = random((11, 5), dtype), random(11, dtype, seed=1)
    np.testing.assert_allclose(u.scale(x, w), x * w[:, None], **tol(dtype))
    np.testing.assert_array_equal(u.scale(x, dtype(2)), x * 2)


# ----------------------------------------------------------------------------------------------
# Pairwise
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", PAIRWISE)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (33, 301, 40), (70, 1100, 3)])
def test_pairwise_matches_reference(dtype, metric, shape):
    m, n, d = shape
    a, b = random((m, d), dtype), random((n, d), dtype, seed=1)
    got = PAIRWISE[metric](a, b)
    assert got.dtype == dtype and got.shape == (m, n)
    np.testing.assert_allclose(got, ref_pairwise(a, b, metric), **tol(dtype, d))


def test_cosine_with_zero_vectors_is_zero():
    a = np.array([[0.0, 0.0], [1.0, 2.0]])
    b = np.array([[3.0, 4.0], [0.0, 0.0]])
    got = u.cosine(a, b)
    assert got[0].tolist() == [0.0, 0.0] and got[1, 1] == 0.0
    assert got[1, 0] == pytest.approx(11 / (5 * 5**0.5))


def test_euclidean_is_exact_for_near_identical_rows():
    a = (1000 + np.arange(64, dtype=np.float32))[None, :]
    b = np.repeat(a, 2, axis=0)
    b[1, 5] += np.float32(0.0625)
    assert u.euclidean(a, b).tolist() == [[0.0, 0.0625]]


def test_scores_do_not_depend_on_chunking():
    """A pair's score is a function of the two rows only: any split gives identical bits."""
    q, db = random((50, 24), np.float32), random((900, 24), np.float32, seed=1)
    for f in PAIRWISE.values():
        whole = f(q, db)
        np.testing.assert_array_equal(np.concatenate([f(q[:17], db), f(q[17:], db)]), whole)
        np.testing.assert_array_equal(np.hstack([f(q, db[:301]), f(q, db[301:])]), whole)
        np.testing.assert_array_equal(f(q[5], db[::-1])[::-1], whole[5])


# ----------------------------------------------------------------------------------------------
# Dtypes and memory layouts
# ----------------------------------------------------------------------------------------------


def test_int_inputs_use_the_f64_loop():
    a = np.array([[1, 2], [3, 4]], dtype=np.int64)
    assert u.dot(a, a).dtype == np.float64
    assert u.dot(a, a).tolist() == [[5.0, 11.0], [11.0, 25.0]]
    assert u.normalize_l1(a).dtype == np.float64
    assert u.add(a, 1).dtype == np.float64


def test_mixed_and_half_precision_inputs():
    a32, a64 = random((4, 3), np.float32), random((5, 3), np.float64)
    assert u.cosine(a32, a64).dtype == np.float64
    assert u.cosine(a32.astype(np.float16), a32.astype(np.float16)).dtype == np.float32


def unaligned(x):
    """A copy of ``x`` whose data starts one byte off its dtype's alignment."""
    buf = np.zeros(x.nbytes + 1, dtype=np.uint8)
    y = np.frombuffer(buf.data, dtype=x.dtype, count=x.size, offset=1).reshape(x.shape)
    y[...] = x
    assert not y.flags.aligned
    return y


LAYOUTS = {
    "fortran": np.asfortranarray,
    "row_padded": lambda x: np.hstack([x, x])[:, : x.shape[1]],
    "strided": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "every_other_row": lambda x: np.repeat(x, 2, axis=0)[::2],
    "reversed": lambda x: x[::-1, ::-1].copy()[::-1, ::-1],
    "unaligned": unaligned,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_strides(dtype, layout):
    a, b = random((9, 6), dtype), random((14, 6), dtype, seed=1)
    la, lb = LAYOUTS[layout](a), LAYOUTS[layout](b)
    np.testing.assert_array_equal(la, a)
    for f in PAIRWISE.values():
        np.testing.assert_array_equal(f(la, lb), f(a, b))
    for f in [*NORMALIZERS.values(), *NORMS.values()]:
        np.testing.assert_array_equal(f(la), f(a))
    np.testing.assert_array_equal(u.topk_block(la, lb, 4)[1], u.topk_block(a, b, 4)[1])
    np.testing.assert_array_equal(u.multiply(la, lb[:9]), a * b[:9])


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_unaligned_outputs(dtype):
    a, b = random((9, 6), dtype), random((14, 6), dtype, seed=1)
    out = np.zeros((14, 18), dtype)[:, ::2].T  # (9, 14), non-contiguous
    u.cosine(a, b, out=out)
    np.testing.assert_array_equal(out, u.cosine(a, b))
    out = unaligned(np.zeros((9, 6), dtype))
    u.normalize_l2(a, out=out)
    np.testing.assert_array_equal(out, u.normalize_l2(a))
    scores, ids = np.zeros((9, 8), dtype)[:, ::2], np.zeros((9, 4), np.int64)[::-1]
    u.topk_dot(a, b, -1, out=(scores, ids))
    expected = u.topk_block(a, b, 4, "dot")
    np.testing.assert_array_equal(scores, expected[0])
    np.testing.assert_array_equal(ids, expected[1])


def test_broadcast_inputs():
    a, b = random((3, 5), np.float64), random((4, 5), np.float64, seed=1)
    row = np.broadcast_to(a[0], (6, 5))  # zero stride on the loop dimension
    np.testing.assert_array_equal(u.dot(row, b), np.repeat(u.dot(a[:1], b), 6, axis=0))
    col = np.broadcast_to(np.float64(2.0), (4, 5))  # zero strides everywhere
    np.testing.assert_array_equal(u.euclidean(a, col), u.euclidean(a, np.full((4, 5), 2.0)))
    # A database per query: (2, 4, 5) databases against (2, 5) queries.
    dbs = np.stack([b, -b])
    np.testing.assert_allclose(u.dot(a[:2], dbs), [a[0] @ b.T, a[1] @ -b.T], rtol=1e-12)
    s, i = u.topk_block(a[:2], dbs, 2, "dot")
    assert s.shape == (2, 2)
    np.testing.assert_array_equal(i[0], np.argsort(-(a[0] @ b.T), kind="stable")[:2])
    np.testing.assert_array_equal(i[1], np.argsort(a[1] @ b.T, kind="stable")[:2])


def test_in_place():
    x = random((8, 5), np.float32)
    expected = u.normalize_l2(x)
    u.normalize_l2(x, out=x)
    np.testing.assert_array_equal(x, expected)
    y = random(10, np.float64)
    expected = y + y
    u.add(y, y, out=y)
    np.testing.assert_array_equal(y, expected)


def test_zero_rows_and_zero_width():
    empty = np.zeros((0, 4), np.float32)
    assert u.normalize_l2(empty).shape == (0, 4)
    assert u.norm_l1(empty).shape == (0,)
    assert u.cosine(empty, random((3, 4), np.float32)).shape == (0, 3)
    assert u.cosine(random((3, 4), np.float32), empty).shape == (3, 0)
    assert u.topk_block(empty, random((3, 4), np.float32), 5)[0].shape == (0, 5)
    flat = np.zeros((2, 0))
    assert u.euclidean(flat, np.zeros((3, 0))).tolist() == [[0.0] * 3] * 2
    assert u.cosine(flat, np.zeros((3, 0))).tolist() == [[0.0] * 3] * 2
    assert u.normalize_l2(flat).shape == (2, 0)


# ----------------------------------------------------------------------------------------------
# Top-k
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
@pytest.mark.parametrize("k", [1, 5, 64])
def test_topk_f64_matches_full_sort(metric, k):
    q, db = random((23, 9), np.float64), random((700, 9), np.float64, seed=1)
    exclude = np.where(np.arange(23) % 2 == 0, -1, np.arange(23) * 7)
    scores, ids = u.topk_block(q, db, k, metric, exclude=exclude)
    want_scores, want_ids = ref_topk(q, db, k, metric, exclude)
    assert scores.dtype == np.float64 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-12, atol=1e-12)
    assert not (ids == exclude[:, None]).any()


@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
def test_topk_f32_matches_reference_scores(metric):
    q, db = random((40, 48), np.float32), random((3000, 48), np.float32, seed=1)
    k = 10
    scores, ids = u.topk_block(q, db, k, metric)
    assert scores.dtype == np.float32
    exact = ref_pairwise(q, db, metric)
    t = tol(np.float32, 48)
    # The returned rows really have the returned scores ...
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, axis=1), **t)
    # ... and they are the best k (up to float32 rounding near the k-th place).
    np.testing.assert_allclose(scores, ref_topk(q, db, k, metric)[0], **t)
    steps = np.diff(scores, axis=1)
    assert (steps <= 0).all() if metric in SIMILARITIES else (steps >= 0).all()


@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
def test_topk_ties_go_to_the_lower_id(metric):
    distinct = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]], np.float32)
    db = np.tile(distinct, (500, 1))  # each row repeats every 4 rows, across tiles
    q = np.array([[0.9, 0.8], [-1.0, 0.0]], np.float32)
    scores, ids = u.topk_block(q, db, 7, metric)
    _, want = ref_topk(q, db, 7, metric)
    np.testing.assert_array_equal(ids, want)
    assert (np.diff(ids[:, :3]) > 0).all()


def test_topk_k_larger_than_n_pads_with_nan_and_minus_one():
    db = np.array([[0.0], [1.0], [np.nan]])
    scores, ids = u.topk_block(np.array([[0.9]]), db, 5, "euclidean")
    assert ids.tolist() == [[1, 0, -1, -1, -1]]
    np.testing.assert_allclose(scores[0, :2], [0.1, 0.9])
    assert np.isnan(scores[0, 2:]).all()


def test_topk_nan_scores_are_never_returned_but_infinities_are():
    db = np.array([[1.0], [np.nan], [3.0], [np.inf], [-1.0]])
    scores, ids = u.topk_block(np.array([[1.0]]), db, 5, "dot")
    assert ids.tolist() == [[3, 2, 0, 4, -1]]
    assert scores[0, :4].tolist() == [np.inf, 3.0, 1.0, -1.0]


def test_topk_k_zero_and_large_k():
    q, db = random((3, 4), np.float32), random((50, 4), np.float32, seed=1)
    scores, ids = u.topk_block(q, db, 0)
    assert scores.shape == ids.shape == (3, 0)
    scores, ids = u.topk_block(q, db, 1000)
    assert (ids[:, :50] >= 0).all() and (ids[:, 50:] == -1).all()
    assert sorted(ids[0, :50]) == list(range(50))


def test_topk_self_join_excludes_itself():
    x = random((30, 6), np.float64)
    _, ids = u.topk_block(x, x, 3, "euclidean", exclude=np.arange(30))
    assert not (ids == np.arange(30)[:, None]).any()
    _, ids = u.topk_block(x, x, 1, "euclidean")
    assert ids[:, 0].tolist() == list(range(30))


def test_topk_needs_out_and_topk_block_validates():
    q = np.ones((2, 3))
    with pytest.raises(ValueError):
        u.topk_cosine(q, q, -1)
    with pytest.raises(ValueError, match="metric"):
        u.topk_block(q, q, 1, "hamming")
    with pytest.raises(ValueError, match="k must"):
        u.topk_block(q, q, -1)
    with pytest.raises(TypeError, match="integers"):
        u.topk_block(q, q, 1, exclude=np.array([0.5, 1.0]))


def test_topk_result_dtype():
    q = np.ones((2, 3), np.float32)
    assert u.topk_block(q, q, 1)[0].dtype == np.float32
    assert u.topk_block(q, q.astype(np.float64), 1)[0].dtype == np.float64
    assert u.topk_block(q.astype(np.int64), q.astype(np.int64), 1)[0].dtype == np.float64


def test_topk_does_not_depend_on_query_or_database_chunking():
    q, db = random((60, 16), np.float32), random((5000, 16), np.float32, seed=1)
    db[4000:] = db[:1000]  # exact duplicates, far apart
    scores, ids = u.topk_block(q, db, 20, "cosine")
    parts = [u.topk_block(q[s], db, 20, "cosine") for s in (slice(0, 7), slice(7, 60))]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), ids)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), scores)
    # Merging per-chunk results (ids offset, ties to the lower id) gives the same answer.
    s1, i1 = u.topk_block(q, db[:2500], 20, "cosine")
    s2, i2 = u.topk_block(q, db[2500:], 20, "cosine")
    s, i = np.hstack([s1, s2]), np.hstack([i1, i2 + 2500])
    order = np.array([np.lexsort((ii, -ss)) for ss, ii in zip(s, i)])[:, :20]
    np.testing.assert_array_equal(np.take_along_axis(i, order, axis=1), ids)
    np.testing.assert_array_equal(np.take_along_axis(s, order, axis=1), scores)


# ----------------------------------------------------------------------------------------------
# Element-wise
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_binary_matches_numpy(dtype, name):
    a, b = random((5, 7), dtype), random(7, dtype, seed=1) + dtype(3)
    got = getattr(u, name)(a, b)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, BINARY[name](a, b))
    np.testing.assert_array_equal(getattr(u, name)(a[:, ::-2], dtype(1.5)), BINARY[name](a[:, ::-2], dtype(1.5)))


@pytest.mark.parametrize("name", BINARY)
def test_reduce_and_accumulate(name):
    x = random((4, 6), np.float64) + 2
    for axis in (0, 1):
        np.testing.assert_allclose(getattr(u, name).reduce(x, axis=axis), BINARY[name].reduce(x, axis=axis), rtol=1e-14)
        np.testing.assert_allclose(getattr(u, name).accumulate(x, axis=axis), BINARY[name].accumulate(x, axis=axis), rtol=1e-14)
    assert u.add.reduce(np.zeros(0)) == 0 and u.multiply.reduce(np.zeros(0)) == 1


def test_ieee_semantics_and_numpy_warnings():
    with np.errstate(all="ignore"):
        got = u.divide(np.array([1.0, -1.0, 0.0]), np.zeros(3))
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2])
    with pytest.warns(RuntimeWarning, match="divide by zero encountered in divide"):
        u.divide(np.ones(2), np.zeros(2))
    with np.errstate(invalid="ignore"):
        assert np.isnan(u.add(np.inf, -np.inf))


# ----------------------------------------------------------------------------------------------
# Panics and the GIL
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 5000])  # GIL held / released around the loop
def test_panic_becomes_runtime_error(rows):
    with pytest.raises(RuntimeError, match="_panic_check: Rust panic in ufunc loop: deliberate panic"):
        u._panic_check(np.ones((rows, 3)))
    # The interpreter and the ufuncs still work afterwards.
    assert u.norm_l1(np.ones((2, 3))).tolist() == [3.0, 3.0]


def test_numpy_releases_the_gil_around_large_loops():
    """Deterministic: the loop itself reports whether its thread held the GIL."""
    assert u._gil_held(np.ones((2, 3), np.float32)).tolist() == [1.0, 1.0]
    assert not u._gil_held(np.ones((4096, 3), np.float32)).any()
    assert not u._gil_held(np.ones((4096, 3), np.float64)).any()


# ----------------------------------------------------------------------------------------------
# Dask and xarray
# ----------------------------------------------------------------------------------------------


def test_dask_arrays_route_to_apply_gufunc():
    da = pytest.importorskip("dask.array")
    q, db = random((100, 8), np.float32), random((40, 8), np.float32, seed=1)
    dq = da.from_array(q, chunks=(30, 8))  # loop dimension chunked, core dimension whole
    for name, f in PAIRWISE.items():
        lazy = f(dq, db)
        assert isinstance(lazy, da.Array) and lazy.chunks == ((30, 30, 30, 10), (40,))
        np.testing.assert_array_equal(lazy.compute(), f(q, db), err_msg=name)
    lazy = u.normalize_l2(dq)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), u.normalize_l2(q))
    np.testing.assert_array_equal(u.scale(dq, da.ones(100, chunks=30)).compute(), q)
    np.testing.assert_array_equal(u.add(dq, 1).compute(), q + 1)


def test_dask_core_dimensions_must_be_single_chunk():
    da = pytest.importorskip("dask.array")
    dq = da.from_array(random((10, 8), np.float32), chunks=(5, 4))
    with pytest.raises(ValueError, match="consists of multiple chunks"):
        u.cosine(dq, random((3, 8), np.float32))


def test_dask_topk_through_apply_gufunc():
    da = pytest.importorskip("dask.array")
    q, db = random((90, 8), np.float32), random((500, 8), np.float32, seed=1)
    k = 6
    scores, ids = da.apply_gufunc(
        lambda q, db: u.topk_block(q, db, k, "manhattan"),
        "(d),(n,d)->(k),(k)",
        da.from_array(q, chunks=(25, 8)),
        db,
        output_sizes={"k": k},
        output_dtypes=(np.float32, np.int64),
    )
    want = u.topk_block(q, db, k, "manhattan")
    np.testing.assert_array_equal(scores.compute(), want[0])
    np.testing.assert_array_equal(ids.compute(), want[1])


@pytest.mark.parametrize("dask", ["parallelized", "allowed"])
def test_xarray_apply_ufunc(dask):
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    q, db = random((12, 5), np.float64), random((7, 5), np.float64, seed=1)
    qa = xr.DataArray(da.from_array(q, chunks=(4, 5)), dims=("item", "d"))
    dba = xr.DataArray(db, dims=("row", "d"))
    kwargs = {"output_dtypes": [np.float64]} if dask == "parallelized" else {}
    sims = xr.apply_ufunc(
        u.cosine, qa, dba, input_core_dims=[["d"], ["row", "d"]], output_core_dims=[["row"]], dask=dask, **kwargs
    )
    assert sims.dims == ("item", "row")
    np.testing.assert_allclose(sims.values, ref_pairwise(q, db, "cosine"), rtol=1e-12, atol=1e-14)
    normed = xr.apply_ufunc(u.normalize_l1, qa, input_core_dims=[["d"]], output_core_dims=[["d"]], dask=dask, **kwargs)
    np.testing.assert_allclose(normed.values, ref_normalize(q, "l1"), rtol=1e-12)


def test_xarray_topk():
    xr = pytest.importorskip("xarray")
    q, db = random((12, 5), np.float32), random((30, 5), np.float32, seed=1)
    qa = xr.DataArray(q, dims=("item", "d")).chunk({"item": 5})
    dba = xr.DataArray(db, dims=("row", "d"))
    scores, ids = xr.apply_ufunc(
        lambda q, db: u.topk_block(q, db, 3, "dot"),
        qa,
        dba,
        input_core_dims=[["d"], ["row", "d"]],
        output_core_dims=[["k"], ["k"]],
        dask="parallelized",
        output_dtypes=[np.float32, np.int64],
        dask_gufunc_kwargs={"output_sizes": {"k": 3}},
    )
    np.testing.assert_array_equal(ids.values, u.topk_block(q, db, 3, "dot")[1])
    assert scores.dims == ("item", "k")


# ----------------------------------------------------------------------------------------------
# The topk_block pyfunction (dask_vecops._rust.topk_block) and the thread-count knob
# ----------------------------------------------------------------------------------------------

from dask_vecops import _rust  # noqa: E402


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    before = _rust.get_num_threads()
    yield
    _rust.set_num_threads(before)


def check_topk(q, db, k, metric, scores, ids, exclude=None):
    """``(scores, ids)`` against the float64 reference: exact for float64; for float32 the
    returned rows carry their exact scores and are the best k up to float32 rounding."""
    assert scores.shape == ids.shape == (len(q), k)
    assert scores.dtype == q.dtype and ids.dtype == np.int64
    want_scores, want_ids = ref_topk(q, db, k, metric, exclude)
    if q.dtype == np.float64:
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-12, atol=1e-12)
        return
    t = tol(np.float32, q.shape[1])
    found = ids >= 0
    np.testing.assert_array_equal(found, want_ids >= 0)
    exact = ref_pairwise(q, db, metric)
    got_exact = np.take_along_axis(exact, np.where(found, ids, 0), axis=1)
    np.testing.assert_allclose(scores[found], got_exact[found], **t)
    np.testing.assert_allclose(scores[found], want_scores[found], **t)
    assert np.isnan(scores[~found]).all()
    if exclude is not None:
        assert not (ids == np.asarray(exclude)[:, None]).any()


# Few queries take the row-streaming kernel, many the packed-panel kernel (over 128 f32 queries
# on AVX-512, over 64 on AVX2); ragged against every tile size.
SHAPES = {"few": (5, 700, 37), "one": (1, 300, 8), "many": (300, 530, 19)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 10, 50])
def test_topk_block_pyfunction_matches_reference(dtype, metric, shape, k):
    m, n, d = SHAPES[shape]
    q, db = random((m, d), dtype), random((n, d), dtype, seed=1)
    exclude = np.where(np.arange(m) % 2 == 0, -1, np.arange(m) % n).astype(np.int64)
    scores, ids, norms = _rust.topk_block(q, db, k, metric, exclude)
    check_topk(q, db, k, metric, scores, ids, exclude)
    if metric == "cosine":
        assert norms.dtype == dtype and norms.shape == (n,)
        np.testing.assert_array_equal(norms, u.norm_l2(db))
        # Given norms are used as they are, and returned as they were given.
        again = _rust.topk_block(q, db, k, metric, exclude, norms)
        np.testing.assert_array_equal(again[0], scores)
        np.testing.assert_array_equal(again[1], ids)
        assert again[2] is norms
    else:
        assert norms is None
        assert _rust.topk_block(q, db, k, metric, exclude, u.norm_l2(db))[2] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
def test_topk_block_pyfunction_matches_the_ufunc_bit_for_bit(dtype, metric):
    q, db = random((40, 24), dtype), random((900, 24), dtype, seed=1)
    scores, ids, _ = _rust.topk_block(q, db, 7, metric)
    want = u.topk_block(q, db, 7, metric)
    np.testing.assert_array_equal(scores, want[0])
    np.testing.assert_array_equal(ids, want[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_block_k_beyond_n_and_zero(dtype):
    q, db = random((3, 4), dtype), random((6, 4), dtype, seed=1)
    scores, ids, norms = _rust.topk_block(q, db, 9, "cosine")
    assert (ids[:, 6:] == -1).all() and np.isnan(scores[:, 6:]).all()
    assert sorted(ids[0, :6]) == list(range(6))
    scores, ids, norms = _rust.topk_block(q, db, 0, "cosine")
    assert scores.shape == ids.shape == (3, 0)
    np.testing.assert_array_equal(norms, u.norm_l2(db))  # computed even with nothing to rank
    scores, ids, _ = _rust.topk_block(q[:0], db, 4, "dot")
    assert scores.shape == (0, 4)
    scores, ids, norms = _rust.topk_block(q, db[:0], 2, "cosine")
    assert (ids == -1).all() and norms.shape == (0,)


def test_topk_block_wrong_norms_change_the_result():
    q, db = random((6, 5), np.float64), random((80, 5), np.float64, seed=1)
    right = _rust.topk_block(q, db, 5, "cosine")
    # Norms of 1 make cosine rank exactly like the dot product of the normalised queries.
    ones = _rust.topk_block(q, db, 5, "cosine", db_norms=np.ones(80))
    dot = _rust.topk_block(q, db, 5, "dot")
    assert not np.array_equal(right[1], ones[1])
    np.testing.assert_array_equal(ones[1], dot[1])
    halved = _rust.topk_block(q, db, 5, "cosine", db_norms=right[2] / 2)
    np.testing.assert_allclose(halved[0], 2 * right[0], rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
@pytest.mark.parametrize("queries", [2, 40, 300])
def test_topk_block_bars_cut_the_result_to_the_rows_that_reach_them(dtype, metric, queries):
    """A bar per query (here one of its own top-k scores, or NaN for none) keeps exactly the
    rows scoring at least as well, with the same bits, and pads the rest."""
    q, db = random((queries, 24), dtype), random((6000, 24), dtype, seed=1)
    k = 12
    scores, ids, _ = _rust.topk_block(q, db, k, metric)
    place = np.arange(queries) * 5 % k
    bars = scores[np.arange(queries), place].copy()
    bars[::7] = np.nan
    cut_scores, cut_ids, _ = _rust.topk_block(q, db, k, metric, bars=bars)
    kept = (np.arange(k) <= place[:, None]) | np.isnan(bars)[:, None]
    np.testing.assert_array_equal(cut_ids, np.where(kept, ids, -1))
    np.testing.assert_array_equal(cut_scores, np.where(kept, scores, np.nan))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", list(u.TOPK_UFUNCS))
def test_topk_block_nan_rows(dtype, metric):
    q, db = random((4, 6), dtype), random((50, 6), dtype, seed=1)
    db[[3, 17]] = np.nan
    db[5, 2] = np.nan
    q[2, 0] = np.nan
    scores, ids, norms = _rust.topk_block(q, db, 60, metric)
    assert not np.isin(ids, [3, 5, 17]).any()
    assert (ids[2] == -1).all() and np.isnan(scores[2]).all()  # a NaN query matches nothing
    assert ((ids[[0, 1, 3]] >= 0).sum(axis=1) == 47).all()
    check_topk(q[[0, 1, 3]], db, 60, metric, scores[[0, 1, 3]], ids[[0, 1, 3]])
    if metric == "cosine":
        assert np.isnan(norms[[3, 5, 17]]).all() and np.isfinite(np.delete(norms, [3, 5, 17])).all()


def test_topk_block_ties_go_to_the_lower_id_on_both_kernels():
    distinct = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]], np.float32)
    db = np.tile(distinct, (3000, 1))
    for m in (2, 300):  # row-streaming and packed-panel kernels
        q = np.tile(np.array([[0.9, 0.8], [-1.0, 0.0]], np.float32), (m // 2, 1))
        for metric in u.TOPK_UFUNCS:
            _, ids, _ = _rust.topk_block(q, db, 7, metric)
            np.testing.assert_array_equal(ids, ref_topk(q, db, 7, metric)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_block_kernels_give_the_same_bits(dtype):
    """A query's results do not depend on how many queries share the call (which picks the
    few-query filter, the row-streaming or the packed-panel kernel) nor on the database split;
    nor do the cosine norms the call computes on the way."""
    q, db = random((300, 33), dtype), random((3000, 33), dtype, seed=1)
    db[100:200] = db[0] * np.linspace(0.5, 2, 100, dtype=dtype)[:, None]  # ties within rounding
    q[0] = db[0]
    for metric in u.TOPK_UFUNCS:
        whole = _rust.topk_block(q, db, 12, metric)
        for m in (1, 2, 3):
            few = _rust.topk_block(q[:m], db, 12, metric)
            np.testing.assert_array_equal(few[0], whole[0][:m], err_msg=f"{metric} {m}")
            np.testing.assert_array_equal(few[1], whole[1][:m], err_msg=f"{metric} {m}")
            if metric == "cosine":
                np.testing.assert_array_equal(few[2], whole[2])
        few = _rust.topk_block(q[:3], db, 12, metric)
        halves = [_rust.topk_block(q[:3], db[s], 12, metric) for s in (slice(0, 1500), slice(1500, None))]
        s = np.hstack([halves[0][0], halves[1][0]])
        i = np.hstack([halves[0][1], halves[1][1] + 1500])
        key = -s if metric in SIMILARITIES else s
        order = np.array([np.lexsort((ii, kk)) for kk, ii in zip(key, i)])[:, :12]
        np.testing.assert_array_equal(np.take_along_axis(i, order, axis=1), few[1])
        np.testing.assert_array_equal(np.take_along_axis(s, order, axis=1), few[0])


@pytest.mark.parametrize("dtype", DTYPES)
# database split (behind the few-query filter, then the row-streaming kernel) / query split
@pytest.mark.parametrize("shape", [(1, 20_000, 16), (3, 20_000, 16), (300, 2000, 16)])
def test_topk_block_threads_give_identical_results(threads, dtype, shape):
    m, n, d = shape
    q, db = random((m, d), dtype), random((n, d), dtype, seed=1)
    exclude = (np.arange(m) * 7).astype(np.int64)
    for metric in u.TOPK_UFUNCS:
        _rust.set_num_threads(1)
        one = _rust.topk_block(q, db, 25, metric, exclude)
        ufunc_one = u.topk_block(q, db, 25, metric, exclude)
        _rust.set_num_threads(2)
        two = _rust.topk_block(q, db, 25, metric, exclude)
        ufunc_two = u.topk_block(q, db, 25, metric, exclude)
        for a, b in [(one, two), (ufunc_one, ufunc_two), (one[:2], ufunc_two)]:
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        if metric == "cosine":
            np.testing.assert_array_equal(one[2], two[2])


def test_pairwise_threads_give_identical_results(threads):
    a, b = random((200, 20), np.float32), random((700, 20), np.float32, seed=1)
    _rust.set_num_threads(1)
    one = {name: f(a, b) for name, f in PAIRWISE.items()}
    _rust.set_num_threads(2)
    for name, f in PAIRWISE.items():
        np.testing.assert_array_equal(f(a, b), one[name], err_msg=name)


def test_topk_block_validates_its_arguments():
    q, db = random((3, 4), np.float32), random((9, 4), np.float32, seed=1)
    with pytest.raises(TypeError, match="same dtype"):
        _rust.topk_block(q, db.astype(np.float64), 2, "dot")
    with pytest.raises(TypeError, match="float32 or float64"):
        _rust.topk_block(q.astype(np.int64), db.astype(np.int64), 2, "dot")
    with pytest.raises(TypeError, match="NumPy array"):
        _rust.topk_block(q.tolist(), db, 2, "dot")
    with pytest.raises(ValueError, match="C-contiguous"):
        _rust.topk_block(np.asfortranarray(np.hstack([q, q])), np.hstack([db, db]), 2, "dot")
    with pytest.raises(ValueError, match="aligned"):
        _rust.topk_block(unaligned(q), db, 2, "dot")
    with pytest.raises(ValueError, match="dimension"):
        _rust.topk_block(q[0], db, 2, "dot")
    with pytest.raises(ValueError, match="columns"):
        _rust.topk_block(np.ascontiguousarray(q[:, :3]), db, 2, "dot")
    with pytest.raises(ValueError, match="k must be"):
        _rust.topk_block(q, db, -1, "dot")
    with pytest.raises(ValueError, match="metric"):
        _rust.topk_block(q, db, 2, "hamming")
    with pytest.raises(TypeError, match="int64"):
        _rust.topk_block(q, db, 2, "dot", exclude=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="one entry per query"):
        _rust.topk_block(q, db, 2, "dot", exclude=np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="dtype of db"):
        _rust.topk_block(q, db, 2, "cosine", db_norms=np.ones(9))
    with pytest.raises(ValueError, match="one entry per db row"):
        _rust.topk_block(q, db, 2, "cosine", db_norms=np.ones(8, np.float32))
    with pytest.raises(TypeError, match="bars must have the dtype of q"):
        _rust.topk_block(q, db, 2, "dot", bars=np.zeros(len(q)))
    with pytest.raises(ValueError, match="bars must have one entry per query"):
        _rust.topk_block(q, db, 2, "dot", bars=np.zeros(len(q) + 1, np.float32))
    with pytest.raises(ValueError, match="dimension"):
        _rust.topk_block(q, db, 2, "dot", bars=np.zeros((len(q), 1), np.float32))
    # None means "not given" for every optional argument.
    _rust.topk_block(q, db, 2, "cosine", None, None, False, None)


def test_topk_block_runs_concurrently_without_the_gil():
    """Threads calling the kernel at once get the answers they get alone."""
    import threading

    q, db = random((50, 32), np.float32), random((4000, 32), np.float32, seed=1)
    want = _rust.topk_block(q, db, 5, "cosine")
    got = [None] * 4

    def work(i):
        got[i] = _rust.topk_block(q, db, 5, "cosine")

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for g in got:
        np.testing.assert_array_equal(g[1], want[1])


def test_num_threads_setting(threads):
    _rust.set_num_threads(3)
    assert _rust.get_num_threads() == 3
    _rust.set_num_threads(1)
    assert _rust.get_num_threads() == 1
    for bad in (0, -2):
        with pytest.raises(ValueError, match=">= 1"):
            _rust.set_num_threads(bad)
    assert _rust.get_num_threads() == 1


@pytest.mark.parametrize("value, expected", [("3", 3), ("", 1), ("zero", 1), ("0", 1), (None, 1)])
def test_num_threads_default_comes_from_the_environment(monkeypatch, value, expected):
    out = _python_with("DASK_VECOPS_NUM_THREADS", value,
                       "from dask_vecops import _rust; print(_rust.get_num_threads())")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == expected


def _python_with(variable, value, code):
    """Runs ``code`` in a fresh interpreter with the environment ``variable=value`` (None: unset)."""
    import os
    import subprocess

    env = dict(os.environ)
    env.pop(variable, None)
    if value is not None:
        env[variable] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


# -- DASK_VECOPS_ISA ------------------------------------------------------------------------------

ISA_ORDER = ["portable", "avx2", "avx512", "avx512bf16"]


@pytest.mark.parametrize("value", [None, "", "auto", "avx512bf16", "avx512", "AVX2", "portable"])
def test_the_isa_is_the_cpus_best_capped_by_the_environment(value):
    best = _rust.best_isa()
    out = _python_with("DASK_VECOPS_ISA", value, "from dask_vecops import ufuncs; print(ufuncs.kernel_isa())")
    assert out.returncode == 0, out.stderr
    cap = (value or "auto").lower()
    if cap == "auto" or ISA_ORDER.index(cap) > ISA_ORDER.index(best):
        assert out.stdout.strip() == best  # auto, or a cap above what this CPU has
    else:
        assert out.stdout.strip() == cap


def test_an_unknown_isa_refuses_to_import_with_the_accepted_names():
    out = _python_with("DASK_VECOPS_ISA", "sse4", "import dask_vecops")
    assert out.returncode != 0
    assert ('ValueError: DASK_VECOPS_ISA="sse4" is not one of auto, avx512bf16, avx512, avx2, '
            'portable') in out.stderr


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_every_isa_finds_the_float64_neighbours(isa):
    code = """
import numpy as np, dask.array as da, dask_vecops as dv, json
rng = np.random.default_rng(7)
x = rng.standard_normal((3000, 37)).astype(np.float32)
q = rng.standard_normal((20, 37)).astype(np.float32)
out = {}
for metric in ("cosine", "dot", "euclidean", "manhattan"):
    s, i = dv.topk(q, 7, database=da.from_array(x, chunks=(700, 37)), metric=metric,
                   backend="rust")
    alone = [dv.topk(q[j:j + 1], 7, database=da.from_array(x, chunks=(700, 37)), metric=metric,
                     backend="rust") for j in range(3)]
    s1 = np.vstack([a[0].compute() for a in alone])
    i1 = np.vstack([a[1].compute() for a in alone])
    same = bool((s1 == s.compute()[:3]).all() and (i1 == i.compute()[:3]).all())
    out[metric] = [s.compute().tolist(), i.compute().tolist(), same]
print(json.dumps([dv.ufuncs.kernel_isa(), out]))
"""
    out = _python_with("DASK_VECOPS_ISA", isa, code)
    assert out.returncode == 0, out.stderr
    import json

    ran, results = json.loads(out.stdout)
    assert ran == isa or ISA_ORDER.index(isa) > ISA_ORDER.index(_rust.best_isa())
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 37)).astype(np.float32)
    q = rng.standard_normal((20, 37)).astype(np.float32)
    for metric, (scores, ids, alone_is_the_same) in results.items():
        # One query goes through the few-query filter, twenty through the bfloat16 one (on
        # avx512bf16) or the plain row kernel.
        assert alone_is_the_same, f"{isa} {metric}: one query alone differs from twenty"
        want_scores, want_ids = ref_topk(q, x, 7, metric)
        np.testing.assert_array_equal(ids, want_ids, err_msg=f"{isa} {metric}")
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_the_isa_benchmark_runs_every_path_of_this_cpu():
    import pathlib
    import subprocess

    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_isa.py"
    out = subprocess.run(
        [sys.executable, str(script), "--queries", "30", "--rows", "2000", "--features", "24"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    want = ISA_ORDER[: ISA_ORDER.index(_rust.best_isa()) + 1][::-1]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (isa, dtype) for isa in want for dtype in ("float32", "float64")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)


def test_long_vectors_score_within_float64_by_less_than_one_long_sum_would():
    # Every score is summed in blocks of BLOCK coordinates (rust_ufuncs/src/kernels/simd/mod.rs), so
    # its rounding error grows with BLOCK + d / BLOCK, not with d. On these 1536-dimensional
    # embeddings one long sequential sum per score was off by up to 2.2e-6 (NumPy's sgemm: 6e-7);
    # the blocks bring it to about 3.6e-7.
    from dask_vecops.datasets import clustered_embeddings

    x = np.asarray(clustered_embeddings(20_000, 1536, chunk_rows=20_000).compute())
    q = x[:200] + np.float32(0.01) * np.random.default_rng(1).standard_normal(
        (200, 1536)).astype(np.float32)

    assert np.abs(u.cosine(q, x) - ref_pairwise(q, x, "cosine")).max() < 6e-7


# ----------------------------------------------------------------------------------------------
# The merge_topk pyfunction: the Rust backend's merge tasks
# ----------------------------------------------------------------------------------------------


def partial_results(rng, dtype, rows, widths):
    """Partial top-k results with many tied scores, (NaN, -1) padding and ids beyond 32 bits,
    disjoint across parts (as the pair tasks of one query batch give them)."""
    scores, ids = [], []
    for p, width in enumerate(widths):
        s = (rng.integers(0, 6, (rows, width)) / 4).astype(dtype)
        i = (p * 10**6 + np.arange(rows * width).reshape(rows, width)) << 30
        padding = rng.random((rows, width)) < 0.15
        s[padding], i[padding] = np.nan, -1
        scores.append(s)
        ids.append(i.astype(np.int64))
    return scores, ids


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4, 10, 60])
def test_merge_topk_matches_the_numpy_merge(threads, dtype, metric, k):
    from dask_vecops.backends import _select, rust_backend

    rng = np.random.default_rng(k)
    scores, ids = partial_results(rng, dtype, 23, [10, 3, 10, 7])
    want = _select.merge_topk(scores, ids, k, metric)
    for n in (1, 2):
        _rust.set_num_threads(n)
        got = rust_backend.merge_topk(scores, ids, k, metric)
        assert got[0].dtype == dtype and got[1].dtype == np.int64
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_merge_topk_validates_its_arguments():
    s, i = random((3, 4), np.float32), np.arange(12, dtype=np.int64).reshape(3, 4)
    with pytest.raises(ValueError, match="k must be >= 0"):
        _rust.merge_topk([s], [i], -1, True)
    with pytest.raises(ValueError, match="same length"):
        _rust.merge_topk([s, s], [i], 2, True)
    with pytest.raises(ValueError, match="same length"):
        _rust.merge_topk([], [], 2, True)
    with pytest.raises(TypeError, match="one dtype"):
        _rust.merge_topk([s, s.astype(np.float64)], [i, i], 2, True)
    with pytest.raises(TypeError, match="int64"):
        _rust.merge_topk([s], [i.astype(np.int32)], 2, True)
    with pytest.raises(TypeError, match="float32 or float64"):
        _rust.merge_topk([i], [i], 2, True)
    with pytest.raises(ValueError, match="same shape"):
        _rust.merge_topk([s], [i[:, :3].copy()], 2, True)
    with pytest.raises(ValueError, match="3 rows"):
        _rust.merge_topk([s, s[:2].copy()], [i, i[:2].copy()], 2, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        _rust.merge_topk([np.asfortranarray(s)], [i], 2, True)
