"""Type stub for ``dask_vecops._rust``, the compiled extension built from ``rust_ufuncs/``.

Every name is a :class:`numpy.ufunc` with a float32 loop then a float64 loop (top-k index
outputs are int64). See :mod:`dask_vecops.ufuncs` for the public handle and examples.
"""

import numpy as np

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
