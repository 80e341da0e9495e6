"""The threaded scheduler and a two-process distributed cluster give the same answers."""

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import (
    METRICS,
    OMIT_REMEDY,
    Chunking,
    check_topk,
    exact_vectors,
    match_all,
    random_vectors,
    requires_distributed,
)
from .reference import assert_similarity_close, reference_normalize, reference_similarity, tolerance

pytestmark = [pytest.mark.slow, requires_distributed]


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("self_join", [False, True], ids=["database", "self-join"])
def test_topk_distributed_equals_threaded(client, backend, metric, self_join, rng):
    # Exact data: both schedulers must return the same ids and the same scores, bit for bit.
    db = exact_vectors(rng, 120, 8, metric, dtype=np.float32)
    q = db if self_join else exact_vectors(rng, 25, 8, metric, dtype=np.float32)
    chunk = Chunking("uneven")
    result = dv.topk(
        chunk(q),
        9,
        database=None if self_join else chunk(db),
        metric=metric,
        backend=backend,
        split_every=2,
    )
    threaded = check_topk(
        result, q, db, 9, metric, exclude_self=self_join, exact_ids=True, scheduler="threads"
    )
    remote = check_topk(
        result, q, db, 9, metric, exclude_self=self_join, exact_ids=True, scheduler=client
    )
    np.testing.assert_array_equal(remote[1], threaded[1])
    np.testing.assert_array_equal(remote[0], threaded[0])


def test_topk_distributed_random_data(client, backend, rng):
    db, q = random_vectors(rng, 400, 16), random_vectors(rng, 30, 16)
    result = dv.cosine_topk(
        da.from_array(q, chunks=7), 10, database=da.from_array(db, chunks=90), backend=backend
    )
    check_topk(result, q, db, 10, "cosine", scheduler=client)


def test_similarity_and_normalize_distributed(client, backend, metric, rng):
    a, b = random_vectors(rng, 40, 6), random_vectors(rng, 25, 6)
    s = dv.similarity(
        da.from_array(a, chunks=11), da.from_array(b, chunks=(9, 4)), metric=metric, backend=backend
    )
    (remote,) = dask.compute(s, scheduler=client)
    assert_similarity_close(
        remote, reference_similarity(a, b, metric), metric, tolerance(np.float64, metric, a, b)
    )
    (y,) = dask.compute(
        dv.normalize(da.from_array(a, chunks=11), norm="l1", backend=backend), scheduler=client
    )
    np.testing.assert_allclose(y, reference_normalize(a, "l1"), rtol=1e-12, atol=1e-12)


def test_non_finite_error_crosses_processes(client, backend, rng):
    db = random_vectors(rng, 60, 4)
    db[41, 3] = np.nan
    lazy = dv.topk(
        random_vectors(rng, 5, 4), 3, database=da.from_array(db, chunks=15), backend=backend
    )
    with pytest.raises(dv.NonFiniteError, match=match_all(41, "database", OMIT_REMEDY)):
        dask.compute(lazy, scheduler=client)


def test_omit_distributed(client, backend, rng):
    x = random_vectors(rng, 50, 5)
    x[[7, 30], 2] = [np.inf, np.nan]
    result = dv.topk(
        da.from_array(x, chunks=12), 4, metric="manhattan", backend=backend, nan_policy="omit"
    )
    _, ids = check_topk(result, x, x, 4, "manhattan", exclude_self=True, scheduler=client)
    np.testing.assert_array_equal(ids[[7, 30]], -1)
