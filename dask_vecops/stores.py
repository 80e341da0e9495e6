"""Embeddings on disk as lazy dask arrays, searched, and the results written back atomically.

A *store* holds a 2-D ``(rows, features)`` array of real numbers:

* a zarr array (v3, or v2 read by zarr 3), read with :func:`dask.array.from_zarr` in the chunks
  it was written in (merged along rows when they are tiny);
* a zarr group holding an ``embeddings`` array (or exactly one 2-D array), and optionally a
  1-D ``labels`` array of one label per row, which then comes back with the results;
* a NumPy ``.npy`` file, memory-mapped and read in row chunks of Dask's ``array.chunk-size``.

Results go to a zarr group with ``scores``, ``ids`` and (with labels) ``labels`` arrays, written
into a hidden sibling directory that is renamed into place only after every chunk is written and
the group is marked complete: an interrupted run leaves no output that looks complete.
Stores are local paths; on a cluster every worker must see them at the same path.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from . import api

EMBEDDINGS = "embeddings"
LABELS = "labels"
# The group attribute that marks a finished output store.
MARKER = "dask_vecops"

# Stored chunks smaller than this share of Dask's array.chunk-size are merged along rows.
_TINY_CHUNK_SHARE = 4


def open_array(path, *, name: str = "database") -> da.Array:
    """A store as a lazy 2-D dask array, chunked along rows only.

    Parameters
    ----------
    path : str or os.PathLike
        A zarr array, a zarr group holding an ``embeddings`` array (or one 2-D array), or a
        ``.npy`` file.
    name : str
        What the store is (``"database"``, ``"queries"``), used in error messages.

    Returns
    -------
    dask.array.Array
        Shape ``(rows, features)``, the feature axis in one chunk. Zarr rows keep their stored
        chunks unless these are tiny (under a quarter of Dask's ``array.chunk-size``: then
        whole stored chunks are merged up to about that size); ``.npy`` rows are chunked by
        ``array.chunk-size``.

    Raises
    ------
    FileNotFoundError
        When nothing exists at ``path``.
    ValueError
        When ``path`` is not a zarr store or ``.npy`` file, or holds no 2-D array of numbers.

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from dask_vecops import stores
    >>> tmp = tempfile.TemporaryDirectory()
    >>> z = zarr.create_array(f"{tmp.name}/db.zarr", shape=(1000, 4), chunks=(250, 4), dtype="f4")
    >>> stores.open_array(f"{tmp.name}/db.zarr").chunks
    ((1000,), (4,))
    >>> np.save(f"{tmp.name}/q.npy", np.ones((3, 4), dtype="f4"))
    >>> stores.open_array(f"{tmp.name}/q.npy", name="queries").shape
    (3, 4)
    >>> tmp.cleanup()
    """
    path = _existing(path, name)
    if _is_npy(path):
        return _open_npy(path, name)
    node = _open_zarr(path, name)
    return _zarr_embeddings(_embeddings_node(node, path, name), path, name)


def open_labels(path, *, rows: int | None = None) -> Labels:
    """Row labels from a file: a zarr array (or a group's ``labels``), a ``.npy``, or text.

    Parameters
    ----------
    path : str or os.PathLike
        A 1-D zarr array, a zarr group holding ``labels``, a 1-D ``.npy`` file, or a UTF-8 text
        file with one label per line.
    rows : int, optional
        The database's rows; the labels must be as many.

    Returns
    -------
    Labels
        Read on demand: a search reads only the labels of the ids it returns.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from dask_vecops import stores
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name, "names.txt")
    >>> _ = path.write_text("apple\\nbanana\\ncherry\\n")
    >>> labels = stores.open_labels(path, rows=3)
    >>> len(labels), labels.take(np.array([[2, -1]]))
    (3, array([['cherry', '']], dtype=StringDType()))
    >>> tmp.cleanup()
    """
    path = _existing(path, "labels")
    if _is_npy(path):
        values = _NpyFile(path, "labels")
    elif _is_zarr(path):
        values = _labels_node(_open_zarr(path, "labels"), path)
    else:
        values = _text_labels(path)
    return Labels(values, str(path), rows)


def stored_labels(path, *, rows: int | None = None) -> Labels | None:
    """The ``labels`` array kept in the zarr group of a database, or None when there is none.

    ``path`` is the database: a zarr group, or an array inside a group (its sibling ``labels``).

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from dask_vecops import stores
    >>> tmp = tempfile.TemporaryDirectory()
    >>> group = zarr.open_group(f"{tmp.name}/db.zarr", mode="w")
    >>> _ = group.create_array("embeddings", data=np.eye(2, dtype="f4"))
    >>> group.create_array("labels", shape=(2,), dtype=str)[:] = ["x", "y"]
    >>> stores.stored_labels(f"{tmp.name}/db.zarr").take(np.array([1, 0]))
    array(['y', 'x'], dtype=StringDType())
    >>> stores.stored_labels(f"{tmp.name}/db.zarr/embeddings").path.endswith("labels")
    True
    >>> tmp.cleanup()
    """
    import zarr

    path = Path(path)
    if not _is_zarr(path):
        return None
    node = _open_zarr(path, "database")
    if isinstance(node, zarr.Array):  # an array inside a group: its sibling
        path = path.parent
        if not _is_zarr(path) or not isinstance(node := _open_zarr(path, "database"), zarr.Group):
            return None
    return open_labels(path / LABELS, rows=rows) if LABELS in node else None


class Labels:
    """Row labels of a database, read only for the ids a search returns.

    Text labels come back as NumPy's variable-length ``StringDType`` (empty for the id -1),
    integers as int64 (-1 for the id -1), floats as float64 (NaN for the id -1).

    Examples
    --------
    >>> import numpy as np
    >>> from dask_vecops.stores import Labels
    >>> Labels(np.array([10, 20, 30])).take(np.array([2, -1, 0]))
    array([30, -1, 10])
    """

    def __init__(self, values, path: str = "<memory>", rows: int | None = None):
        self.values, self.path = values, path
        self.dtype = _label_dtype(values.dtype, path)
        if len(values.shape) != 1:
            raise ValueError(
                f"labels {path} must be 1-D (one label per row); got shape {values.shape}"
            )
        if rows is not None and values.shape[0] != rows:
            raise ValueError(
                f"labels {path} hold {values.shape[0]} labels but the database has {rows} rows"
            )

    def __len__(self) -> int:
        return self.values.shape[0]

    def __repr__(self) -> str:
        return f"Labels({self.path!r}, {len(self)} labels, dtype={self.dtype})"

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The label of each id, same shape; the id -1 (no neighbour) gets the empty label."""
        ids = np.asarray(ids)
        found = ids >= 0
        wanted, where = np.unique(ids[found], return_inverse=True)
        out = np.full(ids.shape, _MISSING[self.dtype.kind], dtype=self.dtype)
        out[found] = self._read(wanted).astype(self.dtype)[where]
        return out

    def __dask_tokenize__(self):
        return ("vecops-labels", self.path, dask.base.tokenize(self.values))

    def _read(self, wanted: np.ndarray) -> np.ndarray:
        if hasattr(self.values, "oindex"):  # zarr reads only the chunks holding these rows
            return np.asarray(self.values.oindex[wanted])
        return np.asarray(self.values[wanted])


