"""dask-vecops: exact vector operations on embeddings as lazy Dask array functions.

>>> import dask_vecops as dv
>>> callable(dv.cosine_topk)
True
"""

import importlib.util
from importlib.metadata import PackageNotFoundError, version

from . import _config
from ._errors import BackendUnavailableError, NonFiniteError
from ._metrics import metrics
from .api import backends, cosine_topk, normalize, similarity, topk

if importlib.util.find_spec("xarray") is not None:
    from . import xarray as _xarray  # noqa: F401  (registers the DataArray.vecops accessor)

_config.check_isa_env()

try:
    __version__ = version("dask-vecops")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name):
    # The Rust ufuncs load on first use, so `import dask_vecops` never needs the compiled module.
    if name == "ufuncs":
        import importlib

        return importlib.import_module(".ufuncs", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "NonFiniteError",
    "backends",
    "cosine_topk",
    "metrics",
    "normalize",
    "similarity",
    "topk",
    "ufuncs",
]
