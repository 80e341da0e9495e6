"""The ``dask-vecops topk`` command: results on disk, progress, and one-line errors."""

import gc
import re
import socket
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest

from dask_vecops import cli, stores

from . import check_topk, match_all, random_vectors
from .test_stores import names, write_store, write_zarr

zarr = pytest.importorskip("zarr")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def paths(tmp_path, rng):
    """A zarr database group with labels, .npy queries, and the arrays themselves."""
    db, q = random_vectors(rng, 300, 8, np.float32), random_vectors(rng, 12, 8, np.float32)
    write_store(tmp_path, db, q, chunks=(64, 8))
    return tmp_path, q, db


def topk(tmp_path, *options, database="db.zarr", queries="q.npy"):
    argv = ["topk", "--database", str(tmp_path / database), "--queries", str(tmp_path / queries),
            "--out", str(tmp_path / "out.zarr"), *options]
    return cli.main(argv)


def check_output(out, q, db, k, metric):
    written = stores.open_results(out)
    check_topk((written["scores"], written["ids"]), q, db, k, metric)
    ids, labels = dask.compute(written["ids"], written["labels"])
    np.testing.assert_array_equal(labels, names(len(db))[ids])
    return zarr.open_group(out, mode="r").attrs["dask_vecops"]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dask-vecops topk: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_topk_writes_results(paths, metric, capsys):
    tmp_path, q, db = paths
    assert topk(tmp_path, "-k", "5", "--metric", metric) == 0
    attrs = check_output(tmp_path / "out.zarr", q, db, 5, metric)
    assert attrs == {"complete": True, "k": 5, "metric": metric,
                     "database": str(tmp_path / "db.zarr"), "queries": str(tmp_path / "q.npy")}
    out, err = capsys.readouterr()
    assert "100% Completed" in err  # Dask's ProgressBar, on stderr
    assert out.strip().splitlines() == [
        f"wrote the 5 best rows of {tmp_path / 'db.zarr'} for each query of "
        f"{tmp_path / 'q.npy'} to {tmp_path / 'out.zarr'}"
    ]


def test_topk_memory_limit_and_labels_file(paths, capsys):
    tmp_path, q, db = paths
    write_zarr(tmp_path / "q.zarr", q, chunks=(5, 8))
    np.save(tmp_path / "db.npy", db)
    (tmp_path / "names.txt").write_text("\n".join(names(len(db)).tolist()))
    # 64 bytes of queries a batch: two queries, six passes over the database.
    code = topk(tmp_path, "-k", "3", "--memory-limit", "64B", "--labels",
                str(tmp_path / "names.txt"), "--quiet", database="db.npy", queries="q.zarr")
    assert code == 0
    check_output(tmp_path / "out.zarr", q, db, 3, "cosine")
    assert stores.open_results(tmp_path / "out.zarr")["ids"].chunks[0] == (2,) * 6
    assert "Completed" not in capsys.readouterr().err


def test_topk_overwrite(paths, capsys):
    tmp_path, q, db = paths
    assert topk(tmp_path, "-k", "2") == 0
    assert topk(tmp_path, "-k", "4", "--overwrite", "--quiet") == 0
    check_output(tmp_path / "out.zarr", q, db, 4, "cosine")


@pytest.mark.parametrize(
    "setup, options, parts",
    [
        (None, ["--database", "missing.zarr"], ("database", "missing.zarr", "does not exist")),
        (None, ["--queries", "missing.npy"], ("queries", "missing.npy", "does not exist")),
        (lambda p: (p / "empty").mkdir(), ["--database", "empty"], ("empty", "neither a zarr")),
        (lambda p: np.save(p / "flat.npy", np.ones(8)), ["--queries", "flat.npy"],
         ("flat.npy", "2-D")),
        (lambda p: np.save(p / "q3.npy", np.ones((2, 3))), ["--queries", "q3.npy"],
         ("q3.npy", "db.zarr", "3 features", "has 8")),
        (lambda p: (p / "out.zarr").mkdir(), [], ("out.zarr", "already exists")),
        (lambda p: (p / "l.txt").write_text("a\n"), ["--labels", "l.txt"],
         ("l.txt", "1 labels", "300 rows")),
        (None, ["-k", "301"], ("k=301", "300 rows")),
        (None, ["--backend", "fortran"], ("backend", "fortran")),
    ],
    ids=["missing-database", "missing-queries", "not-a-store", "1-d-queries", "dims",
         "out-exists", "labels-length", "k-too-large", "unknown-backend"],
)
def test_topk_errors(paths, setup, options, parts, capsys):
    tmp_path = paths[0]
    if setup:
        setup(tmp_path)
    # A later option wins over the default one topk() passes; file names are made absolute.
    options = [o if o.startswith("-") or o.isdigit() or o == "fortran" else str(tmp_path / o)
               for o in options]
    assert topk(tmp_path, *options) == 1
    line = one_error_line(capsys.readouterr().err)
    assert all(part in line for part in parts), (line, parts)
    assert "already exists" in line or not (tmp_path / "out.zarr").exists()


# distributed leaves its unconnected sockets for the garbage collector to close.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_topk_unreachable_scheduler(paths, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = topk(paths[0], "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "0.5s")
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert re.match(match_all("cannot reach the Dask scheduler", f"127.0.0.1:{port}", "0.5s"), line)
    assert not (paths[0] / "out.zarr").exists()
    gc.collect()  # here, where the warnings about those sockets are ignored


def test_topk_bad_memory_limit(paths, capsys):
    with pytest.raises(SystemExit) as exit_:
        topk(paths[0], "--memory-limit", "lots")
    assert exit_.value.code == 2
    assert "--memory-limit: not a size: 'lots'" in capsys.readouterr().err


def test_topk_interrupted(paths, monkeypatch, capsys):
    def interrupted(*writes):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_local_compute", lambda quiet: interrupted)
    assert topk(paths[0]) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in paths[0].iterdir()) == ["db.zarr", "q.npy"]


def test_topk_as_a_process(paths):
    # The real entry point: exit statuses, and stderr holding one line, no traceback.
    tmp_path, q, db = paths
    command = [sys.executable, "-m", "dask_vecops", "topk", "--database", str(tmp_path / "db.zarr"),
               "--queries", str(tmp_path / "q.npy"), "-k", "3"]
    ok = subprocess.run([*command, "--out", str(tmp_path / "out.zarr")], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    check_output(tmp_path / "out.zarr", q, db, 3, "cosine")
    bad = subprocess.run([*command, "--out", str(tmp_path / "out.zarr")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "already exists" in one_error_line(bad.stderr)
