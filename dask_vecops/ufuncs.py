"""Exact vector operations as NumPy ufuncs, compiled from Rust (``dask_vecops._rust``).

Every name here is a real :class:`numpy.ufunc` with a float32 and a float64 loop (float32
first; other numeric inputs cast by NumPy's rules, so integers use float64). Being ufuncs,
they broadcast, accept ``out=``, and work lazily on Dask arrays (``Array.__array_ufunc__``
routes generalized ufuncs to :func:`dask.array.apply_gufunc`; core dimensions must then be
single-chunk) and in :func:`xarray.apply_ufunc`.

=====================================================  ==========================  ===========
ufuncs                                                 signature                   meaning
=====================================================  ==========================  ===========
``normalize_l2``, ``normalize_l1``, ``normalize_max``  ``(d)->(d)``                row / norm
``norm_l2``, ``norm_l1``, ``norm_max``                 ``(d)->()``                 row norms
``cosine``, ``dot``, ``euclidean``, ``manhattan``      ``(d),(n,d)->(n)``          all pairs
``topk_cosine``, ``topk_dot``, ``topk_euclidean``,     ``(d),(n,d),()->(k),(k)``   exact top-k
``topk_manhattan``
``add``, ``subtract``, ``multiply``, ``divide``        element-wise                IEEE
``scale``                                              ``(d),()->(d)``             row * w
=====================================================  ==========================  ===========

The top-k ufuncs need ``out=(scores, ids)`` because ``k`` appears in no input;
:func:`topk_block` allocates them.

The kernels run serially on the calling thread unless :func:`set_num_threads` allows more
(one shared pool; see ``docs/threads.md``): Dask already runs one chunk per core.
:func:`kernel_isa` names the instruction set they use: the best of this CPU (:func:`best_isa`),
capped by the environment variable ``DASK_VECOPS_ISA`` (``avx512bf16``, ``avx512``, ``avx2``,
``portable``).

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> x = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
>>> ufuncs.cosine(x, x)
array([[1. , 0.6],
       [0.6, 1. ]], dtype=float32)
>>> ufuncs.norm_l2.types
['f->f', 'd->d']
>>> ufuncs.TOPK_UFUNCS["cosine"] is ufuncs.topk_cosine
True
"""

from __future__ import annotations

import operator

import numpy as np

try:
    from ._rust import (
        _gil_held,
        _panic_check,
        add,
        best_isa,
        cosine,
        divide,
        dot,
        get_num_threads,
        euclidean,
        kernel_isa,
        manhattan,
        multiply,
        norm_l1,
        norm_l2,
        norm_max,
        normalize_l1,
        normalize_l2,
        normalize_max,
        scale,
        set_num_threads,
        subtract,
        topk_cosine,
        topk_dot,
        topk_euclidean,
        topk_manhattan,
    )
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "dask_vecops.ufuncs needs the compiled Rust extension dask_vecops._rust, which is "
        "missing or does not load. Build it from the repository root with `make build` "
        "(or `pip install -e .`), then import again."
    ) from exc

TOPK_UFUNCS = {
    "cosine": topk_cosine,
    "dot": topk_dot,
    "euclidean": topk_euclidean,
    "manhattan": topk_manhattan,
}
"""The top-k ufunc of each metric name."""


def topk_block(q, db, k, metric="cosine", exclude=None):
    """Exact top-``k`` rows of ``db`` for every row of ``q``, by one Rust ufunc call.

    Parameters
    ----------
    q : array_like, shape (..., d)
        Query rows.
    db : array_like, shape (n, d)
        Database rows (or a stack ``(..., n, d)`` broadcasting against ``q``'s leading
        dimensions).
    k : int
        How many rows to return per query (``k >= 0``; may exceed ``n``).
    metric : {"cosine", "dot", "euclidean", "manhattan"}
        Similarities rank highest first, distances lowest first.
    exclude : array_like of int, optional
        Per query, a row of ``db`` to leave out (e.g. the query itself in a self-join),
        or -1 for none; broadcasts against ``q.shape[:-1]``. Default: exclude nothing.

    Returns
    -------
    scores : ndarray, shape q.shape[:-1] + (k,)
        Best first; dtype ``result_type(q, db, float32)``.
    ids : ndarray of int64, same shape
        Row positions in ``db``. Equal scores go to the lower id; NaN scores are never
        returned; places no row could fill hold score NaN and id -1.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_vecops.ufuncs import topk_block
    >>> db = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    >>> scores, ids = topk_block(db, db, 2, exclude=np.arange(3))
    >>> ids
    array([[2, 1],
           [2, 0],
           [0, 1]])
    >>> scores.round(4)
    array([[0.7071, 0.    ],
           [0.7071, 0.    ],
           [0.7071, 0.7071]], dtype=float32)
    >>> topk_block(np.zeros((1, 2)), db, 5, metric="euclidean")[1]
    array([[ 0,  1,  2, -1, -1]])
    """
    try:
        ufunc = TOPK_UFUNCS[metric]
    except KeyError:
        raise ValueError(f"metric must be one of {sorted(TOPK_UFUNCS)}, got {metric!r}") from None
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    q, db = np.asarray(q), np.asarray(db)
    if q.ndim < 1 or db.ndim < 2:
        raise ValueError(f"need q of shape (..., d) and db of shape (n, d), got {q.shape} and {db.shape}")
    exclude = np.asarray(-1 if exclude is None else exclude)
    if exclude.dtype.kind not in "iu":
        raise TypeError(f"exclude must hold integers, got dtype {exclude.dtype}")
    loop_shape = np.broadcast_shapes(q.shape[:-1], db.shape[:-2], exclude.shape)
    scores = np.empty(loop_shape + (k,), dtype=np.result_type(q, db, np.float32))
    ids = np.empty(loop_shape + (k,), dtype=np.int64)
    ufunc(q, db, exclude.astype(np.int64, copy=False), out=(scores, ids))
    return scores, ids


_UFUNCS = {
    name: obj for name, obj in sorted(globals().items()) if isinstance(obj, np.ufunc)
}

# Run the examples in the ufuncs' own docstrings (written in Rust) as doctests of this module.
__test__ = {name: uf.__doc__ for name, uf in _UFUNCS.items()}
__test__.update(kernel_isa=kernel_isa.__doc__, best_isa=best_isa.__doc__)

__all__ = sorted(name for name in _UFUNCS if not name.startswith("_")) + [
    "TOPK_UFUNCS",
    "best_isa",
    "get_num_threads",
    "kernel_isa",
    "set_num_threads",
    "topk_block",
]