def with_labels(ids: da.Array, labels: Labels | np.ndarray) -> da.Array:
    """The labels of ``ids``, lazily, in the same chunks; the id -1 gets the empty label.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from dask_vecops import stores
    >>> ids = da.from_array(np.array([[1, 0], [2, -1]]), chunks=1)
    >>> stores.with_labels(ids, np.array(["a", "b", "c"])).compute()
    array([['b', 'a'],
           ['c', '']], dtype=StringDType())
    """
    labels = labels if isinstance(labels, Labels) else Labels(np.asarray(labels))
    return ids.map_blocks(labels.take, dtype=labels.dtype, token="vecops-labels")


def search(database, queries, k: int, *, labels=None, **options) -> dict[str, da.Array]:
    """Exact top-k of every row of the ``queries`` store among the rows of the ``database`` store.

    Parameters
    ----------
    database, queries : str or os.PathLike
        Stores, as :func:`open_array` reads them.
    k : int
        Neighbours per query.
    labels : str or os.PathLike, optional
        Row labels of the database (:func:`open_labels`); by default the ``labels`` array kept
        with a zarr database, if any.
    **options
        Passed to :func:`dask_vecops.topk` (``metric``, ``backend``, ``nan_policy``, ...).

    Returns
    -------
    dict of dask.array.Array
        Lazy ``scores`` and ``ids`` of shape ``(queries, k)``, and ``labels`` when there are
        labels: ready for :func:`write_results`.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from dask_vecops import stores
    >>> tmp = tempfile.TemporaryDirectory()
    >>> np.save(f"{tmp.name}/db.npy", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    >>> np.save(f"{tmp.name}/q.npy", np.array([[0.0, 2.0]]))
    >>> found = stores.search(f"{tmp.name}/db.npy", f"{tmp.name}/q.npy", 2)
    >>> found["ids"].compute()
    array([[1, 2]])
    >>> tmp.cleanup()
    """
    db, q = open_array(database, name="database"), open_array(queries, name="queries")
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"queries {queries} have {q.shape[1]} features per row but database {database} "
            f"has {db.shape[1]}: both must hold embeddings of the same size"
        )
    rows = db.shape[0]
    if labels is None:
        row_labels = stored_labels(database, rows=rows)
    else:
        row_labels = open_labels(labels, rows=rows)
    scores, ids = api.topk(q, k, database=db, **options)
    found = {"scores": scores, "ids": ids}
    if row_labels is not None:
        found["labels"] = with_labels(ids, row_labels)
    return found


