"""What bounds a search of few queries: reads of the database against the kernels, one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_bounds.py [--rounds 30]

Case 2 of the fast-top-k issue asks a search of 1 and 16 queries on 1,000,000 x 384 float32 to
take at most 1.5x "the time to read the database once from memory". This script measures that
read several ways (NumPy's matrix-vector product and column sums, a Numba-compiled sum, a C
loop), our Rust kernel alone (`topk_block`, two threads each taking five 100,000-row chunks in
turn, as Dask's pair tasks do), the whole search through `cosine_topk`, and lower bounds from
`benchmarks/bounds_rows16.c`: the least work a 16-query search can do per row in float32, in
bfloat16 and in int8, with and without the exact float64 norms a first search makes. Every
contender runs once a round, rounds take turns, and each keeps its best time; the memory of this
VM has slow spells (reads half again as long), and a round counts as fast when its fastest read
is within 15% of the fastest of all. The C loops are compiled here (`cc -O3 -march=native`) and
skipped without a C compiler or AVX-512 (bfloat16: AVX512_BF16; int8: AVX512_VNNI).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np

import dask_vecops as dv
from dask_vecops import _rust
from dask_vecops.graph._norm_cache import NORM_CACHE

from bench_topk import reads  # this folder is on sys.path when run as a script

ROWS, FEATURES, CHUNK, QUERIES, K = 1_000_000, 384, 100_000, 16, 10
# OpenBLAS's threads spin for a while after a call and would share the cores with what follows.
SETTLE_SECONDS = 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    db = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    q16 = rng.standard_normal((QUERIES, FEATURES), dtype=np.float32)
    # A row equal to a query scores |q|^2, about 4x a random pair's best: a loop that paired
    # the wrong coordinates would miss it, which `_check_bounds` would see.
    db[ROWS // 3] = q16[QUERIES // 2]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        contenders = {**reads(db, pool), **_kernels(db, q16, pool),
                      **_searches(db, q16), **_bounds(db, q16, pool, Path(tmp))}
        rounds = _rounds(contenders, args.rounds)
    _report(rounds)


def _kernels(db, q16, pool):
    """`topk_block` alone: each of two threads takes five chunks in turn, as Dask's tasks do."""
    _rust.set_num_threads(1)
    chunks = [db[i:i + CHUNK] for i in range(0, ROWS, CHUNK)]
    norms = [_rust.topk_block(q16[:1], c, 1, "cosine")[2] for c in chunks]
    halves = np.array_split(np.arange(len(chunks)), 2)

    def both_threads(queries, given):
        def half(ids):
            for i in ids:
                extra = (None, norms[i]) if given else ()
                _rust.topk_block(queries, chunks[i], K, "cosine", *extra)
        return lambda: list(pool.map(half, halves))

    q1 = q16[:1].copy()
    return {"kernel: 1 query, first": both_threads(q1, False),
            "kernel: 1 query, norms given": both_threads(q1, True),
            "kernel: 16 queries, first": both_threads(q16, False),
            "kernel: 16 queries, norms given": both_threads(q16, True)}


def _searches(db, q16):
    x = da.from_array(db, chunks=(CHUNK, -1))

    def search(queries, cached):
        def run():
            if not cached:
                NORM_CACHE.clear()
            dv.cosine_topk(queries, K, database=x)[1].compute(scheduler="threads")
        return run

    search(q16, True)()
    q1 = q16[:1].copy()
    return {"cosine_topk: 1 query, first": search(q1, False),
            "cosine_topk: 1 query, cached": search(q1, True),
            "cosine_topk: 16 queries, first": search(q16, False),
            "cosine_topk: 16 queries, cached": search(q16, True)}


