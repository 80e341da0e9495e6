"""Overhead of metrics recording: dv.cosine_topk, 200,000 x 384 float32 in 10 chunks, 1,000
queries, k=10, rust backend, norm cache off; recording on against a no-op recorder, in
alternating rounds in one process.

    python benchmarks/bench_metrics_overhead.py [ROUNDS] [REPEATS]
"""

import statistics
import sys
import time

import dask
import dask.array as da
import numpy as np

import dask_vecops as dv
from dask_vecops import _metrics

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
rng = np.random.default_rng(0)
db_np = rng.standard_normal((200_000, 384), dtype=np.float32)
db = da.from_array(db_np, chunks=(20_000, 384))
q = rng.standard_normal((1_000, 384), dtype=np.float32)
dask.config.set({"vecops.norm-cache": 0})  # every run does the full scan
real, noop = _metrics.record, (lambda *a: None)

def run(recorder):
    _metrics.record = recorder
    try:
        t = time.perf_counter()
        for _ in range(reps):
            s, i = dv.cosine_topk(q, 10, database=db, backend="rust")
            dask.compute(s, i, scheduler="threads")
        return (time.perf_counter() - t) / reps
    finally:
        _metrics.record = real

run(real); run(noop)  # warm up
on, off = [], []
for r in range(rounds):
    for name, rec, out in (("on", real, on), ("off", noop, off)) if r % 2 == 0 else (("off", noop, off), ("on", real, on)):
        out.append(run(rec))
print("on  (s):", [f"{x:.4f}" for x in on])
print("off (s):", [f"{x:.4f}" for x in off])
mo, mf = statistics.median(on), statistics.median(off)
print(f"median on {mo:.4f}s, off {mf:.4f}s, ratio {mo/mf:.4f} ({(mo/mf-1)*100:+.2f}%)")
print(f"min    on {min(on):.4f}s, off {min(off):.4f}s, ratio {min(on)/min(off):.4f}")
print(dv.metrics())