def write_results(
    path, results: dict, *, overwrite: bool = False, attrs=None, compute=None
) -> Path:
    """Compute ``results`` into a new zarr group at ``path``, all or nothing.

    Every array is written with :func:`dask.array.to_zarr` into a hidden sibling directory,
    the group is marked complete (attribute ``dask_vecops.complete``), and only then is the
    directory renamed to ``path``. A failure removes the temporary directory; a killed process
    may leave it behind, hidden and never marked complete.

    Parameters
    ----------
    path : str or os.PathLike
        The output group; it must not exist unless ``overwrite``.
    results : dict of dask.array.Array
        Name to array, such as the output of :func:`search`.
    overwrite : bool
        Replace an existing ``path`` (only once the new results are complete).
    attrs : dict, optional
        Stored in the completion attribute with ``complete: True``.
    compute : callable, optional
        Called with the lazy writes, ``dask.compute`` by default: pass one with a progress bar
        or a distributed client.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile, dask.array as da
    >>> from dask_vecops import stores
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ids = da.arange(6, chunks=2).reshape(3, 2)
    >>> out = stores.write_results(f"{tmp.name}/out.zarr", {"ids": ids}, attrs={"k": 2})
    >>> stores.open_results(out)["ids"].compute()
    array([[0, 1],
           [2, 3],
           [4, 5]])
    >>> tmp.cleanup()
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output {path} already exists; remove it or pass overwrite=True (--overwrite)"
        )
    temporary = path.with_name(f".{path.name}.incomplete-{uuid.uuid4().hex[:12]}")
    try:
        writes = [_to_zarr(array, temporary, name) for name, array in results.items()]
        (compute or dask.compute)(*writes)
        _mark_complete(temporary, attrs or {})
        _move_into_place(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def open_results(path) -> dict[str, da.Array]:
    """The arrays of a complete output group written by :func:`write_results`, lazily.

    Raises ``ValueError`` for a group that was never marked complete.

    Examples
    --------
    >>> import tempfile, dask.array as da
    >>> from dask_vecops import stores
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = stores.write_results(f"{tmp.name}/out.zarr", {"scores": da.zeros((2, 3), chunks=1)})
    >>> {name: a.shape for name, a in stores.open_results(f"{tmp.name}/out.zarr").items()}
    {'scores': (2, 3)}
    >>> tmp.cleanup()
    """
    import zarr

    path = _existing(path, "output")
    group = _open_zarr(path, "output") if _is_zarr(path) else None
    if not isinstance(group, zarr.Group) or not group.attrs.get(MARKER, {}).get("complete"):
        raise ValueError(f"output {path} is not a complete dask-vecops result (no completion mark)")
    return {name: da.from_zarr(array) for name, array in group.arrays()}


# -- opening stores ----------------------------------------------------------------------------


def _existing(path, name: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name} store {path} does not exist")
    return path


def _is_npy(path: Path) -> bool:
    return path.is_file() and path.suffix == ".npy"


def _is_zarr(path: Path) -> bool:
    metadata = ("zarr.json", ".zarray", ".zgroup")
    return path.is_dir() and any((path / name).exists() for name in metadata)


def _open_zarr(path: Path, name: str):
    import zarr

    if not _is_zarr(path):
        raise ValueError(
            f"{name} store {path} is neither a zarr store (a directory with zarr.json) "
            "nor a .npy file"
        )
    try:
        return zarr.open(path, mode="r")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{name} store {path} is not a readable zarr store: {error}") from error


def _embeddings_node(node, path: Path, name: str):
    """A zarr node's matrix: the node, its ``embeddings`` array, or its only 2-D array."""
    import zarr

    if isinstance(node, zarr.Array):
        return node
    arrays = dict(node.arrays())
    if EMBEDDINGS in arrays:
        return arrays[EMBEDDINGS]
    matrices = [array for array in arrays.values() if array.ndim == 2]
    if len(matrices) == 1:
        return matrices[0]
    held = ", ".join(sorted(arrays)) or "no arrays"
    raise ValueError(
        f"{name} store {path} is a zarr group without an '{EMBEDDINGS}' array (it holds {held})"
    )


