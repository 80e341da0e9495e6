"""An independent float64 NumPy oracle for dask-vecops, and the tie-aware comparison.

Nothing here imports ``dask_vecops``: the reference must not share code with the backends it
judges. Non-finite rows are handled the way ``nan_policy="omit"`` promises (their scores are NaN
and top-k never picks them), so for finite data the functions are the plain definitions.
"""

import numpy as np

SIMILARITY_METRICS = ("cosine", "dot")  # best first = largest
DISTANCE_METRICS = ("euclidean", "manhattan")  # best first = smallest
METRICS = SIMILARITY_METRICS + DISTANCE_METRICS
NORMS = ("l2", "l1", "max")

# Sizes of the row blocks used for the pairwise loops: (block, n, d) float64 at most ~32 MB.
_BLOCK_ELEMENTS = 4_000_000


def finite_rows(x):
    """Boolean mask of the rows of ``x`` that hold only finite values."""
    return np.isfinite(np.asarray(x, dtype=np.float64)).all(axis=1)


def _finite_float64(x):
    """``x`` as float64 with non-finite rows zeroed (no warnings), and the mask of those rows."""
    x = np.asarray(x, dtype=np.float64)
    finite = finite_rows(x)
    return np.where(finite[:, None], x, 0.0), finite


def reference_normalize(x, norm="l2"):
    """Rows divided by their norm ("l2", "l1", "max"); zero rows stay zero, non-finite ones NaN."""
    x, finite = _finite_float64(x)
    if norm == "l2":
        scale = np.sqrt((x * x).sum(axis=1))
    elif norm == "l1":
        scale = np.abs(x).sum(axis=1)
    elif norm == "max":
        scale = np.abs(x).max(axis=1, initial=0.0)
    else:
        raise ValueError(f"unknown norm {norm!r}")
    out = np.zeros_like(x)
    nonzero = scale > 0
    out[nonzero] = x[nonzero] / scale[nonzero, None]
    out[~finite] = np.nan
    return out


