"""Synthetic embeddings for demos, tests and benchmarks, generated lazily chunk by chunk."""

from __future__ import annotations

import dask.array as da
import numpy as np

PAGE_ROWS = 4096

def clustered_embeddings(
    rows: int,
    features: int = 384,
    *,
    clusters: int = 100,
    spread: float = 0.3,
    chunk_rows: int = 50_000,
    dtype="float32",
    seed: int = 0,
) -> da.Array:
    """Lazy embeddings drawn around ``clusters`` random centres, like real sentence embeddings.

    Rows are drawn in fixed pages of :data:`PAGE_ROWS`, each from its own seed, so the values do
    not depend on the chunking and the array never needs to fit in memory.

    Examples
    --------
    >>> from dask_vecops.datasets import clustered_embeddings
    >>> x = clustered_embeddings(1_000, 16, chunk_rows=300)
    >>> x.shape, x.chunks[0], x.dtype
    ((1000, 16), (300, 300, 300, 100), dtype('float32'))
    >>> bool((x.compute() == clustered_embeddings(1_000, 16, chunk_rows=7).compute()).all())
    True
    """
    centres = np.random.default_rng(seed).standard_normal((clusters, features))
    chunks = (da.core.normalize_chunks(chunk_rows, (rows,))[0], (features,))
    return da.map_blocks(
        _clustered_chunk, dtype=dtype, chunks=chunks, meta=np.empty((0, 0), dtype),
        centres=centres, spread=spread, seed=seed,
    )


def _clustered_chunk(centres, spread, seed, dtype=None, block_info=None):
    info = block_info[None]
    (start, stop), _ = info["array-location"]
    first, last = start // PAGE_ROWS, (stop - 1) // PAGE_ROWS
    pages = [_clustered_page(centres, spread, seed, p) for p in range(first, last + 1)]
    rows = np.concatenate(pages)[start - first * PAGE_ROWS : stop - first * PAGE_ROWS]
    return rows.astype(info["dtype"])


def _clustered_page(centres, spread, seed, page):
    rng = np.random.default_rng([seed, page])
    labels = rng.integers(len(centres), size=PAGE_ROWS)
    return centres[labels] + spread * rng.standard_normal((PAGE_ROWS, centres.shape[1]))
