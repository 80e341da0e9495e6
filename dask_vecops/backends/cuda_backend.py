"""The CUDA backend: Numba CUDA kernels on CuPy chunks.

The kernels land with the GPU issue; until then this module only reports why it cannot run, so
``dv.backends()`` can say so and ``auto`` passes over it.
"""

from __future__ import annotations

import importlib.util


def unavailable_reason() -> str:
    """Why the CUDA backend cannot run here ("" if it can)."""
    for package in ("cupy", "numba"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install 'dask-vecops[cuda]')"
    return "the CUDA kernels are not part of this build yet"
