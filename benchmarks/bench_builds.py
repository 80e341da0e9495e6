"""Builds of the Rust kernel side by side in one process, split by the memory's spells.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_builds.py \\
        base=/tmp/base/target/release/libdask_vecops_rust.so [more=PATH ...] \\
        [--queries 3,8,16] [--calls given,first] [--rounds 10]

The memory of this VM alternates between spells: in a slow one a read of the database takes
half again as long, and a search of few queries, bound by the memory, with it. A comparison of
two builds run one after the other can land in different spells. This script loads every build
named (`name=path` of a `libdask_vecops_rust.so` built from another commit, e.g. in a
`git worktree` with `CARGO_TARGET_DIR` of its own) and this checkout's (`this`) as modules of
their own in one process, checks that all return the same scores and ids, then times
`topk_block` (cosine, k=10) on 1,000,000 x 384 float32 rows in ten chunks of 100,000, two
threads each taking five in turn (as Dask's pair tasks do, one kernel thread each), every
build once a round, rounds taking turns. A round counts as fast when its one-query search (this
build's, norms given: bound by the memory), timed at both ends of the round, is within 15% of
the fastest; each build's best time is reported per spell. Calls: `given` (the database norms
given: a repeat search), `first` (computed on the way).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dask_vecops import _rust

ROWS, FEATURES, CHUNKS, K = 1_000_000, 384, 10, 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="+", help="name=path of another build's module")
    p.add_argument("--queries", default="3,8,16")
    p.add_argument("--calls", default="given,first")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    builds = {**dict(_load(b) for b in args.builds), "this": _rust}
    for module in builds.values():
        module.set_num_threads(1)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    chunks = np.array_split(db, CHUNKS)
    norms = [_rust.topk_block(db[:1], c, 1, "cosine")[2] for c in chunks]
    queries = {m: rng.standard_normal((m, FEATURES), dtype=np.float32)
               for m in map(int, args.queries.split(","))}
    calls = args.calls.split(",")
    with ThreadPoolExecutor(2) as pool:
        def search(module, q, call):
            def half(ids):
                return [module.topk_block(q, chunks[i], K, "cosine",
                                          *((None, norms[i]) if call == "given" else ()))[:2]
                        for i in ids]
            halves = np.array_split(np.arange(CHUNKS), 2)
            return [r for part in pool.map(half, halves) for r in part]

        _check_same(builds, queries, calls, search)
        rounds = [_round(builds, queries, calls, search) for _ in range(args.rounds)]
    _report(rounds, builds, queries, calls)


def _load(spec: str):
    name, path = spec.split("=", 1)
    loader = importlib.util.spec_from_file_location(f"build_{name}._rust", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return name, module


def _check_same(builds, queries, calls, search):
    for m, q in queries.items():
        for call in calls:
            results = {name: search(module, q, call) for name, module in builds.items()}
            want = results["this"]
            for name, got in results.items():
                same = all(np.array_equal(a, b) for g, w in zip(got, want) for a, b in zip(g, w))
                if not same:
                    raise SystemExit(f"{name} differs from this build: {m} queries, {call}")


def _round(builds, queries, calls, search):
    one = next(iter(queries.values()))[:1]

    def one_query():
        start = time.perf_counter()
        search(_rust, one, "given")
        return time.perf_counter() - start

    row = {"one query": one_query()}
    for m, q in queries.items():
        for call in calls:
            for name, module in builds.items():
                start = time.perf_counter()
                search(module, q, call)
                row[m, call, name] = time.perf_counter() - start
    # The spell at both ends of the round: a round that met a slow one anywhere is slow.
    row["one query"] = max(row["one query"], one_query())
    return row


def _report(rounds, builds, queries, calls):
    fastest = min(r["one query"] for r in rounds)
    for spell in ("fast", "slow"):
        rows = [r for r in rounds if (r["one query"] <= 1.15 * fastest) == (spell == "fast")]
        if not rows:
            continue
        one = min(r["one query"] for r in rows)
        print(f"\n{spell} rounds: {len(rows)} of {len(rounds)}; one query {one * 1e3:.1f} ms\n")
        print("| queries | call | " + " | ".join(f"{n} ms" for n in builds) + " |")
        print("|---:|---|" + "---:|" * len(builds))
        for m in queries:
            for call in calls:
                best = [min(r[m, call, n] for r in rows) * 1e3 for n in builds]
                print(f"| {m} | {call} | " + " | ".join(f"{t:.1f}" for t in best) + " |")


if __name__ == "__main__":
    main()