def _check_matrix(shape, dtype: np.dtype, path: Path, name: str) -> None:
    if len(shape) != 2:
        raise ValueError(
            f"{name} store {path} holds a {len(shape)}-D array of shape {tuple(shape)}; "
            "embeddings must be 2-D (rows, features)"
        )
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{name} store {path} holds {dtype} values; embeddings must be real numbers "
            "(float, integer or bool)"
        )


def _zarr_embeddings(z, path: Path, name: str) -> da.Array:
    _check_matrix(z.shape, z.dtype, path, name)
    stored = (z.shards or z.chunks)[0]
    return da.from_zarr(z, chunks=(_row_chunk(stored, z.shape[1] * z.dtype.itemsize), -1))


def _row_chunk(stored_rows: int, row_bytes: int) -> int:
    """Stored chunk rows, or a whole number of them near ``array.chunk-size`` when they are tiny."""
    target = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    stored_bytes = max(1, stored_rows * row_bytes)
    if stored_bytes * _TINY_CHUNK_SHARE >= target:
        return stored_rows
    return stored_rows * max(1, target // stored_bytes)


def _open_npy(path: Path, name: str) -> da.Array:
    npy = _NpyFile(path, name)
    _check_matrix(npy.shape, npy.dtype, path, name)
    return da.from_array(npy, chunks={0: "auto", 1: -1}, name="from-npy-" + dask.base.tokenize(npy))


class _NpyFile:
    """A ``.npy`` file read by slices: only its path travels to workers, each maps it once.

    A slice is copied out of the map, so a chunk is read from disk by the task that asks for it
    and the chunk is an ordinary array (a memory map would pickle its whole data).
    """

    def __init__(self, path: Path, name: str):
        self.path = str(path)
        mapped = self._map()
        if mapped is None:
            raise ValueError(f"{name} store {path} is not a readable .npy file of numbers")
        self.shape, self.dtype, self.ndim = mapped.shape, mapped.dtype, mapped.ndim

    def _map(self):
        try:
            return _memory_map(self.path, os.stat(self.path).st_mtime_ns)
        except ValueError:  # pickled objects, or not a .npy file at all
            return None

    def __getitem__(self, key) -> np.ndarray:
        return np.ascontiguousarray(self._map()[key])

    def __dask_tokenize__(self):
        stat = os.stat(self.path)
        return ("npy", self.path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _memory_map(path: str, mtime_ns: int) -> np.memmap:
    """One read-only map per file version and process (``mtime_ns`` tells versions apart)."""
    return np.load(path, mmap_mode="r")


# -- labels ------------------------------------------------------------------------------------

# The label of id -1 (no neighbour), by the kind of the labels' dtype.
_MISSING = {"T": "", "i": -1, "f": np.nan}


def _label_dtype(dtype: np.dtype, path: str) -> np.dtype:
    if dtype.kind in "UST" or dtype == object:
        return np.dtype(np.dtypes.StringDType())
    if dtype.kind in "iu":
        return np.dtype(np.int64)
    if dtype.kind == "f":
        return np.dtype(np.float64)
    raise ValueError(f"labels {path} hold {dtype} values; labels must be text or numbers")


def _labels_node(node, path: Path):
    import zarr

    if isinstance(node, zarr.Group):
        if LABELS not in node:
            raise ValueError(f"labels {path} is a zarr group without a '{LABELS}' array")
        return node[LABELS]
    return node


def _text_labels(path: Path) -> np.ndarray:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, IsADirectoryError) as error:
        raise ValueError(
            f"labels {path} is not a zarr store, a .npy file or a UTF-8 text file: {error}"
        ) from error
    return np.array(lines, dtype=np.dtypes.StringDType())


# -- writing results ---------------------------------------------------------------------------


def _to_zarr(array: da.Array, path: Path, name: str):
    # zarr needs regular chunks: all but the last of equal size.
    rows = array.chunks[0]
    if len(set(rows[:-1])) > 1 or (len(rows) > 1 and rows[-1] > rows[0]):
        array = array.rechunk({0: max(rows)})
    return da.to_zarr(array, os.fspath(path), component=name, compute=False)


def _mark_complete(path: Path, attrs: dict) -> None:
    import zarr

    zarr.open_group(path, mode="r+").attrs[MARKER] = {"complete": True, **attrs}


def _move_into_place(temporary: Path, path: Path) -> None:
    """Rename ``temporary`` to ``path``; an old ``path`` is replaced only once the new is whole."""
    if not path.exists():
        os.rename(temporary, path)
        return
    old = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:12]}")
    os.rename(path, old)
    os.rename(temporary, path)
    shutil.rmtree(old, ignore_errors=True)
