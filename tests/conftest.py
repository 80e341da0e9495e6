import os
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from . import METRICS, SIMULATOR, Chunking, requires_rust

# CI: few examples, no deadline (dask graphs and the first compute are slow to warm up), no
# example database written into the repository.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["numpy", "scipy", pytest.param("rust", marks=requires_rust)])
def backend(request):
    """Every CPU backend, each compared with the float64 NumPy reference."""
    return request.param


@pytest.fixture(params=METRICS)
def metric(request):
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=Chunking.KINDS)
def chunking(request):
    """Uneven row chunks, one-row chunks, a split feature axis, a single chunk."""
    return Chunking(request.param)


@pytest.fixture
def fast_simulator():
    """Simulated threads hand the GIL over often: ten times faster kernels in Numba's CUDA
    simulator, where each simulated thread is an OS thread."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5 if SIMULATOR else interval)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id: reproducible, but different data for each test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def pytest_sessionstart(session):
    """In CI the Rust backend must be there: a broken build must fail, not skip a third of the suite."""
    from . import has_rust

    if os.environ.get("CI") and not has_rust:
        raise pytest.UsageError("CI is set but the Rust backend is unavailable: run `make build`")
