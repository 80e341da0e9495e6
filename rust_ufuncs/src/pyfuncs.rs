//! Plain Python functions (not ufuncs) of `dask_vecops._rust`: the top-k entry point of the
//! Python backend, which can take and return cached database norms, and the thread-count knob.

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::prelude::*;
use numpy::{Element, PyArray1, PyArray2, PyUntypedArray};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::kernels::merge::{merge_partials, Partial};
use crate::kernels::pairwise::Rows;
use crate::kernels::topk::{topk_with, TopkOptions};
use crate::kernels::{simd, threads};
use crate::kernels::{Metric, Real};

fn parse_metric(metric: &str) -> PyResult<Metric> {
    Ok(match metric {
        "cosine" => Metric::Cosine,
        "dot" => Metric::Dot,
        "euclidean" => Metric::Euclidean,
        "manhattan" => Metric::Manhattan,
        _ => {
            return Err(PyValueError::new_err(format!(
                "metric must be one of 'cosine', 'dot', 'euclidean', 'manhattan', got {metric:?}"
            )))
        }
    })
}

/// `x` as a NumPy array of `ndim` dimensions, C-contiguous and aligned (read in place).
fn array<'a, 'py>(
    x: &'a Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    let a = x.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a NumPy array, got {}",
            x.get_type()
        ))
    })?;
    if a.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{name} must have {ndim} dimension(s), got shape {:?}",
            a.shape()
        )));
    }
    if !a.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{name} must be C-contiguous"
        )));
    }
    if !a.is_aligned() && a.len() > 0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be aligned to its dtype"
        )));
    }
    Ok(a)
}

