"""Out across a Dask cluster: stores and the CLI on workers in other processes, a scheduler and
workers started with ``dask scheduler`` / ``dask worker``, an asynchronous client, priorities,
a worker killed mid-computation, and kernel threads on workers."""

import asyncio
import functools
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops import cli, stores

from . import check_topk, random_vectors, requires_distributed, requires_rust
from .test_stores import write_store

# distributed can leave sockets for the garbage collector to close (to a killed worker, to a
# scheduler shutting down); the fixture below collects them while these filters apply.
pytestmark = [
    pytest.mark.slow,
    requires_distributed,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket:pytest.PytestUnraisableExceptionWarning"
    ),
]

zarr = pytest.importorskip("zarr")
SchedulerPlugin = pytest.importorskip("distributed.diagnostics.plugin").SchedulerPlugin


@pytest.fixture(scope="module", autouse=True)
def collect_leaked_sockets():
    """Sockets left by earlier tests, and by these clusters once closed, are closed here."""
    gc.collect()
    yield
    gc.collect()


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def store(tmp_path, rng):
    db, q = random_vectors(rng, 500, 8, np.float32), random_vectors(rng, 30, 8, np.float32)
    write_store(tmp_path, db, q, chunks=(60, 8))
    return tmp_path, q, db


def test_stores_on_a_cluster_equal_threaded(client, store, metric):
    tmp_path, q, db = store
    found = stores.search(tmp_path / "db.zarr", tmp_path / "q.npy", 6, metric=metric)
    remote = dask.compute(found, scheduler=client)[0]
    threaded = dask.compute(found, scheduler="threads")[0]
    check_topk((found["scores"], found["ids"]), q, db, 6, metric, scheduler=client)
    for name in ("scores", "ids", "labels"):
        np.testing.assert_array_equal(remote[name], threaded[name])


def test_cli_on_a_cluster(cluster, store, capsys):
    tmp_path, q, db = store
    argv = ["topk", "--database", str(tmp_path / "db.zarr"), "--queries", str(tmp_path / "q.npy"),
            "-k", "4", "--out", str(tmp_path / "out.zarr"), "--scheduler", cluster.scheduler_address]
    assert cli.main(argv) == 0
    written = stores.open_results(tmp_path / "out.zarr")
    check_topk((written["scores"], written["ids"]), q, db, 4, "cosine")
    assert "100% Completed" in capsys.readouterr().err  # distributed's progress, on stderr


def test_query_batching_counts_the_cluster_threads(cluster):
    from dask.system import CPU_COUNT
    from distributed import Client

    from dask_vecops import api

    with dask.config.set(num_workers=7):
        assert api._cores() == 7
        with Client(cluster):  # the default client while it is open
            assert api._cores() == 2
        assert api._cores() == 7
    assert api._cores() == CPU_COUNT


@requires_rust
def test_workers_run_kernels_on_one_thread(client):
    # Each worker thread is one Dask task at a time: a kernel pool per worker would oversubscribe.
    def kernel_threads():
        from dask_vecops import _rust

        return _rust.get_num_threads(), os.environ.get("DASK_VECOPS_NUM_THREADS")

    assert set(client.run(kernel_threads).values()) == {(1, None)}


def test_asynchronous_client(cluster, rng):
    db, q = random_vectors(rng, 300, 6), random_vectors(rng, 10, 6)

    async def search():
        from distributed import Client

        async with Client(cluster.scheduler_address, asynchronous=True) as client:
            # The graph is built while the asynchronous client is the default one.
            scores, ids = dv.cosine_topk(q, 5, database=da.from_array(db, chunks=70))
            futures = client.compute([scores, ids])
            return await client.gather(futures), scores, ids

    (scores, ids), lazy_scores, lazy_ids = asyncio.run(search())
    expected = check_topk((lazy_scores, lazy_ids), q, db, 5, "cosine", scheduler="threads")
    np.testing.assert_array_equal(ids, expected[1])
    np.testing.assert_array_equal(scores, expected[0])


# -- priorities -----------------------------------------------------------------------------------


class PriorityLog(SchedulerPlugin):
    """Scheduler plugin: the priority of every task that starts processing."""

    name = "vecops-priority-log"

    def __init__(self):
        self.seen = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing":
            self.seen[str(key)] = self.scheduler.tasks[key].priority


def _take_priorities(dask_scheduler):
    plugin = dask_scheduler.plugins[PriorityLog.name]
    seen, plugin.seen = plugin.seen, {}
    return seen


@pytest.fixture(scope="module")
def priority_log(client):
    client.register_plugin(PriorityLog())


@pytest.fixture
def priorities(client, priority_log):
    client.run_on_scheduler(_take_priorities)
    return lambda: {
        key: p[0] for key, p in client.run_on_scheduler(_take_priorities).items() if "vecops" in key
    }


def _search(rng):
    """A search of many tasks: a task per chunk (no client is the default, so a few queries
    would otherwise search several chunks a task)."""
    db = da.from_array(random_vectors(rng, 400, 8), chunks=50)
    with dask.config.set({"vecops.cpu-task-bytes": 0}):
        return dv.cosine_topk(random_vectors(rng, 10, 8), 3, database=db)


