"""GPU top-k: dask-vecops' CUDA backend against the CuPy recipe, on one GPU, in one run.

    python benchmarks/gpu.py [--rows 1000000] [--features 384] [--queries 1000] [-k 10 1000]

Needs a CUDA GPU with CuPy and Numba. The database is float32 random normal rows made on the GPU.
For each k it times, best of ``--repeat`` after a warm-up, with the GPU synchronised:

* sgemm: CuPy's ``q @ db.T`` alone (cuBLAS, float32, no TF32): the GPU's matrix-product rate;
* the CuPy recipe: normalise the database and the queries, ``qn @ dbn.T``, ``argpartition``,
  then sort the k picked (what a CuPy user writes by hand);
* ours through Dask: ``dask_vecops.cosine_topk`` on CuPy-backed dask arrays (database chunks of
  ``--chunk-rows``), on a first call (database norms computed) and a repeat (norms cached);
* ours without Dask: the CUDA backend's ``topk_block`` on the whole database as one block.

Our results are checked against the recipe's and against float64 on a sample of queries.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

import cupy
import dask
import dask.array as da
import numpy as np

import dask_vecops as dv
from dask_vecops.backends import cuda_backend
from dask_vecops.graph._norm_cache import NORM_CACHE


def main() -> None:
    args = _parser().parse_args()
    rng = cupy.random.default_rng(0)
    db = rng.standard_normal((args.rows, args.features), dtype=cupy.float32)
    picks = cupy.asarray(np.random.default_rng(0).choice(args.rows, args.queries, replace=False))
    q = db[picks] + 0.1 * rng.standard_normal(
        (args.queries, args.features), dtype=cupy.float32
    )
    props = cupy.cuda.runtime.getDeviceProperties(0)
    header = {
        "gpu": props["name"].decode(), "database_rows": args.rows, "features": args.features,
        "queries": args.queries, "chunk_rows": args.chunk_rows, "cupy": cupy.__version__,
        "dask": dask.__version__,
    }
    print(json.dumps(header))
    sgemm = _best(lambda: q @ db.T, args.repeat)
    flops = 2 * args.queries * args.rows * args.features
    results = []
    for k in args.k:
        rows = _case(q, db, k, args)
        for row in rows:
            row.update(k=k, gflops=flops / row["seconds"] / 1e9, of_sgemm=sgemm / row["seconds"])
        rows.insert(0, {"name": "sgemm q @ db.T", "k": k, "seconds": sgemm, "gflops": flops / sgemm / 1e9, "of_sgemm": 1.0})
        _check(q, db, k, args)
        results += rows
        for row in rows:
            print(f"k={k:>5}  {row['name']:<44} {row['seconds'] * 1e3:9.2f} ms  "
                  f"{row['gflops']:8.0f} GFLOP/s  {row['of_sgemm']:6.1%} of sgemm", flush=True)
    if args.profile:
        results += _profile(q, db, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**header, "rows": results}, f, indent=1)


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("-k", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--profile", action="store_true", help="also time the parts and variants")
    return parser


def _best(run, repeat: int) -> float:
    """Best wall time of ``run`` over ``repeat`` runs after one warm-up, GPU synchronised."""
    run()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        cupy.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def cupy_recipe(q, db, k):
    """The hand-written CuPy exact cosine top-k: normalise, multiply, argpartition, sort."""
    dbn = db / cupy.linalg.norm(db, axis=1, keepdims=True)
    qn = q / cupy.linalg.norm(q, axis=1, keepdims=True)
    scores = qn @ dbn.T
    picked = cupy.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked_scores = cupy.take_along_axis(scores, picked, 1)
    order = cupy.argsort(-picked_scores, axis=1)
    return cupy.take_along_axis(picked_scores, order, 1), cupy.take_along_axis(picked, order, 1)


def _ours_dask(q, db, k, chunk_rows):
    database = da.from_array(db, chunks=(chunk_rows, -1), name="bench-database", asarray=False)
    queries = da.from_array(q, chunks=(-1, -1), name="bench-queries", asarray=False)
    return dask.compute(*dv.cosine_topk(queries, k, database=database))


def _case(q, db, k, args) -> list[dict]:
    rows = [{"name": "CuPy recipe (normalise, matmul, argpartition)",
             "seconds": _best(lambda: cupy_recipe(q, db, k), args.repeat)}]

    rows.append({"name": "dask-vecops cuda, dask, first call",
                 "seconds": _best(lambda: first_call_dask(q, db, k, args.chunk_rows), args.repeat)})
    rows.append({"name": "dask-vecops cuda, dask, norms cached",
                 "seconds": _best(lambda: _ours_dask(q, db, k, args.chunk_rows), args.repeat)})
    rows.append({"name": "dask-vecops cuda topk_block, no dask",
                 "seconds": _best(lambda: cuda_backend.topk_block(q, db, k, "cosine"), args.repeat)})
    recipe = rows[0]["seconds"]
    for row in rows[1:]:
        row["vs_recipe"] = recipe / row["seconds"]
    return rows


def _profile(q, db, args) -> list[dict]:
    """Where the time goes: the parts of one chunk's search, and the settings that size them."""
    from numba_kernels import launch

    chunk = db[: args.chunk_rows]
    rows = []

    def timed(name, run, **extra):
        rows.append({"name": name, "seconds": _best(run, args.repeat), **extra})
        print(f"profile  {name:<60} {rows[-1]['seconds'] * 1e3:9.3f} ms", flush=True)

    scores = q @ chunk.T
    timed(f"one chunk: q @ chunk.T ({args.chunk_rows} rows)", lambda: q @ chunk.T)
    timed("one chunk: row norms kernel", lambda: launch.row_norms(chunk, "l2"))
    timed("one chunk: normalize kernel", lambda: launch.normalize_rows(chunk, "l2"))
    timed("launch cost: row norms kernel on 8 rows", lambda: launch.row_norms(chunk[:8], "l2"))
    timed("launch cost: cupy einsum norms on 8 rows",
          lambda: cupy.sqrt(cupy.einsum("ij,ij->i", chunk[:8], chunk[:8])))
    timed("one chunk: cupy norms (einsum)", lambda: cupy.sqrt(cupy.einsum("ij,ij->i", chunk, chunk)))
    for k in args.k:
        timed(f"one chunk: topk_rows k={k}, exact selection alone",
              lambda k=k: launch.topk_rows(scores, k, True, first_pass=False), k=k)
    default_threads = launch.SCAN_THREADS
    for threads in (128, 256):
        launch.SCAN_THREADS = threads
        for k in (1, 10, 32):
            timed(f"one chunk: topk_rows k={k}, first pass, {threads} threads/block",
                  lambda k=k: launch.topk_rows(scores, k, True, first_pass=True), threads=threads, k=k)
    launch.SCAN_THREADS = default_threads
    few = q[:16] @ chunk.T
    for k in (10, 32):
        timed(f"one chunk, 16 queries: topk_rows k={k}, first pass",
              lambda k=k: launch.topk_rows(few, k, True, first_pass=True), k=k)
        timed(f"one chunk, 16 queries: topk_rows k={k}, exact selection alone",
              lambda k=k: launch.topk_rows(few, k, True, first_pass=False), k=k)
    for k in args.k:
        timed(f"one chunk: cuda_backend.topk_block k={k}",
              lambda k=k: cuda_backend.topk_block(q, chunk, k, "cosine"))
    norms = launch.row_norms(chunk, "l2")
    timed("one chunk: cuda_backend.topk_block k=10, norms given",
          lambda: cuda_backend.topk_block(q, chunk, 10, "cosine", db_norms=norms))
    timed("whole database: topk_block k=10", lambda: cuda_backend.topk_block(q, db, 10, "cosine"))
    for scheduler in ("sync", "threads"):
        for task_bytes in ("0", "1GiB", "2GiB"):
            config = {"scheduler": scheduler, "vecops.gpu-task-bytes": task_bytes}
            with dask.config.set(config):
                timed(f"dask, k=10, scheduler={scheduler}, gpu-task-bytes={task_bytes}",
                      lambda: _ours_dask(q, db, 10, args.chunk_rows))
    for workers in (2, 4):
        with dask.config.set(scheduler="threads", num_workers=workers):
            timed(f"dask, k=10, scheduler=threads, {workers} workers",
                  lambda: _ours_dask(q, db, 10, args.chunk_rows))
    timed("dask, k=10, first call, checks read at once (A/B)",
          lambda: _checks_at_once(first_call_dask, q, db, 10, args.chunk_rows))
    timed("dask, k=10, norms cached, checks read at once (A/B)",
          lambda: _checks_at_once(_ours_dask, q, db, 10, args.chunk_rows))
    return rows


