"""Row normalisation: one task per row chunk."""

from __future__ import annotations

from functools import partial

import dask.array as da

from .._protocol import take_rows
from .._validate import finite_mask
from ._rows import matrix_meta, row_ids, scatter_rows


def normalize(x: da.Array, norm: str, *, normalize_block, nan_policy: str, name: str = "x") -> da.Array:
    """Lazily divide each row of ``x`` (one chunk along features) by its ``norm``."""
    chunk = partial(
        _normalize_chunk, normalize_block=normalize_block, norm=norm, nan_policy=nan_policy, name=name
    )
    return da.blockwise(
        chunk, "ij", x, "ij", row_ids(x), "i",
        dtype=x.dtype, meta=matrix_meta(x, x.dtype), token="vecops-normalize",
    )


def _normalize_chunk(x, rows, *, normalize_block, norm, nan_policy, name):
    keep = finite_mask(x, rows, name, nan_policy)
    if keep is None:
        return normalize_block(x, norm)
    return scatter_rows(normalize_block(take_rows(x, keep), norm), keep, len(x))
