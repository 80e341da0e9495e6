"""Few-query searches with several in-memory chunks a task, and with a task per chunk.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_task_bytes.py

A search of up to 64 queries over chunks already in memory gives each pair task several
consecutive chunks, up to ``vecops.cpu-task-bytes`` (``_task_bytes`` in ``dask_vecops/api.py``).
This script times ``cosine_topk(q, k, database=x)`` on a NumPy-backed dask array (100,000-row
chunks of the benchmark's clustered embeddings, the threaded scheduler) with the default and
with ``vecops.cpu-task-bytes: 0`` (a task per chunk), each as a first search (the norm cache
cleared) and a repeat one (the norms cached), in rounds that take turns, with SimSIMD's
``cdist`` and ``argpartition`` (the fastest peer at one query) in every round. It checks that
both ways return the same bits, and prints the best time of each.
"""

import argparse
import os
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--queries", default="1,16")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    from bench_topk import _data

    nqs = [int(x) for x in args.queries.split(",")]
    db, q_all = _data(argparse.Namespace(rows=args.rows, features=args.features,
                                         queries=max(nqs), chunk_rows=100_000, self_join=False))
    ways = [(task_bytes, cached) for task_bytes in ("1GiB", 0) for cached in (False, True)]
    print("| queries | task per chunk, first ms | several a task, first ms | first: per chunk / "
          "several | task per chunk, cached ms | several a task, cached ms | cached: per chunk / "
          "several | SimSIMD ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for nq in nqs:
        q = np.ascontiguousarray(q_all[:nq])
        best = _rounds(db, q, args.k, ways, args.rounds)
        first = best[0, False], best["1GiB", False]
        cached = best[0, True], best["1GiB", True]
        print(f"| {nq} | {first[0]:.1f} | {first[1]:.1f} | {first[0] / first[1]:.2f}x | "
              f"{cached[0]:.1f} | {cached[1]:.1f} | {cached[0] / cached[1]:.2f}x | "
              f"{best['simsimd']:.1f} |")


def _rounds(db, q, k, ways, rounds) -> dict:
    """Best milliseconds of each way and of SimSIMD, over rounds whose order alternates."""
    import dask
    import dask.array as da

    import dask_vecops as dv
    from dask_vecops.graph._norm_cache import NORM_CACHE

    x = da.from_array(db, chunks=(100_000, -1))

    def search(task_bytes, cached):
        if not cached:
            NORM_CACHE.clear()
        with dask.config.set({"vecops.cpu-task-bytes": task_bytes}):
            found = dv.cosine_topk(q, k, database=x, backend="rust")
        return dask.compute(*found, scheduler="threads")

    search(0, False)  # warms both ways
    want = search("1GiB", True)
    best = {way: np.inf for way in [*ways, "simsimd"]}
    for r in range(rounds):
        for way in [*ways, "simsimd"][:: 1 if r % 2 == 0 else -1]:
            if way != "simsimd" and way[1]:
                search(way[0], False)  # fills the norm cache for the repeat search
            time.sleep(0.1)
            start = time.perf_counter()
            got = _simsimd(q, db, k) if way == "simsimd" else search(*way)
            best[way] = min(best[way], (time.perf_counter() - start) * 1e3)
            if way != "simsimd":
                assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), way
    return best


def _simsimd(q, db, k):
    import simsimd

    distances = np.asarray(simsimd.cdist(q, db, metric="cosine", out_dtype="float32",
                                         threads=os.cpu_count()))
    return np.argpartition(distances, k, axis=1)[:, :k]


if __name__ == "__main__":
    main()
