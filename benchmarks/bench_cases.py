"""The fast-kernel issue's benchmark cases, each in fresh processes, as Markdown for RESULTS.md.

    python benchmarks/bench_cases.py [--cases 1 2 3 4 5] > /tmp/cases.md

Run it with this machine's environment as it is: every case runs bench_topk.py once with the
OpenBLAS variables unset (all contenders; NumPy's best kernels) and once more with them as set
here for faiss-cpu alone, whose own OpenBLAS build is faster with them. Each table ends with the
issue's targets for that case and whether this run met them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("bench_topk.py")
OURS, OURS_CACHED = "dask-vecops rust", "dask-vecops rust, norms cached"
FAISS = "faiss-cpu IndexFlatIP"
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

CASES = {
    "1": [("1,000 queries, k=10", ["--queries", "1000"], None)],
    "2": [
        ("1 query, k=10", ["--queries", "1", "--repeat", "9"], None),
        ("16 queries, k=10", ["--queries", "16", "--repeat", "9"], None),
    ],
    "3": [("self-join, k=10", ["--rows", "100000", "--self-join", "--chunk-rows", "10000"],
           ["rust", "faiss", "numpy brute", "recipe"])],
    "4": [("1,000 queries, k=1,000", ["-k", "1000"], ["rust", "faiss"])],
    "5": [
        ("d=64, 1,000 queries, k=10", ["--features", "64", "--rows", "2000000"], ["rust", "faiss"]),
        ("d=768, 1,000 queries, k=10", ["--features", "768", "--rows", "500000"], ["rust", "faiss"]),
        ("d=1536, 1,000 queries, k=10", ["--features", "1536", "--rows", "250000"], ["rust", "faiss"]),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    for number in parser.parse_args().cases:
        for title, options, only in CASES[number]:
            result = _run(options, only)
            print(_markdown(number, title, options, only, result), flush=True)


def _run(options, only) -> dict:
    unset = {k: v for k, v in os.environ.items() if k not in BLAS_VARIABLES}
    result = _bench(options + (["--only", *only] if only else []), unset)
    with_variables = _bench(options + ["--only", "faiss"], dict(os.environ))
    for row in with_variables["rows"]:
        result["rows"].append({**row, "name": row["name"] + " (OpenBLAS variables set)"})
    return result


def _bench(options, env) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *options, "--json"], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _markdown(number, title, options, only, result) -> str:
    case, rows = result["case"], {r["name"]: r for r in result["rows"]}
    queries = case["rows"] if case["self_join"] else case["queries"]
    flops = 2 * queries * case["rows"] * case["features"]
    rate, read = result["sgemm_gflops"], result["read_seconds"]
    ours = rows[OURS]["seconds"]
    command = " ".join(["bench_topk.py", *options, *(["--only", *only] if only else [])])
    lines = [
        f"### Case {number}: {case['rows']:,} x {case['features']} float32, {title}",
        "",
        f"`{command}` (via `bench_cases.py --cases {number}`); NumPy sgemm {rate:.0f} GFLOP/s, "
        f"one read of the database {read * 1e3:.1f} ms",
        "",
        "| contender | seconds | effective GFLOP/s | % of sgemm | x one read | time / ours | recall@k |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        gflops = flops / r["seconds"] / 1e9
        lines.append(f"| {name} | {r['seconds']:.3f} | {gflops:.1f} | {100 * gflops / rate:.0f}% | "
                     f"{r['seconds'] / read:.1f} | {r['seconds'] / ours:.2f} | {r['recall']:.3f} |")
    return "\n".join(lines + ["", *_targets(number, rows, rate, read, flops), ""])


def _targets(number, rows, rate, read, flops) -> list[str]:
    ours = rows[OURS]["seconds"]
    faiss = min(r["seconds"] for name, r in rows.items() if name.startswith(FAISS))
    peers = {n: r["seconds"] for n, r in rows.items() if not n.startswith("dask-vecops")}
    share = flops / ours / 1e9 / rate
    checks = []
    if number in ("1", "3"):
        checks.append((f"at least 70% of the sgemm rate: {100 * share:.0f}%", share >= 0.7))
    if number == "1":
        for peer, factor in (("Dask recipe", 2), ("scikit-learn brute", 3)):
            if peer in peers:
                checks.append((f"{factor}x faster than {peer}: {peers[peer] / ours:.2f}x",
                               peers[peer] >= factor * ours))
        checks.append((f"1.5x faster than faiss-cpu's better run: {faiss / ours:.2f}x", faiss >= 1.5 * ours))
    elif number == "2":
        fastest = min(peers.values())
        for name in (OURS, OURS_CACHED):
            t = rows[name]["seconds"]
            checks.append((f"{name}: within 1.5x of one read: {t / read:.1f}x", t <= 1.5 * read))
            checks.append((f"{name}: no slower than the fastest peer: {t / fastest:.2f}x", t <= fastest))
    else:
        checks.append((f"faster than faiss-cpu's better run: {faiss / ours:.2f}x", faiss > ours))
    return [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks]


if __name__ == "__main__":
    main()
