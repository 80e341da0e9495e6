"""Time every available backend on this machine: ``dask-vecops bench``.

Each backend's block functions (the chunk protocol, :mod:`dask_vecops._protocol`) run on in-memory
NumPy blocks of a small grid of shapes and dtypes, for each operation: ``normalize`` (one block),
``similarity`` (a block of queries against a database block) and ``topk`` (the same, keeping the
best ``k``). The shapes of the database blocks fall in the calibration buckets of
:func:`dask_vecops.backends.registry.shape_bucket`; :func:`calibration` keeps the fastest backend
for each (operation, dtype, bucket), which :func:`save` writes under ``vecops.calibration`` to a
YAML file in Dask's config directory, where ``backend="auto"`` finds it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .backends import registry

CALIBRATION_FILE = "vecops-calibration.yaml"
DTYPES = ("float32", "float64")
QUERY_ROWS = 64  # rows of the query block in similarity and topk
K = 10
# Database block shapes (rows, features): one per bucket (small, medium, large).
GRID = ((512, 64), (4096, 128), (16384, 128))
QUICK_GRID = ((256, 32), (2048, 64))
QUICK_SECONDS = 0.05  # time spent per case (after MIN_REPEATS calls, at most REPEATS)
FULL_SECONDS = 0.2
REPEATS = 20
MIN_REPEATS = 5  # BLAS thread pools wake up slowly now and then: the best of several calls


def backends_to_time() -> list[str]:
    """The available backends to time: cuda only with a real GPU (not Numba's simulator).

    >>> from dask_vecops import bench
    >>> "numpy" in bench.backends_to_time()
    True
    """
    names = []
    for info in registry.backends():
        if not info.available:
            continue
        if info.name == "cuda" and _cuda_simulated():
            continue
        names.append(info.name)
    return names


def _cuda_simulated() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def cases(grid, dtypes=DTYPES) -> list[tuple[str, str, tuple[int, int]]]:
    """Every (operation, dtype, database block shape) to time.

    >>> from dask_vecops import bench
    >>> bench.cases([(256, 32)], dtypes=["float32"])
    [('normalize', 'float32', (256, 32)), ('similarity', 'float32', (256, 32)), ('topk', 'float32', (256, 32))]
    """
    return [(op, dtype, shape) for op in registry.OPERATIONS for dtype in dtypes for shape in grid]


def run(quick: bool = False, backends: list[str] | None = None, progress: bool = True,
        out=None) -> list[dict]:
    """Time each backend on each case; one result row per (operation, dtype, shape, backend).

    A text progress bar goes to ``out`` (default stderr) unless ``progress`` is false.

    >>> from dask_vecops import bench
    >>> results = bench.run(quick=True, backends=["numpy"], progress=False)
    >>> sorted(results[0])
    ['backend', 'bucket', 'dtype', 'features', 'operation', 'rows', 'seconds']
    >>> len(results) == len(bench.cases(bench.QUICK_GRID))
    True
    """
    out = sys.stderr if out is None else out
    backends = backends_to_time() if backends is None else backends
    grid = QUICK_GRID if quick else GRID
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    todo = [(c, b) for c in cases(grid) for b in backends]
    rng = np.random.default_rng(0)
    results = []
    for done, ((op, dtype, shape), name) in enumerate(todo, start=1):
        if progress:
            _progress(done - 1, len(todo), f"{op} {dtype} {shape} {name}", out)
        module = registry.resolve(name)
        db = rng.standard_normal(shape).astype(dtype)
        q = rng.standard_normal((min(QUERY_ROWS, shape[0]), shape[1])).astype(dtype)
        best = _time(_call(module, op, q, db), seconds)
        results.append({
            "operation": op, "dtype": dtype, "rows": shape[0], "features": shape[1],
            "bucket": registry.shape_bucket(shape), "backend": name, "seconds": best,
        })
    if progress:
        _progress(len(todo), len(todo), "done", out)
        print(file=out)
    return results


def _call(module, op: str, q: np.ndarray, db: np.ndarray) -> Callable[[], object]:
    if op == "normalize":
        return lambda: module.normalize_block(db, "l2")
    if op == "similarity":
        return lambda: module.similarity_block(q, db, "cosine")
    return lambda: module.topk_block(q, db, min(K, len(db)), "cosine")


def _time(call: Callable[[], object], budget: float) -> float:
    """The best of a few calls (:data:`MIN_REPEATS` to :data:`REPEATS`, about ``budget`` s)."""
    call()  # warm-up: imports, caches, thread pools
    best = float("inf")
    start = time.perf_counter()
    for repeat in range(1, REPEATS + 1):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
        if repeat >= MIN_REPEATS and time.perf_counter() - start > budget:
            break
    return best


def _progress(done: int, total: int, label: str, out) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    out.write(f"\r[{bar}] {done}/{total} {label:<40.40}")
    out.flush()


def calibration(results: list[dict]) -> dict:
    """The fastest backend per operation, dtype and bucket: the ``vecops.calibration`` value.

    >>> from dask_vecops import bench
    >>> rows = [{"operation": "topk", "dtype": "float32", "bucket": "small", "backend": b,
    ...          "seconds": s} for b, s in [("numpy", 2e-3), ("rust", 1e-3)]]
    >>> bench.calibration(rows)
    {'topk': {'float32': {'small': 'rust'}}}
    """
    best: dict = {}
    for r in results:
        key = (r["operation"], r["dtype"], r["bucket"])
        if key not in best or r["seconds"] < best[key]["seconds"]:
            best[key] = r
    table: dict = {}
    for (op, dtype, bucket), r in sorted(best.items()):
        table.setdefault(op, {}).setdefault(dtype, {})[bucket] = r["backend"]
    return table


def format_table(results: list[dict]) -> str:
    """One line per case, the backends' times side by side, the fastest marked with ``*``.

    >>> from dask_vecops import bench
    >>> rows = [{"operation": "topk", "dtype": "float32", "rows": 256, "features": 32,
    ...          "bucket": "small", "backend": b, "seconds": s}
    ...         for b, s in [("numpy", 2e-3), ("rust", 1e-3)]]
    >>> print(bench.format_table(rows))
    operation  dtype    block   bucket  numpy ms  rust ms  fastest
    topk       float32  256x32  small     2.000    1.000*  rust
    """
    names = list(dict.fromkeys(r["backend"] for r in results))
    rows: dict = {}
    for r in results:
        key = (r["operation"], r["dtype"], f"{r['rows']}x{r['features']}", r["bucket"])
        rows.setdefault(key, {})[r["backend"]] = r["seconds"]
    header = ["operation", "dtype", "block", "bucket", *(f"{n} ms" for n in names), "fastest"]
    body = []
    for key, times in rows.items():
        fastest = min(times, key=times.get)
        cells = [f"{times[n] * 1e3:.3f}" + ("*" if n == fastest else " ") if n in times else "-"
                 for n in names]
        body.append([*key, *cells, fastest])
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    right = set(range(4, 4 + len(names)))
    lines = ["  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [header, *body]]
    return "\n".join(lines)


def save(table: dict, directory=None) -> Path:
    """Write ``{"vecops": {"calibration": table}}`` to :data:`CALIBRATION_FILE` in ``directory``
    (default: Dask's config directory, ``dask.config.PATH``, set by ``DASK_CONFIG``).

    >>> import tempfile
    >>> from dask_vecops import bench
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = bench.save({"topk": {"float32": {"small": "rust"}}}, tmp)
    ...     print(path.name, "vecops:" in path.read_text())
    vecops-calibration.yaml True
    """
    import dask.config
    import yaml

    path = Path(directory if directory is not None else dask.config.PATH) / CALIBRATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by `dask-vecops bench --save`: the fastest backend on this machine per\n"
              "# operation, dtype and block-shape bucket, which backend='auto' follows.\n"
              "# Delete this file to return to the built-in order (rust, scipy, numpy).\n")
    path.write_text(header + yaml.safe_dump({"vecops": {"calibration": table}}, sort_keys=True))
    return path