/// `x` unless absent or None: a 1-D array `name` of the dtype of `like` (named `like_name`),
/// with one entry per `each` (`len` of them).
fn float_vector<'a, 'py>(
    x: Option<&'a Bound<'py, PyAny>>,
    name: &str,
    (like, like_name): (&Bound<'py, PyUntypedArray>, &str),
    (len, each): (usize, &str),
) -> PyResult<Option<&'a Bound<'py, PyAny>>> {
    let Some(x) = x.filter(|x| !x.is_none()) else {
        return Ok(None);
    };
    let a = array(x, name, 1)?;
    if !a.dtype().is_equiv_to(&like.dtype()) {
        return Err(PyTypeError::new_err(format!(
            "{name} must have the dtype of {like_name} ({}), got {}",
            like.dtype(),
            a.dtype()
        )));
    }
    if a.shape()[0] != len {
        return Err(PyValueError::new_err(format!(
            "{name} must have one entry per {each} ({len}), got {}",
            a.shape()[0]
        )));
    }
    Ok(Some(x))
}

fn dtype_is<T: Element>(a: &Bound<'_, PyUntypedArray>) -> bool {
    a.dtype().is_equiv_to(&numpy::dtype::<T>(a.py()))
}

/// Exact top-``k`` rows of ``db`` for each row of ``q``, with the database norms for cosine.
///
/// ``topk_block(q, db, k, metric, exclude=None, db_norms=None, lazy_norms=False, bars=None)
/// -> (scores, ids, db_norms)``
///
/// ``q`` (m, d) and ``db`` (n, d): C-contiguous, aligned float32 or float64 arrays of the same
/// dtype (read in place, never copied).
/// ``k >= 0``; ``metric`` one of "cosine", "dot", "euclidean", "manhattan". ``exclude``: None
/// or an int64 array (m,) of ``db`` rows to leave out per query (-1 for none). ``db_norms``:
/// None or the L2 norms (n,) of the ``db`` rows, same dtype, used as given for cosine (never
/// recomputed; ignored by the other metrics).
///
/// Returns ``scores`` (m, k) of the input dtype and ``ids`` (m, k) int64: best first (highest
/// similarity, lowest distance), equal scores to the lower row id, NaN scores never returned,
/// places no row fills padded with (NaN, -1). The third element is, for cosine, the database
/// norms the call used (``db_norms`` itself when given, else the norms computed in the same
/// pass over ``db``, ready to be cached and passed back); None for the other metrics.
///
/// ``lazy_norms=True`` (cosine without ``db_norms``): the call may skip the norms of the rows
/// that cannot enter any top k (a few float32 queries: it bounds them from float32 sums) and
/// then returns None for them, but only when every ``db`` row is finite; the results are the
/// same bits either way.
///
/// ``bars``: None or an array (m,) of the input dtype: per query a score that at least ``k``
/// rows of the whole database (of which ``db`` is a part) are known to reach, or NaN for none.
/// Rows scoring worse are left out from the start, so a query may get fewer than ``k`` rows
/// (padded); rows scoring exactly as well are kept. The scores that are returned are the same
/// bits either way.
///
/// Runs without the GIL, on up to ``get_num_threads()`` threads.
#[pyfunction]
#[pyo3(signature = (q, db, k, metric, exclude=None, db_norms=None, lazy_norms=false, bars=None))]
pub fn topk_block<'py>(
    q: &Bound<'py, PyAny>,
    db: &Bound<'py, PyAny>,
    k: i64,
    metric: &str,
    exclude: Option<&Bound<'py, PyAny>>,
    db_norms: Option<&Bound<'py, PyAny>>,
    lazy_norms: bool,
    bars: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let metric = parse_metric(metric)?;
    if k < 0 {
        return Err(PyValueError::new_err(format!("k must be >= 0, got {k}")));
    }
    let (qa, dba) = (array(q, "q", 2)?, array(db, "db", 2)?);
    if !qa.dtype().is_equiv_to(&dba.dtype()) {
        return Err(PyTypeError::new_err(format!(
            "q and db must have the same dtype, got {} and {}",
            qa.dtype(),
            dba.dtype()
        )));
    }
    if qa.shape()[1] != dba.shape()[1] {
        return Err(PyValueError::new_err(format!(
            "q and db must have the same number of columns, got shapes {:?} and {:?}",
            qa.shape(),
            dba.shape()
        )));
    }
    let (m, n) = (qa.shape()[0], dba.shape()[0]);
    let exclude = match exclude {
        Some(e) if !e.is_none() => {
            let ea = array(e, "exclude", 1)?;
            if !dtype_is::<i64>(ea) {
                return Err(PyTypeError::new_err(format!(
                    "exclude must be an int64 array, got dtype {}",
                    ea.dtype()
                )));
            }
            if ea.shape()[0] != m {
                return Err(PyValueError::new_err(format!(
                    "exclude must have one entry per query ({m}), got {}",
                    ea.shape()[0]
                )));
            }
            Some(ea.cast::<PyArray1<i64>>()?.clone())
        }
        _ => None,
    };
    let norms = float_vector(db_norms, "db_norms", (dba, "db"), (n, "db row"))?;
    let bars = float_vector(bars, "bars", (qa, "q"), (m, "query"))?;
    let k = k as usize;
    let given = Given {
        exclude,
        norms,
        lazy_norms,
        bars,
    };
    if dtype_is::<f32>(qa) {
        run::<f32>(q, db, k, metric, given)
    } else if dtype_is::<f64>(qa) {
        run::<f64>(q, db, k, metric, given)
    } else {
        Err(PyTypeError::new_err(format!(
            "q and db must be float32 or float64 arrays, got dtype {}",
            qa.dtype()
        )))
    }
}

/// `topk_block`'s optional arguments, checked.
struct Given<'a, 'py> {
    exclude: Option<Bound<'py, PyArray1<i64>>>,
    norms: Option<&'a Bound<'py, PyAny>>,
    lazy_norms: bool,
    bars: Option<&'a Bound<'py, PyAny>>,
}

