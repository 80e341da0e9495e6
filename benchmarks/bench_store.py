"""Out-of-core top-k on a zarr store larger than a comfortable share of memory, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_store.py

Creates (if missing) an 8,000,000 x 384 float32 zarr v3 store, uncompressed, in chunks of
100,000 rows (about 12 GB) at --path, then runs every case in its own subprocess, so that each
one's peak resident memory (the whole process tree, sampled with psutil, and the child's own
``VmHWM``) is its own:

* read: one pass over the store through zarr and Dask (a no-op per chunk), for each zarr
  ``async.concurrency`` asked for;
* raw: the chunk files read with plain ``readinto`` on a thread per core (the disk or page cache);
* in-memory: our kernel's rate on the first 1,000,000 rows held in memory, 1,000 queries (the
  fast-kernel issue's case 1), to extrapolate the compute of the whole store;
* ours: ``dask_vecops.cosine_topk(q, 10, database=da.from_zarr(path))`` with 1,000 and 10 queries;
* recipe: the hand-written Dask recipe (normalise; q @ db.T; da.argtopk) on the same store.

Then the read, in-memory and search cases again with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
("THP"): zarr reads every chunk into a fresh ~150 MB ``bytes`` object, and on a kernel whose
transparent huge pages are in ``madvise`` mode each of those costs ~37,000 page faults; the
documented glibc tunable makes malloc ask for huge pages instead.

The ratio column is wall / max(one read through zarr, compute at the in-memory rate), both from
the same environment. Every case uses Dask's threaded scheduler with default settings. The first
read may come partly from disk; later ones come from the page cache (24 GiB machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

QUERY_SEED = 7


def main() -> None:
    args = _parser().parse_args()
    if args.case:
        print(json.dumps(_run_case(args)))
        return
    _ensure_store(args)
    if args.create_only:
        return
    rows = [_measure(args, case, extra) for case, extra in _plan(args)]
    print(_environment())
    print(_table(args, rows))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default="/tmp/dvstore", help="the zarr store (created if missing)")
    p.add_argument("--rows", type=int, default=8_000_000)
    p.add_argument("--features", type=int, default=384)
    p.add_argument("--chunk-rows", type=int, default=100_000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--queries", type=int, nargs="*", default=[1000, 10])
    p.add_argument("--concurrency", type=int, nargs="*", default=[32],
                   help="extra zarr async.concurrency values to time the read with")
    p.add_argument("--skip", nargs="*", default=[], help="cases to leave out (read raw memory ours recipe)")
    p.add_argument("--no-thp", action="store_true", help="skip the runs with glibc.malloc.hugetlb=1")
    p.add_argument("--create-only", action="store_true", help="create the store, run nothing")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    return p


# -- the store ------------------------------------------------------------------------------------


def _ensure_store(args) -> None:
    import zarr

    path = Path(args.path)
    if (path / "zarr.json").exists() and zarr.open_array(path, mode="r").attrs.get("complete"):
        print(f"# store {path} exists", flush=True)
        return
    import dask
    import dask.array as da

    from dask_vecops.datasets import clustered_embeddings

    print(f"# creating {args.rows:,} x {args.features} float32 store at {path}", flush=True)
    start = time.perf_counter()
    z = zarr.create_array(path, shape=(args.rows, args.features), chunks=(args.chunk_rows, args.features),
                          dtype="float32", compressors=None, overwrite=True)
    x = clustered_embeddings(args.rows, args.features, chunk_rows=args.chunk_rows)
    with dask.config.set(scheduler="threads"):
        da.store(x, z, lock=False)
    z.attrs["complete"] = True
    print(f"# created in {time.perf_counter() - start:.0f} s", flush=True)


# -- the parent: one subprocess per case, its process tree sampled ----------------------------------


# glibc's documented malloc tunable: large allocations (each chunk zarr reads is a fresh ~150 MB
# bytes object) get transparent huge pages through madvise, so the kernel maps 2 MiB pages
# instead of faulting in 4 KiB ones. It must be set before the process starts.
THP = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def _plan(args):
    """Every case in order: the default environment first, then with THP (huge pages)."""
    plan = [("read", {"first": True}), ("read", {})]
    plan += [("read", {"concurrency": c}) for c in args.concurrency]
    plan += [("raw", {}), ("memory", {"queries": 1000})]
    plan += [(case, {"queries": q}) for case in ("ours", "recipe") for q in args.queries]
    if not args.no_thp:
        plan += [(case, {**extra, "thp": True}) for case, extra in plan
                 if case != "raw" and not extra.get("first")]
    return [(case, extra) for case, extra in plan if case not in args.skip]


def _measure(args, case, extra) -> dict:
    import psutil

    command = [sys.executable, __file__, "--case", case, "--extra", json.dumps(extra),
               "--path", args.path, "-k", str(args.k)]
    env = {**os.environ, **(THP if extra.get("thp") else {})}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    peak = _sample_tree(psutil.Process(child.pid), child)
    out, _ = child.communicate()
    result = json.loads(out.strip().splitlines()[-1])
    result.update(case=case, **extra, tree_peak_gb=peak / 1e9)
    print(f"# {case} {extra}: {result['seconds']:.2f} s, peak {peak / 1e9:.2f} GB", flush=True)
    return result


def _sample_tree(process, child, every: float = 0.05) -> int:
    """Largest sum of resident memory over ``process`` and its descendants while it runs."""
    import psutil

    peak = 0
    while child.poll() is None:
        try:
            members = [process, *process.children(recursive=True)]
            peak = max(peak, sum(m.memory_info().rss for m in members))
        except psutil.Error:
            pass
        time.sleep(every)
    return peak


# -- the cases (in the child) ---------------------------------------------------------------------


def _run_case(args) -> dict:
    import zarr

    extra = json.loads(args.extra)
    if "concurrency" in extra:
        zarr.config.set({"async.concurrency": extra["concurrency"]})
    seconds, info = {"read": _read, "raw": _raw, "memory": _memory, "ours": _ours,
                     "recipe": _recipe}[args.case](args, extra)
    return {"seconds": seconds, "own_peak_gb": _own_peak_bytes() / 1e9, **info}


def _own_peak_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _store(args):
    import dask.array as da

    return da.from_zarr(args.path)


def _queries(args, n: int) -> np.ndarray:
    """Rows of the store with a little noise: realistic queries with true neighbours."""
    import zarr

    z = zarr.open_array(args.path, mode="r")
    rng = np.random.default_rng(QUERY_SEED)
    picks = np.sort(rng.choice(z.shape[0], size=n, replace=False))
    rows = z.oindex[picks, :]
    return rows + 0.05 * rng.standard_normal(rows.shape).astype(np.float32)


def _read(args, extra):
    x = _store(args)
    touched = x.map_blocks(lambda b: np.full((1, 1), b.shape[0], dtype=np.int64),
                           chunks=(1, 1), dtype=np.int64)
    seconds, rows = _timed(lambda: int(touched.sum().compute(scheduler="threads")))
    assert rows == x.shape[0], rows
    return seconds, {"gbytes": x.nbytes / 1e9}


def _raw(args, extra):
    """The chunk files read with readinto into one reused buffer per thread: the floor."""
    from concurrent.futures import ThreadPoolExecutor

    files = sorted(p for p in Path(args.path, "c").rglob("*") if p.is_file())
    size = max(p.stat().st_size for p in files)
    buffers = threading.local()

    def read(path):
        buffers.b = getattr(buffers, "b", None) or bytearray(size)
        with open(path, "rb", buffering=0) as f:
            return f.readinto(buffers.b)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        seconds, sizes = _timed(lambda: sum(pool.map(read, files)))
    return seconds, {"gbytes": sizes / 1e9}


def _memory(args, extra):
    """Our rate on the first 1,000,000 rows, in memory (the fast-kernel issue's case 1)."""
    import dask.array as da
    import zarr

    import dask_vecops as dv
    from dask_vecops.graph._norm_cache import NORM_CACHE

    db = zarr.open_array(args.path, mode="r")[:1_000_000]
    q = _queries(args, extra["queries"])
    x = da.from_array(db, chunks=(100_000, -1))
    dv.cosine_topk(q[:10], args.k, database=x)[1].compute()  # warm up: threads, kernels
    NORM_CACHE.clear()  # the store's run computes its norms too
    seconds, _ = _timed(lambda: dv.cosine_topk(q, args.k, database=x)[1].compute(scheduler="threads"))
    flops = 2 * len(q) * len(db) * db.shape[1]
    return seconds, {"gflops": flops / seconds / 1e9}


def _ours(args, extra):
    import dask

    import dask_vecops as dv

    q = _queries(args, extra["queries"])
    seconds, (scores, ids) = _timed(lambda: dask.compute(
        *dv.cosine_topk(q, args.k, database=_store(args)), scheduler="threads"))
    np.save(_ids_path(args, "ours", extra), ids)
    return seconds, {}


def _recipe(args, extra):
    import dask.array as da

    q = _queries(args, extra["queries"])

    def run():
        x = _store(args)
        xn = x / da.linalg.norm(x, axis=1, keepdims=True)
        qn = da.from_array(q / np.linalg.norm(q, axis=1, keepdims=True))
        return da.argtopk(qn @ xn.T, args.k, axis=1).compute(scheduler="threads")

    seconds, ids = _timed(run)
    np.save(_ids_path(args, "recipe", extra), ids)
    return seconds, {}


def _ids_path(args, case, extra) -> Path:
    return Path(args.path).with_name(f"{Path(args.path).name}-{case}-{extra['queries']}q-ids.npy")


def _environment() -> str:
    """Versions, and which BLAS kernel the recipe's matrix product runs (threadpoolctl)."""
    import dask
    import zarr
    from threadpoolctl import threadpool_info

    blas = [f"{p['internal_api']} {p.get('version')} {p.get('architecture')}" for p in threadpool_info()]
    openblas = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return (f"numpy {np.__version__}, dask {dask.__version__}, zarr {zarr.__version__}, "
            f"{os.cpu_count()} CPUs; BLAS {blas}; {openblas}")


# -- the table ------------------------------------------------------------------------------------


def _table(args, rows) -> str:
    gb = args.rows * args.features * 4 / 1e9
    lines = [
        f"{args.rows:,} x {args.features} float32 zarr store ({gb:.1f} GB, chunks of "
        f"{args.chunk_rows:,} rows, uncompressed), k={args.k}. Bound = max(one read through "
        "zarr+dask, the queries' FLOPs at our in-memory rate), both measured in the same "
        "environment in this run.",
        "",
        "| case | queries | environment | zarr async.concurrency | seconds | GB/s of the store | "
        "peak RSS, tree (GB) | peak RSS, own (GB) | bound (s) | wall / bound |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bound = _bound(args, rows, r)
        name = "read, first pass" if r.get("first") else r["case"]
        rate = f"{r['gflops']:.0f} GFLOP/s" if "gflops" in r else f"{gb / r['seconds']:.2f}"
        lines.append(
            f"| {name} | {r.get('queries', '')} | {'THP' if r.get('thp') else 'default'} | "
            f"{r.get('concurrency', 10)} | {r['seconds']:.2f} | {rate} | {r['tree_peak_gb']:.2f} | "
            f"{r['own_peak_gb']:.2f} | {_fmt(bound)} | {_fmt(bound and r['seconds'] / bound)} |"
        )
    lines += ["", *_agreement(args)]
    return "\n".join(lines)


def _bound(args, rows, r):
    """max(read, compute at the in-memory rate) for a search row of the same environment."""
    if r["case"] not in ("ours", "recipe"):
        return None
    same = [x for x in rows if bool(x.get("thp")) == bool(r.get("thp"))]
    read = min((x["seconds"] for x in same if x["case"] == "read" and not x.get("first")), default=None)
    rate = next((x["gflops"] for x in same if x["case"] == "memory"), None)
    if read is None or rate is None:
        return None
    return max(read, 2 * r["queries"] * args.rows * args.features / (rate * 1e9))


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _agreement(args) -> list[str]:
    """Share of our ids the recipe also returns (both are exact: only ties may differ)."""
    out = []
    for q in args.queries:
        paths = [_ids_path(args, case, {"queries": q}) for case in ("ours", "recipe")]
        if all(p.exists() for p in paths):
            ours, recipe = (np.load(p) for p in paths)
            same = np.mean([len(np.intersect1d(a, b)) / len(a) for a, b in zip(ours, recipe)])
            out.append(f"{q} queries: {100 * same:.2f}% of our ids are among the recipe's")
    return out


if __name__ == "__main__":
    main()
