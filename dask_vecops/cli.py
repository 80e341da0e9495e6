"""The ``dask-vecops`` command (also ``python -m dask_vecops``).

``dask-vecops topk`` searches a database store (zarr or ``.npy``, larger than memory if need be)
for the queries of another and writes scores, ids and labels to a zarr store, all or nothing
(:mod:`dask_vecops.stores`), on the local threaded scheduler or on a cluster (``--scheduler``).

``dask-vecops demo`` runs the main job on an embedded default: a local Dask scheduler, generated
clustered embeddings, :func:`dask_vecops.cosine_topk` with a progress bar, and a check of a sample
of rows against a float64 NumPy reference.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np

from . import api, stores
from ._errors import BackendUnavailableError
from ._protocol import METRICS
from .datasets import clustered_embeddings

# Failures the user can fix (a path, a size, an address, the data): one line on stderr, no
# traceback. NonFiniteError is a ValueError; other exceptions are bugs and keep their traceback.
_USER_ERRORS = (OSError, ValueError, BackendUnavailableError)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dask-vecops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="search generated embeddings on a local scheduler")
    demo.add_argument("--rows", type=int, default=200_000, help="database rows (default 200,000)")
    demo.add_argument("--features", type=int, default=384, help="features per row (default 384)")
    demo.add_argument("--queries", type=int, default=1_000, help="query rows (default 1,000)")
    demo.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    demo.add_argument("--chunk-rows", type=int, default=50_000, help="rows per database chunk")
    demo.add_argument("--backend", default=None, help="auto | rust | scipy | numpy")
    demo.add_argument("--check-rows", type=int, default=20, help="rows checked against float64")
    demo.set_defaults(run=_demo)
    _add_topk(commands)
    info = commands.add_parser(
        "info", help="versions, CPU and GPU state, backends and the effective configuration",
        description="Versions, the CPU's SIMD features, the GPU / CUDA state, each backend's "
        "availability with its reason, and each vecops.* setting with where it came from.",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=_info)
    bench = commands.add_parser(
        "bench", help="time every available backend; optionally calibrate backend='auto'",
        description="Time each available backend on each operation over a grid of block shapes "
        "and dtypes, print a table, and optionally save the fastest backend per operation, "
        "dtype and block-shape bucket as vecops.calibration in Dask's config directory.",
    )
    bench.add_argument("--quick", action="store_true", help="a tiny grid (a few seconds)")
    bench.add_argument("--json", metavar="FILE", help="also write the timings as JSON to FILE")
    bench.add_argument("--save", action="store_true",
                       help="write vecops-calibration.yaml to Dask's config directory "
                       "(dask.config.PATH; DASK_CONFIG sets it), which backend='auto' then follows")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=_bench)
    return parser


def _info(args) -> int:
    import json

    from . import info

    report = info.collect()
    print(json.dumps(report, indent=2, default=str) if args.json else info.format_text(report))
    return 0


def _bench(args) -> int:
    import json

    from . import bench

    results = bench.run(quick=args.quick, progress=not args.quiet)
    print(bench.format_table(results))
    table = bench.calibration(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "calibration": table}, f, indent=2)
        print(f"wrote the timings to {args.json}")
    if args.save:
        print(f"wrote the calibration to {bench.save(table)}")
    return 0


def _add_topk(commands) -> None:
    topk = commands.add_parser(
        "topk", help="exact top-k of query embeddings in a database store, written to a zarr store",
        description="Search every row of --queries among the rows of --database (zarr or .npy "
        "stores, streamed chunk by chunk) and write scores, ids and labels to the zarr group "
        "--out, which appears only once complete.",
    )
    topk.add_argument("--database", required=True, metavar="STORE", help="zarr array/group or .npy")
    topk.add_argument("--queries", required=True, metavar="FILE", help="zarr array/group or .npy")
    topk.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    topk.add_argument("--out", required=True, metavar="STORE", help="zarr group to create")
    topk.add_argument("--metric", default="cosine", choices=METRICS, help="default cosine")
    topk.add_argument("--labels", metavar="PATH",
                      help="row labels: zarr, .npy or text (one per line); default: the "
                      "database group's 'labels' array, if any")
    topk.add_argument("--backend", default=None, help="auto | rust | scipy | numpy")
    topk.add_argument("--scheduler", metavar="ADDRESS",
                      help="a distributed scheduler (tcp://host:8786); default: local threads")
    topk.add_argument("--connect-timeout", default="5s", help="for --scheduler (default 5s)")
    topk.add_argument("--memory-limit", type=_size, metavar="SIZE",
                      help="the largest query batch (vecops.memory-budget), e.g. 2GiB")
    topk.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    topk.add_argument("--quiet", action="store_true", help="no progress bar")
    topk.set_defaults(run=_topk)


def _size(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2GiB or 500MB)") from error
    return text


def _topk(args) -> int:
    """The topk command: search, write all or nothing; a user's error is one line on stderr."""
    try:
        with _compute_on(args.scheduler, args.connect_timeout, args.quiet) as compute:
            out = _search_and_write(args, compute)
    except _USER_ERRORS as error:
        print(f"dask-vecops topk: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dask-vecops topk: interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    print(f"wrote the {args.k} best rows of {args.database} for each query of {args.queries} "
          f"to {out}")
    return 0


