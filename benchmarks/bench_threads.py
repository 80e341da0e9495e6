"""Which split a multi-threaded top-k call should take: the kernel's choice against both splits.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py

With ``set_num_threads(n)``, n > 1, one ``topk_block`` call shares its work between n threads
(docs/threads.md): each takes a slice of the database for all queries (then the lists are
merged), or a range of the queries against the whole database. This script times, in rounds
that take turns in one process, cosine searches with the database norms given (a repeat search):

- ``auto``: ``topk_block`` on ``--threads`` kernel threads, which picks the split itself;
- ``queries``: the queries cut into ``--threads`` ranges, one ``topk_block`` call each (one
  kernel thread) on a thread pool;
- ``database``: the database cut into ``--threads`` slices likewise, the lists merged by the
  backend's ``merge_topk`` (what Dask's merge tasks run).

The last two do what each split does, from Python (each call releases the GIL), so ``auto`` should
be about as fast as the better of them. All three must return the same bits; the script checks.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dask_vecops import _rust
from dask_vecops.backends.rust_backend import merge_topk
from dask_vecops.datasets import clustered_embeddings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--queries", default="64,128,200,256,500,1000")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    db = clustered_embeddings(args.rows, args.features, chunk_rows=100_000).compute()
    norms = _rust.topk_block(db[:1], db, 1, "cosine")[2]
    pool = ThreadPoolExecutor(args.threads)
    print(f"{args.rows:,} x {args.features} float32, clustered, cosine, k={args.k}, norms given, "
          f"{args.threads} threads, best of {args.rounds} rounds\n")
    print("| queries | auto ms | queries split ms | database split ms | auto / better split |")
    print("|---:|---:|---:|---:|---:|")
    for nq in (int(x) for x in args.queries.split(",")):
        rng = np.random.default_rng(nq)
        picks = rng.choice(args.rows, nq, replace=False)
        q = db[picks] + 0.05 * rng.standard_normal((nq, args.features)).astype(np.float32)
        ways = {
            "auto": lambda: _auto(q, db, args.k, norms, args.threads),
            "queries": lambda: _split_queries(pool, q, db, args.k, norms, args.threads),
            "database": lambda: _split_database(pool, q, db, args.k, norms, args.threads),
        }
        best, results = {w: np.inf for w in ways}, {}
        for _ in range(args.rounds):
            for way, run in ways.items():
                time.sleep(0.2)
                start = time.perf_counter()
                results[way] = run()
                best[way] = min(best[way], time.perf_counter() - start)
        _check_same(results)
        ms = {w: 1e3 * s for w, s in best.items()}
        better = min(ms["queries"], ms["database"])
        print(f"| {nq} | {ms['auto']:.1f} | {ms['queries']:.1f} | {ms['database']:.1f} "
              f"| {ms['auto'] / better:.2f} |", flush=True)


def _auto(q, db, k, norms, threads):
    _rust.set_num_threads(threads)
    try:
        return _rust.topk_block(q, db, k, "cosine", None, norms)[:2]
    finally:
        _rust.set_num_threads(1)


def _split_queries(pool, q, db, k, norms, threads):
    parts = np.array_split(np.arange(len(q)), threads)
    found = list(pool.map(lambda r: _rust.topk_block(q[r], db, k, "cosine", None, norms), parts))
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def _split_database(pool, q, db, k, norms, threads):
    bounds = np.linspace(0, len(db), threads + 1).astype(int)
    slices = list(zip(bounds[:-1], bounds[1:]))
    found = list(pool.map(
        lambda s: _rust.topk_block(q, db[s[0]:s[1]], k, "cosine", None, norms[s[0]:s[1]]), slices))
    ids = [np.where(f[1] >= 0, f[1] + s0, -1) for f, (s0, _) in zip(found, slices)]
    return merge_topk([f[0] for f in found], ids, k, "cosine")


def _check_same(results):
    scores, ids = results["auto"]
    for way, (s, i) in results.items():
        if not (np.array_equal(s.view(np.uint32), scores.view(np.uint32))
                and np.array_equal(i, ids)):
            raise SystemExit(f"{way} differs from auto")


if __name__ == "__main__":
    main()
