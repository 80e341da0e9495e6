"""The public functions: eager argument checks, the choice of backend, then the graph.

Every function takes dask or NumPy arrays of shape ``(rows, features)`` and returns lazy dask
arrays; nothing is computed until you call ``.compute()`` (or ``dask.compute``).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from dask.core import flatten
from dask.highlevelgraph import MaterializedLayer

try:
    from dask._task_spec import DataNode as _DataNode
except ImportError:  # a Dask from before the task spec stores data as is
    _DataNode = ()

from . import _config, graph
from ._protocol import METRICS, NAN_POLICIES, NORMS, array_module
from ._validate import as_matrix, check_choice, check_k, check_same_features, float_dtype
from .backends import registry


def _backend(name, *arrays: da.Array, operation: str):
    """The backend module for the ``backend`` option and the kind of blocks (NumPy or CuPy).

    ``auto`` may follow ``vecops.calibration`` for the operation, the dtype and the shape of the
    largest block of the last array (the database, ``b``, or ``x``).
    """
    name = check_choice(_config.get("backend", name), registry.CHOICES, "backend")
    last = arrays[-1]
    block_shape = (max(last.chunks[0], default=0), last.shape[1])
    return registry.resolve(
        name, on_gpu=_on_gpu(*arrays), operation=operation, dtype=last.dtype,
        block_shape=block_shape, calibration=_config.get("calibration"),
    )


def _on_gpu(*arrays: da.Array) -> bool:
    """Whether any of the arrays has CuPy blocks."""
    return any(array_module(a._meta) is not np for a in arrays)


def _nan_policy(value) -> str:
    return check_choice(_config.get("nan-policy", value), NAN_POLICIES, "nan_policy")


def _as_float(*arrays: da.Array) -> list[da.Array]:
    dtype = float_dtype(*(a.dtype for a in arrays))
    return [a.astype(dtype) for a in arrays]


def normalize(x, norm: str = "l2", *, backend: str | None = None, nan_policy: str | None = None):
    """Divide each row by its norm, lazily.

    Parameters
    ----------
    x : dask or NumPy array, shape (rows, features)
    norm : {"l2", "l1", "max"}
        Euclidean length, sum of absolute values, or largest absolute value. Zero rows stay zero.
    backend : {"auto", "rust", "cuda", "scipy", "numpy"}, optional
        Defaults to the ``vecops.backend`` config value. ``auto`` takes ``cuda`` for CuPy-backed
        arrays (results stay on the GPU) and the fastest CPU backend for NumPy-backed ones.
    nan_policy : {"raise", "omit"}, optional
        Rows holding NaN or inf raise :class:`NonFiniteError` naming the row, or (``"omit"``) come
        back as NaN. Defaults to ``vecops.nan-policy``.

    Returns
    -------
    dask.array.Array
        Same shape; float32 for float16/float32 input, float64 otherwise.

    Examples
    --------
    >>> import numpy as np, dask_vecops as dv
    >>> dv.normalize(np.array([[3.0, 4.0], [0.0, 0.0]])).compute()
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    norm = check_choice(norm, NORMS, "norm")
    (x,) = _as_float(as_matrix(x, "x"))
    module = _backend(backend, x, operation="normalize")
    return graph.normalize(
        x, norm, normalize_block=module.normalize_block, nan_policy=_nan_policy(nan_policy)
    )


def similarity(
    a, b=None, metric: str = "cosine", *, backend: str | None = None, nan_policy: str | None = None
):
    """The matrix of similarities (or distances) between the rows of ``a`` and those of ``b``.

    Parameters
    ----------
    a : dask or NumPy array, shape (m, features)
    b : dask or NumPy array, shape (n, features), optional
        Defaults to ``a``.
    metric : {"cosine", "dot", "euclidean", "manhattan"}
        Cosine and dot are similarities; euclidean and manhattan are distances. The cosine
        similarity of a zero vector is 0.
    backend, nan_policy
        As for :func:`normalize`; with ``"omit"`` the rows and columns of non-finite vectors are NaN.

    Returns
    -------
    dask.array.Array
        Shape ``(m, n)``, chunked like the rows of ``a`` by the rows of ``b``.

    Examples
    --------
    >>> import numpy as np, dask_vecops as dv
    >>> a = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> dv.similarity(a, metric="cosine").compute()
    array([[1., 0.],
           [0., 1.]])
    >>> dv.similarity(a, np.array([[3.0, 4.0]]), metric="euclidean").compute()
    array([[4.47213595],
           [3.60555128]])
    """
    metric = check_choice(metric, METRICS, "metric")
    a = as_matrix(a, "a")
    names = ("a", "a") if b is None else ("a", "b")
    b = a if b is None else as_matrix(b, "b")
    check_same_features(a, b, "a", "b")
    a, b = _as_float(a, b)
    module = _backend(backend, a, b, operation="similarity")
    return graph.similarity(
        a, b, metric, similarity_block=module.similarity_block,
        nan_policy=_nan_policy(nan_policy), names=names,
    )