def _search_and_write(args, compute):
    import dask

    budget = {"vecops.memory-budget": args.memory_limit} if args.memory_limit else {}
    with dask.config.set(budget):
        found = stores.search(args.database, args.queries, args.k, labels=args.labels,
                              metric=args.metric, backend=args.backend)
    attrs = {"k": args.k, "metric": args.metric, "database": str(args.database),
             "queries": str(args.queries)}
    return stores.write_results(args.out, found, overwrite=args.overwrite, attrs=attrs,
                                compute=compute)


@contextlib.contextmanager
def _compute_on(address, timeout, quiet):
    """A compute function: local threads with Dask's ProgressBar, or a cluster with its progress.

    Progress goes to stderr. The cluster's client is the default one while the graph is built,
    so that query batching sees the cluster's threads.
    """
    if address is None:
        yield _local_compute(quiet)
        return
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except OSError as error:
        message = f"cannot reach the Dask scheduler at {address} within {timeout}: {error}"
        raise OSError(message) from error
    with client:
        yield lambda *writes: _cluster_compute(client, writes, quiet)


def _local_compute(quiet):
    import dask
    from dask.diagnostics import ProgressBar

    def compute(*writes):
        with contextlib.nullcontext() if quiet else ProgressBar(out=sys.stderr):
            return dask.compute(*writes, scheduler="threads")

    return compute


def _cluster_compute(client, writes, quiet):
    from distributed import progress

    futures = client.compute(list(writes))
    if not quiet:
        with contextlib.redirect_stdout(sys.stderr):
            progress(futures)
        print(file=sys.stderr)
    return client.gather(futures)


def _demo(args) -> int:
    import dask
    from dask.diagnostics import ProgressBar

    print(api.backends(), end="\n\n")
    x = clustered_embeddings(args.rows, args.features, chunk_rows=args.chunk_rows)
    picks = np.random.default_rng(1).choice(args.rows, size=args.queries, replace=False)
    print(f"generating {x.shape} {x.dtype} embeddings in {x.numblocks[0]} chunks")
    with ProgressBar():
        x = x.persist()
    queries = x[np.sort(picks)]
    print(f"searching: {args.queries} queries, k={args.k}")
    scores, ids = api.cosine_topk(queries, args.k, database=x, backend=args.backend)
    start = time.perf_counter()
    with ProgressBar():
        scores, ids = dask.compute(scores, ids)
    seconds = time.perf_counter() - start
    _print_neighbours(np.sort(picks), scores, ids)
    print(f"\nsearch wall time {seconds:.2f} s for {args.queries} x {args.rows} x {args.features} "
          f"({2 * args.queries * args.rows * args.features / seconds / 1e9:.1f} GFLOP/s effective)")
    return _check_sample(x.compute(), queries.compute(), scores, ids, args.check_rows)


def _print_neighbours(rows, scores, ids, shown: int = 3) -> None:
    for r in range(min(shown, len(rows))):
        pairs = ", ".join(f"{i}:{s:.3f}" for i, s in zip(ids[r][:5], scores[r][:5]))
        print(f"row {rows[r]:>7} -> {pairs}, ...")


def _check_sample(database, queries, scores, ids, count: int) -> int:
    """Compare ``count`` query rows with a float64 NumPy brute force; 0 when all agree."""
    db = database.astype(np.float64)
    db /= np.maximum(np.linalg.norm(db, axis=1, keepdims=True), np.finfo(float).tiny)
    sample = np.linspace(0, len(queries) - 1, min(count, len(queries))).astype(int)
    bad = 0
    worst = 0.0
    for r in sample:
        q = queries[r].astype(np.float64)
        exact = db @ (q / max(np.linalg.norm(q), np.finfo(float).tiny))
        ref = np.lexsort((np.arange(len(exact)), -exact))[: ids.shape[1]]
        worst = max(worst, float(np.abs(exact[ids[r]] - scores[r]).max()))
        # Ids may differ only between scores tied within float32 rounding.
        if not np.allclose(exact[ids[r]], exact[ref], rtol=0, atol=1e-5):
            bad += 1
    print(f"check: {len(sample) - bad}/{len(sample)} sampled rows match the float64 reference "
          f"(largest score error {worst:.1e})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
