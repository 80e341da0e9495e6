"""The bfloat16 filter against the plain AVX-512 row kernel, on the same data, same bits.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_bf16.py

On a CPU with AVX512_BF16 the Rust top-k kernel screens the rows of a search of 17 to 128
queries (and of more, in groups of 128, on a large database with a small k: docs/design.md)
with bfloat16 dot products before the exact kernel (``avx512bf16``); capping the instruction
set with ``DASK_VECOPS_ISA=avx512`` turns the filter off, and with it the groups (more than 128
queries then take the packed panels in one scan). This script times ``topk_block`` (cosine,
k=10 by default, 2 kernel threads) both ways in fresh processes that take turns, on the
benchmark's clustered embeddings (``dask_vecops.datasets``: queries are database rows plus
noise, so every query has close neighbours) or on Gaussian rows, and checks that both ways
return the same bits. A first call computes the database norms; a repeat call is given them.

With ``--baseline DIR`` the two ways are instead two builds at this CPU's best instruction set:
the ``dask_vecops`` package found in DIR (a copy of ``dask_vecops/`` with its ``_rust`` module
built from another commit: ``git stash; make build; cp -r dask_vecops /tmp/base/; git stash
pop; make build``) against this checkout's, for a change to the kernels measured on its own.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WAYS = {"bf16": "avx512bf16", "plain": "avx512"}
BUILDS = ("baseline", "this build")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--queries", default="16,17,32,64,128")
    p.add_argument("--data", choices=("clustered", "gaussian"), default="clustered")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", help="a directory holding another build's dask_vecops package")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_measure(Path(args.child[0]), args)))
        return
    from dask_vecops import ufuncs

    if ufuncs.best_isa() != "avx512bf16":
        sys.exit(f"this CPU's best instruction set is {ufuncs.best_isa()}: no bfloat16 filter")
    ways = list(BUILDS if args.baseline else WAYS)
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_data(Path(tmp), args)
        runs = {way: [] for way in ways}
        for r in range(args.rounds):
            for way in (ways if r % 2 == 0 else ways[::-1]):
                runs[way].append(_in_fresh_process(way, data, args))
    _report(runs, args)


def _write_data(tmp: Path, args) -> Path:
    """The database and the largest query batch, as .npy files the children load: clustered as
    in ``bench_topk.py`` (database rows plus noise as queries), or Gaussian."""
    nq = max(int(x) for x in args.queries.split(","))
    if args.data == "clustered":
        from bench_topk import _data

        db, q = _data(argparse.Namespace(rows=args.rows, features=args.features, queries=nq,
                                         chunk_rows=50_000, self_join=False))
    else:
        rng = np.random.default_rng(7)
        db = rng.standard_normal((args.rows, args.features), dtype=np.float32)
        q = rng.standard_normal((nq, args.features), dtype=np.float32)
    np.save(tmp / "db.npy", db)
    np.save(tmp / "q.npy", q)
    return tmp


def _in_fresh_process(way: str, data: Path, args) -> dict:
    env = {**os.environ, "DASK_VECOPS_NUM_THREADS": str(args.threads)}
    if way in WAYS:
        env["DASK_VECOPS_ISA"] = WAYS[way]
    elif way == "baseline":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.baseline, env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", str(data), way, "--queries", args.queries,
           "--k", str(args.k)] + (["--baseline", args.baseline] if args.baseline else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _measure(data: Path, args) -> dict:
    """Best of three first and repeat calls per batch size, and a digest of the results."""
    from dask_vecops import _rust, ufuncs

    way = args.child[1]
    if way in WAYS:
        assert ufuncs.kernel_isa() == WAYS[way], (ufuncs.kernel_isa(), way)
    else:  # the build asked for, not this checkout's where the baseline was wanted
        assert (way == "baseline") == str(Path(_rust.__file__)).startswith(
            str(Path(args.baseline).resolve())), (_rust.__file__, way)
    db, q_all = np.load(data / "db.npy"), np.load(data / "q.npy")
    out = {}
    for nq in (int(x) for x in args.queries.split(",")):
        q = np.ascontiguousarray(q_all[:nq])
        times = {"first": [], "repeat": []}
        for _ in range(3):
            time.sleep(0.3)  # BLAS and OpenMP threads spin after a call
            start = time.perf_counter()
            s, i, norms = _rust.topk_block(q, db, args.k, "cosine")
            times["first"].append(time.perf_counter() - start)
            time.sleep(0.3)
            start = time.perf_counter()
            s2, i2, _ = _rust.topk_block(q, db, args.k, "cosine", None, norms)
            times["repeat"].append(time.perf_counter() - start)
        digest = hashlib.sha1(s.tobytes() + i.tobytes() + s2.tobytes() + norms.tobytes())
        out[nq] = {k: min(v) for k, v in times.items()} | {"digest": digest.hexdigest()}
    return out


def _report(runs: dict, args) -> None:
    old, new = list(runs)[::-1] if not args.baseline else list(runs)
    print(f"{args.rows:,} x {args.features} float32, {args.data}, cosine, k={args.k}, "
          f"{args.threads} kernel threads, {args.rounds} rounds (best of 3 calls per process)")
    print()
    print(f"| queries | call | {_label(old)} ms | {_label(new)} ms | "
          f"{old} / {new} (median of rounds) |")
    print("|---|---|---|---|---|")
    for nq in runs[new][0]:
        digests = {run[nq]["digest"] for way in runs for run in runs[way]}
        assert len(digests) == 1, f"{nq} queries: the two ways differ"
        for call in ("first", "repeat"):
            before = [run[nq][call] for run in runs[old]]
            after = [run[nq][call] for run in runs[new]]
            ratio = statistics.median(a / b for a, b in zip(before, after))
            print(f"| {nq} | {call} | {min(before) * 1e3:.1f} | {min(after) * 1e3:.1f} | "
                  f"{ratio:.2f}x |")


def _label(way: str) -> str:
    return {"plain": "plain avx512", "bf16": "bf16 filter"}.get(way, way)


if __name__ == "__main__":
    main()
