"""normalize against the float64 reference: backends x norms x dtypes x chunkings."""

import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import NORMS, raise_if_dask_computes, random_vectors, result_dtype
from .reference import reference_normalize, tolerance

norms = pytest.mark.parametrize("norm", NORMS)


def check_normalize(y, x, norm, dtype=None):
    """``y`` is lazy, keeps the shape, has the contract's dtype and the reference values."""
    expected = np.dtype(dtype or result_dtype(x.dtype))
    assert isinstance(y, da.Array), type(y)
    assert y.shape == x.shape and y.dtype == expected, (y.shape, y.dtype)
    out = y.compute()
    assert out.shape == x.shape and out.dtype == expected, (out.shape, out.dtype)
    np.testing.assert_allclose(
        out,
        reference_normalize(x, norm),
        rtol=0,
        atol=tolerance(expected, "normalize", x),
        equal_nan=True,
    )
    return out


@norms
def test_normalize_matches_reference(backend, norm, dtype, chunking, rng):
    x = 5 * random_vectors(rng, 37, 8, dtype)
    check_normalize(dv.normalize(chunking(x), norm=norm, backend=backend), x, norm)


def test_normalize_default_is_l2(backend, rng):
    x = random_vectors(rng, 10, 4)
    out = check_normalize(dv.normalize(x, backend=backend), x, "l2")
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1)


@norms
def test_normalize_unit_norms_and_idempotent(backend, norm, rng):
    x = random_vectors(rng, 25, 6) * rng.uniform(0.01, 100, (25, 1))
    once = dv.normalize(x, norm=norm, backend=backend)
    out = once.compute()
    size = {"l2": np.linalg.norm(out, axis=1), "l1": np.abs(out).sum(1), "max": np.abs(out).max(1)}
    np.testing.assert_allclose(size[norm], 1, rtol=1e-12)
    np.testing.assert_allclose(
        dv.normalize(once, norm=norm, backend=backend).compute(), out, rtol=1e-12
    )


@norms
def test_normalize_zero_rows_stay_zero(backend, norm, chunking, rng):
    x = random_vectors(rng, 20, 5)
    x[[0, 6, 19]] = 0
    out = check_normalize(dv.normalize(chunking(x), norm=norm, backend=backend), x, norm)
    np.testing.assert_array_equal(out[[0, 6, 19]], 0)
    assert np.isfinite(out).all()


def test_normalize_max_uses_absolute_values(backend):
    x = np.array([[1.0, -4.0, 2.0], [-3.0, 0.0, 0.0]])
    out = dv.normalize(x, norm="max", backend=backend).compute()
    np.testing.assert_allclose(out, [[0.25, -1.0, 0.5], [-1.0, 0.0, 0.0]])


def test_normalize_exact_values(backend, dtype):
    x = np.array([[3.0, 4.0], [0.0, -2.0], [1.0, 1.0]], dtype=dtype)
    np.testing.assert_allclose(
        dv.normalize(x, norm="l2", backend=backend).compute(),
        [[0.6, 0.8], [0, -1], [0.5**0.5] * 2],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        dv.normalize(x, norm="l1", backend=backend).compute(),
        [[3 / 7, 4 / 7], [0, -1], [0.5, 0.5]],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float16", "float32"),
        ("float32", "float32"),
        ("float64", "float64"),
        ("int32", "float64"),
        ("int64", "float64"),
    ],
)
@norms
def test_normalize_output_dtypes(backend, norm, dtype, expected, rng):
    x = (4 * random_vectors(rng, 9, 5)).astype(dtype)
    check_normalize(dv.normalize(x, norm=norm, backend=backend), x, norm, dtype=expected)


def test_normalize_is_lazy(backend, chunking, rng):
    x = random_vectors(rng, 20, 6)
    with raise_if_dask_computes():
        y = dv.normalize(chunking(x), backend=backend)
        y_numpy = dv.normalize(x, backend=backend)
    check_normalize(y, x, "l2")
    check_normalize(y_numpy, x, "l2")


@norms
def test_normalize_does_not_modify_input(backend, norm, rng):
    x = 3 * random_vectors(rng, 12, 5) + 1
    before = x.copy()
    dv.normalize(x, norm=norm, backend=backend).compute()
    dv.normalize(da.from_array(x, chunks=(5, 5)), norm=norm, backend=backend).compute()
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@norms
def test_normalize_omit(backend, norm, chunking, value, rng):
    x = random_vectors(rng, 20, 5)
    x[[4, 13], [0, 3]] = value
    out = check_normalize(
        dv.normalize(chunking(x), norm=norm, backend=backend, nan_policy="omit"), x, norm
    )
    assert np.isnan(out[[4, 13]]).all()
    assert np.isfinite(np.delete(out, [4, 13], axis=0)).all()


@pytest.mark.parametrize("layout", ["fortran", "strided"])
@norms
def test_normalize_non_contiguous_inputs(backend, norm, layout, rng):
    base = random_vectors(rng, 30, 10, np.float32)
    x = np.asfortranarray(base[:, :5]) if layout == "fortran" else base[::2, ::2]
    check_normalize(dv.normalize(x, norm=norm, backend=backend), x, norm)
    check_normalize(
        dv.normalize(da.from_array(x, chunks=(4, 5)), norm=norm, backend=backend), x, norm
    )
