"""The Numba CUDA kernels on their own: scalar helpers compiled on the CPU, the kernels (simulated
without a GPU) against NumPy, and every kernel compiled to PTX, which catches typing errors the
simulator cannot see."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from . import has_cuda, requires_cuda, requires_gpu

pytest.importorskip("numba")
pytestmark = [requires_cuda, pytest.mark.usefixtures("fast_simulator")]


@pytest.fixture
def launch():
    """The launchers: NumPy in and out (on a GPU they copy to the device and back)."""
    from numba_kernels import launch

    return launch


# -- scalar helpers, compiled by Numba on the CPU ------------------------------------------------

SPECIAL = [0.0, -0.0, 1e-42, -1e-42, 1.0, -1.0, 3.5, -3.5, np.inf, -np.inf, 1e30, -1e30]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("larger_better", [True, False])
def test_order_key_sorts_like_the_values(dtype, larger_better):
    from numba_kernels._device import KeyBits, order_key

    rng = np.random.default_rng(0)
    values = np.concatenate([SPECIAL, rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200)])
    values = values.astype(dtype)
    c = KeyBits(8 * np.dtype(dtype).itemsize)
    bits = values.view(np.uint32 if dtype == np.float32 else np.uint64)
    keys = np.array(
        [order_key(b, larger_better, c.all_ones, c.sign, c.magnitude, c.inf) for b in bits],
        dtype=np.uint64,
    )
    ranked = -values.astype(np.float64) if larger_better else values.astype(np.float64)
    # Keys order exactly as the values do, equal values (0.0 and -0.0 included) get equal keys.
    assert ((keys[:, None] < keys[None, :]) == (ranked[:, None] < ranked[None, :])).all()
    assert ((keys[:, None] == keys[None, :]) == (ranked[:, None] == ranked[None, :])).all()
    assert (keys < c.all_ones).all()
    nan_bits = np.array([np.nan, -np.nan], dtype=dtype).view(bits.dtype)
    for b in nan_bits:
        assert order_key(b, larger_better, c.all_ones, c.sign, c.magnitude, c.inf) == c.all_ones


@pytest.mark.parametrize("kind", ["l2", "l1", "max"])
def test_norm_helpers_match_numpy(kind):
    from numba_kernels._device import NORM_KINDS, norm_finish, norm_merge, norm_step

    x = np.random.default_rng(1).standard_normal(37).astype(np.float32)
    code = NORM_KINDS[kind]
    halves = []
    for part in (x[:20], x[20:]):
        acc = 0.0
        for value in part:
            acc = norm_step(acc, value, code)
        halves.append(acc)
    norm = norm_finish(norm_merge(halves[0], halves[1], code), code)
    ords = {"l2": 2, "l1": 1, "max": np.inf}
    np.testing.assert_allclose(norm, np.linalg.norm(x.astype(np.float64), ords[kind]), rtol=1e-12)


# -- kernels (simulated without a GPU) -----------------------------------------------------------


def _lexsort_topk(scores, ids, k, larger_better):
    """Reference: best k of each row by (score, id), NaN never chosen, padding (NaN, -1)."""
    key = np.where(np.isnan(scores), np.inf, -scores if larger_better else scores)
    out_scores = np.full((len(scores), k), np.nan, scores.dtype)
    out_ids = np.full((len(scores), k), -1, np.int64)
    for r in range(len(scores)):
        order = np.lexsort((ids[r], key[r]))
        order = order[~np.isnan(scores[r, order])][:k]
        out_scores[r, : len(order)], out_ids[r, : len(order)] = scores[r, order], ids[r, order]
    return out_scores, out_ids


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("larger_better", [True, False])
@pytest.mark.parametrize("k", [1, 5, 33])
def test_topk_rows_ties_go_to_the_lower_id(launch, dtype, larger_better, k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, (5, 40)).astype(dtype)  # many exact ties at every threshold
    scores[0, :3] = -0.0
    scores[1, ::3] = np.nan
    ids = rng.permutation(1000)[:200].reshape(5, 40).astype(np.int64)
    got = launch.topk_rows(scores, k, larger_better, ids=ids)
    want = _lexsort_topk(scores, ids, k, larger_better)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("k", [3, 9])
def test_topk_rows_exclude_and_padding(launch, k):
    scores = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    exclude = np.array([0, 5, -1, 17])  # -1 and 17: nothing to leave out
    got_scores, got_ids = launch.topk_rows(scores, k, True, exclude=exclude)
    masked = scores.copy()
    masked[0, 0] = masked[1, 5] = np.nan
    want = _lexsort_topk(masked, np.broadcast_to(np.arange(6), (4, 6)), k, True)
    np.testing.assert_array_equal(got_ids, want[1])
    np.testing.assert_array_equal(got_scores, want[0])
    assert (got_ids[:, 6:] == -1).all() and np.isnan(got_scores[:, 6:]).all()


def test_topk_rows_padding_never_displaces_numbers(launch):
    # Merged partial results: two numbers among padding (NaN, id -1), fewer than k. The padding
    # ties with itself at the worst key and must not take the numbers' places.
    scores = np.full((8, 40), np.nan, np.float32)
    ids = np.full((8, 40), -1, np.int64)
    for row in range(8):
        scores[row, [row, 39 - row]] = [0.5, 0.25]
        ids[row, [row, 39 - row]] = [7, 3]
    got_scores, got_ids = launch.topk_rows(scores, 4, True, ids=ids)
    assert (got_ids == [7, 3, -1, -1]).all(), got_ids
    assert (got_scores[:, :2] == [0.5, 0.25]).all() and np.isnan(got_scores[:, 2:]).all()


def test_topk_rows_sorts_beyond_a_power_of_two(launch):
    # k = 70 sorts 128 slots, 58 of them padding, in the scratch rows.
    scores = np.random.default_rng(3).standard_normal((3, 100))
    got = launch.topk_rows(scores, 70, False)
    want = _lexsort_topk(scores, np.broadcast_to(np.arange(100), scores.shape), 70, False)
    np.testing.assert_array_equal(got[1], want[1])


def test_topk_rows_empty_inputs(launch):
    scores, ids = launch.topk_rows(np.empty((3, 0), np.float32), 2, True)
    assert np.isnan(scores).all() and (ids == -1).all() and scores.shape == (3, 2)
    scores, ids = launch.topk_rows(np.empty((0, 5), np.float32), 2, True)
    assert scores.shape == ids.shape == (0, 2)


def _hard_rows(rng, dtype, cols):
    """Score rows that test selection: exact ties everywhere, NaN, -0.0, infinities, short rows."""
    scores = rng.integers(0, 6, (7, cols)).astype(dtype)
    scores[0, ::7] = -0.0
    scores[1, ::2] = np.nan
    scores[2, : cols - 3] = np.nan  # fewer numbers than k
    scores[3, ::5] = np.inf
    scores[3, 1::5] = -np.inf
    scores[4] = np.nan  # nothing to choose
    scores[5] = 1.5  # every entry reaches any bar: the first pass's buffer overflows
    return scores


def _masked(scores, exclude):
    masked = scores.copy()
    for row, col in enumerate(exclude):
        if 0 <= col < scores.shape[1]:
            masked[row, col] = np.nan
    return masked


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("larger_better", [True, False])
@pytest.mark.parametrize("k", [1, 4, 32])
@pytest.mark.parametrize("blocks_per_sm", [1, 64], ids=["one-segment", "segments"])
def test_first_pass_keeps_the_exact_top_k(
    launch, monkeypatch, dtype, larger_better, k, blocks_per_sm
):
    monkeypatch.setattr(launch, "SCAN_BLOCKS_PER_SM", blocks_per_sm)
    rng = np.random.default_rng(k)
    scores = _hard_rows(rng, dtype, 300)
    exclude = np.array([5, -1, 299, 0, 3, 1000, 7])
    got = launch.topk_rows(scores, k, larger_better, exclude=exclude, first_pass=True)
    ids = np.broadcast_to(np.arange(300), scores.shape)
    want = _lexsort_topk(_masked(scores, exclude), ids, k, larger_better)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert np.signbit(got[0]).tolist() == np.signbit(want[0]).tolist()  # -0.0 keeps its bits


def test_first_pass_is_chosen_for_long_rows_and_small_k(launch, monkeypatch):
    calls = []
    first_pass = launch._first_pass
    monkeypatch.setattr(launch, "_first_pass", lambda *a: calls.append(a[2]) or first_pass(*a))
    long_enough = launch.SCAN_COLUMNS_PER_THREAD * launch.SCAN_THREADS
    scores = _hard_rows(np.random.default_rng(0), np.float32, long_enough)
    ids = np.broadcast_to(np.arange(long_enough), scores.shape)
    for k in (3, 32, 33):
        got = launch.topk_rows(scores, k, True)
        np.testing.assert_array_equal(got[1], _lexsort_topk(scores, ids, k, True)[1])
    assert calls == [3, 32]
    launch.topk_rows(scores, 3, True, ids=np.ascontiguousarray(ids))  # merges: never
    launch.topk_rows(scores[:, :-1], 3, True)  # rows too short
    assert calls == [3, 32]


def test_first_pass_refuses_what_it_cannot_do(launch):
    scores = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError, match="no ids and k <= 32"):
        launch.topk_rows(scores, 33, True, first_pass=True)
    with pytest.raises(ValueError, match="no ids"):
        launch.topk_rows(scores, 3, True, ids=np.zeros((2, 100), np.int64), first_pass=True)
    scores, ids = launch.topk_rows(np.empty((2, 0), np.float32), 3, True, first_pass=True)
    assert np.isnan(scores).all() and (ids == -1).all()


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k", [1, 10, 32])
def test_first_pass_on_gpu_sized_rows(launch, k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 50_000, (40, 300_000)).astype(np.float32)  # ties at every k
    scores[0, ::3] = np.nan
    scores[1] = 7.0  # every segment's buffer overflows: the exact selection redoes the row
    scores[2, 1000:] = np.nan  # segments with nothing to choose
    exclude = rng.integers(-1, 300_000, 40)
    first = launch.topk_rows(scores, k, True, exclude=exclude, first_pass=True)
    exact = launch.topk_rows(scores, k, True, exclude=exclude, first_pass=False)
    ids = np.broadcast_to(np.arange(300_000), scores.shape)
    want = _lexsort_topk(_masked(scores, exclude), ids, k, True)
    for got in (first, exact):
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("norm", ["l2", "l1", "max"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernels_match_numpy(launch, norm, dtype):
    x = np.random.default_rng(4).standard_normal((5, 13)).astype(dtype)
    x[2] = 0
    ords = {"l2": 2, "l1": 1, "max": np.inf}
    expected = np.linalg.norm(x.astype(np.float64), ords[norm], axis=1)
    np.testing.assert_allclose(launch.row_norms(x, norm), expected, rtol=1e-6)
    out = launch.normalize_rows(x, norm)
    assert out.dtype == dtype
    scale = np.where(expected == 0, 1, expected)[:, None]
    np.testing.assert_allclose(out, x / scale, rtol=1e-6, atol=1e-7)
    assert (out[2] == 0).all()


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_distance_kernel_is_exact_for_near_rows(launch, metric):
    from scipy.spatial.distance import cdist

    a = np.random.default_rng(5).standard_normal((6, 9)).astype(np.float32) + 1000
    b = np.concatenate([a[:3] + np.float32(1e-3), a[3:]])  # nearly equal and equal rows
    got = launch.distances(a, b, metric)
    want = cdist(a.astype(np.float64), b.astype(np.float64), "cityblock" if metric == "manhattan" else metric)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# -- PTX: the real compiler's typing ------------------------------------------------------------

PTX_CHECK = textwrap.dedent(
    """
    import types

    import numba.cuda.dispatcher
    from numba import cuda
    from numba_kernels import norms, pairwise, scan, select

    # Device functions ask the current GPU for its compute capability; there is none here.
    numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(
        compute_capability=(9, 0)
    )

    for f, u in (("float32", "uint32"), ("float64", "uint64")):
        sigs = [
            (norms.row_norms_kernel, f"void({f}[:, ::1], int64, float64[::1])"),
            (norms.normalize_rows_kernel, f"void({f}[:, ::1], int64, {f}[:, ::1])"),
            (pairwise.distances_kernel, f"void({f}[:, ::1], {f}[:, ::1], int64, {f}[:, ::1])"),
            (select.topk_rows_kernel(32 if f == "float32" else 64),
             f"void({f}[:, ::1], {u}[:, ::1], int64[:, ::1], boolean, int64[::1], boolean,"
             f" boolean, int64, int64, uint64[:, ::1], int64[:, ::1], int64[:, ::1],"
             f" {f}[:, ::1], int64[:, ::1], boolean, int32[::1])"),
            (scan.bar_select_kernel(32 if f == "float32" else 64, 1024),
             f"void({f}[:, ::1], {u}[:, ::1], int64[::1], boolean, boolean, int64, int64,"
             f" {f}[:, ::1], int64[:, ::1], int32[::1])"),
        ]
        for kernel, sig in sigs:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx, kernel
            # Mixing uint64 with signed integers would make Numba compute keys in float64.
            assert "cvt.rn.f64.u64" not in ptx and "cvt.rn.f64.s64" not in ptx, kernel
            print(kernel.py_func.__name__, f, len(ptx))
    """
)


def test_every_kernel_compiles_to_ptx():
    # The simulator only runs Python; PTX needs Numba's real CUDA target (NVVM, no GPU needed).
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run(
        [sys.executable, "-c", PTX_CHECK], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("\n") == 10, done.stdout


def test_cuda_backend_reports_itself_available():
    assert has_cuda
