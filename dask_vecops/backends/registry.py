"""Backends by name: which are available here and why not, and what ``auto`` picks.

Backend modules are imported on first use, so a missing one (no Rust build, no GPU) never breaks
``import dask_vecops``.
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType
from typing import NamedTuple

from .._errors import BackendUnavailableError

logger = logging.getLogger("dask_vecops")

AUTO_ORDER = ("rust", "scipy", "numpy")
NAMES = ("rust", "cuda", "scipy", "numpy")
CHOICES = ("auto", *NAMES)


class BackendInfo(NamedTuple):
    """One backend: its name, whether it can run here, and if not, why."""

    name: str
    available: bool
    reason: str


class BackendTable(list):
    """The list of :class:`BackendInfo` that ``dv.backends()`` returns, shown as a table."""

    def __repr__(self) -> str:
        width = max(len("backend"), *(len(b.name) for b in self))
        lines = [f"{'backend':<{width}}  available  reason"]
        lines += [f"{b.name:<{width}}  {'yes' if b.available else 'no':<9}  {b.reason}" for b in self]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The same table as HTML, for Jupyter (names and reasons escaped)."""
        from html import escape

        rows = "".join(
            f"<tr><td><code>{escape(b.name)}</code></td><td>{'yes' if b.available else 'no'}</td>"
            f"<td>{escape(b.reason)}</td></tr>"
            for b in self
        )
        return (
            '<table class="dask-vecops-backends">'
            "<thead><tr><th>backend</th><th>available</th><th>reason</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )


@functools.cache
def _load(name: str) -> tuple[ModuleType | None, str]:
    """The backend module, or None and the reason it cannot be used."""
    if name == "cuda":
        from . import cuda_backend

        reason = cuda_backend.unavailable_reason()
        return (None, reason) if reason else (cuda_backend, "")
    try:
        return importlib.import_module(f"{__package__}.{name}_backend"), ""
    except ImportError as err:
        return None, f"cannot import: {err}"


def backends() -> BackendTable:
    """Every backend, whether it is available here and, if not, why."""
    return BackendTable(BackendInfo(n, _load(n)[0] is not None, _load(n)[1]) for n in NAMES)


def resolve(name: str, on_gpu: bool = False) -> ModuleType:
    """The backend module for ``name`` and blocks on the GPU (CuPy) or not.

    "auto" picks ``cuda`` for GPU blocks and the first available of :data:`AUTO_ORDER` otherwise.
    """
    if on_gpu and name not in ("auto", "cuda"):
        raise ValueError(
            f"backend {name!r} works on NumPy blocks, and these are CuPy (GPU) blocks: use "
            "backend='cuda' or 'auto', or move the data to the host with x.map_blocks(cupy.asnumpy)"
        )
    if name == "auto" and not on_gpu:
        return _first_available()
    name = "cuda" if on_gpu else name
    module, reason = _load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {reason}")
    return module


def _first_available() -> ModuleType:
    for name in AUTO_ORDER:
        module, reason = _load(name)
        if module is not None:
            logger.debug("backend auto: chose %r", name)
            return module
        logger.debug("backend auto: skipped %r (%s)", name, reason)
    raise BackendUnavailableError("no backend is available")  # numpy always is; kept for safety
