"""The documentation cannot rot: the quick-start notebook runs top to bottom, and the Sphinx site
builds with warnings as errors (what ``make docs`` runs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
NOTEBOOK = DOCS / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        "clear the outputs of docs/quickstart.ipynb before committing it"
    )


@pytest.mark.timeout(180)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # The kernel is this interpreter (the venv's), whatever kernels the user has installed:
    # a kernelspec on JUPYTER_PATH takes precedence over the user's and the system's.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (dask-vecops tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=120, allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    outputs = "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "dashboard: http" in outputs
    assert "100% Completed" in outputs


@pytest.mark.timeout(240)
def test_sphinx_site_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=220,
    )
    assert build.returncode == 0, f"sphinx-build failed:\n{build.stdout}\n{build.stderr}"

    api = (out / "api.html").read_text()
    for name in ("dask_vecops.topk", "dask_vecops.cosine_topk", "dask_vecops.similarity",
                 "dask_vecops.normalize", "dask_vecops.backends", "dask_vecops.NonFiniteError",
                 "dask_vecops.BackendUnavailableError", "dask_vecops.ufuncs.topk_block",
                 "dask_vecops.ufuncs.normalize_l2", "dask_vecops.stores.search",
                 "dask_vecops.xarray.VecopsAccessor"):
        assert f'id="{name}"' in api, name
    assert (out / "quickstart.html").exists()
    # The configuration table is generated from vecops.yaml: every key is on the page.
    import yaml

    keys = yaml.safe_load((REPO / "dask_vecops" / "vecops.yaml").read_text())["vecops"]
    backends_page = (out / "backends.html").read_text()
    assert all(f"vecops.{key}" in backends_page for key in keys)
    # The benchmark plots are drawn at build time from benchmarks/.
    plots = sorted(p.name for p in (out / "_images").glob("bench-*.png"))
    assert plots, "no benchmark plot was drawn"
    assert all(p in (out / "benchmarks.html").read_text() for p in plots)
