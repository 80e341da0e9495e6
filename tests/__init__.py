"""Shared helpers of the dask-vecops tests: optional-dependency pairs, laziness, data, checks.

Habits from flox's ``tests/__init__.py``: every optional dependency or backend gives a pair
``has_x, requires_x``; ``raise_if_dask_computes()`` proves that building a graph computes nothing.
"""

import importlib
import os
import re
from contextlib import contextmanager

import dask
import dask.array as da
import numpy as np
import pytest

from .reference import (
    METRICS,
    NORMS,
    assert_topk_equal,
    reference_candidates,
    tolerance,
    topk_from_candidates,
)

__all__ = [
    "METRICS",
    "NORMS",
    "BACKENDS",
    "Chunking",
    "check_topk",
    "clustered_vectors",
    "exact_vectors",
    "match_all",
    "raise_if_dask_computes",
    "random_vectors",
    "result_dtype",
]


def _importorskip(modname):
    try:
        importlib.import_module(modname)
        has = True
    except ImportError:
        has = False
    return has, pytest.mark.skipif(not has, reason=f"requires {modname}")


def _backend_entry(name):
    import dask_vecops

    return {entry.name: entry for entry in dask_vecops.backends()}.get(name)


def _requires_backend(name):
    entry = _backend_entry(name)
    has = bool(entry is not None and entry.available)
    reason = "not listed by dask_vecops.backends()" if entry is None else entry.reason
    return has, pytest.mark.skipif(not has, reason=f"backend {name!r} unavailable: {reason}")


has_distributed, requires_distributed = _importorskip("distributed")
has_sklearn, requires_sklearn = _importorskip("sklearn")
has_faiss, requires_faiss = _importorskip("faiss")
has_rust, requires_rust = _requires_backend("rust")
has_cuda, requires_cuda = _requires_backend("cuda")
# Numba's CUDA simulator (set by the root conftest.py where no CUDA driver is installed).
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# A real GPU with CuPy: the CUDA backend's own tests then also run on CuPy-backed arrays.
has_gpu = has_cuda and not SIMULATOR
requires_gpu = pytest.mark.skipif(not has_gpu, reason="needs a CUDA GPU with CuPy")

# The CPU backends (the CUDA backend has its own, smaller suite in test_cuda.py: the simulator is
# slow).
BACKENDS = ["numpy", "scipy"] + (["rust"] if has_rust else [])


class CountingScheduler:
    """Simple dask scheduler counting the number of computes (from xarray's and flox's tests)."""

    def __init__(self, max_computes=0):
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes=0):
    """Fail if dask computes more than ``max_computes`` times inside the block."""
    with dask.config.set(scheduler=CountingScheduler(max_computes)):
        yield


def match_all(*parts):
    """A ``pytest.raises(match=...)`` regex requiring every part, in any order, case-insensitive.

    Integers must appear as whole numbers (``8`` does not match ``18``); strings are literal;
    compiled patterns are used as they are.
    """

    def one(part):
        if isinstance(part, re.Pattern):
            return part.pattern
        if isinstance(part, (int, np.integer)):
            return rf"(?<!\d){int(part)}(?!\d)"
        return re.escape(part)

    return "(?is)^" + "".join(f"(?=.*{one(part)})" for part in parts)


# The remedy named by non-finite errors, in either quoting style.
OMIT_REMEDY = re.compile(r"nan_policy\s*=\s*[\"']omit[\"']")


def result_dtype(*dtypes):
    """The float dtype of scores/similarity/normalize for inputs of ``dtypes`` (the contract)."""
    return np.result_type(*dtypes, np.float32)


# -- data ---------------------------------------------------------------------------------------


def random_vectors(rng, n, d, dtype=np.float64):
    """Standard normal rows: no exact ties, near-ties only by chance."""
    return rng.standard_normal((n, d)).astype(dtype)