def _pairwise(a, b, reduce_diff):
    """``reduce_diff(a[i] - b[j])`` for all pairs, by row blocks of ``a``."""
    out = np.empty((len(a), len(b)))
    block = max(1, _BLOCK_ELEMENTS // max(1, b.size))
    for start in range(0, len(a), block):
        diff = a[start : start + block, None, :] - b[None, :, :]
        out[start : start + block] = reduce_diff(diff)
    return out


def reference_similarity(a, b=None, metric="cosine"):
    """The (len(a), len(b)) matrix of ``metric`` in float64; non-finite vectors' rows/columns NaN.

    Cosine of a zero vector with anything is 0. ``b=None`` means ``a`` against itself.
    """
    a, finite_a = _finite_float64(a)
    b, finite_b = (a, finite_a) if b is None else _finite_float64(b)
    if metric == "cosine":
        out = reference_normalize(a, "l2") @ reference_normalize(b, "l2").T
    elif metric == "dot":
        out = a @ b.T
    elif metric == "euclidean":
        out = _pairwise(a, b, lambda diff: np.sqrt((diff * diff).sum(axis=-1)))
    elif metric == "manhattan":
        out = _pairwise(a, b, lambda diff: np.abs(diff).sum(axis=-1))
    else:
        raise ValueError(f"unknown metric {metric!r}")
    out[~finite_a, :] = np.nan
    out[:, ~finite_b] = np.nan
    return out


def reference_candidates(q, db, metric, exclude_self=False):
    """The score of every (query, database row) pair, NaN where top-k may not pick the pair.

    NaN marks non-finite queries, non-finite database rows and, with ``exclude_self``, the query
    row itself (``q`` is then the database).
    """
    full = reference_similarity(q, db, metric)
    if exclude_self:
        assert len(q) == len(db), "a self-join compares the array with itself"
        np.fill_diagonal(full, np.nan)
    return full


def topk_from_candidates(full, k, metric):
    """Best ``k`` of each row of ``full``: lexsort by (-score or distance, id); NaN/-1 padding."""
    key = -full if metric in SIMILARITY_METRICS else full
    scores = np.full((full.shape[0], k), np.nan)
    ids = np.full((full.shape[0], k), -1, dtype=np.int64)
    all_ids = np.arange(full.shape[1])
    for i, row in enumerate(key):
        candidates = all_ids[~np.isnan(row)]
        chosen = candidates[np.lexsort((candidates, row[candidates]))][:k]
        scores[i, : len(chosen)] = full[i, chosen]
        ids[i, : len(chosen)] = chosen
    return scores, ids


def reference_topk(q, db, k, metric, exclude_self=False):
    """Top-k of each row of ``q`` among the rows of ``db``: (scores, int64 ids), best first."""
    return topk_from_candidates(reference_candidates(q, db, metric, exclude_self), k, metric)


def comparable(values, metric):
    """Values in the space where `tolerance` bounds the error: squared for euclidean.

    A euclidean distance computed as sqrt(|a|^2 + |b|^2 - 2 a.b) in float32 (as BLAS-based
    libraries do) has an absolute error of about sqrt(eps) * |a| near zero distance, but its
    square is accurate to eps * (|a|^2 + |b|^2), so that is where the comparison is fair.
    """
    values = np.asarray(values, dtype=np.float64)
    return values * values if metric == "euclidean" else values


def tolerance(dtype, metric, a, b=None):
    """Absolute tolerance for ``comparable`` values of ``metric`` computed in ``dtype``.

    Scaled by the largest value the metric can take on these inputs, and by the number of
    features (each product or difference adds a rounding).
    """
    a, _ = _finite_float64(a)
    b = a if b is None else _finite_float64(b)[0]
    norm2 = lambda x: np.sqrt((x * x).sum(axis=1)).max(initial=0.0)  # noqa: E731
    norm1 = lambda x: np.abs(x).sum(axis=1).max(initial=0.0)  # noqa: E731
    scale = {
        "cosine": 1.0,
        "dot": norm2(a) * norm2(b),
        "euclidean": norm2(a) ** 2 + norm2(b) ** 2,
        "manhattan": norm1(a) + norm1(b),
        "normalize": 1.0,
    }[metric]
    eps = np.finfo(dtype).eps
    return 16 * max(a.shape[1], 16) * eps * max(scale, 1.0)


def assert_similarity_close(actual, desired, metric, atol):
    """``actual`` equals the reference ``desired`` within ``atol`` in `comparable` space."""
    np.testing.assert_allclose(
        comparable(actual, metric), comparable(desired, metric), rtol=0, atol=atol, equal_nan=True
    )


def assert_topk_equal(
    scores, ids, ref_scores, ref_ids, *, metric, atol, ref_full=None, exact_ids=False
):
    """Top-k results equal the reference, allowing a different order only within ties.

    * scores equal ``ref_scores`` within ``atol`` (NaN where the reference pads);
    * ids equal ``ref_ids`` except where scores tie within ``atol``: there each returned id's
      true score (from ``ref_full``, the output of `reference_candidates`) must equal the
      returned score within ``atol`` (so it is a legal candidate, never self or a non-finite
      row), and no id may repeat within a row;
    * with ``exact_ids`` (data whose ties are exact), ids must equal ``ref_ids`` exactly.
    """
    scores, ids = np.asarray(scores), np.asarray(ids)
    assert scores.shape == ref_scores.shape, (scores.shape, ref_scores.shape)
    assert ids.shape == ref_ids.shape, (ids.shape, ref_ids.shape)
    padded = ref_ids == -1
    np.testing.assert_array_equal(ids[padded], -1, err_msg="padding ids must be -1")
    assert np.isnan(scores[padded]).all(), "padding scores must be NaN"
    assert_similarity_close(scores, ref_scores, metric, atol)
    if exact_ids:
        np.testing.assert_array_equal(ids, ref_ids)
        return
    for row in ids:
        found = row[row >= 0]
        assert len(np.unique(found)) == len(found), f"an id repeats within a row: {row}"
    rows, cols = np.nonzero(ids != ref_ids)
    if len(rows):
        where = list(zip(rows, cols, strict=True))
        assert ref_full is not None, f"ids differ from the reference at {where}"
        returned = ids[rows, cols]
        assert (returned >= 0).all() and (returned < ref_full.shape[1]).all(), returned
        true = ref_full[rows, returned]
        assert not np.isnan(true).any(), (
            f"returned ids that may not be picked (self, non-finite): {returned[np.isnan(true)]}"
        )
        np.testing.assert_allclose(
            comparable(true, metric),
            comparable(scores[rows, cols], metric),
            rtol=0,
            atol=atol,
            err_msg="ids differ from the reference where the scores do not tie",
        )
