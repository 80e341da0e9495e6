"""The DataArray.vecops accessor: same results as the plain functions, with names and labels."""

import contextlib

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import match_all, raise_if_dask_computes, random_vectors

xr = pytest.importorskip("xarray")


def embeddings(rng, n, d=6, item="doc", lazy=False, labels=True):
    """An (item, feature) DataArray with string labels, a second coordinate and attrs."""
    values = random_vectors(rng, n, d, np.float32)
    data = da.from_array(values, chunks=(max(1, n // 3), d)) if lazy else values
    coords = {"feature": np.arange(d)}
    if labels:
        coords[item] = [f"{item}-{i:03d}" for i in range(n)]
        coords["length"] = (item, rng.integers(10, 99, n))
    return xr.DataArray(data, dims=(item, "feature"), coords=coords, attrs={"model": "test"})


lazy = pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])


@lazy
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_topk_equals_the_plain_function_with_labels(metric, lazy, rng):
    db = embeddings(rng, 30, lazy=lazy)
    q = embeddings(rng, 5, item="query", lazy=lazy)
    with raise_if_dask_computes() if lazy else contextlib.nullcontext():
        result = q.vecops.topk(4, database=db, metric=metric)
    scores, ids = dask.compute(*dv.topk(q.data, 4, database=db.data, metric=metric))
    assert isinstance(result.score.data, da.Array) == lazy
    np.testing.assert_array_equal(result.neighbor_index.values, ids)
    np.testing.assert_array_equal(result.score.values, scores)
    np.testing.assert_array_equal(result.neighbor.values, db.doc.values[ids])
    assert result.score.dims == ("query", "rank") and list(result["rank"].values) == [0, 1, 2, 3]
    assert list(result["query"].values) == list(q["query"].values)
    assert (result["length"].values == q["length"].values).all()
    assert result.attrs == {"model": "test", "metric": metric}


@lazy
def test_cosine_topk_self_join(lazy, rng):
    x = embeddings(rng, 20, lazy=lazy)
    result = x.vecops.cosine_topk(3)
    scores, ids = dask.compute(*dv.cosine_topk(x.data, 3))
    np.testing.assert_array_equal(result.neighbor_index.values, ids)
    np.testing.assert_array_equal(result.score.values, scores)
    assert (result.neighbor.values != x.doc.values[:, None]).all()  # never itself
    assert result.neighbor.dtype == x.doc.dtype


def test_features_first_and_no_labels(rng):
    x = embeddings(rng, 12, labels=False).transpose("feature", "doc")
    result = x.vecops.cosine_topk(2)
    expected = dv.cosine_topk(x.values.T, 2)[1].compute()
    np.testing.assert_array_equal(result.neighbor.values, expected)  # positions as labels


def test_missing_neighbours_get_blank_labels(rng):
    db = embeddings(rng, 6)
    db[2, 0] = np.nan
    result = db.vecops.topk(5, database=db, metric="euclidean", nan_policy="omit")
    missing = result.neighbor_index.values == -1
    assert missing[2].all() and not missing[[0, 1, 3, 4, 5]].any()
    assert (result.neighbor.values[missing] == "").all() and np.isnan(result.score.values[missing]).all()


@lazy
@pytest.mark.parametrize("norm", ["l2", "max"])
def test_normalize_keeps_dims_coords_attrs(norm, lazy, rng):
    x = embeddings(rng, 9, lazy=lazy).transpose("feature", "doc")
    out = x.vecops.normalize(norm)
    assert out.dims == x.dims and out.attrs == x.attrs
    assert isinstance(out.data, da.Array) == lazy
    xr.testing.assert_identical(out.coords.to_dataset(), x.coords.to_dataset())
    np.testing.assert_array_equal(out.values.T, dv.normalize(x.values.T, norm).compute())


@lazy
def test_similarity_names_both_item_dimensions(lazy, rng):
    a = embeddings(rng, 4, lazy=lazy)
    b = embeddings(rng, 7, item="query", lazy=lazy)
    out = a.vecops.similarity(b, metric="dot")
    assert out.dims == ("doc", "query") and isinstance(out.data, da.Array) == lazy
    np.testing.assert_array_equal(out.values, dv.similarity(a.values, b.values, "dot").compute())
    assert list(out["query"].values) == list(b["query"].values)
    self_sim = a.vecops.similarity()
    assert self_sim.dims == ("doc", "doc_other")
    assert list(self_sim.doc_other.values) == list(a.doc.values)
    assert "length" in self_sim.coords and "length_other" in self_sim.coords


def test_errors_name_the_dimensions(rng):
    x = embeddings(rng, 5)
    with pytest.raises(ValueError, match=match_all("'feature' dimension", "('doc', 'f')", "dim=")):
        x.rename(feature="f").vecops.cosine_topk(2)
    with pytest.raises(ValueError, match="2-D"):
        x.expand_dims("batch").vecops.normalize()
    with pytest.raises(TypeError, match="DataArray"):
        x.vecops.topk(2, database=x.values)
    with pytest.raises(ValueError, match="feature sizes differ"):
        x.vecops.topk(2, database=embeddings(rng, 5, d=4))
