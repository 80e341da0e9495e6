"""Our answers agree with the peers people use instead: scikit-learn brute force, FAISS flat."""

import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import Chunking, random_vectors, requires_faiss, requires_sklearn
from .reference import assert_topk_equal, reference_candidates, reference_normalize, tolerance

N_DB, N_Q, D, K = 2000, 50, 32, 10


@pytest.fixture
def data(rng):
    db = random_vectors(rng, N_DB, D)
    q = random_vectors(rng, N_Q, D)
    return q, db


def assert_matches_peer(ours, peer_scores, peer_ids, q, db, metric, dtype, exclude_self=False):
    """Our lazy result equals the peer's within the tie tolerance (the reference judges ties)."""
    scores, ids = (part.compute() for part in ours)
    assert_topk_equal(
        scores,
        ids,
        np.asarray(peer_scores, dtype=np.float64),
        np.asarray(peer_ids, dtype=np.int64),
        metric=metric,
        atol=tolerance(dtype, metric, q, db),
        ref_full=reference_candidates(q, db, metric, exclude_self),
    )


@requires_sklearn
@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
def test_sklearn_brute_force(backend, metric, data):
    from sklearn.neighbors import NearestNeighbors

    q, db = data
    distances, indices = NearestNeighbors(algorithm="brute", metric=metric).fit(db).kneighbors(q, K)
    peer_scores = 1 - distances if metric == "cosine" else distances
    chunk = Chunking("uneven")
    ours = dv.topk(chunk(q), K, database=chunk(db), metric=metric, backend=backend)
    assert_matches_peer(ours, peer_scores, indices, q, db, metric, np.float64)


@requires_sklearn
def test_sklearn_self_join(backend, data):
    from sklearn.neighbors import NearestNeighbors

    _, x = data
    x = x[:500]
    # kneighbors() without X leaves each point out of its own neighbours, as our self-join does.
    distances, indices = (
        NearestNeighbors(algorithm="brute", metric="cosine").fit(x).kneighbors(n_neighbors=K)
    )
    ours = dv.cosine_topk(da.from_array(x, chunks=120), K, backend=backend)
    assert_matches_peer(ours, 1 - distances, indices, x, x, "cosine", np.float64, exclude_self=True)


@requires_faiss
def test_faiss_inner_product_on_normalised_data(backend, data):
    import faiss

    q, db = (part.astype(np.float32) for part in data)
    qn, dbn = (reference_normalize(part).astype(np.float32) for part in (q, db))
    index = faiss.IndexFlatIP(D)
    index.add(dbn)
    peer_scores, peer_ids = index.search(qn, K)
    chunk = Chunking("uneven")
    # cosine on the raw data, and dot on the normalised data, both equal FAISS's inner product.
    ours = dv.cosine_topk(chunk(q), K, database=chunk(db), backend=backend)
    assert_matches_peer(ours, peer_scores, peer_ids, q, db, "cosine", np.float32)
    ours = dv.topk(chunk(qn), K, database=chunk(dbn), metric="dot", backend=backend)
    assert_matches_peer(ours, peer_scores, peer_ids, qn, dbn, "dot", np.float32)


@requires_faiss
def test_faiss_l2(backend, data):
    import faiss

    q, db = (part.astype(np.float32) for part in data)
    index = faiss.IndexFlatL2(D)
    index.add(db)
    squared, peer_ids = index.search(q, K)
    ours = dv.topk(
        q, K, database=da.from_array(db, chunks=300), metric="euclidean", backend=backend
    )
    assert_matches_peer(
        ours, np.sqrt(np.maximum(squared, 0)), peer_ids, q, db, "euclidean", np.float32
    )
