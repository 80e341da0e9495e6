"""Root pytest configuration: doctest collection of the package must not need the Rust build."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("dask_vecops._rust") is None:
    collect_ignore += ["dask_vecops/backends/rust_backend.py", "dask_vecops/ufuncs.py"]
