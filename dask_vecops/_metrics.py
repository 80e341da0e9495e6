"""Per-process counters of the work the backends did: blocks, rows and seconds per operation.

The graph tasks call :func:`record` once per task, after timing their backend calls with
``time.perf_counter``: one lock and three additions, so recording costs nothing measurable.
Each process (each ``distributed`` worker) counts on its own; :func:`metrics` reads this
process's counters, or gathers every worker's with ``client.run`` and sums them.

What each operation counts (``blocks`` is always the number of tasks that called the backend):

``normalize``
    ``rows``: rows of the chunk normalised.
``similarity``
    ``rows``: rows of the ``b`` chunk scored against an ``a`` chunk (a matrix of ``a`` row chunks
    by ``b`` row chunks adds up to ``len(b)`` times the number of ``a`` chunks).
``topk``
    One pair task (query batch, database chunk). ``rows``: database rows scanned, so a search
    adds up to ``len(database)`` times the number of query batches.
``topk-merge``
    One merge of partial top-k results. ``rows``: query rows of the merged result.

``seconds`` is the time spent inside the backend's functions, summed over the tasks (and so
over the threads running them at once: it can exceed the wall-clock time).
"""

from __future__ import annotations

import functools
import html
import os
import threading
import time
import uuid
from typing import NamedTuple

OPERATIONS = ("normalize", "similarity", "topk", "topk-merge")

_lock = threading.Lock()
_counters: dict[tuple[str, str], list] = {}
# Tells processes apart when several workers share one (``LocalCluster(processes=False)``).
_PROCESS = f"{os.getpid()}-{uuid.uuid4().hex}"

clock = time.perf_counter


def record(operation: str, backend: str, rows: int, seconds: float) -> None:
    """Count one block of ``operation`` run by ``backend``."""
    key = (operation, backend)
    with _lock:
        counts = _counters.get(key)
        if counts is None:
            _counters[key] = [1, rows, seconds]
        else:
            counts[0] += 1
            counts[1] += rows
            counts[2] += seconds


def backend_name(function) -> str:
    """The backend a block function belongs to, from its module: ``rust`` for ``rust_backend``."""
    while isinstance(function, functools.partial):
        function = function.func
    module = getattr(function, "__module__", None) or "unknown"
    return module.rsplit(".", 1)[-1].removesuffix("_backend")


def _snapshot(reset: bool = False) -> tuple[str, list[tuple]]:
    """This process's id and its counters as ``(operation, backend, blocks, rows, seconds)``."""
    with _lock:
        rows = [(op, backend, *counts) for (op, backend), counts in _counters.items()]
        if reset:
            _counters.clear()
    return _PROCESS, rows


class MetricRow(NamedTuple):
    """The counters of one operation run by one backend."""

    operation: str
    backend: str
    blocks: int
    rows: int
    seconds: float


