"""``dask-vecops bench``, the calibration it saves, and how ``backend="auto"`` follows it."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import dask
import numpy as np
import pytest
import yaml

import dask_vecops as dv
from dask_vecops import bench, cli
from dask_vecops.backends import registry

from . import random_vectors

CPU = bench.backends_to_time()


def choices(caplog):
    """The backend choices logged on the dask_vecops logger."""
    return [r.getMessage() for r in caplog.records
            if r.name == "dask_vecops" and ": chose " in r.getMessage()]


# -- the command ----------------------------------------------------------------------------------


def test_bench_quick_prints_a_table_writes_json_and_saves_a_calibration(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(dask.config, "PATH", str(tmp_path / "dask"))
    start = time.perf_counter()
    assert cli.main(["bench", "--quick", "--json", str(tmp_path / "t.json"), "--save"]) == 0
    assert time.perf_counter() - start < 10
    captured = capsys.readouterr()
    total = len(bench.cases(bench.QUICK_GRID)) * len(CPU)
    assert f"[{'#' * 30}] {total}/{total} done" in captured.err
    table = captured.out.splitlines()
    assert table[0].split() == ["operation", "dtype", "block", "bucket",
                                *(w for n in CPU for w in (n, "ms")), "fastest"]
    rows = [line.split() for line in table[1:] if line.split()[0] in registry.OPERATIONS]
    assert len(rows) == len(bench.cases(bench.QUICK_GRID))
    assert {r[-1] for r in rows} <= set(CPU)

    written = json.loads((tmp_path / "t.json").read_text())
    cases = {(r["operation"], r["dtype"], (r["rows"], r["features"]), r["backend"])
             for r in written["results"]}
    assert cases == {(*c, b) for c in bench.cases(bench.QUICK_GRID) for b in CPU}
    assert all(r["seconds"] > 0 for r in written["results"])

    saved = yaml.safe_load((tmp_path / "dask" / bench.CALIBRATION_FILE).read_text())
    calibration = saved["vecops"]["calibration"]
    assert calibration == written["calibration"]
    entries, problems = registry.check_calibration(calibration)
    assert not problems
    assert {(op, dtype, b) for op, dtype, b in entries} == {
        (op, dtype, registry.shape_bucket(shape)) for op, dtype, shape in bench.cases(bench.QUICK_GRID)
    }


def test_calibration_keeps_the_fastest_backend():
    results = [
        {"operation": "topk", "dtype": "float32", "bucket": "small", "backend": "rust", "seconds": 2},
        {"operation": "topk", "dtype": "float32", "bucket": "small", "backend": "numpy", "seconds": 1},
        {"operation": "topk", "dtype": "float64", "bucket": "large", "backend": "scipy", "seconds": 3},
    ]
    assert bench.calibration(results) == {
        "topk": {"float32": {"small": "numpy"}, "float64": {"large": "scipy"}}
    }


def test_bench_never_times_the_cuda_simulator():
    assert "cuda" not in CPU or not bench._cuda_simulated()
    assert {"numpy", "scipy"} <= set(CPU)


# -- auto and the calibration ---------------------------------------------------------------------


def test_auto_without_calibration_takes_the_first_available(caplog, rng):
    first = next(n for n in registry.AUTO_ORDER if n in CPU)
    with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
        dv.topk(random_vectors(rng, 10, 4, np.float32), 2)
    assert choices(caplog) == [
        f"backend auto for topk float32 (10, 4) blocks: chose {first!r} "
        "(first available of rust, scipy, numpy)"
    ]


@pytest.mark.parametrize("name", CPU)
def test_auto_follows_a_calibration_it_is_given(name, caplog, rng):
    calibration = {"topk": {"float32": {"small": name}},
                   "similarity": {"float64": {"small": name}},
                   "normalize": {"float32": {"medium": name}}}
    x32, x64 = random_vectors(rng, 40, 8, np.float32), random_vectors(rng, 40, 8, np.float64)
    with dask.config.set({"vecops.calibration": calibration}):
        assert registry.resolve("auto", operation="topk", dtype="float32", block_shape=(512, 64),
                                calibration=calibration) is registry.resolve(name)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
            scores, ids = dv.topk(x32, 3)
            dv.similarity(x64)
            dv.normalize(np.ones((2048, 64), np.float32))
            dv.topk(x64, 3)  # float64: no entry, the built-in order
    logged = choices(caplog)
    assert len(logged) == 4, logged
    assert logged[0].endswith(f"chose {name!r} (calibration for topk/float32/small)")
    assert logged[1].endswith(f"chose {name!r} (calibration for similarity/float64/small)")
    assert logged[2].endswith(f"chose {name!r} (calibration for normalize/float32/medium)")
    assert logged[3].endswith("(first available of rust, scipy, numpy)")
    assert ids.compute().shape == (40, 3)


def test_explicit_backend_ignores_the_calibration(caplog, rng):
    with dask.config.set({"vecops.calibration": {"topk": {"float64": {"small": "numpy"}}}}):
        with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
            dv.topk(random_vectors(rng, 10, 4), 2, backend="scipy")
    assert choices(caplog) == ["backend topk float64 (10, 4) blocks: chose 'scipy' (named explicitly)"]


@pytest.mark.parametrize("calibration, problem", [
    ({"topk": {"float32": {"small": "fortran"}}}, "unknown backend 'fortran'"),
    ({"sort": {"float32": {"small": "numpy"}}}, "vecops.calibration.sort: unknown operation"),
    ({"topk": {"int8": {"small": "numpy"}}}, "vecops.calibration.topk.int8: unknown dtype"),
    ({"topk": {"float32": {"tiny": "numpy"}}}, "vecops.calibration.topk.float32.tiny: unknown bucket"),
    ({"topk": "numpy"}, "vecops.calibration.topk: expected a mapping"),
    ("numpy", "vecops.calibration must be a mapping"),
])
def test_an_invalid_calibration_entry_is_ignored_with_a_logged_reason(
    calibration, problem, caplog, rng
):
    registry._WARNED.clear()
    with dask.config.set({"vecops.calibration": calibration}):
        with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
            dv.topk(random_vectors(rng, 10, 4, np.float32), 2)
            dv.topk(random_vectors(rng, 10, 4, np.float32), 2)  # warned once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and problem in warnings[0], warnings
    assert choices(caplog)[-1].endswith("(first available of rust, scipy, numpy)")


def test_a_calibrated_backend_that_is_unavailable_falls_back_with_its_reason(
    monkeypatch, caplog, rng
):
    load = registry._load
    monkeypatch.setattr(registry, "_load",
                        lambda n: (None, "not built here") if n == "scipy" else load(n))
    with dask.config.set({"vecops.calibration": {"topk": {"float32": {"small": "scipy"}}}}):
        with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
            dv.topk(random_vectors(rng, 10, 4, np.float32), 2)
    messages = [r.getMessage() for r in caplog.records if r.name == "dask_vecops"]
    assert any("the calibration's 'scipy' is not available (not built here); falling back" in m
               for m in messages), messages
    assert choices(caplog)[-1].endswith("(first available of rust, scipy, numpy)")


def test_auto_logs_each_backend_it_skips(monkeypatch, caplog):
    load = registry._load
    monkeypatch.setattr(registry, "_load",
                        lambda n: (None, "no build") if n == "rust" else load(n))
    with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
        assert registry.resolve("auto", operation="topk") is load("scipy")[0]
    messages = [r.getMessage() for r in caplog.records if r.name == "dask_vecops"]
    assert messages == ["backend auto for topk: skipped 'rust' (no build)",
                        "backend auto for topk: chose 'scipy' (first available of rust, scipy, numpy)"]


def test_auto_on_gpu_blocks_logs_the_reason(caplog):
    if "cuda" not in [b.name for b in registry.backends() if b.available]:
        pytest.skip("the cuda backend is not available here")
    with caplog.at_level(logging.DEBUG, logger="dask_vecops"):
        registry.resolve("auto", on_gpu=True, operation="topk")
    assert choices(caplog) == ["backend topk: chose 'cuda' (CuPy (GPU) blocks)"]


def test_shape_buckets():
    assert registry.shape_bucket((256, 256)) == "small"
    assert registry.shape_bucket((256, 257)) == "medium"
    assert registry.shape_bucket((1024, 1024)) == "medium"
    assert registry.shape_bucket((1024, 1025)) == "large"
    assert registry.shape_bucket((float("nan"), 4)) is None


def test_a_saved_calibration_file_is_used_by_a_new_process(tmp_path):
    """The file `bench --save` writes into Dask's config directory reaches `auto`."""
    bench.save({"topk": {"float32": {"small": "numpy"}}}, tmp_path)
    script = textwrap.dedent("""
        import logging, numpy as np, dask_vecops as dv
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        dv.topk(np.ones((10, 4), np.float32), 2)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "DASK_CONFIG": str(tmp_path)}, timeout=120, check=True)
    assert "chose 'numpy' (calibration for topk/float32/small)" in done.stderr, done.stderr
