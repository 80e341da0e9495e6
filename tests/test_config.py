"""Configuration through dask.config (and its environment variables) and dv.backends()."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

import dask_vecops as dv

from . import OMIT_REMEDY, check_topk, match_all, raise_if_dask_computes, random_vectors

ROOT = Path(__file__).resolve().parent.parent


def test_defaults():
    assert dask.config.get("vecops.backend") == "auto"
    assert dask.config.get("vecops.nan-policy") == "raise"
    assert dask.config.get("vecops.split-every") == 8
    assert dask.config.get("vecops.memory-budget") == "auto"


# -- backends() -----------------------------------------------------------------------------------


def test_backends_lists_every_backend_with_a_reason():
    entries = dv.backends()
    names = [entry.name for entry in entries]
    assert {"numpy", "scipy", "rust", "cuda"} <= set(names), names
    assert len(names) == len(set(names)), names
    for entry in entries:
        assert isinstance(entry.available, bool), entry
        assert isinstance(entry.reason, str), entry
        assert (entry.reason == "") == entry.available, entry
    by_name = {entry.name: entry for entry in entries}
    assert by_name["numpy"].available and by_name["scipy"].available


@pytest.mark.parametrize("name", [entry.name for entry in dv.backends() if entry.available])
def test_every_available_backend_can_be_requested(name, rng):
    if name == "cuda":
        pytest.skip("cuda takes CuPy chunks: tested on a GPU")
    db = random_vectors(rng, 20, 4)
    check_topk(dv.topk(db[:5], 3, database=db, backend=name), db[:5], db, 3, "cosine")


# -- vecops.backend -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["numpy", "scipy", "auto"])
def test_config_backend_gives_correct_results(name, metric, rng):
    q, db = random_vectors(rng, 7, 5), random_vectors(rng, 30, 5)
    with dask.config.set({"vecops.backend": name}):
        lazy = dv.topk(q, 4, database=da.from_array(db, chunks=8), metric=metric)
        sim = dv.similarity(q, db, metric=metric)
    scores, ids = check_topk(lazy, q, db, 4, metric)
    explicit = dv.topk(q, 4, database=da.from_array(db, chunks=8), metric=metric, backend=name)
    if name != "auto":  # same backend, same graph: the very same numbers
        np.testing.assert_array_equal(ids, explicit[1].compute())
        np.testing.assert_array_equal(scores, explicit[0].compute())
        np.testing.assert_array_equal(
            sim.compute(), dv.similarity(q, db, metric=metric, backend=name).compute()
        )


def test_config_backend_unknown_raises_at_call_time(rng):
    x = random_vectors(rng, 10, 4)
    with dask.config.set({"vecops.backend": "fortran"}), raise_if_dask_computes():
        for call in (lambda: dv.topk(x, 2), lambda: dv.similarity(x), lambda: dv.normalize(x)):
            with pytest.raises(ValueError, match=match_all("fortran", "numpy")):
                call()


def test_explicit_backend_overrides_config(rng):
    x = random_vectors(rng, 10, 4)
    with dask.config.set({"vecops.backend": "fortran"}):
        check_topk(dv.topk(x, 2, backend="numpy"), x, x, 2, "cosine", exclude_self=True)
        dv.normalize(x, backend="scipy").compute()


def test_config_backend_unavailable_raises(rng):
    unavailable = [entry for entry in dv.backends() if not entry.available]
    if not unavailable:
        pytest.skip("every backend is available here")
    entry = unavailable[0]
    x = random_vectors(rng, 10, 4)
    with dask.config.set({"vecops.backend": entry.name}):
        with pytest.raises(dv.BackendUnavailableError):
            dv.topk(x, 2)
        dv.topk(x, 2, backend="auto")[0].compute()  # auto never raises: it falls back


# -- vecops.nan-policy -----------------------------------------------------------------------------


def test_config_nan_policy_omit(rng):
    db = random_vectors(rng, 20, 4)
    db[[3, 8], 1] = np.nan
    with dask.config.set({"vecops.nan-policy": "omit"}):
        result = dv.topk(db[:5], 4, database=db)
        y = dv.normalize(db)
    _, ids = check_topk(result, db[:5], db, 4, "cosine")
    assert not np.isin(ids, [3, 8]).any()
    np.testing.assert_array_equal(ids[3], -1)
    assert np.isnan(y.compute()[[3, 8]]).all()


def test_config_nan_policy_overridden_by_argument(rng):
    db = random_vectors(rng, 20, 4)
    db[8, 1] = np.inf
    with dask.config.set({"vecops.nan-policy": "omit"}):
        lazy = dv.topk(db, 4, nan_policy="raise")
    with pytest.raises(dv.NonFiniteError, match=match_all(8, OMIT_REMEDY)):
        lazy[0].compute()


def test_config_nan_policy_unknown_raises_at_call_time(rng):
    x = random_vectors(rng, 10, 4)
    with dask.config.set({"vecops.nan-policy": "ignore"}), raise_if_dask_computes():
        with pytest.raises(ValueError, match=match_all("ignore", "omit")):
            dv.topk(x, 2)


# -- vecops.split-every and vecops.memory-budget -------------------------------------------------


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_config_split_every(split_every, metric, rng):
    db = random_vectors(rng, 200, 6, np.float32)
    q = random_vectors(rng, 12, 6, np.float32)
    x = da.from_array(db, chunks=((20, 50, 10, 30, 40, 50), (6,)))
    with dask.config.set({"vecops.split-every": split_every}):
        check_topk(dv.topk(q, 7, database=x, metric=metric), q, db, 7, metric)


@pytest.mark.parametrize("budget", ["2KiB", "16KiB", "1GiB"])
def test_config_memory_budget(budget, backend, rng):
    # A small budget splits the queries into many batches; the answer must not change.
    db = random_vectors(rng, 150, 16)
    q = random_vectors(rng, 120, 16)
    with dask.config.set({"vecops.memory-budget": budget}):
        result = dv.topk(
            da.from_array(q, chunks=50), 6, database=da.from_array(db, chunks=40), backend=backend
        )
        self_result = dv.topk(db, 6, metric="euclidean", backend=backend)
    check_topk(result, q, db, 6, "cosine")
    check_topk(self_result, db, db, 6, "euclidean", exclude_self=True)


# -- environment variables (read when dask.config refreshes: in a fresh process) ------------------

_PROBE = textwrap.dedent(
    """
    import json, numpy as np, dask, dask_vecops as dv
    keys = ("backend", "nan-policy", "split-every")
    out = {key: dask.config.get("vecops." + key) for key in keys}
    x = np.random.default_rng(0).standard_normal((12, 4))
    x[5, 0] = np.nan
    try:
        scores, ids = dv.topk(x, 2)
        out["ids5"] = ids.compute()[5].tolist()
    except Exception as error:
        out["error"] = type(error).__name__ + ": " + str(error)
    print(json.dumps(out))
    """
)


def run_probe(**env):
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DASK_VECOPS")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_env_backend_and_nan_policy():
    out = run_probe(DASK_VECOPS__BACKEND="numpy", DASK_VECOPS__NAN_POLICY="omit")
    assert out["backend"] == "numpy" and out["nan-policy"] == "omit", out
    assert out.get("ids5") == [-1, -1], out


def test_env_defaults_and_unknown_backend():
    out = run_probe()
    assert out["backend"] == "auto" and out["nan-policy"] == "raise" and out["split-every"] == 8, (
        out
    )
    assert out.get("error", "").startswith("NonFiniteError"), out  # raise is the default policy
    out = run_probe(DASK_VECOPS__BACKEND="fortran")
    assert out["backend"] == "fortran", out
    assert out.get("error", "").startswith("ValueError") and "fortran" in out["error"], out
