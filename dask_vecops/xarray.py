"""The ``DataArray.vecops`` accessor: the public functions with named dimensions and labels.

Registered when ``dask_vecops`` is imported with xarray installed. An embedding is a 2-D
DataArray with a feature dimension (``dim``, default ``"feature"``) and an item dimension (the
other one, e.g. ``"doc"``). Results keep the coordinates that still apply; top-k results name
each neighbour by the database's item coordinate (document ids, not only positions). A NumPy-backed
DataArray gives NumPy-backed results; a dask-backed one stays lazy.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from . import api


@xr.register_dataarray_accessor("vecops")
class VecopsAccessor:
    """Vector operations on a 2-D DataArray of embeddings (``da.vecops.<function>``).

    Examples
    --------
    >>> import numpy as np, xarray as xr, dask_vecops
    >>> emb = xr.DataArray(
    ...     [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dims=("doc", "feature"),
    ...     coords={"doc": ["a", "b", "c"]},
    ... )
    >>> emb.vecops.cosine_topk(1).neighbor.values
    array([['b'],
           ['a'],
           ['b']], dtype='<U1')
    """

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def normalize(self, norm: str = "l2", *, dim: str = "feature", **options) -> xr.DataArray:
        """Each item divided by its norm along ``dim``; dims, coords and attrs as the input.

        ``options`` are those of :func:`dask_vecops.normalize`.

        Examples
        --------
        >>> import xarray as xr, dask_vecops
        >>> emb = xr.DataArray([[3.0, 4.0]], dims=("doc", "feature"), attrs={"model": "m"})
        >>> out = emb.vecops.normalize()
        >>> out.values, out.attrs
        (array([[0.6, 0.8]]), {'model': 'm'})
        """
        item, x = _items_by_features(self._obj, dim)
        data = _like_input(api.normalize(x.data, norm, **options), x.data)
        return x.copy(data=data).transpose(*self._obj.dims)

    def similarity(
        self, other: xr.DataArray | None = None, metric: str = "cosine", *, dim: str = "feature",
        **options,
    ) -> xr.DataArray:
        """The (items, other items) matrix of ``metric``, with both item coordinates.

        Without ``other`` the items are compared with themselves; the second dimension is then
        named ``<item>_other``. ``options`` are those of :func:`dask_vecops.similarity`.

        Examples
        --------
        >>> import xarray as xr, dask_vecops
        >>> emb = xr.DataArray([[1.0, 0.0], [0.0, 2.0]], dims=("doc", "feature"),
        ...                    coords={"doc": ["a", "b"]})
        >>> emb.vecops.similarity().sel(doc="a").values
        array([1., 0.])
        """
        item, a = _items_by_features(self._obj, dim)
        b_item, b = (item, a) if other is None else _items_by_features(other, dim)
        other_dim = f"{b_item}_other" if b_item == item else b_item
        data = _like_input(api.similarity(a.data, b.data, metric, **options), a.data, b.data)
        coords = _item_coords(a, item, item)
        for name, coord in _item_coords(b, b_item, other_dim).items():
            coords[f"{name}_other" if name in coords else name] = coord
        return xr.DataArray(data, dims=(item, other_dim), coords=coords, name=metric)

    def topk(
        self, k: int, *, database: xr.DataArray | None = None, metric: str = "cosine",
        dim: str = "feature", rank_dim: str = "rank", **options,
    ) -> xr.Dataset:
        """The ``k`` best database items for each item: a Dataset of ``score`` and ``neighbor``.

        ``neighbor`` holds the database's labels (its item coordinate; positions when it has
        none) and ``neighbor_index`` the positions, -1 where there is no neighbour (then
        ``score`` is NaN and ``neighbor`` the label type's blank). Without ``database`` each
        item is searched among the others. ``options`` are those of :func:`dask_vecops.topk`.

        Examples
        --------
        >>> import xarray as xr, dask_vecops
        >>> db = xr.DataArray([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dims=("doc", "feature"),
        ...                   coords={"doc": ["x", "y", "z"]})
        >>> q = xr.DataArray([[0.9, 0.1]], dims=("query", "feature"))
        >>> q.vecops.topk(2, database=db, metric="euclidean").neighbor.values
        array([['y', 'x']], dtype='<U1')
        """
        item, q = _items_by_features(self._obj, dim)
        db_item, db = (item, q) if database is None else _items_by_features(database, dim)
        scores, ids = api.topk(q.data, k, database=None if database is None else db.data,
                               metric=metric, **options)
        if not _lazy(q.data, db.data):
            scores, ids = dask.compute(scores, ids)
        dims = (item, rank_dim)
        return xr.Dataset(
            {
                "score": (dims, scores),
                "neighbor": (dims, _labels(db, db_item, ids)),
                "neighbor_index": (dims, ids),
            },
            coords={**_item_coords(q, item, item), rank_dim: np.arange(k)},
            attrs={**self._obj.attrs, "metric": metric},
        )

    def cosine_topk(self, k: int, *, database: xr.DataArray | None = None, **options) -> xr.Dataset:
        """:meth:`topk` with the cosine metric.

        Examples
        --------
        >>> import xarray as xr, dask_vecops
        >>> emb = xr.DataArray([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]], dims=("doc", "feature"))
        >>> emb.vecops.cosine_topk(1).neighbor.values.ravel()
        array([2, 2, 1])
        """
        return self.topk(k, database=database, metric="cosine", **options)


def _items_by_features(x: xr.DataArray, dim: str) -> tuple[str, xr.DataArray]:
    """The item dimension's name and ``x`` transposed to (item, feature)."""
    if not isinstance(x, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray of embeddings; got {type(x).__name__}")
    if x.ndim != 2 or dim not in x.dims:
        raise ValueError(
            f"embeddings must be a 2-D DataArray with a {dim!r} dimension and an item dimension; "
            f"got dims {x.dims}" + ("" if dim in x.dims else f" (pass dim= to name the features)")
        )
    (item,) = (d for d in x.dims if d != dim)
    return item, x.transpose(item, dim)


def _lazy(*inputs) -> bool:
    return any(isinstance(x, da.Array) for x in inputs)


def _like_input(result: da.Array, *inputs):
    """The lazy ``result`` computed when no input was lazy: NumPy in, NumPy out."""
    return result if _lazy(*inputs) else result.compute()


def _item_coords(x: xr.DataArray, item: str, new_dim: str) -> dict:
    """The coordinates of ``x`` along its item dimension only, on the dimension ``new_dim``."""
    return {
        (new_dim if name == item else name): ((new_dim,), coord.values, coord.attrs)
        for name, coord in x.coords.items()
        if coord.dims == (item,)
    }


def _labels(db: xr.DataArray, item: str, ids):
    """The database's labels at ``ids`` (positions when it has no item coordinate)."""
    if item not in db.coords:
        return ids
    labels = np.asarray(db.coords[item].values)
    blank = _blank(labels.dtype)
    if isinstance(ids, da.Array):
        return ids.map_blocks(_take_labels, labels, blank, dtype=labels.dtype)
    return _take_labels(ids, labels, blank)


def _take_labels(ids: np.ndarray, labels: np.ndarray, blank) -> np.ndarray:
    out = labels[np.maximum(ids, 0)]
    out[ids < 0] = blank
    return out


def _blank(dtype: np.dtype):
    """What stands for "no neighbour" among labels of ``dtype``."""
    if dtype.kind in "US":
        return ""
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "i":
        return -1
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    if dtype.kind == "M":
        return np.datetime64("NaT")
    return None
