//! dask-vecops' Rust part: exact vector operations as real NumPy ufuncs (`dask_vecops._rust`).
//!
//! `kernels` is pure Rust on slices (tested with `cargo test --no-default-features`); `ufunc`
//! adapts NumPy's strided loops to it; `pyfuncs` holds the plain functions (`topk_block`,
//! `set_num_threads`, `get_num_threads`); this file only registers them.

pub mod kernels;

#[cfg(feature = "python")]
mod pyfuncs;
#[cfg(feature = "python")]
mod ufunc;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use kernels::elementwise::BinaryOp;
    use kernels::normalize::Norm;
    use kernels::Metric;
    use ufunc::{add_ufunc, Arg, Identity, UfuncSpec};

    const R: Arg = Arg::Real;
    const I: Arg = Arg::Index;

    let gufunc = |name, signature, inputs, outputs, loops, doc| UfuncSpec {
        name,
        doc,
        signature: Some(signature),
        inputs,
        outputs,
        identity: Identity::None,
        loops,
    };

    for (name, kind, doc) in [
        (c"normalize_l2", Norm::L2, NORMALIZE_L2_DOC),
        (c"normalize_l1", Norm::L1, NORMALIZE_L1_DOC),
        (c"normalize_max", Norm::Max, NORMALIZE_MAX_DOC),
    ] {
        add_ufunc(
            m,
            gufunc(
                name,
                c"(d)->(d)",
                &[R],
                &[R],
                ufunc::normalize_loops(kind),
                doc,
            ),
        )?;
    }
    for (name, kind, doc) in [
        (c"norm_l2", Norm::L2, NORM_L2_DOC),
        (c"norm_l1", Norm::L1, NORM_L1_DOC),
        (c"norm_max", Norm::Max, NORM_MAX_DOC),
    ] {
        add_ufunc(
            m,
            gufunc(name, c"(d)->()", &[R], &[R], ufunc::norm_loops(kind), doc),
        )?;
    }
    for (name, metric, doc) in [
        (c"cosine", Metric::Cosine, COSINE_DOC),
        (c"dot", Metric::Dot, DOT_DOC),
        (c"euclidean", Metric::Euclidean, EUCLIDEAN_DOC),
        (c"manhattan", Metric::Manhattan, MANHATTAN_DOC),
    ] {
        add_ufunc(
            m,
            gufunc(
                name,
                c"(d),(n,d)->(n)",
                &[R, R],
                &[R],
                ufunc::pairwise_loops(metric),
                doc,
            ),
        )?;
    }
    for (name, metric, doc) in [
        (c"topk_cosine", Metric::Cosine, TOPK_COSINE_DOC),
        (c"topk_dot", Metric::Dot, TOPK_DOT_DOC),
        (c"topk_euclidean", Metric::Euclidean, TOPK_EUCLIDEAN_DOC),
        (c"topk_manhattan", Metric::Manhattan, TOPK_MANHATTAN_DOC),
    ] {
        let loops = ufunc::topk_loops(metric);
        add_ufunc(
            m,
            gufunc(
                name,
                c"(d),(n,d),()->(k),(k)",
                &[R, R, I],
                &[R, I],
                loops,
                doc,
            ),
        )?;
    }
    for (name, op, identity, doc) in [
        (c"add", BinaryOp::Add, Identity::Zero, ADD_DOC),
        (
            c"subtract",
            BinaryOp::Subtract,
            Identity::None,
            SUBTRACT_DOC,
        ),
        (c"multiply", BinaryOp::Multiply, Identity::One, MULTIPLY_DOC),
        (c"divide", BinaryOp::Divide, Identity::None, DIVIDE_DOC),
    ] {
        let loops = ufunc::binary_loops(op);
        add_ufunc(
            m,
            UfuncSpec {
                name,
                doc,
                signature: None,
                inputs: &[R, R],
                outputs: &[R],
                identity,
                loops,
            },
        )?;
    }
    add_ufunc(
        m,
        gufunc(
            c"scale",
            c"(d),()->(d)",
            &[R, R],
            &[R],
            ufunc::scale_loops(),
            SCALE_DOC,
        ),
    )?;
    add_ufunc(
        m,
        gufunc(
            c"_panic_check",
            c"(d)->()",
            &[R],
            &[R],
            ufunc::panic_loops(),
            PANIC_CHECK_DOC,
        ),
    )?;
    m.add_function(wrap_pyfunction!(pyfuncs::topk_block, m)?)?;
    m.add_function(wrap_pyfunction!(pyfuncs::merge_topk, m)?)?;
    m.add_function(wrap_pyfunction!(pyfuncs::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(pyfuncs::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(pyfuncs::kernel_isa, m)?)?;
    m.add_function(wrap_pyfunction!(pyfuncs::best_isa, m)?)?;
    add_ufunc(
        m,
        gufunc(
            c"_gil_held",
            c"(d)->()",
            &[R],
            &[R],
            ufunc::gil_held_loops(),
            GIL_HELD_DOC,
        ),
    )?;
    Ok(())
}

// The ufuncs' docstrings (NumPy prepends the call signature). Their examples run as doctests
// through `dask_vecops.ufuncs.__test__`.

#[cfg(feature = "python")]
use std::ffi::CStr;

#[cfg(feature = "python")]
const NORMALIZE_L2_DOC: &CStr = c"Each row divided by its L2 norm (Euclidean length).

Signature ``(d)->(d)``, loops float32 then float64 (other inputs cast; ints use float64).
Norms are accumulated in float64. Zero rows stay zero; NaN and inf propagate as IEEE
division gives, without floating-point warnings.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.normalize_l2(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
array([[0.6, 0.8],
       [0. , 0. ]], dtype=float32)
";

#[cfg(feature = "python")]
const NORMALIZE_L1_DOC: &CStr = c"Each row divided by its L1 norm (sum of absolute values).

Signature ``(d)->(d)``, loops float32 then float64. Zero rows stay zero.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.normalize_l1(np.array([[1.0, -3.0], [0.0, 0.0]]))
array([[ 0.25, -0.75],
       [ 0.  ,  0.  ]])
";

#[cfg(feature = "python")]
const NORMALIZE_MAX_DOC: &CStr = c"Each row divided by its largest absolute value.

Signature ``(d)->(d)``, loops float32 then float64. Zero rows stay zero.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.normalize_max(np.array([[1.0, -4.0, 2.0]]))
array([[ 0.25, -1.  ,  0.5 ]])
";

#[cfg(feature = "python")]
const NORM_L2_DOC: &CStr = c"The L2 norm (Euclidean length) of each row, accumulated in float64.

Signature ``(d)->()``, loops float32 then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.norm_l2(np.array([[3.0, 4.0], [0.0, 0.0]]))
array([5., 0.])
";

#[cfg(feature = "python")]
const NORM_L1_DOC: &CStr = c"The L1 norm (sum of absolute values) of each row.

Signature ``(d)->()``, loops float32 then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.norm_l1(np.array([[1.0, -3.0]], dtype=np.float32))
array([4.], dtype=float32)
";

#[cfg(feature = "python")]
const NORM_MAX_DOC: &CStr = c"The largest absolute value of each row (NaN if the row holds a NaN).

Signature ``(d)->()``, loops float32 then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.norm_max(np.array([[1.0, -4.0, 2.0]]))
array([4.])
";

#[cfg(feature = "python")]
const COSINE_DOC: &CStr = c"Cosine similarity of each row of ``a`` with every row of ``b``.

Signature ``(d),(n,d)->(n)``: ``cosine(a, b)`` with ``a`` (m, d) and ``b`` (n, d) gives
(m, n). Loops float32 then float64. Cosine with a zero vector (on either side) is 0. Row
norms are computed once per call; dot products run in cache-sized tiles, and the score of a
pair depends only on the two rows, never on tiling or chunking.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> a = np.array([[1.0, 0.0], [0.0, 0.0]])
>>> b = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
>>> ufuncs.cosine(a, b).round(4)
array([[1.    , 0.7071, 0.    ],
       [0.    , 0.    , 0.    ]])
";

#[cfg(feature = "python")]
const DOT_DOC: &CStr = c"Inner product of each row of ``a`` with every row of ``b``.

Signature ``(d),(n,d)->(n)``: (m, d) and (n, d) give (m, n), like ``a @ b.T``. Loops float32
then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.dot(np.array([[1.0, 2.0]]), np.array([[3.0, 4.0], [-1.0, 0.5]]))
array([[11.,  0.]])
";

#[cfg(feature = "python")]
const EUCLIDEAN_DOC: &CStr = c"Euclidean (L2) distance of each row of ``a`` to every row of ``b``.

Signature ``(d),(n,d)->(n)``: (m, d) and (n, d) give (m, n). Computed exactly as the square
root of the summed squared differences (no ``|a|^2 + |b|^2 - 2ab`` cancellation), so
near-identical rows get accurate small distances. Loops float32 then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.euclidean(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 0.0]]))
array([[5., 0.]])
";

