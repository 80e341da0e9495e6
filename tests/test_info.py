"""``dask-vecops info``: versions, CPU and GPU state, backends, configuration and its sources."""

import json
import os
import subprocess
import sys

import dask
import numpy as np
import pytest

import dask_vecops as dv
from dask_vecops import cli, info


@pytest.fixture
def fresh_config(monkeypatch):
    """monkeypatch, with Dask's configuration collected again after the test's changes go."""
    yield monkeypatch
    monkeypatch.undo()
    dask.config.refresh()


def run_info(capsys, *options):
    assert cli.main(["info", *options]) == 0
    return capsys.readouterr().out


def test_info_text_lists_versions_cpu_gpu_and_every_backend_with_its_reason(capsys):
    out = run_info(capsys)
    for heading in ("versions", "platform", "cpu", "rust kernels", "gpu / cuda", "backends",
                    "configuration"):
        assert f"\n{heading}" in f"\n{out}", heading
    assert f"dask-vecops  {dv.__version__}" in out
    assert f"numpy        {np.__version__}" in out
    assert f"dask         {dask.__version__}" in out
    assert "python" in out and "rust kernel path" in out and "numba cuda simulator" in out
    lines = out.splitlines()
    for backend in dv.backends():
        expected = "available" if backend.available else f"unavailable: {backend.reason}"
        assert f"  {backend.name:<5}  {expected}" in lines, (backend, out)
    for key in ("backend", "nan-policy", "split-every", "memory-budget", "norm-cache",
                "calibration"):
        assert any(line.split()[:1] == [f"vecops.{key}"] for line in lines), key


def test_info_json_matches_the_registry_and_the_cpu(capsys):
    report = json.loads(run_info(capsys, "--json"))
    assert [(b["name"], b["available"], b["reason"]) for b in report["backends"]] == [
        tuple(b) for b in dv.backends()
    ]
    assert report["versions"]["numpy"] == np.__version__
    assert set(report["cpu"]["features"]) == {"avx2", "fma", "avx512f", "avx512_bf16"}
    assert report["rust"]["num_threads"] is None or report["rust"]["num_threads"] >= 1
    assert isinstance(report["gpu"]["numba_cuda_simulator"], bool)
    sources = {row["key"]: row["source"] for row in report["config"]}
    assert sources["vecops.nan-policy"] == info.DEFAULTS_SOURCE


def sources():
    return {row["key"]: (row["value"], row["source"]) for row in info.config_sources()}


def test_config_source_environment_variable(fresh_config):
    fresh_config.setenv("DASK_VECOPS__SPLIT_EVERY", "5")
    dask.config.refresh()
    assert sources()["vecops.split-every"] == (5, "environment DASK_VECOPS__SPLIT_EVERY")
    assert sources()["vecops.backend"] == ("auto", info.DEFAULTS_SOURCE)


def test_config_source_dask_config_set():
    with dask.config.set({"vecops.nan-policy": "omit"}):
        assert sources()["vecops.nan-policy"] == ("omit", info.CODE_SOURCE)
    assert sources()["vecops.nan-policy"] == ("raise", info.DEFAULTS_SOURCE)


def test_config_source_yaml_file_and_nested_calibration(fresh_config, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("vecops:\n  backend: scipy\n  calibration:\n    topk:\n"
                    "      float32:\n        small: numpy\n")
    fresh_config.setattr(dask.config, "paths", [str(tmp_path)])
    dask.config.refresh(paths=[str(tmp_path)])
    found = sources()
    assert found["vecops.backend"] == ("scipy", f"file {path}")
    assert found["vecops.calibration.topk.float32.small"] == ("numpy", f"file {path}")
    assert found["vecops.split-every"] == (8, info.DEFAULTS_SOURCE)


def test_info_command_in_a_fresh_process_names_the_environment_variable():
    env = {**os.environ, "DASK_VECOPS__BACKEND": "numpy"}
    done = subprocess.run([sys.executable, "-m", "dask_vecops", "info"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    line = next(l for l in done.stdout.splitlines() if l.split()[:1] == ["vecops.backend"])
    assert line.split() == ["vecops.backend", "numpy", "environment", "DASK_VECOPS__BACKEND"]


def test_info_shows_the_isa_cap_and_the_path_the_rust_kernels_take():
    env = {**os.environ, "DASK_VECOPS_ISA": "portable"}
    out = subprocess.run([sys.executable, "-m", "dask_vecops", "info", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    cpu = json.loads(out.stdout)["cpu"]
    assert cpu["DASK_VECOPS_ISA"] == "portable"
    best = dv.ufuncs.best_isa()
    assert cpu["rust_kernel_path"] == (
        "portable" if best == "portable" else f"portable, capped (the CPU has {best})")
