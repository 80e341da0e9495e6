"""The chunk protocol: what every backend computes on in-memory blocks.

A backend is a module with the functions below. It works on whole in-memory blocks (NumPy, or CuPy
for the GPU backend, whose results stay CuPy arrays), knows nothing of Dask, and never sees global row numbers: the graph layer
filters non-finite rows, maps local ids to global ones and merges the partial results.

Conventions shared by every backend
-----------------------------------
* ``metric`` is one of :data:`METRICS`. Cosine and dot are similarities (best is largest);
  euclidean and manhattan are distances (best is smallest).
* Scores come back in the dtype of the inputs (float32 or float64).
* Top-k rows are sorted best first; equal scores are ordered by the lower row id, so a result never
  depends on how the database was split into blocks.
* A zero vector has cosine similarity 0 with everything, itself included; normalising leaves it zero.
* When fewer than ``k`` candidates exist, the tail is padded with score NaN and id -1.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

METRICS = ("cosine", "dot", "euclidean", "manhattan")
SIMILARITIES = frozenset({"cosine", "dot"})
NORMS = ("l2", "l1", "max")
NAN_POLICIES = ("raise", "omit")


def array_module(x):
    """The array library of a block: ``cupy`` for CuPy arrays, else ``numpy``."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_numpy(x) -> np.ndarray:
    """A small array (a mask, a few ids) brought to the host; NumPy arrays pass through."""
    return x.get() if array_module(x) is not np else np.asarray(x)


def take_rows(x, keep: np.ndarray):
    """The rows of block ``x`` where the host mask ``keep`` is true, on the block's device."""
    return x[array_module(x).asarray(keep)]


def larger_is_better(metric: str) -> bool:
    """True for similarities (cosine, dot), False for distances."""
    return metric in SIMILARITIES


class ChunkBackend(Protocol):
    """The functions a backend module provides (see the module docstring for the conventions)."""

    def normalize_block(self, x: np.ndarray, norm: str) -> np.ndarray:
        """Each row of ``x`` divided by its ``norm``; zero rows stay zero."""

    def similarity_block(self, a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
        """The ``(len(a), len(b))`` matrix of ``metric`` between the rows of ``a`` and ``b``."""

    def topk_block(
        self,
        q: np.ndarray,
        db: np.ndarray,
        k: int,
        metric: str,
        exclude: np.ndarray | None = None,
        db_norms: np.ndarray | None = None,
        lazy_norms: bool = False,
        bars: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Best ``k`` rows of ``db`` for each row of ``q``: ``(scores, ids, db_norms)``.

        ids are local to ``db``. ``exclude``, when given, holds for each query a local ``db`` row
        to leave out (-1: none). For cosine, ``db_norms`` are the L2 norms of the ``db`` rows when
        the caller has them (the backend then does not recompute them); the backend returns the
        norms it used, so the caller can cache them and screen rows that are not finite. With
        ``lazy_norms`` (cosine without ``db_norms``) the backend may skip the norms it does not
        need and return None instead, but only when every ``db`` row is finite.

        ``bars``, when given, holds for each query a score that at least ``k`` rows of the whole
        database (of which ``db`` is one chunk) are known to reach, or NaN for none. The backend
        may leave out the rows that score worse (returning fewer than ``k``, padded) or ignore
        the bars: the merged result is the same either way, only the work differs.
        """

    def merge_topk(
        self, scores: list[np.ndarray], ids: list[np.ndarray], k: int, metric: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` of several partial results for the same queries (ids already global)."""
