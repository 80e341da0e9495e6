"""Each instruction-set path of the Rust kernels against OpenBLAS's kernel for the same ISA.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_isa.py

For every ISA this CPU has and for float32 and float64, a fresh process pins the Rust kernels
with ``DASK_VECOPS_ISA`` and OpenBLAS with ``OPENBLAS_CORETYPE`` (SkylakeX for avx512, Haswell
for avx2, Prescott for portable), then times on one thread:

* ``gemm``: NumPy's ``q @ db.T`` for 1,000 queries x 100,000 rows x 384 features;
* ``topk``: one fused cosine top-k block (k=10, database norms given, as on a repeat search)
  of the same shape, the Rust backend's ``topk_block``: the product and the selection.

Both rates are 2 * queries * rows * features / seconds (best of three). ``topk / gemm`` above 1
means the fused kernel, selection included, outruns the BLAS product alone. The ids are checked
against float64 NumPy before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CORETYPES = {
    "avx512bf16": "SkylakeX", "avx512": "SkylakeX", "avx2": "Haswell", "portable": "Prescott"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--one", nargs=2, metavar=("ISA", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(_measure(*args.one, args.queries, args.rows, args.features)))
        return
    from dask_vecops import ufuncs

    isas = list(CORETYPES)[list(CORETYPES).index(ufuncs.best_isa()):]
    print(f"{args.queries:,} queries x {args.rows:,} rows x {args.features} features, k=10, "
          "cosine, one thread\n")
    print("| ISA path | dtype | OpenBLAS kernel | gemm GFLOP/s | topk GFLOP/s | topk / gemm |")
    print("|---|---|---|---:|---:|---:|")
    for isa in isas:
        for dtype in ("float32", "float64"):
            r = _in_fresh_process(isa, dtype, args)
            print(f"| {r['isa']} | {dtype} | {r['blas']} | {r['gemm']:.1f} | {r['topk']:.1f} | "
                  f"{r['topk'] / r['gemm']:.2f} |", flush=True)


def _in_fresh_process(isa: str, dtype: str, args) -> dict:
    env = {**os.environ, "DASK_VECOPS_ISA": isa, "OPENBLAS_CORETYPE": CORETYPES[isa]}
    env.pop("OPENBLAS_L2_SIZE", None)
    out = subprocess.run(
        [sys.executable, __file__, "--one", isa, dtype, "--queries", str(args.queries),
         "--rows", str(args.rows), "--features", str(args.features)],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def _measure(isa: str, dtype: str, queries: int, rows: int, features: int) -> dict:
    import time

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from dask_vecops import ufuncs
    from dask_vecops.backends.rust_backend import topk_block

    assert ufuncs.kernel_isa() == isa, (ufuncs.kernel_isa(), isa)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((rows, features)).astype(dtype)
    q = rng.standard_normal((queries, features)).astype(dtype)
    _check(q, db)
    norms = topk_block(q[:1], db, 10, "cosine")[2]  # as the norm cache keeps them

    def best(fn) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with threadpool_limits(1):
        gemm = best(lambda: q @ db.T)
    topk = best(lambda: topk_block(q, db, 10, "cosine", db_norms=norms))
    flops = 2 * queries * rows * features
    blas = ", ".join(sorted({i.get("architecture") or "?" for i in threadpool_info()
                             if i["internal_api"] == "openblas"}))
    return {"isa": isa, "blas": blas, "gemm": flops / gemm / 1e9, "topk": flops / topk / 1e9}


def _check(q, db) -> None:
    """The kernel's ids for the first queries are those of float64 NumPy."""
    import numpy as np

    from dask_vecops.backends.rust_backend import topk_block

    few = q[:20]
    _, ids, _ = topk_block(few, db, 10, "cosine")
    exact = (few / np.linalg.norm(few.astype(np.float64), axis=1, keepdims=True)) @ (
        db / np.linalg.norm(db.astype(np.float64), axis=1, keepdims=True)).T
    want = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    assert np.mean(ids == want) > 0.99, "the kernel's ids differ from float64 NumPy's"


if __name__ == "__main__":
    main()
