"""Exact top-k: dask-vecops' backends against the peers, on the same data in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_topk.py [options]

One case per run (database size, features, queries, k, self-join). Peers: NumPy brute force
(normalise, q @ db.T, argpartition), faiss-cpu IndexFlatIP, scikit-learn
NearestNeighbors(algorithm="brute", metric="cosine"), SimSIMD (cdist with the cosine metric, then
argpartition) and the hand-written Dask recipe (normalise; q @ db.T; da.argtopk). Every contender
gets the same float32 data; its time includes normalising (FAISS, NumPy, scikit-learn and the
recipe need a normalised copy; we and SimSIMD do not). Each result is checked against a float64
NumPy reference on a sample of queries (recall@k, ties allowed). Physical limits measured in the
same run: NumPy's sgemm rate and the time to read the database once from memory (in every round;
the fastest of NumPy's reads and, with Numba installed, a compiled sum at the memory's speed).
With --repeat the contenders take turns, round after round, and each keeps its best time.
benchmarks/bench_cases.py runs the cases of the issues and writes the tables of RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import dask
import dask.array as da
import numpy as np

import dask_vecops as dv
from dask_vecops.datasets import clustered_embeddings
from dask_vecops.graph._norm_cache import NORM_CACHE


def main() -> None:
    args = _parser().parse_args()
    db, q = _data(args)
    sgemm = _sgemm_rate(db)
    reference = _reference_sample(q, db, args.k, args.check, args.self_join)
    contenders = [c for c in _contenders(args, db)
                  if not args.only or any(o.lower() in c[0].lower() for o in args.only)]
    times, ids, skipped, reads = _rounds(args, contenders, q, db)
    rows = []
    for name, _, _ in contenders:
        if name in skipped:
            print(f"# {name}: skipped ({skipped[name]})", flush=True)
            continue
        seconds = min(times[name])
        rows.append({"name": name, "seconds": seconds, "recall": _recall(ids[name], reference)})
        print(f"# {name}: {seconds:.3f} s", flush=True)
    limits = {"sgemm_gflops": sgemm, "read_seconds": min(reads)}
    result = {"case": vars(args), "environment": _environment(), **limits, "rows": rows}
    print(json.dumps(result) if args.json else _table(result))


# Seconds to wait before each timed run: BLAS and OpenMP worker threads spin for a while after
# a call (OpenBLAS about 2**28 cycles), and on two cores the next contender would share them
# with the spinning threads (SimSIMD's cdist measured 47 ms right after scikit-learn, 34 ms alone).
SETTLE_SECONDS = 0.5


def _rounds(args, contenders, q, db):
    """Times of each contender, its first ids, the contenders skipped (ImportError) and the read
    times, over ``--repeat`` rounds that run every contender once in turn: this VM's memory
    bandwidth drifts by a quarter within minutes, and rounds spread the drift over all alike."""
    times, first_ids, skipped, reads = {}, {}, {}, []
    for _ in range(args.repeat):
        time.sleep(SETTLE_SECONDS)
        reads.append(_read_seconds(db))
        for name, run, prepare in contenders:
            if name in skipped:
                continue
            try:
                if prepare is not None:
                    prepare(q, db, args.k)
                time.sleep(SETTLE_SECONDS)
                seconds, ids = _timed(lambda: run(q, db, args.k))
            except ImportError as err:
                skipped[name] = err
                continue
            times.setdefault(name, []).append(seconds)
            first_ids.setdefault(name, np.asarray(ids))
    return times, first_ids, skipped, reads


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--self-join", action="store_true", help="every row of the database against the others")
    p.add_argument("--chunk-rows", type=int, default=100_000, help="rows per dask chunk")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds (each runs every contender once); each contender's best is kept")
    p.add_argument("--check", type=int, default=50, help="queries checked against float64")
    p.add_argument("--only", nargs="*", help="run only contenders whose name contains one of these")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _data(args):
    db = clustered_embeddings(args.rows, args.features, chunk_rows=args.chunk_rows).compute()
    if args.self_join:
        return db, db
    rng = np.random.default_rng(7)
    picks = rng.choice(args.rows, size=args.queries, replace=False)
    noise = 0.05 * rng.standard_normal((args.queries, args.features)).astype(np.float32)
    return db, db[picks] + noise


def _environment() -> dict:
    from threadpoolctl import threadpool_info

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "versions": f"numpy {np.__version__}, dask {dask.__version__}, dask-vecops {dv.__version__}",
        "blas": [f"{p['internal_api']} {p.get('version')} {p.get('architecture')} "
                 f"({p['num_threads']} threads)" for p in threadpool_info()],
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }


def _sgemm_rate(db) -> float:
    """NumPy's float32 matrix-product rate for (1000 x d) @ (d x 100000), best of three."""
    q = db[:1000].copy()
    block = np.ascontiguousarray(db[:100_000].T)
    best = min(_timed(lambda: q @ block)[0] for _ in range(3))
    return 2 * len(q) * block.shape[0] * block.shape[1] / best / 1e9