#[cfg(feature = "python")]
const MANHATTAN_DOC: &CStr = c"Manhattan (L1) distance of each row of ``a`` to every row of ``b``.

Signature ``(d),(n,d)->(n)``: (m, d) and (n, d) give (m, n). Loops float32 then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.manhattan(np.array([[0.0, 0.0]]), np.array([[3.0, -4.0], [1.0, 0.0]]))
array([[7., 1.]])
";

#[cfg(feature = "python")]
const TOPK_COSINE_DOC: &CStr = c"The k database rows most cosine-similar to each query (exact).

Signature ``(d),(n,d),()->(k),(k)``; loops ``ff l->f l`` (float32) then ``dd l->d l``
(float64). Call as ``topk_cosine(q, db, exclude, out=(scores, ids))``: ``k`` comes from the
preallocated outputs (``dask_vecops.ufuncs.topk_block`` does this). ``exclude`` is, per
query, a row of ``db`` to leave out (for self-joins), or -1 for none.

Best first (highest similarity); equal scores go to the lower row id; NaN scores are never
returned; when fewer than k rows qualify the tail is padded with score NaN and id -1.
``ids`` are row positions in ``db``. Cosine with a zero vector is 0.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> db = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> scores, ids = np.empty((1, 2)), np.empty((1, 2), dtype=np.int64)
>>> _ = ufuncs.topk_cosine(np.array([[1.0, 0.1]]), db, -1, out=(scores, ids))
>>> ids
array([[0, 2]])
";