def test_compute_priority_reaches_every_task(client, priorities, rng):
    client.gather(client.compute(list(_search(rng)), priority=3))
    seen = priorities()
    assert len(seen) > 8 and set(seen.values()) == {-3}, seen  # the scheduler stores -priority


def test_annotated_priority_reaches_every_task(client, priorities, rng):
    with dask.annotate(priority=7):
        client.gather(client.compute(list(_search(rng))))
    seen = priorities()
    assert len(seen) > 8 and set(seen.values()) == {-7}, seen


def test_layer_annotations_survive_without_optimization(client, priorities, rng):
    # Graph optimization drops layer annotations for any dask array (dask/dask#7036); without
    # it, every layer dask-vecops builds keeps them.
    with dask.annotate(priority=5):
        scores, ids = _search(rng)
    client.gather(client.compute([scores, ids], optimize_graph=False))
    seen = priorities()
    assert len(seen) > 8 and set(seen.values()) == {-5}, seen


# -- a worker killed in the middle ----------------------------------------------------------------


def _slow_rows(marker_dir, block_id=None):
    """A database chunk that takes a while, and leaves a mark naming the worker process."""
    Path(marker_dir, f"{os.getpid()}-{block_id[0]}-{time.monotonic_ns()}").touch()
    time.sleep(0.2)
    return np.random.default_rng(block_id[0]).standard_normal((40, 6)).astype(np.float32)


def test_worker_killed_mid_computation(tmp_path, rng):
    from distributed import Client, LocalCluster

    chunks = 16
    db = da.map_blocks(_slow_rows, dtype=np.float32, chunks=((40,) * chunks, (6,)),
                       meta=np.empty((0, 0), np.float32), marker_dir=str(tmp_path))
    q = random_vectors(rng, 12, 6, np.float32)
    scores, ids = dv.cosine_topk(q, 5, database=db, split_every=4)
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
        as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        pids = set(client.run(os.getpid).values())
        futures = client.compute([scores, ids])
        victim = _first_busy_worker(tmp_path, pids)
        os.kill(victim, signal.SIGKILL)
        result = client.gather(futures)
    gc.collect()  # the socket to the killed worker, here where its warning is ignored
    marks = list(tmp_path.iterdir())
    assert len(marks) > chunks, "nothing was recomputed: the kill came too late"
    expected = dask.compute(scores, ids, scheduler="threads")
    np.testing.assert_array_equal(result[1], expected[1])
    np.testing.assert_array_equal(result[0], expected[0])


def _first_busy_worker(marker_dir, pids, timeout=30.0) -> int:
    """The pid of the first worker seen computing a database chunk (its task still sleeping)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mark in Path(marker_dir).iterdir():
            pid = int(mark.name.split("-")[0])
            if pid in pids:
                return pid
        time.sleep(0.005)
    raise AssertionError("no worker started a database chunk")


# -- a scheduler and workers started as separate processes ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cli_cluster():
    """``dask scheduler`` plus two ``dask worker`` processes on loopback; killed afterwards."""
    dask_command = Path(sys.executable).with_name("dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    common = ["--no-dashboard"]
    processes = [subprocess.Popen(
        [dask_command, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
         *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            processes.append(subprocess.Popen(
                [dask_command, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--nworkers", "1", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        _shut_down(address, processes)


def _shut_down(address, processes) -> None:
    """Ask the scheduler to close itself and its workers; kill what is still running after."""
    from distributed import Client

    try:
        with Client(address, timeout="2s", set_as_default=False) as client:
            client.shutdown()
    except OSError:
        pass  # the scheduler never came up, or is gone already
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_dask_scheduler_and_workers_as_processes(dask_cli_cluster, store):
    from distributed import Client

    tmp_path, q, db = store
    with Client(dask_cli_cluster, timeout="30s", set_as_default=False) as client:
        client.wait_for_workers(2, timeout=30)
        assert client.scheduler_info(n_workers=0)["total_threads"] == 2
        found = stores.search(tmp_path / "db.zarr", tmp_path / "q.npy", 5, metric="euclidean")
        check_topk((found["scores"], found["ids"]), q, db, 5, "euclidean", scheduler=client)
        compute = functools.partial(dask.compute, scheduler=client)
        out = stores.write_results(tmp_path / "out.zarr", found, compute=compute)
        assert stores.open_results(out)["labels"].shape == (len(q), 5)


@requires_rust
def test_workers_take_the_isa_cap_from_the_nanny_environment(rng):
    # The documented way to pin every worker of a cluster to one instruction set.
    from distributed import Client, LocalCluster

    db, q = random_vectors(rng, 400, 12, np.float32), random_vectors(rng, 9, 12, np.float32)
    spawn = {"distributed.nanny.pre-spawn-environ.DASK_VECOPS_ISA": "portable"}
    with dask.config.set(spawn), LocalCluster(
        n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster, Client(cluster, set_as_default=False) as client:

        def isa():
            from dask_vecops import ufuncs

            return ufuncs.kernel_isa()

        assert set(client.run(isa).values()) == {"portable"}
        found = dv.cosine_topk(q, 5, database=da.from_array(db, chunks=90), backend="rust")
        remote = dask.compute(*found, scheduler=client)
    expected = check_topk(found, q, db, 5, "cosine", scheduler="threads")
    np.testing.assert_array_equal(remote[1], expected[1])
    np.testing.assert_allclose(remote[0], expected[0], rtol=1e-6)
