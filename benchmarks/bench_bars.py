"""Shared bars: ``cosine_topk`` with the pair tasks' bars shared and not, on the same data.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_bars.py

Each pair task of a search publishes its k-th best score per query, and later pair tasks of the
same search hand the best so far to the Rust kernel, which then rejects the rows that cannot
reach them from the chunk's first row on (``dask_vecops/graph/_bars.py``). This script times
``cosine_topk(q, k, database=x)`` on a NumPy-backed dask array (100,000-row chunks, the
threaded scheduler, the norms cached as in a repeat search) with the board in use and with its
lookups answering "none yet" (what every pair task found before it existed), in rounds that
take turns, on the benchmark's clustered embeddings, and checks that both give the same bits.
``--self-join`` searches the rows of a 100,000-row database against themselves on 10,000-row
chunks (case 3).
"""

import argparse
import os
import sys
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--queries", default="1,16,32,128,1000")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--self-join", action="store_true")
    args = p.parse_args()
    from bench_topk import _data

    import dask_vecops as dv

    nqs = [args.rows] if args.self_join else [int(x) for x in args.queries.split(",")]
    chunk_rows = 10_000 if args.self_join else 100_000
    db, q_all = _data(argparse.Namespace(rows=args.rows, features=args.features,
                                         queries=max(nqs), chunk_rows=chunk_rows,
                                         self_join=args.self_join))
    search = _search(db, chunk_rows, args.k, args.self_join)
    best = {(nq, shared): np.inf for nq in nqs for shared in (False, True)}
    for nq in nqs:
        q = np.ascontiguousarray(q_all[:nq])
        search(q, True)  # fills the norm cache; warms both ways
        for r in range(args.rounds):
            results = []
            for shared in (False, True) if r % 2 == 0 else (True, False):
                time.sleep(0.2)
                start = time.perf_counter()
                scores, ids = search(q, shared)
                best[nq, shared] = min(best[nq, shared], time.perf_counter() - start)
                results.append((scores.tobytes(), ids.tobytes()))
            assert len(set(results)) == 1, f"{nq} queries: the two ways differ"
    _report(best, nqs, args, dv.ufuncs.kernel_isa(), chunk_rows)


def _search(db, chunk_rows, k, self_join):
    """``search(q, shared)``: the search with the board in use or with every lookup empty."""
    import dask
    import dask.array as da

    import dask_vecops as dv
    from dask_vecops.graph import _bars

    x = da.from_array(db, chunks=(chunk_rows, -1))
    lookup = _bars.BARS.get

    def search(q, shared):
        _bars.BARS.get = lookup if shared else (lambda key: None)
        try:
            found = dv.cosine_topk(x, k) if self_join else dv.cosine_topk(q, k, database=x)
            return dask.compute(*found, scheduler="threads")
        finally:
            _bars.BARS.get = lookup

    return search


def _report(best, nqs, args, isa, chunk_rows) -> None:
    what = "self-join" if args.self_join else "cosine_topk"
    print(f"{args.rows:,} x {args.features} float32, clustered, {what}, k={args.k}, "
          f"{chunk_rows:,}-row chunks, threaded scheduler, {os.cpu_count()} threads, norms "
          f"cached, ISA {isa}, best of {args.rounds} rounds; both ways gave the same bits")
    print()
    print("| queries | bars not shared s | bars shared s | not shared / shared |")
    print("|---:|---:|---:|---:|")
    for nq in nqs:
        off, on = best[nq, False], best[nq, True]
        print(f"| {nq:,} | {off:.3f} | {on:.3f} | {off / on:.2f}x |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