def _bounds(db, q16, pool, tmp):
    lib = _compile(tmp)
    if lib is None:
        return {}
    ptr, size = ctypes.c_void_p, ctypes.c_size_t
    halves = np.array_split(db, 2)
    norms = np.zeros(ROWS)
    norm_halves = np.array_split(norms, 2)
    q_lanes = np.ascontiguousarray(q16.T)
    out = {}
    if hasattr(lib, "read_rows"):
        lib.read_rows.restype = ctypes.c_float
        out["read: C loop, half a thread"] = lambda: list(pool.map(
            lambda h: lib.read_rows(ptr(h.ctypes.data), size(h.size)), halves))

    def rows(fn, q, with_norms):
        fn.restype = ctypes.c_float

        def half(i):
            n = norm_halves[i].ctypes.data if with_norms else None
            return fn(ptr(q.ctypes.data), ptr(halves[i].ctypes.data), size(len(halves[i])),
                      size(FEATURES), ptr(n))
        return lambda: list(pool.map(half, (0, 1)))

    if hasattr(lib, "f32_rows"):
        out["bound: 16 queries, float32"] = rows(lib.f32_rows, q_lanes, False)
        out["bound: 16 queries, float32, exact norms"] = rows(lib.f32_rows, q_lanes, True)
    if hasattr(lib, "f32_pair_rows"):
        q_pairs = _pair_lanes(q16)
        out["bound: 16 queries, float32 pairs"] = rows(lib.f32_pair_rows, q_pairs, False)
        out["bound: 16 queries, float32 pairs, exact norms"] = rows(lib.f32_pair_rows, q_pairs,
                                                                    True)
    if hasattr(lib, "bf16_rows"):
        pairs = _bf16_pairs(q_lanes)
        out["bound: 16 queries, bfloat16"] = rows(lib.bf16_rows, pairs, False)
        out["bound: 16 queries, bfloat16, exact norms"] = rows(lib.bf16_rows, pairs, True)
    if hasattr(lib, "i8_rows"):
        queries = _i8_queries(q16)
        out["bound: 16 queries, int8"] = rows(lib.i8_rows, queries, False)
        out["bound: 16 queries, int8, exact norms"] = rows(lib.i8_rows, queries, True)
    if hasattr(lib, "i8_copy_rows"):
        out["bound: 16 queries, int8, copy made beforehand"] = _copy_rows(lib, db, q16, pool)
    _check_bounds(out, db, q16, norms)
    return out


def _copy_rows(lib, db, q16, pool):
    """`i8_copy_rows` on a byte copy of `db` made here, once, outside the timing."""
    ptr, size = ctypes.c_void_p, ctypes.c_size_t
    lib.i8_copy_rows.restype = ctypes.c_float
    scales = (np.abs(db).max(axis=1) / 127).astype(np.float32)
    copy = np.empty(db.shape, np.uint8)
    for rows in np.array_split(np.arange(len(db)), 20):
        part = db[rows] / np.where(scales[rows] > 0, scales[rows], 1)[:, None]
        copy[rows] = np.rint(part) + 128
    queries = _i8_queries(q16, packed=False)
    halves = np.array_split(np.arange(len(db)), 2)

    def half(rows):
        start = rows[0]
        return lib.i8_copy_rows(ptr(queries.ctypes.data), ptr(copy[start:].ctypes.data),
                                ptr(scales[start:].ctypes.data), size(len(rows)),
                                size(db.shape[1]))
    return lambda: list(pool.map(half, halves))


# How far each bound's largest score may be from NumPy's, as a share of the largest
# |query| x |row|: float32 sums in another order; bfloat16 values carry 8 significant bits;
# int8 rows and queries are each off by half a step of their scale, |x| / 127 at most.
BOUND_TOLERANCE = {"float32": 1e-4, "bfloat16": 2.0 ** -7, "int8": 4 / 127}


def _check_bounds(bounds, db, q16, norms):
    """Each C bound must compute what it is named for: its largest score close to NumPy's and,
    with "exact norms", every row's sum of squares in float64. A bound that computed something
    cheaper would time the wrong work."""
    best = max(float((part @ q16.T).max()) for part in np.array_split(db, 10))
    scale = float(np.linalg.norm(q16, axis=1).max() * np.linalg.norm(db, axis=1).max())
    for name, run in bounds.items():
        if not name.startswith("bound:"):
            continue
        kind = name.split(", ")[1].split()[0]  # "bound: 16 queries, <kind>[ ...][, ...]"
        norms[:] = 0
        got = max(run())
        if abs(got - best) > BOUND_TOLERANCE[kind] * scale:
            raise RuntimeError(f"{name}: largest score {got}, NumPy's {best}")
        if name.endswith("exact norms"):
            for part, sums in zip(np.array_split(db, 10), np.array_split(norms, 10)):
                exact = (part.astype(np.float64) ** 2).sum(axis=1)
                if not np.allclose(sums, exact, rtol=1e-12, atol=0):
                    raise RuntimeError(f"{name}: not the rows' float64 sums of squares")


