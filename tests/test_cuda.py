"""The CUDA backend through the public functions, against the float64 reference.

The same checks as the CPU backends' suite on smaller inputs: without a GPU the kernels run in
Numba's CUDA simulator on NumPy blocks, where each simulated thread is an OS thread. With a GPU
every test also runs on CuPy-backed dask arrays (``auto`` then picks ``cuda``) and checks that the
results stay on the GPU; the tests marked ``gpu`` use sizes only a GPU runs quickly.
"""

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops import NonFiniteError

from . import (
    OMIT_REMEDY,
    Chunking,
    check_topk,
    exact_vectors,
    match_all,
    random_vectors,
    requires_cuda,
    requires_gpu,
)
from .reference import assert_similarity_close, reference_normalize, reference_similarity, tolerance

pytestmark = [requires_cuda, pytest.mark.usefixtures("fast_simulator")]
N_DB, N_Q, D = 40, 6, 8


class Device:
    """Where the blocks live: NumPy blocks with ``backend="cuda"``, or CuPy blocks with ``auto``."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, x, chunking=Chunking("uneven")):
        """``x`` as a dask array chunked by a :class:`Chunking` or in row chunks of that size."""
        if x is None:
            return None
        if isinstance(chunking, Chunking):
            arr = chunking(x)
        else:
            arr = da.from_array(x, chunks=(chunking, -1))
        return arr if self.kind == "numpy" else arr.map_blocks(_cupy().asarray)

    @property
    def options(self):
        return {"backend": "cuda"} if self.kind == "numpy" else {}

    def to_host(self, result):
        """Lazy results as NumPy-backed arrays, after checking that they are of this kind."""
        if isinstance(result, tuple):
            return tuple(self.to_host(r) for r in result)
        on_gpu = type(result._meta).__module__.startswith("cupy")
        assert on_gpu == (self.kind == "cupy"), type(result._meta)
        if not on_gpu:
            return result
        return result.map_blocks(_cupy().asnumpy, meta=np.empty((0,) * result.ndim, result.dtype))

    def __repr__(self):
        return f"Device({self.kind!r})"


def _cupy():
    import cupy

    return cupy


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=requires_gpu)])
def device(request):
    return Device(request.param)


self_join = pytest.mark.parametrize("self_join", [False, True], ids=["database", "self-join"])


@self_join
@pytest.mark.parametrize("chunking", ["single", "uneven", "split-features"], ids=str)
def test_topk_matches_reference(device, metric, dtype, chunking, self_join, rng):
    chunking = Chunking(chunking)
    db = random_vectors(rng, N_DB, D, dtype)
    q = db if self_join else random_vectors(rng, N_Q, D, dtype)
    result = dv.topk(
        device(q, chunking), 5, database=None if self_join else device(db, chunking),
        metric=metric, **device.options,
    )
    check_topk(device.to_host(result), q, db, 5, metric, exclude_self=self_join)


def test_exact_ties_go_to_the_lower_id(device, metric, dtype, rng):
    db = exact_vectors(rng, N_DB, D, metric, n_distinct=5, dtype=dtype)
    q = exact_vectors(rng, N_Q, D, metric, n_distinct=3, dtype=dtype)
    result = dv.topk(device(q), 9, database=device(db), metric=metric, **device.options)
    check_topk(device.to_host(result), q, db, 9, metric, exact_ids=True)


@pytest.mark.parametrize("k", [1, 17, "all"])
@self_join
def test_k_from_one_to_all_rows(device, metric, k, self_join, rng):
    # Chunks of 5 rows: k=17 pads every chunk's result and sorts 32 slots per row.
    db = random_vectors(rng, 24, 6, np.float32)
    q = db if self_join else random_vectors(rng, 4, 6, np.float32)
    k = (len(db) - 1 if self_join else len(db)) if k == "all" else k
    database = None if self_join else device(db, 5)
    result = dv.topk(device(q, 5), k, database=database, metric=metric, **device.options)
    check_topk(device.to_host(result), q, db, k, metric, exclude_self=self_join)


def test_cosine_zero_vectors_score_zero(device, rng):
    db = random_vectors(rng, 12, D, np.float32)
    db[[2, 7]] = 0
    q = random_vectors(rng, 3, D, np.float32)
    q[1] = 0
    result = device.to_host(dv.cosine_topk(device(q), 12, database=device(db), **device.options))
    scores, ids = check_topk(result, q, db, 12, "cosine")
    assert (scores[1] == 0).all() and (ids[1] == np.arange(12)).all()  # all tie: ids in order


@pytest.mark.parametrize("where", ["queries", "database"])
def test_non_finite_rows_raise_or_are_omitted(device, metric, where, rng):
    db = random_vectors(rng, N_DB, D, np.float32)
    q = random_vectors(rng, N_Q, D, np.float32)
    (q if where == "queries" else db)[4, 2] = np.nan
    result = dv.topk(device(q), 4, database=device(db), metric=metric, **device.options)
    with pytest.raises(NonFiniteError, match=match_all("row", 4, where, OMIT_REMEDY)):
        dask.compute(*result)
    omitted = dv.topk(device(q), 4, database=device(db), metric=metric, nan_policy="omit", **device.options)
    scores, ids = check_topk(device.to_host(omitted), q, db, 4, metric)
    if where == "database":
        assert not (ids == 4).any()
    else:
        assert (ids[4] == -1).all() and np.isnan(scores[4]).all()


@pytest.mark.parametrize("norm", ["l2", "l1", "max"])
def test_normalize_matches_reference(device, norm, dtype, rng):
    x = random_vectors(rng, 20, D, dtype)
    x[3] = 0
    out = dv.normalize(device(x), norm, **device.options)
    assert out.dtype == dtype
    got = device.to_host(out).compute()
    np.testing.assert_allclose(got, reference_normalize(x, norm), rtol=0, atol=tolerance(dtype, "normalize", x))


def test_similarity_matches_reference(device, metric, dtype, rng):
    a = random_vectors(rng, 9, D, dtype)
    b = random_vectors(rng, 14, D, dtype)
    out = dv.similarity(device(a), device(b), metric=metric, **device.options)
    assert out.dtype == dtype
    got = device.to_host(out).compute()
    assert_similarity_close(got, reference_similarity(a, b, metric), metric, tolerance(dtype, metric, a, b))


def test_cpu_backend_refuses_gpu_blocks():
    from dask_vecops.backends import registry

    with pytest.raises(ValueError, match=match_all("'rust'", "CuPy", "backend='cuda'")):
        registry.resolve("rust", on_gpu=True)
    assert registry.resolve("auto", on_gpu=True).__name__.endswith("cuda_backend")


@requires_gpu
def test_results_stay_cupy_arrays(rng):
    cupy = _cupy()
    db = Device("cupy")(random_vectors(rng, 50, D, np.float32))
    scores, ids = dask.compute(*dv.cosine_topk(db, 3))
    assert isinstance(scores, cupy.ndarray) and isinstance(ids, cupy.ndarray)
    assert isinstance(dv.normalize(db).compute(), cupy.ndarray)
    assert isinstance(dv.similarity(db, metric="euclidean").compute(), cupy.ndarray)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k", [10, 1500])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gpu_sized_search(k, metric, rng):
    # k=1500 sorts 2048 slots per row: past FAISS's 2048-entry GPU ceiling for k + partials.
    db = random_vectors(rng, 20_000, 96, np.float32)
    q = random_vectors(rng, 64, 96, np.float32)
    device = Device("cupy")
    result = dv.topk(device(q, Chunking("single")), k, database=device(db, Chunking("uneven")), metric=metric)
    check_topk(device.to_host(result), q, db, k, metric)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_gpu_search_through_the_first_pass(metric, rng):
    # Database chunks long enough for the one-read first pass at k=10 and k=32 (the tests above
    # use the exact selection alone); the self-join also leaves each row's own column out there.
    db = random_vectors(rng, 60_000, 32, np.float32)
    q = random_vectors(rng, 48, 32, np.float32)
    device = Device("cupy")
    for k in (10, 32):
        result = dv.topk(device(q, Chunking("single")), k, database=device(db, 30_000), metric=metric)
        check_topk(device.to_host(result), q, db, k, metric)
    if metric == "cosine":  # the self-join's float64 reference is the slow part of this test
        x = db[:11_000]
        result = dv.topk(device(x, 11_000), 10, metric=metric)
        check_topk(device.to_host(result), x, x, 10, metric, exclude_self=True)
