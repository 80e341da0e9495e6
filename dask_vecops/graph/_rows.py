"""Helpers shared by the graph builders: global row ids and non-finite row handling."""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from .._protocol import array_module


def row_ids(x: da.Array) -> da.Array:
    """The global row number of each row of ``x``, chunked like its rows."""
    return da.arange(x.shape[0], chunks=(x.chunks[0],), dtype=np.int64)


def matrix_meta(x: da.Array, dtype) -> object:
    """A 0x0 array of the same kind as ``x``'s chunks (NumPy or CuPy) with ``dtype``."""
    return meta_from_array(x, ndim=2, dtype=dtype)


def scatter_rows(values, keep: np.ndarray, n_rows: int, axis: int = 0):
    """``values`` computed on the kept rows, placed back among ``n_rows`` with NaN elsewhere."""
    shape = list(values.shape)
    shape[axis] = n_rows
    xp = array_module(values)
    out = xp.full(shape, np.nan, dtype=values.dtype)
    index = [slice(None)] * values.ndim
    index[axis] = xp.asarray(keep)
    out[tuple(index)] = values
    return out


def single_block(block):
    """The one block blockwise hands over for a contracted index with ``concatenate=False``.

    ``concatenate=True`` would copy it (``np.concatenate`` of one array still copies): a whole
    extra pass over every database chunk.
    """
    while isinstance(block, list):
        (block,) = block
    return block