def _compile(tmp):
    source = Path(__file__).with_name("bounds_rows16.c")
    lib = tmp / "bounds.so"
    cmd = [os.environ.get("CC", "cc"), "-O3", "-march=native", "-shared", "-fPIC",
           "-o", str(lib), str(source)]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"# C bounds skipped: {e}")
        return None
    return ctypes.CDLL(str(lib))


def _pair_lanes(q16):
    """Queries as `f32_pair_rows` takes them: per pair of coordinates two vectors, lane
    2i + c of vector v holding query 8v + i at the pair's coordinate c."""
    halves = q16.reshape(2, 8, -1, 2)  # vector, query in it, pair, coordinate in the pair
    return np.ascontiguousarray(halves.transpose(2, 0, 1, 3))


def _bf16_pairs(q_lanes):
    """Queries (coordinates x 16 lanes) as bfloat16 pairs, coordinate 2j in the low half,
    rounded to nearest even as `vcvtne2ps2bf16` does."""
    bits = q_lanes.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32)
    return np.ascontiguousarray(rounded[0::2] | (rounded[1::2] << 16))


def _i8_queries(q16, packed=True):
    """Queries quantised to signed bytes (one scale a query) as `i8_rows` takes them: four
    coordinates a word, quad-major, one lane a query, in the order the packs leave a row's
    bytes (`packed`, else in coordinate order); then each query's bytes summed times 128
    (int32) and its scale (float32)."""
    scale = (np.abs(q16).max(axis=1) / 127).astype(np.float32)
    i8 = np.rint(q16 / scale[:, None]).astype(np.int8)
    order = _packed_order(q16.shape[1]) if packed else np.arange(q16.shape[1])
    quads = i8[:, order].reshape(len(q16), -1, 4).transpose(1, 0, 2)
    words = np.ascontiguousarray(quads).view(np.uint32)[..., 0]
    correction = (128 * i8.sum(axis=1, dtype=np.int32)).view(np.uint32)
    return np.concatenate([words.ravel(), correction, scale.view(np.uint32)])


def _packed_order(d):
    """The coordinates in the order `i8_rows`'s packs leave them: of each 64, per 128-bit lane,
    four values of each of the four vectors of 16."""
    block = [16 * v + 4 * lane + j for lane in range(4) for v in range(4) for j in range(4)]
    return np.concatenate([b + np.array(block) for b in range(0, d, 64)])


def _rounds(contenders, count):
    rounds = []
    for _ in range(count):
        row = {}
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            row[name] = time.perf_counter() - start
            if "NumPy db @ ones" in name:
                time.sleep(SETTLE_SECONDS)
        rounds.append(row)
    return rounds


def _report(rounds):
    def read(row):
        return min(t for name, t in row.items() if name.startswith("read:"))

    fastest = min(read(r) for r in rounds)
    spells = {"fast": [r for r in rounds if read(r) <= 1.15 * fastest],
              "slow": [r for r in rounds if read(r) > 1.15 * fastest]}
    for spell, rows in spells.items():
        if not rows:
            continue
        best = {name: min(r[name] for r in rows) for name in rows[0]}
        read = min(t for name, t in best.items() if name.startswith("read:"))
        print(f"\n{spell} rounds: {len(rows)} of {len(rounds)}; one read = the fastest read, "
              f"{read * 1e3:.1f} ms\n")
        print("| contender | ms | x one read |")
        print("|---|---:|---:|")
        for name, t in best.items():
            print(f"| {name} | {t * 1e3:.1f} | {t / read:.2f} |")


if __name__ == "__main__":
    main()
