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


# Calibration (``vecops.calibration``, written by ``dask-vecops bench --save``): per operation, dtype
# and block-shape bucket, the backend that was fastest on this machine.
OPERATIONS = ("normalize", "similarity", "topk")
DTYPES = ("float32", "float64")
# Buckets by the elements of one block (rows x features), the upper bound of each included.
BUCKETS = (("small", 2**16), ("medium", 2**20), ("large", None))
BUCKET_NAMES = tuple(name for name, _ in BUCKETS)


def shape_bucket(shape) -> str | None:
    """The calibration bucket of a block shape ``(rows, features)``; None when unknown.

    >>> shape_bucket((256, 64)), shape_bucket((4096, 128)), shape_bucket((100_000, 384))
    ('small', 'medium', 'large')
    """
    try:
        elements = int(shape[0]) * int(shape[1])
    except (TypeError, ValueError, IndexError, OverflowError):  # NaN (unknown) chunk sizes
        return None
    for name, limit in BUCKETS:
        if limit is None or elements <= limit:
            return name
    return None  # pragma: no cover - the last bucket has no limit


def check_calibration(calibration) -> tuple[dict, list[str]]:
    """The valid ``{(operation, dtype, bucket): backend}`` entries of a calibration, and why
    each invalid one is left out."""
    entries: dict = {}
    problems: list[str] = []
    if not calibration:
        return entries, problems
    if not isinstance(calibration, dict):
        return entries, [f"vecops.calibration must be a mapping, not {calibration!r}"]
    for op, by_dtype in calibration.items():
        if op not in OPERATIONS:
            problems.append(f"vecops.calibration.{op}: unknown operation (one of {OPERATIONS})")
            continue
        if not isinstance(by_dtype, dict):
            problems.append(f"vecops.calibration.{op}: expected a mapping of dtypes")
            continue
        for dtype, by_bucket in by_dtype.items():
            where = f"vecops.calibration.{op}.{dtype}"
            if dtype not in DTYPES:
                problems.append(f"{where}: unknown dtype (one of {DTYPES})")
                continue
            if not isinstance(by_bucket, dict):
                problems.append(f"{where}: expected a mapping of block-shape buckets")
                continue
            for bucket, backend in by_bucket.items():
                if bucket not in BUCKET_NAMES:
                    problems.append(f"{where}.{bucket}: unknown bucket (one of {BUCKET_NAMES})")
                elif backend not in NAMES:
                    problems.append(f"{where}.{bucket}: unknown backend {backend!r} (one of {NAMES})")
                else:
                    entries[op, dtype, bucket] = backend
    return entries, problems


def resolve(
    name: str,
    on_gpu: bool = False,
    *,
    operation: str | None = None,
    dtype=None,
    block_shape=None,
    calibration=None,
) -> ModuleType:
    """The backend module for ``name`` and blocks on the GPU (CuPy) or not.

    "auto" picks ``cuda`` for GPU blocks; for NumPy blocks, the backend that ``calibration``
    (``vecops.calibration``) names for this ``operation``, ``dtype`` and block-shape bucket when
    it names one that is available, else the first available of :data:`AUTO_ORDER`. Every choice
    and every fallback is logged at debug level on the ``dask_vecops`` logger, with its reason.
    """
    what = _describe(operation, dtype, block_shape)
    if on_gpu and name not in ("auto", "cuda"):
        raise ValueError(
            f"backend {name!r} works on NumPy blocks, and these are CuPy (GPU) blocks: use "
            "backend='cuda' or 'auto', or move the data to the host with x.map_blocks(cupy.asnumpy)"
        )
    if name == "auto" and not on_gpu:
        return _auto(what, operation, dtype, block_shape, calibration)
    reason = "CuPy (GPU) blocks" if name == "auto" else "named explicitly"
    name = "cuda" if on_gpu else name
    module, unavailable = _load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {unavailable}")
    logger.debug("backend %s: chose %r (%s)", what, name, reason)
    return module


def _describe(operation, dtype, block_shape) -> str:
    """``topk float32 (512, 64) blocks`` (what is known of it), for the log lines."""
    parts = [operation or "call"]
    if dtype is not None:
        parts.append(str(dtype))
    if block_shape is not None:
        parts.append(f"{tuple(block_shape)} blocks")
    return " ".join(parts)


def _auto(what, operation, dtype, block_shape, calibration) -> ModuleType:
    choice = _calibrated(what, operation, dtype, block_shape, calibration)
    if choice is not None:
        return choice
    for name in AUTO_ORDER:
        module, reason = _load(name)
        if module is not None:
            logger.debug("backend auto for %s: chose %r (first available of %s)",
                         what, name, ", ".join(AUTO_ORDER))
            return module
        logger.debug("backend auto for %s: skipped %r (%s)", what, name, reason)
    raise BackendUnavailableError("no backend is available")  # numpy always is; kept for safety


_WARNED: set[str] = set()


def _calibrated(what, operation, dtype, block_shape, calibration) -> ModuleType | None:
    """The available backend the calibration names for this call, or None (logged why)."""
    if not calibration:
        return None
    entries, problems = check_calibration(calibration)
    for problem in problems:
        if problem not in _WARNED:  # once per process, not at every call
            _WARNED.add(problem)
            logger.warning("ignoring an invalid calibration entry: %s", problem)
    bucket = shape_bucket(block_shape) if block_shape is not None else None
    key = (operation, None if dtype is None else str(dtype), bucket)
    name = entries.get(key)
    if name is None:
        logger.debug("backend auto for %s: the calibration has no entry for %s; using the "
                     "built-in order", what, "/".join(str(part) for part in key))
        return None
    module, reason = _load(name)
    if module is None:
        logger.debug("backend auto for %s: the calibration's %r is not available (%s); falling "
                     "back to the built-in order", what, name, reason)
        return None
    logger.debug("backend auto for %s: chose %r (calibration for %s)", what, name, "/".join(key))
    return module