def _read_seconds(db) -> float:
    """Seconds to read the database once from memory on every core: the best of three runs of
    each of `reads`."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return min(_timed(read)[0] for read in reads(db, pool).values() for _ in range(3))


def reads(db, pool) -> dict:
    """Named streaming reads of all of ``db`` on ``pool``'s threads: a BLAS matrix-vector
    product, column sums a part a thread and (where Numba is installed) a compiled sum a part a
    thread. The last reads at the memory's speed: on the benchmark machine about 19 ms for
    1,000,000 x 384 float32 (as a C loop), where NumPy's take 23-25 ms (benchmarks/RESULTS.md,
    "One read at the memory's speed")."""
    ones = np.ones(db.shape[1], db.dtype)
    parts = [part for part in np.array_split(db, os.cpu_count() * 4) if part.size]
    named = {
        "read: NumPy db @ ones": lambda: db @ ones,
        "read: NumPy column sums, a part a thread": lambda: list(
            pool.map(lambda part: np.add.reduce(part, axis=0), parts)),
    }
    total = compiled_sum()
    if total is not None:
        flat = [part.reshape(-1) for part in parts]
        named["read: Numba sum, a part a thread"] = lambda: list(pool.map(total, flat))
    return named


@functools.cache
def compiled_sum():
    """A Numba-compiled sum of a 1-D float array that releases the GIL, or None without Numba."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(nogil=True, fastmath=True)
    def total(values):
        s = values[0] - values[0]  # the values' own type (`* 0` would make it float64)
        for i in range(values.size):
            s += values[i]
        return s

    total(np.zeros(64, np.float32))
    return total


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _reference_sample(q, db, k, count, self_join):
    """Float64 cosine scores of a sample of queries against the whole database."""
    sample = np.linspace(0, len(q) - 1, min(count, len(q))).astype(int)
    scores = _unit(q[sample].astype(np.float64)) @ _unit(db.astype(np.float64)).T
    if self_join:
        scores[np.arange(len(sample)), sample] = -np.inf
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