fn run<'py, T: Real + Element>(
    q: &Bound<'py, PyAny>,
    db: &Bound<'py, PyAny>,
    k: usize,
    metric: Metric,
    given: Given<'_, 'py>,
) -> PyResult<Bound<'py, PyTuple>> {
    let Given {
        exclude,
        norms: db_norms,
        lazy_norms,
        bars,
    } = given;
    let py = q.py();
    let (q, db) = (q.cast::<PyArray2<T>>()?, db.cast::<PyArray2<T>>()?);
    let (q_ro, db_ro) = (q.try_readonly()?, db.try_readonly()?);
    let (m, d, n) = (q.shape()[0], q.shape()[1], db.shape()[0]);
    let exclude_ro = exclude.as_ref().map(|e| e.try_readonly()).transpose()?;
    let norms_in = db_norms
        .map(|x| x.cast::<PyArray1<T>>().cloned())
        .transpose()?;
    let norms_ro = norms_in.as_ref().map(|a| a.try_readonly()).transpose()?;
    let bars_in = bars.map(|x| x.cast::<PyArray1<T>>().cloned()).transpose()?;
    let bars_ro = bars_in.as_ref().map(|a| a.try_readonly()).transpose()?;
    let scores = PyArray2::<T>::zeros(py, [m, k], false);
    let ids = PyArray2::<i64>::zeros(py, [m, k], false);
    let mut computed = (metric == Metric::Cosine && norms_in.is_none())
        .then(|| PyArray1::<T>::zeros(py, n, false));
    {
        let mut s_rw = scores.try_readwrite()?;
        let mut i_rw = ids.try_readwrite()?;
        let mut n_rw = computed.as_ref().map(|a| a.try_readwrite()).transpose()?;
        let (q_s, db_s) = (q_ro.as_slice()?, db_ro.as_slice()?);
        let exclude_s = exclude_ro.as_ref().map(|e| e.as_slice()).transpose()?;
        let norms_s = norms_ro.as_ref().map(|a| a.as_slice()).transpose()?;
        let bars_s = bars_ro.as_ref().map(|a| a.as_slice()).transpose()?;
        let s = s_rw.as_slice_mut()?;
        let i = i_rw.as_slice_mut()?;
        let norms_out = n_rw.as_mut().map(|a| a.as_slice_mut()).transpose()?;
        let threads = threads::num_threads();
        let outcome = py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let options = TopkOptions {
                    exclude: exclude_s,
                    db_norms: norms_s,
                    norms_out,
                    lazy_norms,
                    bars: bars_s,
                    threads,
                };
                topk_with(
                    metric,
                    Rows::new(q_s, m, d),
                    Rows::new(db_s, n, d),
                    k,
                    options,
                    s,
                    i,
                )
            }))
        });
        match outcome {
            Ok(true) => {}
            // Every row finite, and the norms not needed: none to return.
            Ok(false) => computed = None,
            Err(payload) => {
                let detail = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                return Err(PyRuntimeError::new_err(format!(
                    "topk_block: Rust panic: {detail}"
                )));
            }
        }
    }
    let third: Bound<'py, PyAny> = match (metric, computed, db_norms) {
        (Metric::Cosine, Some(c), _) => c.into_any(),
        (Metric::Cosine, None, Some(given)) => given.clone(),
        _ => py.None().into_bound(py),
    };
    PyTuple::new(py, [scores.into_any(), ids.into_any(), third])
}

/// The best ``k`` of each row's candidates in several partial top-k results.
///
/// ``merge_topk(scores, ids, k, higher) -> (scores, ids)``
///
/// ``scores``: a list of C-contiguous, aligned float32 or float64 arrays (all one dtype), each
/// ``(m, width)`` with any width; ``ids``: the matching int64 arrays. ``higher``: larger scores
/// are better (similarities), else smaller (distances).
///
/// Returns ``scores`` (m, k) of the input dtype and ``ids`` (m, k) int64 in the ranking of
/// ``topk_block``: best first, equal scores to the lower id, candidates with a NaN score or an
/// id below zero (padding) never chosen, places no candidate fills padded with (NaN, -1).
/// Runs without the GIL, on up to ``get_num_threads()`` threads for large merges.
#[pyfunction]
pub fn merge_topk<'py>(
    scores: Vec<Bound<'py, PyAny>>,
    ids: Vec<Bound<'py, PyAny>>,
    k: i64,
    higher: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    if k < 0 {
        return Err(PyValueError::new_err(format!("k must be >= 0, got {k}")));
    }
    if scores.is_empty() || scores.len() != ids.len() {
        return Err(PyValueError::new_err(format!(
            "scores and ids must be non-empty lists of the same length, got {} and {}",
            scores.len(),
            ids.len()
        )));
    }
    let first = array(&scores[0], "scores[0]", 2)?;
    let (dtype, m) = (first.dtype(), first.shape()[0]);
    for (p, (s, i)) in scores.iter().zip(&ids).enumerate() {
        let (sa, ia) = (array(s, "scores", 2)?, array(i, "ids", 2)?);
        if !sa.dtype().is_equiv_to(&dtype) {
            return Err(PyTypeError::new_err(format!(
                "scores must all have one dtype, got {dtype} and {} (part {p})",
                sa.dtype()
            )));
        }
        if !dtype_is::<i64>(ia) {
            return Err(PyTypeError::new_err(format!(
                "ids must be int64 arrays, got dtype {} (part {p})",
                ia.dtype()
            )));
        }
        if sa.shape() != ia.shape() || sa.shape()[0] != m {
            return Err(PyValueError::new_err(format!(
                "part {p}: scores {:?} and ids {:?} must have the same shape, with {m} rows",
                sa.shape(),
                ia.shape()
            )));
        }
    }
    if dtype_is::<f32>(first) {
        merge::<f32>(&scores, &ids, m, k as usize, higher)
    } else if dtype_is::<f64>(first) {
        merge::<f64>(&scores, &ids, m, k as usize, higher)
    } else {
        Err(PyTypeError::new_err(format!(
            "scores must be float32 or float64 arrays, got dtype {dtype}"
        )))
    }
}

