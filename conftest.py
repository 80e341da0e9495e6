"""Root pytest configuration, loaded before any test module or package is imported.

* Doctest collection of the package must not need the Rust build.
* Without a CUDA driver the CUDA kernels run in Numba's CUDA simulator. That must be decided
  before Numba is first imported; with a driver (or with the variable already set, to 0 or 1)
  the CUDA tests run as the environment says.
"""

import ctypes.util
import importlib.util
import os

collect_ignore = []
if importlib.util.find_spec("dask_vecops._rust") is None:
    collect_ignore += ["dask_vecops/backends/rust_backend.py", "dask_vecops/ufuncs.py"]

if "NUMBA_ENABLE_CUDASIM" not in os.environ and ctypes.util.find_library("cuda") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
