"""Exact cosine top-k: dask-vecops' backends against the peers, on the same data in one process.

    make bench            # or: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_topk.py

Peers: NumPy brute force (normalise, q @ db.T, argpartition), faiss-cpu IndexFlatIP, scikit-learn
NearestNeighbors(algorithm="brute", metric="cosine") and the hand-written Dask recipe
(normalise; q @ db.T; da.argtopk). Every contender gets the same float32 database and queries; its
time includes normalising (FAISS and the recipe need a normalised copy; we do not). Each result is
checked against a float64 NumPy reference on a sample of queries (recall@k, ties allowed).
Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import dask
import dask.array as da
import numpy as np

import dask_vecops as dv
from dask_vecops.datasets import clustered_embeddings


def main() -> None:
    args = _parser().parse_args()
    db, q = _data(args)
    print(_environment(), "\n")
    rate = _sgemm_rate(q, db)
    print(f"NumPy sgemm ({len(q)} x {db.shape[1]}) @ ({db.shape[1]} x 100000): {rate:.1f} GFLOP/s\n")
    reference = _reference_sample(q, db, args.k, args.check)
    rows = []
    for name, run in _contenders(args):
        if args.only and not any(o in name for o in args.only):
            continue
        seconds, ids = _best_of(args.repeat, run, q, db, args.k)
        if seconds is None:
            print(f"{name}: skipped ({ids})")
            continue
        rows.append((name, seconds, _recall(ids, reference)))
        print(f"{name}: {seconds:.2f} s", flush=True)
    print()
    print(_table(rows, len(q), db.shape, args.k, rate))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--chunk-rows", type=int, default=100_000, help="rows per dask chunk")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender; the best is kept")
    p.add_argument("--check", type=int, default=50, help="queries checked against float64")
    p.add_argument("--only", nargs="*", help="run only contenders whose name contains one of these")
    return p


def _data(args):
    db = clustered_embeddings(args.rows, args.features, chunk_rows=args.chunk_rows).compute()
    rng = np.random.default_rng(7)
    picks = rng.choice(args.rows, size=args.queries, replace=False)
    noise = 0.05 * rng.standard_normal((args.queries, args.features)).astype(np.float32)
    return db, db[picks] + noise


def _environment() -> str:
    from threadpoolctl import threadpool_info

    pools = ", ".join(
        f"{p['internal_api']} {p.get('version')} {p.get('architecture')} ({p['num_threads']} threads, {os.path.basename(p['filepath'])})"
        for p in threadpool_info()
    )
    blas_env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"numpy {np.__version__}, dask {dask.__version__}, dask-vecops {dv.__version__}\n"
            f"thread pools: {pools}\nOpenBLAS variables: {blas_env}")


def _sgemm_rate(q, db) -> float:
    block = np.ascontiguousarray(db[:100_000].T)
    best = min(_timed(lambda: q @ block)[0] for _ in range(3))
    return 2 * len(q) * block.shape[0] * block.shape[1] / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _best_of(repeat, run, q, db, k):
    try:
        results = [_timed(lambda: run(q, db, k)) for _ in range(repeat)]
    except ImportError as err:
        return None, err
    seconds = min(r[0] for r in results)
    return seconds, np.asarray(results[0][1])


def _reference_sample(q, db, k, count):
    """Float64 cosine scores of a sample of queries against the whole database."""
    sample = np.linspace(0, len(q) - 1, count).astype(int)
    dbn = _unit(db.astype(np.float64))
    scores = _unit(q[sample].astype(np.float64)) @ dbn.T
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    return sample, scores, kth


def _recall(ids, reference) -> float:
    """Share of returned ids whose float64 score reaches the true k-th best (ties count as hits)."""
    sample, scores, kth = reference
    got = np.take_along_axis(scores, ids[sample], 1)
    return float((got >= kth - 1e-6).mean())


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(x.dtype).tiny)


# --- contenders: each takes (queries, database, k) and returns ids (len(q), k) -------------------


def _contenders(args):
    chunks = (args.chunk_rows, -1)

    def ours(backend):
        def run(q, db, k):
            _, ids = dv.cosine_topk(q, k, database=da.from_array(db, chunks=chunks), backend=backend)
            return ids.compute(scheduler="threads")

        return run

    def dask_recipe(q, db, k):
        x = da.from_array(db, chunks=chunks)
        xn = x / da.linalg.norm(x, axis=1, keepdims=True)
        qn = _unit(q)
        return da.argtopk(da.from_array(qn) @ xn.T, k, axis=1).compute(scheduler="threads")

    return [
        ("dask-vecops rust", ours("rust")),
        ("dask-vecops scipy", ours("scipy")),
        ("dask-vecops numpy", ours("numpy")),
        ("NumPy brute force", _numpy_brute),
        ("faiss-cpu IndexFlatIP", _faiss),
        ("scikit-learn brute", _sklearn),
        ("Dask recipe", dask_recipe),
    ]


def _numpy_brute(q, db, k):
    scores = _unit(q) @ _unit(db).T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


def _faiss(q, db, k):
    import faiss

    base, queries = db.copy(), q.copy()
    faiss.normalize_L2(base)
    faiss.normalize_L2(queries)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def _sklearn(q, db, k):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(db)
    return nn.kneighbors(q, return_distance=False)


def _table(rows, n_queries, shape, k, rate) -> str:
    ours = next((s for name, s, _ in rows if name == "dask-vecops rust"), rows[0][1])
    flops = 2 * n_queries * shape[0] * shape[1]
    lines = [
        f"{shape[0]:,} x {shape[1]} float32 database, {n_queries:,} queries, k={k}; "
        f"NumPy sgemm rate {rate:.1f} GFLOP/s",
        "",
        "| contender | seconds | effective GFLOP/s | % of sgemm | queries/s | time / ours | recall@k |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, recall in rows:
        gflops = flops / seconds / 1e9
        lines.append(f"| {name} | {seconds:.2f} | {gflops:.1f} | {100 * gflops / rate:.0f}% | "
                     f"{n_queries / seconds:,.0f} | {seconds / ours:.2f} | {recall:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
