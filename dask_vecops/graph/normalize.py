"""Row normalisation: one task per row chunk."""

from __future__ import annotations

from functools import partial

import dask.array as da

from .. import _metrics
from .._protocol import take_rows
from .._validate import finite_mask
from ._rows import matrix_meta, row_ids, scatter_rows


def normalize(x: da.Array, norm: str, *, normalize_block, nan_policy: str, name: str = "x") -> da.Array:
    """Lazily divide each row of ``x`` (one chunk along features) by its ``norm``."""
    chunk = partial(
        _normalize_chunk, normalize_block=normalize_block, norm=norm, nan_policy=nan_policy, name=name,
        backend=_metrics.backend_name(normalize_block),
    )
    return da.blockwise(
        chunk, "ij", x, "ij", row_ids(x), "i",
        dtype=x.dtype, meta=matrix_meta(x, x.dtype), token="vecops-normalize",
    )


def _normalize_chunk(x, rows, *, normalize_block, norm, nan_policy, name, backend):
    keep = finite_mask(x, rows, name, nan_policy)
    kept = x if keep is None else take_rows(x, keep)
    start = _metrics.clock()
    out = normalize_block(kept, norm)
    _metrics.record("normalize", backend, len(x), _metrics.clock() - start)
    return out if keep is None else scatter_rows(out, keep, len(x))
