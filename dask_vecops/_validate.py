"""Argument checks: eager ones on shapes, dtypes and names, and the compute-time check of values.

Each check raises an exception whose message names the problem and, where there is one, the remedy.
"""

from __future__ import annotations

import math
import numbers

import dask.array as da
import numpy as np

from ._errors import NonFiniteError
from ._protocol import array_module, to_numpy


def as_matrix(x, name: str) -> da.Array:
    """``x`` as a 2-D dask array with known chunks and one chunk along the feature axis."""
    if not isinstance(x, da.Array):
        x = np.asarray(x) if array_module(x) is np else x  # a CuPy array stays on its GPU
        _check_matrix(x, name)
        return da.from_array(x, chunks={0: "auto", 1: -1})
    _check_matrix(x, name)
    _check_known_chunks(x, name)
    return x.rechunk({1: -1}) if len(x.chunks[1]) > 1 else x


def _check_matrix(x, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (rows, features); got {x.ndim}-D with shape {x.shape}"
        )
    _check_dtype(x.dtype, name)


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {dtype.name}, which dask-vecops does not support: "
            "embeddings must be real numbers (float16/32/64, integer or bool)"
        )


def _check_known_chunks(x: da.Array, name: str) -> None:
    if any(math.isnan(c) for c in x.chunks[0]) or any(math.isnan(s) for s in x.shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {x.shape}); "
            f"call {name}.compute_chunk_sizes() first, or build it with known chunks"
        )


def float_dtype(*dtypes: np.dtype) -> np.dtype:
    """The float type results come in: float32 for float16/32, float64 for float64 or integers."""
    return np.result_type(*dtypes, np.float32)


def check_same_features(a: da.Array, b: da.Array, a_name: str, b_name: str) -> None:
    """Raise when ``a`` and ``b`` have different numbers of features."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature sizes differ: {a_name} has {a.shape[1]} features per row, "
            f"{b_name} has {b.shape[1]}"
        )


def check_k(k, available: int, what: str) -> int:
    """``k`` as an int, when ``1 <= k <= available``; ``what`` names the rows that are available."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer; got {k!r} of type {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1; got k={k}")
    if k > available:
        raise ValueError(f"k={k} is larger than the {available} {what}")
    return k


def check_choice(value, valid, what: str):
    """``value`` when it is one of ``valid``; else a ValueError listing them."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, valid))}")
    return value


def nonfinite_rows(x) -> np.ndarray:
    """Boolean host mask of the rows of block ``x`` (NumPy or CuPy) that hold a NaN or an inf.

    One pass at memory speed: a row's sum of squares is finite unless the row holds NaN/inf or
    the sum overflows; only the rows whose sum is not finite are looked at element by element.
    """
    xp = array_module(x)
    suspect = ~xp.isfinite(xp.einsum("ij,ij->i", x, x))
    if suspect.any():
        suspect[suspect] = ~xp.isfinite(x[suspect]).all(axis=1)
    return to_numpy(suspect)


def _all_finite(x) -> bool:
    """Whether every value of block ``x`` is finite, for sure when True: its sum of squares is
    (one reduction, no temporaries; an overflowing sum sends the caller to the row by row check)."""
    xp = array_module(x)
    return bool(xp.isfinite(xp.einsum("ij,ij->", x, x)))


def finite_mask(x, row_ids, name: str, nan_policy: str) -> np.ndarray | None:
    """The rows of ``x`` to keep under ``nan_policy`` as a host mask: None when all are finite.

    With ``"raise"`` a non-finite row raises :class:`NonFiniteError` naming its global row, taken
    from ``row_ids`` (an array or a ``range``).
    """
    if _all_finite(x):
        return None
    bad = nonfinite_rows(x)
    if not bad.any():
        return None
    if nan_policy == "raise":
        raise nonfinite_error(int(row_ids[np.argmax(bad)]), name)
    return ~bad


def nonfinite_error(row: int, name: str) -> NonFiniteError:
    """The error for global row ``row`` of the input called ``name`` holding a NaN or an inf."""
    return NonFiniteError(
        f"row {row} of {name} contains NaN or inf; "
        "pass nan_policy='omit' to skip such rows, or clean the data"
    )
