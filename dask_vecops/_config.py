"""dask-vecops' defaults, registered with ``dask.config`` as dask's own packages do.

Every key lives under ``vecops.``: set it with ``dask.config.set({"vecops.backend": "rust"})``, in a
YAML file in dask's config directory, or with an environment variable such as
``DASK_VECOPS__BACKEND=rust``.
"""

from __future__ import annotations

import pathlib

import dask.config
import yaml

_DEFAULTS_FILE = pathlib.Path(__file__).with_name("vecops.yaml")

with _DEFAULTS_FILE.open() as _f:
    DEFAULTS = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)


def get(key: str, value=None):
    """``value`` when given, else the configured ``vecops.<key>``."""
    if value is not None:
        return value
    return dask.config.get(f"vecops.{key}")


def memory_budget_bytes(value=None) -> int:
    """The query-batch budget in bytes (``vecops.memory-budget``, e.g. ``"256MiB"``)."""
    from dask.utils import parse_bytes

    budget = get("memory-budget", value)
    return int(parse_bytes(budget)) if isinstance(budget, str) else int(budget)