def first_call_dask(q, db, k, chunk_rows):
    NORM_CACHE.clear()
    return _ours_dask(q, db, k, chunk_rows)


def _checks_at_once(run, *args):
    """``run(*args)`` with each pair task reading its finiteness checks back from the GPU, as
    before the checks were deferred to the last merge (the A/B of that change)."""
    topk = importlib.import_module("dask_vecops.graph.topk")
    saved = topk._defers_checks
    topk._defers_checks = lambda db, nan_policy: False
    try:
        return run(*args)
    finally:
        topk._defers_checks = saved


def _check(q, db, k, args) -> None:
    """Our ids against the recipe's and our scores against float64 on a sample of queries."""
    scores, ids = _ours_dask(q, db, k, args.chunk_rows)
    _, recipe_ids = cupy_recipe(q, db, k)
    same = float((cupy.sort(ids, axis=1) == cupy.sort(recipe_ids, axis=1)).mean())
    sample = slice(0, 20)
    q64, db64 = q[sample].astype(cupy.float64), db.astype(cupy.float64)
    exact = (q64 / cupy.linalg.norm(q64, axis=1, keepdims=True)) @ (
        db64 / cupy.linalg.norm(db64, axis=1, keepdims=True)
    ).T
    kth = -cupy.sort(-exact, axis=1)[:, k - 1]
    ours_true = cupy.take_along_axis(exact, ids[sample], 1)
    # Every id we return must truly score at least the k-th best, up to float32 rounding.
    worst_gap = float((kth - ours_true.min(axis=1)).max())
    score_error = float(cupy.abs(ours_true - scores[sample]).max())
    print(json.dumps({"k": k, "ids_equal_recipe": same, "worst_gap_vs_float64": worst_gap,
                      "max_score_error_vs_float64": score_error}), flush=True)
    assert worst_gap < 1e-5 and score_error < 1e-5, (worst_gap, score_error)


if __name__ == "__main__":
    main()
