"""Similarity and distance matrices: one task per (row chunk of a, row chunk of b)."""

from __future__ import annotations

from functools import partial

import dask.array as da

from .. import _metrics
from .._protocol import take_rows
from .._validate import finite_mask
from ._rows import matrix_meta, row_ids, scatter_rows, single_block


def similarity(
    a: da.Array, b: da.Array, metric: str, *, similarity_block, nan_policy: str, names=("a", "b")
) -> da.Array:
    """The lazy ``(len(a), len(b))`` matrix of ``metric``; both have one chunk along features."""
    chunk = partial(
        _similarity_chunk, similarity_block=similarity_block, metric=metric,
        nan_policy=nan_policy, names=names, backend=_metrics.backend_name(similarity_block),
    )
    # Shaped like dask's `outer`: the feature index k is contracted inside each task.
    return da.blockwise(
        chunk, "ij", a, "ik", row_ids(a), "i", b, "jk", row_ids(b), "j",
        dtype=a.dtype, meta=matrix_meta(a, a.dtype), concatenate=False, token="vecops-similarity",
    )


def _similarity_chunk(
    a, a_rows, b, b_rows, *, similarity_block, metric, nan_policy, names, backend
):
    a, b = single_block(a), single_block(b)
    keep_a = finite_mask(a, a_rows, names[0], nan_policy)
    keep_b = finite_mask(b, b_rows, names[1], nan_policy)
    a_kept = a if keep_a is None else take_rows(a, keep_a)
    b_kept = b if keep_b is None else take_rows(b, keep_b)
    start = _metrics.clock()
    out = similarity_block(a_kept, b_kept, metric)
    _metrics.record("similarity", backend, len(b), _metrics.clock() - start)
    if keep_a is not None:
        out = scatter_rows(out, keep_a, len(a), axis=0)
    if keep_b is not None:
        out = scatter_rows(out, keep_b, len(b), axis=1)
    return out
