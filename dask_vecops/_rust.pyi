"""Type stub for ``dask_vecops._rust``, the compiled extension built from ``rust_ufuncs/``.

Every name is a :class:`numpy.ufunc` with a float32 loop then a float64 loop (top-k index
outputs are int64), except the plain functions: ``topk_block`` and ``merge_topk`` (the Python
backend's top-k and merge tasks), ``set_num_threads`` / ``get_num_threads`` (see
``docs/threads.md``) and ``kernel_isa`` / ``best_isa``.
See :mod:`dask_vecops.ufuncs` for the public handle and examples.
"""

from typing import Literal, TypeVar

import numpy as np

_F = TypeVar("_F", np.float32, np.float64)

def topk_block(
    q: np.ndarray[tuple[int, int], np.dtype[_F]],
    db: np.ndarray[tuple[int, int], np.dtype[_F]],
    k: int,
    metric: Literal["cosine", "dot", "euclidean", "manhattan"],
    exclude: np.ndarray[tuple[int], np.dtype[np.int64]] | None = None,
    db_norms: np.ndarray[tuple[int], np.dtype[_F]] | None = None,
    lazy_norms: bool = False,
    bars: np.ndarray[tuple[int], np.dtype[_F]] | None = None,
) -> tuple[
    np.ndarray[tuple[int, int], np.dtype[_F]],
    np.ndarray[tuple[int, int], np.dtype[np.int64]],
    np.ndarray[tuple[int], np.dtype[_F]] | None,
]:
    """Exact top-``k`` rows of ``db`` per row of ``q``: ``(scores, ids, db_norms)``.

    ``q`` (m, d) and ``db`` (n, d) are C-contiguous arrays of one dtype, float32 or float64
    (TypeError / ValueError otherwise). ``exclude``: per query a ``db`` row to skip, or -1.
    ``db_norms``: the L2 norms of the ``db`` rows (same dtype), used as given for cosine.
    Best first; ties to the lower id; NaN scores never returned; padding (NaN, -1). The
    third element is, for cosine, the norms used (``db_norms`` itself, or those computed in
    the same pass, equal to ``norm_l2(db)``), for the caller to cache; None otherwise.
    ``lazy_norms=True`` (cosine without ``db_norms``): a few float32 queries bound the scales
    from float32 sums, compute exact norms only for the rows that could enter a top k, and
    return None for the norms, when every ``db`` row is finite (else all the norms). Same bits.
    ``bars``: per query a score at least ``k`` rows of the whole database reach (NaN: none);
    rows scoring worse are left out from the start (fewer than ``k`` may come back, padded),
    rows scoring as well are kept. Same bits for the rows returned.
    Runs without the GIL, on up to ``get_num_threads()`` threads.
    """

def merge_topk(
    scores: list[np.ndarray[tuple[int, int], np.dtype[_F]]],
    ids: list[np.ndarray[tuple[int, int], np.dtype[np.int64]]],
    k: int,
    higher: bool,
) -> tuple[
    np.ndarray[tuple[int, int], np.dtype[_F]],
    np.ndarray[tuple[int, int], np.dtype[np.int64]],
]:
    """Best ``k`` of each row's candidates in several partial results: ``(scores, ids)``.

    Parts: C-contiguous ``(m, width)`` scores of one dtype (float32 or float64) with int64 ids
    of the same shape (TypeError / ValueError otherwise). ``higher``: larger scores are
    better. The ranking of ``topk_block``; NaN scores and ids below zero are padding, never
    chosen. A selection per row, linear in the candidates. Runs without the GIL, on up to
    ``get_num_threads()`` threads for large merges.
    """

def set_num_threads(n: int) -> None:
    """Threads each kernel call may use (``n >= 1``); default ``DASK_VECOPS_NUM_THREADS`` or 1."""

def get_num_threads() -> int:
    """Threads each kernel call may use."""

normalize_l2: np.ufunc
"""``(d)->(d)``: each row divided by its L2 norm; zero rows stay zero."""
normalize_l1: np.ufunc
"""``(d)->(d)``: each row divided by its L1 norm; zero rows stay zero."""
normalize_max: np.ufunc
"""``(d)->(d)``: each row divided by its largest absolute value; zero rows stay zero."""

norm_l2: np.ufunc
"""``(d)->()``: L2 norm of each row (accumulated in float64)."""
norm_l1: np.ufunc
"""``(d)->()``: L1 norm of each row."""
norm_max: np.ufunc
"""``(d)->()``: largest absolute value of each row (NaN if the row has a NaN)."""

cosine: np.ufunc
"""``(d),(n,d)->(n)``: cosine similarity of each row with every database row; 0 with a zero vector."""
dot: np.ufunc
"""``(d),(n,d)->(n)``: inner product of each row with every database row."""
euclidean: np.ufunc
"""``(d),(n,d)->(n)``: exact Euclidean distance (sqrt of summed squared differences)."""
manhattan: np.ufunc
"""``(d),(n,d)->(n)``: Manhattan (L1) distance."""

topk_cosine: np.ufunc
"""``(d),(n,d),()->(k),(k)``: exact top-k by cosine; call with ``exclude`` and ``out=(scores, ids)``.

Best first; ties to the lower row id; NaN scores never returned; padding (NaN, -1).
"""
topk_dot: np.ufunc
"""``(d),(n,d),()->(k),(k)``: exact top-k by inner product (highest first); as ``topk_cosine``."""
topk_euclidean: np.ufunc
"""``(d),(n,d),()->(k),(k)``: exact k nearest by Euclidean distance (lowest first); as ``topk_cosine``."""
topk_manhattan: np.ufunc
"""``(d),(n,d),()->(k),(k)``: exact k nearest by Manhattan distance (lowest first); as ``topk_cosine``."""

add: np.ufunc
"""Element-wise ``a + b``; identity 0."""
subtract: np.ufunc
"""Element-wise ``a - b``; no identity."""
multiply: np.ufunc
"""Element-wise ``a * b``; identity 1."""
divide: np.ufunc
"""Element-wise ``a / b``; no identity."""

scale: np.ufunc
"""``(d),()->(d)``: row ``i`` times scalar ``w[i]``."""

_panic_check: np.ufunc
"""``(d)->()``: test hook; always panics in its loop, surfacing as RuntimeError."""
_gil_held: np.ufunc
"""``(d)->()``: test hook; 1.0 where the loop ran holding the GIL, else 0.0."""