fn merge<'py, T: Real + Element>(
    scores: &[Bound<'py, PyAny>],
    ids: &[Bound<'py, PyAny>],
    m: usize,
    k: usize,
    higher: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = scores[0].py();
    let (mut s_in, mut i_in) = (Vec::new(), Vec::new());
    for (s, i) in scores.iter().zip(ids) {
        s_in.push(s.cast::<PyArray2<T>>()?.clone());
        i_in.push(i.cast::<PyArray2<i64>>()?.clone());
    }
    let s_ro = s_in
        .iter()
        .map(|a| a.try_readonly())
        .collect::<Result<Vec<_>, _>>()?;
    let i_ro = i_in
        .iter()
        .map(|a| a.try_readonly())
        .collect::<Result<Vec<_>, _>>()?;
    let mut parts = Vec::with_capacity(s_ro.len());
    for (s, i) in s_ro.iter().zip(&i_ro) {
        parts.push(Partial {
            scores: s.as_slice()?,
            ids: i.as_slice()?,
            width: s.shape()[1],
        });
    }
    let out_s = PyArray2::<T>::zeros(py, [m, k], false);
    let out_i = PyArray2::<i64>::zeros(py, [m, k], false);
    {
        let (mut s_rw, mut i_rw) = (out_s.try_readwrite()?, out_i.try_readwrite()?);
        let (s, i) = (s_rw.as_slice_mut()?, i_rw.as_slice_mut()?);
        let threads = threads::num_threads();
        py.detach(|| merge_partials(&parts, m, k, higher, threads, s, i));
    }
    PyTuple::new(py, [out_s.into_any(), out_i.into_any()])
}

/// Sets how many threads each kernel call may use (``n >= 1``; default from the environment
/// variable ``DASK_VECOPS_NUM_THREADS``, else 1). With ``n > 1`` the top-k and all-pairs
/// kernels split their work over one shared, lazily built pool of ``n`` threads. Keep 1 under
/// a Dask scheduler that already runs one task per core (see docs/threads.md).
#[pyfunction]
pub fn set_num_threads(n: i64) -> PyResult<()> {
    if n < 1 {
        return Err(PyValueError::new_err(format!(
            "the number of threads must be >= 1, got {n}"
        )));
    }
    threads::set_num_threads(n as usize);
    Ok(())
}

/// How many threads each kernel call may use (see ``set_num_threads``).
#[pyfunction]
pub fn get_num_threads() -> usize {
    threads::num_threads()
}

/// The instruction set the kernels use (``avx512bf16``, ``avx512``, ``avx2`` or ``portable``):
/// the best this CPU has, capped by the environment variable ``DASK_VECOPS_ISA`` when set.
/// ``avx512bf16`` is AVX-512 plus a bfloat16 filter in front of the exact kernel for 17 to
/// 128 queries (more in groups of 128 on a large database with a small k), with the same bits
/// as ``avx512``.
///
/// >>> from dask_vecops import ufuncs
/// >>> ufuncs.kernel_isa() in ("avx512bf16", "avx512", "avx2", "portable")
/// True
#[pyfunction]
pub fn kernel_isa() -> &'static str {
    simd::detect().name()
}

/// The best instruction set of this CPU (``avx512bf16``, ``avx512``, ``avx2`` or ``portable``),
/// whatever ``DASK_VECOPS_ISA`` says.
///
/// >>> from dask_vecops import ufuncs
/// >>> order = ["portable", "avx2", "avx512", "avx512bf16"]
/// >>> order.index(ufuncs.kernel_isa()) <= order.index(ufuncs.best_isa())
/// True
#[pyfunction]
pub fn best_isa() -> &'static str {
    simd::best().name()
}
