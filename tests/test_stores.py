"""Stores on disk (zarr, .npy), row labels, and results written all or nothing."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops import stores

from . import check_topk, exact_vectors, match_all, random_vectors

zarr = pytest.importorskip("zarr")

ROOT = Path(__file__).resolve().parent.parent
STRING = np.dtypes.StringDType()


def write_zarr(path, x, chunks=None, **kwargs):
    z = zarr.create_array(path, shape=x.shape, dtype=x.dtype, chunks=chunks or x.shape, **kwargs)
    z[...] = x
    return z


def write_group(path, x, labels=None, chunks=None, name="embeddings"):
    group = zarr.open_group(path, mode="w")
    group.create_array(name, shape=x.shape, dtype=x.dtype, chunks=chunks or x.shape)[...] = x
    if labels is not None:
        dtype = str if labels.dtype.kind in "UT" else labels.dtype
        group.create_array("labels", shape=labels.shape, dtype=dtype, chunks=(7,))[...] = labels
    return group


def names(n):
    return np.array([f"row-{i}" for i in range(n)], dtype=STRING)


def write_store(path, db, q, chunks):
    """A database group with labels at ``path/db.zarr`` and the queries at ``path/q.npy``."""
    write_group(path / "db.zarr", db, labels=names(len(db)), chunks=chunks)
    np.save(path / "q.npy", q)


@pytest.fixture
def data(rng):
    return random_vectors(rng, 9, 6, np.float32), random_vectors(rng, 130, 6, np.float32)


# -- reading stores ---------------------------------------------------------------------------------


def test_zarr_round_trip(tmp_path, data, metric, backend):
    q, db = data
    write_zarr(tmp_path / "db.zarr", db, chunks=(40, 6))
    np.save(tmp_path / "q.npy", q)
    found = stores.search(tmp_path / "db.zarr", tmp_path / "q.npy", 7, metric=metric, backend=backend)
    assert set(found) == {"scores", "ids"}
    check_topk((found["scores"], found["ids"]), q, db, 7, metric)


def test_npy_round_trip(tmp_path, data, metric):
    q, db = data
    np.save(tmp_path / "db.npy", db)
    write_zarr(tmp_path / "q.zarr", q)
    result = dv.topk(
        stores.open_array(tmp_path / "q.zarr", name="queries"), 5,
        database=stores.open_array(tmp_path / "db.npy"), metric=metric,
    )
    check_topk(result, q, db, 5, metric)


def test_float64_and_integer_stores(tmp_path, rng):
    db = exact_vectors(rng, 60, 5, "dot").astype(np.int16)
    q = db[:4].astype(np.float64)
    np.save(tmp_path / "db.npy", db)
    write_zarr(tmp_path / "q.zarr", q)
    found = stores.search(tmp_path / "db.npy", tmp_path / "q.zarr", 3, metric="dot")
    check_topk((found["scores"], found["ids"]), q, db, 3, "dot", exact_ids=True)


def test_zarr_keeps_stored_chunks(tmp_path, rng):
    x = random_vectors(rng, 100, 4, np.float32)
    write_zarr(tmp_path / "a.zarr", x, chunks=(30, 4))
    with dask.config.set({"array.chunk-size": "1KiB"}):  # 30 rows (480 B) are not tiny here
        opened = stores.open_array(tmp_path / "a.zarr")
    assert opened.chunks == ((30, 30, 30, 10), (4,))
    np.testing.assert_array_equal(opened.compute(), x)


def test_zarr_merges_tiny_chunks_along_rows(tmp_path, rng):
    x = random_vectors(rng, 100, 4, np.float32)
    write_zarr(tmp_path / "a.zarr", x, chunks=(5, 2))  # the features are split too
    with dask.config.set({"array.chunk-size": "1KiB"}):  # 5 rows are 80 B: 12 of them make 960 B
        opened = stores.open_array(tmp_path / "a.zarr")
    assert opened.chunks == ((60, 40), (4,))
    assert len(stores.open_array(tmp_path / "a.zarr").chunks[0]) == 1  # 128 MiB by default
    np.testing.assert_array_equal(opened.compute(), x)


def test_zarr_sharded_store_read_by_shard(tmp_path, rng):
    x = random_vectors(rng, 100, 4, np.float32)
    write_zarr(tmp_path / "a.zarr", x, chunks=(10, 4), shards=(50, 4))
    with dask.config.set({"array.chunk-size": "1KiB"}):
        assert stores.open_array(tmp_path / "a.zarr").chunks == ((50, 50), (4,))


def test_npy_chunked_by_dask_chunk_size(tmp_path, rng):
    x = random_vectors(rng, 1000, 8, np.float32)
    np.save(tmp_path / "x.npy", x)
    with dask.config.set({"array.chunk-size": "8KiB"}):
        opened = stores.open_array(tmp_path / "x.npy")
    assert opened.numblocks == (4, 1) and opened.chunks[0][0] == 256
    np.testing.assert_array_equal(opened.compute(), x)


def test_npy_graph_carries_the_path_not_the_data(tmp_path, rng):
    # A memory map pickles all its data; the graph must stay small for a cluster.
    np.save(tmp_path / "x.npy", random_vectors(rng, 20_000, 16, np.float32))
    graph = dict(stores.open_array(tmp_path / "x.npy").__dask_graph__())
    assert len(pickle.dumps(graph)) < 10_000


def test_open_array_names_are_deterministic(tmp_path, rng):
    x = random_vectors(rng, 20, 3, np.float32)
    np.save(tmp_path / "x.npy", x)
    write_zarr(tmp_path / "x.zarr", x)
    for path in ("x.npy", "x.zarr"):
        assert stores.open_array(tmp_path / path).name == stores.open_array(tmp_path / path).name
    first = stores.open_array(tmp_path / "x.npy").name
    time.sleep(0.01)
    np.save(tmp_path / "x.npy", x + 1)  # a new version of the file is new data
    assert stores.open_array(tmp_path / "x.npy").name != first


def test_group_picks_embeddings_or_its_only_matrix(tmp_path, rng):
    x = random_vectors(rng, 20, 3, np.float32)
    write_group(tmp_path / "g.zarr", x, labels=names(20), name="vectors")
    np.testing.assert_array_equal(stores.open_array(tmp_path / "g.zarr").compute(), x)
    np.testing.assert_array_equal(stores.open_array(tmp_path / "g.zarr" / "vectors").compute(), x)


# -- one pass: each database chunk read once, and let go ---------------------------------------------


class CountingRows:
    """An array-like database that counts its reads and how many read chunks are alive at once."""

    def __init__(self, x):
        self.x, self.shape, self.dtype, self.ndim = x, x.shape, x.dtype, x.ndim
        self.lock = threading.Lock()
        self.reads, self.alive, self.most_alive = 0, [], 0

    def __getitem__(self, key):
        chunk = np.array(self.x[key])
        with self.lock:
            self.reads += chunk.shape[0] > 0
            self.alive = [ref for ref in self.alive if ref() is not None] + [weakref.ref(chunk)]
            self.most_alive = max(self.most_alive, len(self.alive))
        time.sleep(0.001)  # let the other threads run ahead if the order allows it
        return chunk


def test_each_database_chunk_is_read_once_and_let_go(rng):
    counting = CountingRows(random_vectors(rng, 20_000, 8, np.float32))
    db = da.from_array(counting, chunks=(100, 8))
    scores, ids = dv.cosine_topk(random_vectors(rng, 40, 8, np.float32), 5, database=db)
    dask.compute(scores, ids, scheduler="threads", num_workers=2)
    assert counting.reads == db.numblocks[0]
    assert counting.most_alive <= 6, counting.most_alive


def test_several_query_batches_do_not_hold_the_database(rng):
    counting = CountingRows(random_vectors(rng, 20_000, 8, np.float32))
    db = da.from_array(counting, chunks=(100, 8))
    with dask.config.set({"vecops.memory-budget": "16KiB"}):  # 2,000 queries in several batches
        scores, ids = dv.cosine_topk(random_vectors(rng, 2000, 8, np.float32), 5, database=db)
    assert scores.numblocks[0] >= 4
    dask.compute(scores, ids, scheduler="threads", num_workers=2)
    assert counting.reads == scores.numblocks[0] * db.numblocks[0]  # once per batch
    assert counting.most_alive <= 16, counting.most_alive


# -- labels ---------------------------------------------------------------------------------------


def test_labels_from_the_database_group(tmp_path, data):
    q, db = data
    write_store(tmp_path, db, q, chunks=(50, 6))
    found = stores.search(tmp_path / "db.zarr", tmp_path / "q.npy", 4)
    ids, labels = dask.compute(found["ids"], found["labels"])
    assert labels.dtype == STRING and labels.shape == ids.shape
    np.testing.assert_array_equal(labels, names(len(db))[ids])


@pytest.mark.parametrize("kind", ["npy", "text", "zarr", "int-npy"])
def test_labels_given_by_path(tmp_path, data, kind):
    q, db = data
    np.save(tmp_path / "db.npy", db)
    np.save(tmp_path / "q.npy", q)
    expected = np.arange(len(db)) * 10 if kind == "int-npy" else names(len(db))
    path = tmp_path / {"npy": "l.npy", "int-npy": "l.npy", "text": "l.txt", "zarr": "l.zarr"}[kind]
    if kind == "text":
        path.write_text("\n".join(expected.tolist()) + "\n", encoding="utf-8")
    elif kind == "zarr":
        zarr.create_array(path, shape=expected.shape, dtype=str, chunks=(9,))[...] = expected
    else:
        np.save(path, expected.astype("U10") if kind == "npy" else expected)
    found = stores.search(tmp_path / "db.npy", tmp_path / "q.npy", 3, labels=path)
    ids, labels = dask.compute(found["ids"], found["labels"])
    np.testing.assert_array_equal(labels, expected[ids])


def test_missing_neighbours_get_empty_labels(tmp_path, data):
    q, db = data
    q[2, 1] = np.nan  # with nan_policy="omit" this query finds nothing: ids -1
    write_group(tmp_path / "db.zarr", db, labels=names(len(db)))
    np.save(tmp_path / "q.npy", q)
    found = stores.search(tmp_path / "db.zarr", tmp_path / "q.npy", 3, nan_policy="omit")
    ids, labels = dask.compute(found["ids"], found["labels"])
    np.testing.assert_array_equal(ids[2], -1)
    np.testing.assert_array_equal(labels[2], ["", "", ""])
    np.testing.assert_array_equal(labels[0], names(len(db))[ids[0]])


def test_labels_missing_values_by_dtype():
    ids = np.array([[1, -1]])
    assert stores.Labels(np.array([5, 6], dtype=np.uint16)).take(ids).tolist() == [[6, -1]]
    taken = stores.Labels(np.array([0.5, 1.5])).take(ids)
    assert taken[0, 0] == 1.5 and np.isnan(taken[0, 1])
    assert stores.Labels(np.array(["a", "b"], dtype=object)).take(ids).tolist() == [["b", ""]]


def test_labels_read_only_what_is_returned(tmp_path):
    z = zarr.create_array(tmp_path / "l.zarr", shape=(1000,), dtype=str, chunks=(10,))
    z[...] = names(1000)
    labels = stores.open_labels(tmp_path / "l.zarr")
    np.testing.assert_array_equal(labels.take(np.array([[999, 3], [3, 500]])),
                                  [["row-999", "row-3"], ["row-3", "row-500"]])


# -- errors ---------------------------------------------------------------------------------------


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match=match_all("database", "nothing.zarr", "not exist")):
        stores.open_array(tmp_path / "nothing.zarr")
    np.save(tmp_path / "db.npy", np.ones((3, 2)))
    with pytest.raises(FileNotFoundError, match=match_all("queries", "q.npy", "not exist")):
        stores.search(tmp_path / "db.npy", tmp_path / "q.npy", 1)


@pytest.mark.parametrize(
    "make, parts",
    [
        (lambda p: p.mkdir(), ("neither a zarr store", ".npy")),
        (lambda p: p.write_text("a,b\n"), ("neither a zarr store", ".npy")),
        (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{oops")), ("not a readable zarr",)),
        (lambda p: write_zarr(p, np.ones(5)), ("1-D", "2-D")),
        (lambda p: np.save(p.with_suffix(".npy"), np.ones((2, 3, 4))), ("3-D", "2-D")),
        (lambda p: write_zarr(p, np.array([["a", "b"]], dtype=STRING)), ("real numbers",)),
        (lambda p: np.save(p.with_suffix(".npy"), np.ones((2, 2), dtype="c16")), ("complex128",)),
        (lambda p: np.save(p.with_suffix(".npy"), np.array([[1, "a"]], dtype=object),
                           allow_pickle=True), ("not a readable .npy",)),
        (lambda p: write_group(p, np.ones((2, 2)), name="a").create_array("b", data=np.ones((2, 2))),
         ("without an 'embeddings' array", "a, b")),
        (lambda p: zarr.open_group(p, mode="w"), ("without an 'embeddings' array", "no arrays")),
    ],
    ids=["empty-dir", "text-file", "bad-json", "1-d", "3-d-npy", "strings", "complex", "objects",
         "two-matrices", "empty-group"],
)
def test_malformed_store(tmp_path, make, parts):
    path = tmp_path / "store"
    make(path)
    if not path.exists():
        path = path.with_suffix(".npy")
    with pytest.raises(ValueError, match=match_all("database", str(path), *parts)):
        stores.open_array(path)


def test_mismatched_dimensions(tmp_path):
    np.save(tmp_path / "db.npy", np.ones((10, 4), dtype=np.float32))
    np.save(tmp_path / "q.npy", np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=match_all("q.npy", "db.npy", 3, 4, "features")):
        stores.search(tmp_path / "db.npy", tmp_path / "q.npy", 1)


def test_bad_labels(tmp_path):
    np.save(tmp_path / "db.npy", np.ones((4, 2)))
    np.save(tmp_path / "q.npy", np.ones((1, 2)))
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=match_all("short.txt", "2 labels", "4 rows")):
        stores.search(tmp_path / "db.npy", tmp_path / "q.npy", 1, labels=tmp_path / "short.txt")
    np.save(tmp_path / "flat.npy", np.ones((4, 2)))
    with pytest.raises(ValueError, match=match_all("flat.npy", "1-D")):
        stores.open_labels(tmp_path / "flat.npy")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=match_all("latin1.txt", "UTF-8")):
        stores.open_labels(tmp_path / "latin1.txt")
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    with pytest.raises(ValueError, match=match_all("g.zarr", "without a 'labels' array")):
        stores.open_labels(tmp_path / "g.zarr")
    with pytest.raises(FileNotFoundError, match=match_all("labels", "none.txt")):
        stores.open_labels(tmp_path / "none.txt")


# -- writing results ------------------------------------------------------------------------------


def test_write_and_open_results(tmp_path, data):
    q, db = data
    write_group(tmp_path / "db.zarr", db, labels=names(len(db)), chunks=(32, 6))
    np.save(tmp_path / "q.npy", q)
    with dask.config.set({"vecops.memory-budget": 6 * 4 * 4}):  # 4 queries a batch: irregular
        found = stores.search(tmp_path / "db.zarr", tmp_path / "q.npy", 4)
    out = stores.write_results(tmp_path / "out.zarr", found, attrs={"k": 4})
    assert out == tmp_path / "out.zarr"
    assert zarr.open_group(out, mode="r").attrs["dask_vecops"] == {"complete": True, "k": 4}
    written = dask.compute(stores.open_results(out))[0]
    expected = dask.compute(found)[0]
    assert set(written) == {"scores", "ids", "labels"}
    for name in written:
        np.testing.assert_array_equal(written[name], expected[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.zarr", "out.zarr", "q.npy"]


def test_output_exists(tmp_path):
    ids = da.arange(4, chunks=2).reshape(2, 2)
    stores.write_results(tmp_path / "out.zarr", {"ids": ids})
    with pytest.raises(FileExistsError, match=match_all("out.zarr", "already exists", "overwrite")):
        stores.write_results(tmp_path / "out.zarr", {"ids": ids + 1})
    stores.write_results(tmp_path / "out.zarr", {"ids": ids + 1}, overwrite=True)
    np.testing.assert_array_equal(stores.open_results(tmp_path / "out.zarr")["ids"], [[1, 2], [3, 4]])
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def _fail_on_block(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 3:
        raise RuntimeError("disk full")
    return block


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_mid_write_leaves_nothing(tmp_path, overwrite):
    if overwrite:
        stores.write_results(tmp_path / "out.zarr", {"ids": da.zeros((2, 2), chunks=1)})
    ids = da.arange(60, chunks=6).reshape(10, 6).map_blocks(_fail_on_block, dtype=int)
    with pytest.raises(RuntimeError, match="disk full"):
        stores.write_results(tmp_path / "out.zarr", {"ids": ids}, overwrite=overwrite)
    assert_nothing_looks_complete(tmp_path, "out.zarr")
    if overwrite:  # the old complete results are untouched
        assert stores.open_results(tmp_path / "out.zarr")["ids"].shape == (2, 2)
    else:
        assert not (tmp_path / "out.zarr").exists()


def assert_nothing_looks_complete(directory, name):
    """Besides ``name`` itself, at most hidden temporaries that open_results refuses.

    The temporary directory is removed on failure, but tasks still running in other threads
    may write a chunk into it afterwards.
    """
    for path in directory.iterdir():
        if path.name != name:
            assert path.name.startswith(f".{name}.incomplete-"), path
            with pytest.raises(ValueError, match="not a complete"):
                stores.open_results(path)


def test_failure_at_the_rename_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(stores.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stores.write_results(tmp_path / "out.zarr", {"ids": da.ones((4, 2), chunks=2)})
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, dask.array as da
    from dask_vecops import stores

    def slow(block):
        time.sleep(0.05)
        return block

    ids = da.arange(4000, chunks=100).reshape(200, 20).map_blocks(slow, dtype=int)
    stores.write_results(sys.argv[1], {"ids": ids})
    """
)


def test_killed_writer_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "out.zarr"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.zarr.incomplete-*/ids/c/*")):  # chunks being written
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never started"
            time.sleep(0.02)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait()
    assert not out.exists()
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".out.zarr.incomplete-")
    with pytest.raises(ValueError, match=match_all(leftover.name, "not a complete")):
        stores.open_results(leftover)
    assert_nothing_looks_complete(tmp_path, "out.zarr")


def test_open_results_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="out.zarr"):
        stores.open_results(tmp_path / "out.zarr")