#[cfg(feature = "python")]
const TOPK_DOT_DOC: &CStr = c"The k database rows with the largest inner product with each query.

Signature ``(d),(n,d),()->(k),(k)``; call as ``topk_dot(q, db, exclude, out=(scores, ids))``
(see ``topk_cosine`` for ``exclude``, ties, NaN and padding). Best first (highest score).

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> db = np.array([[1.0], [3.0], [2.0]], dtype=np.float32)
>>> scores, ids = np.empty(2, dtype=np.float32), np.empty(2, dtype=np.int64)
>>> _ = ufuncs.topk_dot(np.array([1.0], dtype=np.float32), db, 1, out=(scores, ids))
>>> scores, ids
(array([2., 1.], dtype=float32), array([2, 0]))
";

#[cfg(feature = "python")]
const TOPK_EUCLIDEAN_DOC: &CStr =
    c"The k database rows nearest each query by Euclidean distance (exact).

Signature ``(d),(n,d),()->(k),(k)``; call as
``topk_euclidean(q, db, exclude, out=(distances, ids))`` (see ``topk_cosine`` for
``exclude``, ties, NaN and padding). Best first (smallest distance).

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> db = np.array([[0.0, 0.0], [3.0, 4.0]])
>>> dist, ids = np.empty(3), np.empty(3, dtype=np.int64)
>>> _ = ufuncs.topk_euclidean(np.array([3.0, 0.0]), db, -1, out=(dist, ids))
>>> dist, ids
(array([ 3.,  4., nan]), array([ 0,  1, -1]))
";