def _contenders(args, db):
    # The database is a dask array before the clock starts, as it is for a user of dask (wrapping
    # a NumPy array hashes all of it to name the array: about a second per GB, Dask's cost).
    x = da.from_array(db, chunks=(args.chunk_rows, -1))
    self_join = args.self_join

    def ours(backend, cached=False):
        def run(q, db, k):
            if not cached:
                NORM_CACHE.clear()
            found = dv.cosine_topk(x, k, backend=backend) if self_join else (
                dv.cosine_topk(q, k, database=x, backend=backend))
            return found[1].compute(scheduler="threads")

        return run

    def dask_recipe(q, db, k):
        xn = x / da.linalg.norm(x, axis=1, keepdims=True)
        qn = xn if self_join else da.from_array(_unit(q))
        ids = da.argtopk(qn @ xn.T, k + self_join, axis=1).compute(scheduler="threads")
        return _drop_self(ids, k) if self_join else ids

    # (name, run, prepare): prepare runs untimed first; the cached row times a repeat search.
    contenders = [
        ("dask-vecops rust", ours("rust")),
        ("dask-vecops rust, norms cached", ours("rust", cached=True), ours("rust")),
        ("dask-vecops scipy", ours("scipy")),
        ("dask-vecops numpy", ours("numpy")),
        ("NumPy brute force", _numpy_brute(self_join)),
        ("faiss-cpu IndexFlatIP", _faiss(self_join)),
        ("scikit-learn brute", _sklearn(self_join)),
        ("SimSIMD cdist", _simsimd(self_join)),
        ("Dask recipe", dask_recipe),
    ]
    return [c if len(c) == 3 else (*c, None) for c in contenders]


def _numpy_brute(self_join):
    def run(q, db, k):
        dbn = _unit(db)
        rows = max(1, 2**31 // (4 * len(db)))  # 2 GiB of scores at a time
        return np.concatenate([_numpy_batch(_unit(q[s : s + rows]), dbn, k, s if self_join else None)
                               for s in range(0, len(q), rows)])

    return run


def _numpy_batch(qn, dbn, k, self_offset):
    scores = qn @ dbn.T
    if self_offset is not None:
        scores[np.arange(len(qn)), self_offset + np.arange(len(qn))] = -np.inf
    return _top_ids(scores, k)


def _top_ids(scores, k):
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


def _faiss(self_join):
    def run(q, db, k):
        import faiss

        base = db.copy()
        faiss.normalize_L2(base)
        queries = base if self_join else q.copy()
        if not self_join:
            faiss.normalize_L2(queries)
        index = faiss.IndexFlatIP(db.shape[1])
        index.add(base)
        ids = index.search(queries, k + self_join)[1]
        return _drop_self(ids, k) if self_join else ids

    return run


def _drop_self(ids, k):
    """Each row's k best other rows, from a k+1 search that normally returns the row itself first."""
    own = ids == np.arange(len(ids))[:, None]
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(ids.shape[1]) < k)
    return ids[keep].reshape(len(ids), k)


def _sklearn(self_join):
    def run(q, db, k):
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(db)
        if self_join:
            return nn.kneighbors(return_distance=False)  # sklearn leaves each row out itself
        return nn.kneighbors(q, return_distance=False)

    return run


def _simsimd(self_join):
    def run(q, db, k):
        import simsimd

        distances = np.asarray(simsimd.cdist(q, db, metric="cosine", out_dtype="float32",
                                             threads=os.cpu_count()))
        if self_join:
            np.fill_diagonal(distances, np.inf)
        return _top_ids(-distances, k)

    return run


def _table(result) -> str:
    case, rows = result["case"], result["rows"]
    ours = next((r["seconds"] for r in rows if r["name"] == "dask-vecops rust"), rows[0]["seconds"])
    n_queries = case["rows"] if case["self_join"] else case["queries"]
    flops = 2 * n_queries * case["rows"] * case["features"]
    rate = result["sgemm_gflops"]
    lines = [
        f"{case['rows']:,} x {case['features']} float32 database, "
        f"{'self-join' if case['self_join'] else f'{n_queries:,} queries'}, k={case['k']}; "
        f"NumPy sgemm {rate:.1f} GFLOP/s; one read of the database {result['read_seconds']:.3f} s",
        f"environment: {json.dumps(result['environment'])}",
        "",
        "| contender | seconds | effective GFLOP/s | % of sgemm | x one read | time / ours | recall@k |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gflops = flops / r["seconds"] / 1e9
        lines.append(
            f"| {r['name']} | {r['seconds']:.3f} | {gflops:.1f} | {100 * gflops / rate:.0f}% | "
            f"{r['seconds'] / result['read_seconds']:.1f} | {r['seconds'] / ours:.2f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
