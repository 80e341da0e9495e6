"""A first cosine search: exact database norms against bounded scales, on the same data.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_first_search.py

A first search knows no database norms. The Rust kernel either computes every row's exact norm
(float64 sums, ``lazy_norms=False``: what the graph asks for, to cache them) or, for a few float32
queries on the row-streaming kernel, bounds each row's scale from a float32 sum of squares and
computes the exact norm only of the rows that could enter a top k (``lazy_norms=True``: what the
graph asks for with the norm cache off). This script times ``topk_block`` (cosine, k=10)
both ways and with the norms given (a repeat search, norms cached), in rounds that take turns in
one process, on the benchmark's clustered embeddings, and checks that the three give the same
bits. ``--isa avx512`` caps the instruction set as on a CPU without AVX512_BF16, whose 17 to 128
queries take the row-streaming kernel too (with AVX512_BF16 they take the bfloat16 filter, which
computes the norms as it reads the rows, so both ways are the same there). ``--dask`` times the
same three ways through ``cosine_topk`` on 50,000-row chunks: a first search with the norm cache
on (exact norms, kept), one with the cache off (bounded scales) and one with the norms cached.
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
    p.add_argument("--queries", default="3,8,16,32,64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--isa", default="", help="DASK_VECOPS_ISA for the kernel (default: the best)")
    p.add_argument("--dask", action="store_true",
                   help="through cosine_topk on 50,000-row chunks (kernel threads: 1)")
    args = p.parse_args()
    args.threads = 1 if args.dask else args.threads
    os.environ["DASK_VECOPS_ISA"] = args.isa
    os.environ["DASK_VECOPS_NUM_THREADS"] = str(args.threads)
    from bench_topk import _data, _read_seconds

    from dask_vecops import ufuncs

    nqs = [int(x) for x in args.queries.split(",")]
    db, q_all = _data(argparse.Namespace(rows=args.rows, features=args.features, queries=max(nqs),
                                         chunk_rows=50_000, self_join=False))
    ways = _through_dask(db) if args.dask else _kernel_calls(db)
    best = {(nq, way): np.inf for nq in nqs for way in ways}
    reads = []
    for r in range(args.rounds):
        reads.append(_read_seconds(db))
        for nq in nqs:
            q = np.ascontiguousarray(q_all[:nq])
            results = []
            for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                time.sleep(0.2)
                start = time.perf_counter()
                scores, ids = ways[way](q)[:2]
                best[nq, way] = min(best[nq, way], time.perf_counter() - start)
                results.append((scores.tobytes(), ids.tobytes()))
            assert len(set(results)) == 1, f"{nq} queries: the ways differ"
    _report(best, nqs, list(ways), args, ufuncs.kernel_isa(), min(reads))


def _kernel_calls(db) -> dict:
    """``topk_block`` on the whole database: exact norms, bounded scales, norms given."""
    from dask_vecops import _rust, ufuncs

    norms = ufuncs.norm_l2(db)
    return {
        "exact norms": lambda q: _rust.topk_block(q, db, 10, "cosine"),
        "bounded scales": lambda q: _rust.topk_block(q, db, 10, "cosine", lazy_norms=True),
        "norms given": lambda q: _rust.topk_block(q, db, 10, "cosine", None, norms),
    }


def _through_dask(db) -> dict:
    """``cosine_topk`` on a dask array: a first search with the norm cache on (exact norms,
    kept), one with it off (bounded scales), and a search with the norms cached."""
    import dask
    import dask.array as da

    import dask_vecops as dv
    from dask_vecops.graph._norm_cache import NORM_CACHE

    x = da.from_array(db, chunks=(50_000, -1))

    def search(q):
        return dask.compute(*dv.cosine_topk(q, 10, database=x), scheduler="threads")

    def first(q):
        NORM_CACHE.clear()
        return search(q)

    def uncached(q):
        with dask.config.set({"vecops.norm-cache": 0}):
            found = dv.cosine_topk(q, 10, database=x)
        return dask.compute(*found, scheduler="threads")

    search(np.ascontiguousarray(db[:3]))  # fills the cache for the first round
    # The first search clears the cache and fills it again: the cached search, whichever way
    # the round runs, finds every chunk's norms.
    return {"exact norms": first, "bounded scales": uncached, "norms given": search}

def _report(best, nqs, ways, args, isa, read) -> None:
    how = ("cosine_topk on 50,000-row chunks, threaded scheduler" if args.dask
           else f"topk_block, {args.threads} kernel threads")
    print(f"{args.rows:,} x {args.features} float32, clustered, cosine, k=10, {how}, ISA {isa}, "
          f"best of {args.rounds} rounds; every way gave the same bits; one read of the database "
          f"{read * 1e3:.1f} ms (best of the rounds)")
    print()
    print("| queries | " + " | ".join(f"{w} ms" for w in ways)
          + " | exact / bounded | bounded / given |")
    print("|---:|" + "---:|" * (len(ways) + 2))
    for nq in nqs:
        t = [best[nq, w] for w in ways]
        print(f"| {nq} | " + " | ".join(f"{x * 1e3:.1f}" for x in t)
              + f" | {t[0] / t[1]:.2f}x | {t[1] / t[2]:.2f}x |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