def topk(
    q,
    k: int,
    *,
    database=None,
    metric: str = "cosine",
    backend: str | None = None,
    nan_policy: str | None = None,
    split_every: int | None = None,
):
    """The ``k`` best rows of ``database`` for each row of ``q``: exact search.

    Parameters
    ----------
    q : dask or NumPy array, shape (m, features)
        The queries. Without ``database`` each row is searched among the other rows of ``q``.
    k : int
        How many neighbours per query; at most the database's rows (its rows - 1 for a self-join).
    database : dask or NumPy array, shape (n, features), optional
        Chunked along rows in any way; each chunk is read once per query batch.
    metric : {"cosine", "dot", "euclidean", "manhattan"}
        Similarities rank highest first, distances lowest first.
    backend : {"auto", "rust", "cuda", "scipy", "numpy"}, optional
        Defaults to the ``vecops.backend`` config value. ``auto`` takes ``cuda`` for CuPy-backed
        arrays (results stay on the GPU) and the fastest CPU backend for NumPy-backed ones.
    nan_policy : {"raise", "omit"}, optional
        A row holding NaN or inf raises :class:`NonFiniteError` at compute time, naming the global
        row; with ``"omit"`` such database rows are never returned and such queries get NaN scores
        and id -1. Defaults to ``vecops.nan-policy``.
    split_every : int, optional
        How many partial results one merge task combines (default ``vecops.split-every``).

    Returns
    -------
    scores : dask.array.Array, shape (m, k)
        Best first; float32 for float16/float32 input, float64 otherwise.
    ids : dask.array.Array of int64, shape (m, k)
        Global row positions in the database. Equal scores are ordered by the lower id, so the
        result never depends on chunking or backend.

    Examples
    --------
    >>> import numpy as np, dask_vecops as dv
    >>> db = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    >>> scores, ids = dv.topk(np.array([[0.9, 0.1]]), 2, database=db, metric="euclidean")
    >>> ids.compute()
    array([[1, 0]])
    >>> scores.compute().round(3)
    array([[0.141, 0.906]])
    """
    metric = check_choice(metric, METRICS, "metric")
    q = as_matrix(q, "queries")
    self_join = database is None
    db = q if self_join else as_matrix(database, "database")
    if self_join:
        k = check_k(k, db.shape[0] - 1, "other rows (a row is never its own neighbour)")
    else:
        check_same_features(q, db, "queries", "database")
        k = check_k(k, db.shape[0], "rows of the database")
    q, db = _as_float(q, db)
    module = _backend(backend, q, db, operation="topk")
    split_every = int(_config.get("split-every", split_every))
    # A GPU is parallel inside each task: splitting the queries for more tasks would only add
    # passes, and a task may search several database chunks.
    on_gpu = _on_gpu(q, db)
    cores = _cores()  # a synchronous client asks its scheduler: once a call
    db_chunks = max(db.numblocks[0], cores) if on_gpu else db.numblocks[0]
    q = _batch_queries(q, db_chunks, cores)
    return graph.topk(
        q, db, k, metric, task_bytes=_task_bytes(q, db, on_gpu, cores),
        topk_block=module.topk_block, merge_topk=module.merge_topk,
        nan_policy=_nan_policy(nan_policy), self_join=self_join, split_every=split_every,
        names=("x", "x") if self_join else ("queries", "database"),
        norm_cache_bytes=_config.bytes_value("norm-cache"),
    )


def cosine_topk(x, k: int, *, database=None, **options):
    """The ``k`` most cosine-similar rows for each row of ``x``; :func:`topk` with cosine.

    Without ``database`` every row is searched among the other rows of ``x`` (itself excluded);
    with it, among the rows of ``database``. ``options`` are those of :func:`topk`.

    Examples
    --------
    >>> import numpy as np, dask_vecops as dv
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> scores, ids = dv.cosine_topk(x, 1)
    >>> ids.compute().ravel()
    array([1, 0, 3, 2])
    """
    return topk(x, k, database=database, metric="cosine", **options)