#[cfg(feature = "python")]
const TOPK_MANHATTAN_DOC: &CStr =
    c"The k database rows nearest each query by Manhattan (L1) distance.

Signature ``(d),(n,d),()->(k),(k)``; call as
``topk_manhattan(q, db, exclude, out=(distances, ids))`` (see ``topk_cosine`` for
``exclude``, ties, NaN and padding). Best first (smallest distance).

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> db = np.array([[2.0], [0.0], [2.0]])
>>> dist, ids = np.empty(2), np.empty(2, dtype=np.int64)
>>> _ = ufuncs.topk_manhattan(np.array([1.0]), db, -1, out=(dist, ids))
>>> dist, ids
(array([1., 1.]), array([0, 1]))
";

#[cfg(feature = "python")]
const ADD_DOC: &CStr = c"Element-wise ``a + b`` (IEEE semantics, NumPy broadcasting and warnings).

Loops float32 then float64. Identity 0, so ``add.reduce`` works.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.add(np.array([1.0, 2.0]), 0.5)
array([1.5, 2.5])
>>> ufuncs.add.reduce(np.array([1.0, 2.0, 3.0]))
np.float64(6.0)
";

#[cfg(feature = "python")]
const SUBTRACT_DOC: &CStr =
    c"Element-wise ``a - b`` (IEEE semantics, NumPy broadcasting and warnings).

Loops float32 then float64. No identity.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.subtract(np.array([[1.0], [2.0]]), np.array([1.0, 3.0]))
array([[ 0., -2.],
       [ 1., -1.]])
";

#[cfg(feature = "python")]
const MULTIPLY_DOC: &CStr =
    c"Element-wise ``a * b`` (IEEE semantics, NumPy broadcasting and warnings).

Loops float32 then float64. Identity 1, so ``multiply.reduce`` works.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.multiply(np.array([1.5, -2.0], dtype=np.float32), 2)
array([ 3., -4.], dtype=float32)
";

#[cfg(feature = "python")]
const DIVIDE_DOC: &CStr =
    c"Element-wise ``a / b`` (IEEE semantics, NumPy broadcasting and warnings).

Loops float32 then float64. No identity. Division by zero gives inf or NaN and, as with
``np.divide``, a RuntimeWarning unless silenced with ``np.errstate``.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.divide(np.array([1.0, 3.0]), np.array([4.0, 2.0]))
array([0.25, 1.5 ])
";

#[cfg(feature = "python")]
const SCALE_DOC: &CStr = c"Each row multiplied by its own scalar: ``scale(x, w)[i] = x[i] * w[i]``.

Signature ``(d),()->(d)``: with ``x`` (n, d) and ``w`` (n,). Loops float32 then float64.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs.scale(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([10.0, -1.0]))
array([[10., 20.],
       [-3., -4.]])
";

#[cfg(feature = "python")]
const PANIC_CHECK_DOC: &CStr =
    c"Test hook: always panics inside its loop, to show that a Rust panic
surfaces as a Python RuntimeError (and never aborts the interpreter).

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs._panic_check(np.ones(3))
Traceback (most recent call last):
...
RuntimeError: _panic_check: Rust panic in ufunc loop: deliberate panic from _panic_check
";

#[cfg(feature = "python")]
const GIL_HELD_DOC: &CStr =
    c"Test hook: 1.0 for each row if the loop ran holding the GIL, else 0.0.

NumPy releases the GIL around the loops of these ufuncs when a call is large enough (more than
500 loop iterations); small calls keep it.

Examples
--------
>>> import numpy as np
>>> from dask_vecops import ufuncs
>>> ufuncs._gil_held(np.ones((2, 3)))
array([1., 1.])
>>> bool(ufuncs._gil_held(np.ones((4096, 3))).max())
False
";