def clustered_vectors(rng, n, d, n_clusters=4, spread=0.05, dtype=np.float64):
    """Tight clusters around far-apart centres: many near-ties inside each cluster."""
    centres = 3 * rng.standard_normal((n_clusters, d))
    labels = rng.integers(0, n_clusters, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(dtype)


def exact_vectors(rng, n, d, metric, n_distinct=None, dtype=np.float64):
    """Rows drawn with repetition from a few integer-valued vectors: ties are exact, scores exact.

    For cosine every vector has four entries of +-1 and the rest 0 (norm 2), so every cosine is a
    multiple of 1/4, exact in float32; for the other metrics entries are integers in [-3, 3], so
    dot products, squared distances and manhattan distances are small exact integers. Equal
    scores are therefore bitwise equal in any backend, and the tie rule decides alone.
    """
    n_distinct = n_distinct or max(2, n // 3)
    if metric == "cosine":
        assert d >= 4, "exact cosine data needs 4 features"
        pool = np.zeros((n_distinct, d))
        for row in pool:
            row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    else:
        pool = rng.integers(-3, 4, (n_distinct, d)).astype(np.float64)
    return pool[rng.integers(0, n_distinct, n)].astype(dtype)


# -- chunkings ----------------------------------------------------------------------------------


def uneven_chunks(n, weights=(120, 80, 100, 200, 300)):
    """Split ``n`` rows in proportion to ``weights`` (dask's irregular topk test chunks)."""
    edges = np.round(np.cumsum((0,) + weights) / sum(weights) * n).astype(int)
    return tuple(int(size) for size in np.diff(edges) if size > 0)


def split_features(d):
    """An irregular split of the feature axis into up to three chunks."""
    sizes = (1, d // 2 - 1, d - d // 2)
    return tuple(size for size in sizes if size > 0)


class Chunking:
    """A named way to chunk a 2-D NumPy array into a dask array (the ``chunking`` fixture)."""

    KINDS = ("single", "uneven", "one-row", "split-features")

    def __init__(self, kind):
        assert kind in self.KINDS, kind
        self.kind = kind

    def chunks(self, shape):
        n, d = shape
        rows = {
            "single": (n,),
            "uneven": uneven_chunks(n),
            "one-row": (1,) * n,
            "split-features": uneven_chunks(n, weights=(2, 1, 3)),
        }[self.kind]
        features = split_features(d) if self.kind == "split-features" else (d,)
        return rows, features

    def __call__(self, x):
        return None if x is None else da.from_array(x, chunks=self.chunks(x.shape))

    def __repr__(self):
        return f"Chunking({self.kind!r})"


# -- checks -------------------------------------------------------------------------------------


def check_topk(
    result, q, db, k, metric, *, exclude_self=False, exact_ids=False, dtype=None, scheduler=None
):
    """Check a lazy top-k ``result`` against the reference; return the computed (scores, ids).

    ``q`` and ``db`` are the NumPy inputs; ``dtype`` the expected score dtype (default: the
    contract's result dtype of the inputs).
    """
    scores, ids = result
    assert isinstance(scores, da.Array) and isinstance(ids, da.Array), (type(scores), type(ids))
    expected = np.dtype(dtype or result_dtype(q.dtype, db.dtype))
    assert scores.shape == (len(q), k) and ids.shape == (len(q), k), (scores.shape, ids.shape)
    assert scores.dtype == expected and ids.dtype == np.int64, (scores.dtype, ids.dtype)
    scores, ids = dask.compute(scores, ids, scheduler=scheduler)
    assert scores.dtype == expected and ids.dtype == np.int64, (scores.dtype, ids.dtype)
    full = reference_candidates(q, db, metric, exclude_self)
    ref_scores, ref_ids = topk_from_candidates(full, k, metric)
    atol = tolerance(expected, metric, q, db)
    assert_topk_equal(
        scores,
        ids,
        ref_scores,
        ref_ids,
        metric=metric,
        atol=atol,
        ref_full=full,
        exact_ids=exact_ids,
    )
    return scores, ids