def _batch_queries(q: da.Array, db_chunks: int, cores: int) -> da.Array:
    """Queries in as few row batches as the memory budget allows (one if they fit).

    Each batch reads every database chunk once, so fewer batches mean fewer passes. When there
    are fewer database chunks than cores, large query sets are split further so that every core
    gets a (batch, chunk) task.
    """
    row_bytes = max(1, q.shape[1] * q.dtype.itemsize)
    rows = max(1, _config.memory_budget() // row_bytes)
    cores_short = -(-cores // db_chunks)
    rows = min(rows, max(_MIN_BATCH_ROWS, -(-q.shape[0] // cores_short)))
    if q.shape[0] <= rows:
        return q.rechunk({0: -1}) if q.numblocks[0] > 1 else q
    return q.rechunk({0: rows})


# Below this many queries a batch is not worth another pass over the database.
_MIN_BATCH_ROWS = 256


def _task_bytes(q: da.Array, db: da.Array, on_gpu: bool, cores: int) -> int:
    """Database bytes one top-k task searches (``graph.topk``'s ``task_bytes``; 0: a chunk each).

    On a GPU, ``vecops.gpu-task-bytes``. On the CPU, a search of a few queries takes a few
    milliseconds a chunk, of which Dask's scheduling of each task is a good part. Where the
    chunks are in memory already, such tasks search several consecutive chunks, up to
    ``vecops.cpu-task-bytes`` each, in a number of tasks that shares the threads evenly. Not
    where tasks read the chunks (a store: a task would wait for several reads, and hold them),
    nor under ``distributed``, whose chunks live on several workers.
    """
    if on_gpu:
        return _config.bytes_value("gpu-task-bytes")
    most = _config.bytes_value("cpu-task-bytes")
    if not most or q.shape[0] > _FEW_QUERIES or _default_client() is not None:
        return 0
    if db.numblocks[1] > 1 or not _in_memory(db):  # several column chunks: rechunked by tasks
        return 0
    chunk_bytes = max(max(db.chunks[0]) * db.shape[1] * db.dtype.itemsize, 1)
    per_task = _chunks_per_task(db.numblocks[0], cores, most // chunk_bytes)
    return per_task * chunk_bytes if per_task > 1 else 0


def _in_memory(x: da.Array) -> bool:
    """Whether every chunk of ``x`` is a NumPy array held in its graph: an array wrapped by
    ``da.from_array`` or persisted, not one that tasks compute or read.

    >>> import numpy as np, dask.array as da
    >>> _in_memory(da.from_array(np.ones((4, 2)), chunks=2)), _in_memory(da.ones((4, 2), chunks=2))
    (True, False)
    """
    layer = x.dask.layers.get(x.name)
    if not isinstance(layer, MaterializedLayer):
        return False
    values = (_literal(layer.get(key)) for key in flatten(x.__dask_keys__()))
    return all(isinstance(value, np.ndarray) for value in values)


def _literal(value):
    """A graph value's data: stored as is, or wrapped in a data node (Dask's task spec)."""
    return value.value if isinstance(value, _DataNode) else value


def _chunks_per_task(chunks: int, threads: int, most: int) -> int:
    """The fewest tasks of at most ``most`` chunks each, as a multiple of ``threads`` (so that
    they share the threads evenly): the chunks each takes, 1 if no grouping does that.

    >>> _chunks_per_task(10, 2, 6), _chunks_per_task(10, 2, 2), _chunks_per_task(80, 2, 6)
    (5, 1, 6)
    """
    for tasks in range(threads, chunks + 1, threads):
        per_task = -(-chunks // tasks)
        if per_task <= most and -(-chunks // per_task) % threads == 0:
            return per_task
    return 1


# Up to this many queries a top-k task on the CPU may search several chunks (`_task_bytes`).
_FEW_QUERIES = 64


def _cores() -> int:
    """The threads that will run the tasks: a default distributed client's, else the local ones."""
    from dask.system import CPU_COUNT

    return _cluster_threads() or int(dask.config.get("num_workers", None) or CPU_COUNT)


def _cluster_threads() -> int | None:
    """Total worker threads of the default distributed client, if there is one."""
    client = _default_client()
    if client is None:
        return None
    # An asynchronous client answers from its cache here; a synchronous one asks the scheduler.
    return client.scheduler_info(n_workers=0).get("total_threads") or None


def _default_client():
    """The running default distributed client, if there is one (asking nothing of it)."""
    import sys

    if "distributed" not in sys.modules:  # no client can exist without it: do not import it
        return None
    try:
        client = sys.modules["distributed"].default_client()
    except ValueError:
        return None
    return client if client.status == "running" else None


def backends():
    """Every backend, whether it can run here and, if not, why.

    Examples
    --------
    >>> import dask_vecops as dv
    >>> [b.name for b in dv.backends()]
    ['rust', 'cuda', 'scipy', 'numpy']
    >>> dv.backends()[-1]
    BackendInfo(name='numpy', available=True, reason='')
    """
    return registry.backends()
