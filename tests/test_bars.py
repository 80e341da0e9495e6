"""The bars a search's pair tasks share in a process (``dask_vecops.graph._bars``)."""

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops.graph._bars import BARS, BarBoard

from . import METRICS, clustered_vectors, requires_rust

NAN = np.nan


@pytest.fixture(autouse=True)
def empty_board():
    BARS.clear()
    yield
    BARS.clear()


@pytest.mark.parametrize(
    ("metric", "want"), [("cosine", [0.5, 0.7, 0.2]), ("euclidean", [0.3, 0.7, 0.2])]
)
def test_publish_keeps_the_better_kth_score_and_ignores_padding(metric, want):
    board = BarBoard()
    board.publish("s", np.array([[0.9, 0.5], [0.8, NAN], [0.4, 0.2]]), metric)
    first = board.get("s")
    board.publish("s", np.array([[0.9, 0.3], [0.9, 0.7], [NAN, NAN]]), metric)
    np.testing.assert_array_equal(board.get("s"), want)
    np.testing.assert_array_equal(first, [0.5, NAN, 0.2])  # replaced, never changed in place


def test_the_board_forgets_the_least_recently_used_search():
    board = BarBoard(searches=2)
    for key in "abc":
        board.publish(key, np.ones((1, 1)), "dot")
        board.get("a")
    assert len(board) == 2 and board.get("b") is None and board.get("a") is not None


def test_results_off_the_host_and_empty_ones_are_not_read():
    board = BarBoard()
    on_a_gpu = type("ndarray", (), {"__module__": "cupy._core.core"})()
    board.publish("gpu", on_a_gpu, "dot")
    board.publish("k0", np.ones((3, 0)), "dot")
    assert len(board) == 0


@requires_rust
@pytest.mark.parametrize("metric", METRICS)
def test_later_pair_tasks_start_from_the_bars_and_results_are_unchanged(metric, rng, monkeypatch):
    from dask_vecops.backends import rust_backend

    x = clustered_vectors(rng, 4000, 16, dtype=np.float32)
    q = x[rng.choice(4000, 40, replace=False)] + np.float32(0.01)
    db = da.from_array(x, chunks=500)
    alone = dask.compute(*dv.topk(q, 7, database=db, metric=metric, backend="rust"),
                         scheduler="sync")
    seen = []
    kernel = rust_backend.topk_block

    def spy(q, db, k, metric, exclude=None, db_norms=None, lazy_norms=False, bars=None):
        seen.append(bars)
        return kernel(q, db, k, metric, exclude, db_norms, lazy_norms, bars)

    monkeypatch.setattr(rust_backend, "topk_block", spy)
    shared = dask.compute(*dv.topk(q, 7, database=db, metric=metric, backend="rust"),
                          scheduler="sync")
    # The first task found none; each later one found a bar for every query.
    assert seen[0] is None and all(b is not None and np.isfinite(b).all() for b in seen[1:])
    assert len(seen) == 8
    for got, want in zip(shared, alone):
        np.testing.assert_array_equal(got, want)
    assert len(BARS) == 0  # the last merge dropped them


class Store:
    """An array-like that Dask reads at compute time (as it reads a zarr or HDF5 store)."""

    def __init__(self, values):
        self.values, self.shape, self.dtype, self.ndim = values, values.shape, values.dtype, 2

    def __getitem__(self, index):
        return self.values[index].copy()


@requires_rust
@pytest.mark.parametrize("again", ["new search", "same graph"])
def test_a_later_computation_does_not_meet_the_bars_of_an_earlier_one(again, rng):
    """The store changed under the same dask name: the second computation, of a new search or
    of the same graph, starts afresh."""
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    db = da.from_array(Store(x), chunks=1000)
    q = x[:5].copy()
    found = dv.topk(q, 4, database=db, metric="dot", backend="rust")
    dask.compute(*found, scheduler="sync")
    # New rows, every score far below the first computation's bars.
    x[:] = rng.standard_normal(x.shape).astype(np.float32) * np.float32(0.001)
    if again == "new search":
        found = dv.topk(q, 4, database=db, metric="dot", backend="rust")
    scores, ids = dask.compute(*found, scheduler="sync")
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(ids, want)
    assert np.isfinite(scores).all()


@requires_rust
def test_omitted_queries_take_no_bars(rng):
    """With ``nan_policy="omit"`` the bars of the kept queries go to the kernel, in order."""
    x = rng.standard_normal((2000, 6)).astype(np.float32)
    q = x[:9].copy()
    q[[2, 5]] = np.nan
    db = da.from_array(x, chunks=400)
    found = dv.topk(q, 3, database=db, metric="euclidean", backend="rust", nan_policy="omit")
    scores, ids = dask.compute(*found, scheduler="sync")
    assert (ids[[2, 5]] == -1).all()
    kept = [0, 1, 3, 4, 6, 7, 8]
    dist = np.linalg.norm(q[kept, None, :].astype(np.float64) - x[None].astype(np.float64), axis=2)
    np.testing.assert_array_equal(ids[kept], np.argsort(dist, axis=1, kind="stable")[:, :3])
