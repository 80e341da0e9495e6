"""The ``dask-vecops`` command (also ``python -m dask_vecops``).

``dask-vecops demo`` runs the main job on an embedded default: a local Dask scheduler, generated
clustered embeddings, :func:`dask_vecops.cosine_topk` with a progress bar, and a check of a sample
of rows against a float64 NumPy reference.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import api
from .datasets import clustered_embeddings


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
    return parser


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
