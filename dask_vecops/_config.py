"""dask-vecops' defaults, registered with ``dask.config`` as dask's own packages do.

Every key lives under ``vecops.``: set it with ``dask.config.set({"vecops.backend": "rust"})``, in a
YAML file in dask's config directory, or with an environment variable such as
``DASK_VECOPS__BACKEND=rust``.
"""

from __future__ import annotations

import os
import pathlib

import dask.config
import yaml

_DEFAULTS_FILE = pathlib.Path(__file__).with_name("vecops.yaml")

with _DEFAULTS_FILE.open() as _f:
    DEFAULTS = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)

# Read by the Rust extension, not by dask.config: the instruction set its kernels may use at most.
ISA_ENV = "DASK_VECOPS_ISA"
ISA_VALUES = ("auto", "avx512bf16", "avx512", "avx2", "portable")


def check_isa_env() -> None:
    """Refuses a ``DASK_VECOPS_ISA`` that names no instruction set, at ``import dask_vecops``
    rather than at the first kernel call (the Rust extension, which reads the variable, takes
    the same names: ``Isa::parse`` in ``rust_ufuncs/src/kernels/simd/mod.rs``).

    >>> import os
    >>> os.environ.get("DASK_VECOPS_ISA", "auto") in ISA_VALUES + ("",)
    True
    """
    value = os.environ.get(ISA_ENV, "").strip().lower()
    if value and value not in ISA_VALUES:
        raise ValueError(f'{ISA_ENV}="{value}" is not one of {", ".join(ISA_VALUES)}')


def get(key: str, value=None):
    """``value`` when given, else the configured ``vecops.<key>``."""
    if value is not None:
        return value
    return dask.config.get(f"vecops.{key}")


def bytes_value(key: str, value=None) -> int:
    """A size setting such as ``vecops.memory-budget`` ("256MiB" or a number) in bytes."""
    from dask.utils import parse_bytes

    size = get(key, value)
    return int(parse_bytes(size)) if isinstance(size, str) else int(size)


def memory_budget(value=None) -> int:
    """``vecops.memory-budget`` in bytes; ``"auto"`` is twice Dask's ``array.chunk-size``.

    >>> import dask
    >>> with dask.config.set({"vecops.memory-budget": "auto", "array.chunk-size": "64MiB"}):
    ...     memory_budget() == 128 * 2**20
    True
    """
    from dask.utils import parse_bytes

    if get("memory-budget", value) == "auto":
        return 2 * int(parse_bytes(dask.config.get("array.chunk-size")))
    return bytes_value("memory-budget", value)
