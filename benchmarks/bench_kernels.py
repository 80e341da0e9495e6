"""Normalisation and similarity matrices: the Rust ufuncs against NumPy and SciPy, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_kernels.py

Single-threaded on both sides (the Rust kernels are serial; NumPy's BLAS is limited to one thread
with threadpoolctl), since Dask supplies the parallelism across chunks. Each row: the best of
five runs, and the ratio NumPy-or-SciPy time / Rust time (above 1: Rust is faster). Every result
is checked against the peer's before it is timed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.distance import cdist
from threadpoolctl import threadpool_limits

from dask_vecops import ufuncs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows to normalise")
    p.add_argument("--queries", type=int, default=1_000, help="rows of the first similarity operand")
    p.add_argument("--database", type=int, default=20_000, help="rows of the second operand")
    p.add_argument("--features", type=int, default=384)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.features)).astype(np.float32)
    a = x[: args.queries]
    b = x[: args.database]
    print(f"float32, {args.features} features; normalise {args.rows:,} rows; "
          f"similarity {args.queries:,} x {args.database:,}\n")
    print("| operation | Rust (s) | peer | peer (s) | peer / Rust |")
    print("|---|---:|---|---:|---:|")
    with threadpool_limits(1):
        for row in _cases(x, a, b):
            print(_row(*row), flush=True)


def _cases(x, a, b):
    def unit(m):
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return [
        ("normalize l2", lambda: ufuncs.normalize_l2(x), "NumPy x / norm(x)", lambda: unit(x)),
        ("normalize l1", lambda: ufuncs.normalize_l1(x), "NumPy x / sum(abs(x))",
         lambda: x / np.abs(x).sum(axis=1, keepdims=True)),
        ("cosine", lambda: ufuncs.cosine(a, b), "NumPy unit(a) @ unit(b).T",
         lambda: unit(a) @ unit(b).T),
        ("dot", lambda: ufuncs.dot(a, b), "NumPy a @ b.T", lambda: a @ b.T),
        ("euclidean", lambda: ufuncs.euclidean(a, b), "SciPy cdist euclidean",
         lambda: cdist(a, b, "euclidean")),
        ("manhattan", lambda: ufuncs.manhattan(a, b), "SciPy cdist cityblock",
         lambda: cdist(a, b, "cityblock")),
    ]


def _row(name, ours, peer_name, peer) -> str:
    np.testing.assert_allclose(ours(), peer(), rtol=2e-3, atol=2e-3)
    ours_s, peer_s = _best(ours), _best(peer)
    return f"| {name} | {ours_s:.4f} | {peer_name} | {peer_s:.4f} | {peer_s / ours_s:.2f} |"


def _best(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    main()