class Metrics:
    """A table of :class:`MetricRow`, one per (operation, backend), sorted.

    Iterate over it for the rows, index it with ``(operation, backend)``, turn it into nested
    dicts with :meth:`to_dict`; it prints as an aligned text table and shows as an HTML table in
    Jupyter.

    Attributes
    ----------
    workers : dict of str to Metrics
        Gathered from a cluster: each worker's own table, by worker address. Empty otherwise.
    """

    _COLUMNS = MetricRow._fields

    def __init__(self, rows=(), workers: dict[str, Metrics] | None = None) -> None:
        totals: dict[tuple[str, str], list] = {}
        for operation, backend, blocks, n, seconds in rows:
            counts = totals.setdefault((operation, backend), [0, 0, 0.0])
            counts[0] += blocks
            counts[1] += n
            counts[2] += seconds
        self._rows = [MetricRow(*key, *counts) for key, counts in sorted(totals.items())]
        self.workers: dict[str, Metrics] = workers or {}

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, key: tuple[str, str]) -> MetricRow:
        for row in self._rows:
            if (row.operation, row.backend) == tuple(key):
                return row
        raise KeyError(key)

    def __eq__(self, other) -> bool:
        return isinstance(other, Metrics) and self._rows == other._rows

    def to_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{operation: {backend: {"blocks": ..., "rows": ..., "seconds": ...}}}``."""
        out: dict = {}
        for row in self._rows:
            out.setdefault(row.operation, {})[row.backend] = {
                "blocks": row.blocks, "rows": row.rows, "seconds": row.seconds,
            }
        return out

    def _cells(self) -> list[list[str]]:
        return [
            [r.operation, r.backend, str(r.blocks), str(r.rows), f"{r.seconds:.4f}"]
            for r in self._rows
        ]

    def __repr__(self) -> str:
        if not self._rows:
            return "Metrics: nothing recorded"
        table = [list(self._COLUMNS), *self._cells()]
        widths = [max(len(line[c]) for line in table) for c in range(len(self._COLUMNS))]
        lines = [
            "  ".join(
                cell.ljust(w) if c < 2 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
            for line in table
        ]
        if self.workers:
            lines.append(f"(summed over {len(self.workers)} workers)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self._COLUMNS)
        body = "".join(
            "<tr>" + "".join(
                f'<td style="text-align: {"left" if c < 2 else "right"}">{html.escape(cell)}</td>'
                for c, cell in enumerate(cells)
            ) + "</tr>"
            for cells in self._cells()
        )
        caption = f"<caption>summed over {len(self.workers)} workers</caption>" if self.workers else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics(client=None, reset: bool = False) -> Metrics:
    """Blocks, rows and seconds of the work each backend has done, per operation.

    Every task of :func:`~dask_vecops.normalize`, :func:`~dask_vecops.similarity` and
    :func:`~dask_vecops.topk` counts the block it ran, in the process that ran it: ``blocks``
    (tasks), ``rows`` (rows of the chunk for ``normalize``; database rows scanned for ``topk``;
    ``b`` rows for ``similarity``; query rows merged for ``topk-merge``) and ``seconds`` spent in
    the backend's functions. See the :doc:`metrics page </metrics>` of the user guide.

    Parameters
    ----------
    client : distributed.Client, optional
        Gather the counters of every worker of this client's cluster (with ``client.run``) and
        sum them; each worker's own table is in the result's ``workers``. Without it, the
        counters of this process: what the threaded and synchronous schedulers ran.
    reset : bool, default False
        Clear the counters (of every worker, with ``client``) as they are read: the result holds
        the counts up to the reset.

    Returns
    -------
    Metrics
        A table of ``MetricRow(operation, backend, blocks, rows, seconds)`` named tuples, one per
        (operation, backend): iterate over it, index it with ``(operation, backend)``, or call
        ``.to_dict()``. It prints as a text table and shows as an HTML table in Jupyter.

    Examples
    --------
    >>> import dask.array as da, dask_vecops as dv
    >>> _ = dv.metrics(reset=True)
    >>> x = da.ones((100, 8), chunks=(25, 8))
    >>> _ = dv.normalize(x, backend="numpy").compute(scheduler="threads")
    >>> m = dv.metrics()
    >>> m["normalize", "numpy"].blocks, m["normalize", "numpy"].rows
    (4, 100)
    >>> m  # doctest: +ELLIPSIS
    operation  backend  blocks  rows  seconds
    normalize  numpy         4   100   ...
    >>> len(dv.metrics(reset=True)), len(dv.metrics())
    (1, 0)
    """
    if client is None:
        return Metrics(_snapshot(reset)[1])
    gathered = client.run(_snapshot, reset)
    # Workers sharing a process share its counters: count each process once.
    processes: dict[str, list] = {}
    for worker, (process, rows) in sorted(gathered.items()):
        processes.setdefault(process, rows)
    workers = {worker: Metrics(rows) for worker, (_, rows) in sorted(gathered.items())}
    return Metrics([row for rows in processes.values() for row in rows], workers=workers)
