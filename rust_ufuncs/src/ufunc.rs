//! The bridge between NumPy's ufunc machinery and the safe kernels: the registration helper
//! around `PyUFunc_FromFuncAndDataAndSignature` and the generic inner loops. This is the only
//! module that touches raw pointers from NumPy.
//!
//! Loop calling convention (NumPy): `dims = [N, core dims in order of first appearance]`,
//! `steps = [outer byte stride of each operand, then each operand's core-dim byte strides in
//! operand order]`. Strides may be zero, negative or unaligned; a loop borrows an operand as a
//! slice only when it is C-contiguous, aligned and not overlapping an output, else copies it.
//! NumPy releases the GIL around these loops itself (for large enough calls), so they never
//! touch Python objects except to report a panic.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::{align_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use numpy::npyffi::{npy_intp, PyUFuncGenericFunction, NPY_TYPES, PY_UFUNC_API};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};

use crate::kernels::elementwise::{binary, scale_rows, BinaryOp, Operand};
use crate::kernels::normalize::{norm, normalize_rows, Norm};
use crate::kernels::pairwise::{pairwise, Rows};
use crate::kernels::topk::topk;
use crate::kernels::{Metric, Real};

/// One inner loop, as NumPy calls it.
pub(crate) type LoopFn =
    unsafe extern "C" fn(*mut *mut c_char, *mut npy_intp, *mut npy_intp, *mut c_void);

/// The f32 loop, then the f64 loop: NumPy picks the first loop the inputs cast to safely.
pub(crate) type Loops = [LoopFn; 2];

/// The dtype of one operand of a loop.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// f32 in the first loop, f64 in the second.
    Real,
    /// int64 in both.
    Index,
}

/// `ufunc.identity`, in NumPy's `PyUFunc_*` codes.
#[derive(Clone, Copy)]
pub(crate) enum Identity {
    Zero = 0,
    One = 1,
    None = -1,
}

/// Everything NumPy needs to build one ufunc.
pub(crate) struct UfuncSpec {
    pub name: &'static CStr,
    pub doc: &'static CStr,
    /// `None` for an element-wise ufunc.
    pub signature: Option<&'static CStr>,
    pub inputs: &'static [Arg],
    pub outputs: &'static [Arg],
    pub identity: Identity,
    pub loops: Loops,
}

const F32: c_char = NPY_TYPES::NPY_FLOAT as c_char;
const F64: c_char = NPY_TYPES::NPY_DOUBLE as c_char;
#[cfg(not(windows))]
const I64: c_char = NPY_TYPES::NPY_LONG as c_char;
#[cfg(windows)]
const I64: c_char = NPY_TYPES::NPY_LONGLONG as c_char;

/// Builds the ufunc described by `spec` and adds it to `module` under its name.
pub(crate) fn add_ufunc(module: &Bound<'_, PyModule>, spec: UfuncSpec) -> PyResult<()> {
    let py = module.py();
    clear_fp_status_init(py)?;
    let nargs = spec.inputs.len() + spec.outputs.len();
    let type_code = |arg: &Arg, real: c_char| match arg {
        Arg::Real => real,
        Arg::Index => I64,
    };
    let types: Vec<c_char> = [F32, F64]
        .into_iter()
        .flat_map(|real| {
            spec.inputs
                .iter()
                .chain(spec.outputs)
                .map(move |a| type_code(a, real))
        })
        .collect();
    debug_assert_eq!(types.len(), 2 * nargs);
    // NumPy keeps these three tables (not copies) for the life of the ufunc, i.e. the process:
    // leak them once, at import.
    let funcs: &'static mut [PyUFuncGenericFunction] = Box::leak(spec.loops.map(Some).into());
    // Each loop gets the ufunc's name as its `data`, for error messages.
    let name = spec.name.as_ptr() as *mut c_void;
    let data: &'static mut [*mut c_void] = Box::leak(Box::new([name; 2]));
    let types: &'static mut [c_char] = Box::leak(types.into_boxed_slice());
    // SAFETY: the tables hold 2 loops x `nargs` type codes and live forever; name, doc and
    // signature are 'static NUL-terminated strings; the GIL is held (we have `py`).
    let ufunc = unsafe {
        let ptr = PY_UFUNC_API.PyUFunc_FromFuncAndDataAndSignature(
            py,
            funcs.as_mut_ptr(),
            data.as_mut_ptr(),
            types.as_mut_ptr(),
            2,
            spec.inputs.len() as c_int,
            spec.outputs.len() as c_int,
            spec.identity as c_int,
            spec.name.as_ptr(),
            spec.doc.as_ptr(),
            0,
            spec.signature.map_or(std::ptr::null(), CStr::as_ptr),
        );
        Bound::from_owned_ptr_or_err(py, ptr)?
    };
    module.add(spec.name.to_str().expect("ASCII ufunc name"), ufunc)
}

// ---------------------------------------------------------------------------------------------
// Errors: panics and floating-point status
// ---------------------------------------------------------------------------------------------

/// Runs a loop body. A panic never unwinds into NumPy: it becomes a pending RuntimeError, which
/// NumPy raises once the loop returns. `data` is the loop's data pointer: the ufunc's name.
fn guarded(data: *mut c_void, body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        // SAFETY: `add_ufunc` sets every loop's data to the ufunc's 'static NUL-terminated name.
        let name = unsafe { CStr::from_ptr(data as *const c_char) }.to_string_lossy();
        let err = PyRuntimeError::new_err(format!("{name}: Rust panic in ufunc loop: {detail}"));
        // NumPy may have released the GIL around the loop: attach this thread to set the error.
        Python::attach(|py| err.restore(py));
    }
}

/// NumPy's `PyUFunc_clearfperr` (ufunc C-API slot 27), looked up once at import.
static CLEAR_FP_STATUS: OnceLock<unsafe extern "C" fn()> = OnceLock::new();

fn clear_fp_status_init(py: Python<'_>) -> PyResult<()> {
    if CLEAR_FP_STATUS.get().is_some() {
        return Ok(());
    }
    // NumPy's capsule of its ufunc C-API table (unnamed, hence not `PyCapsule::import`).
    let capsule = py.import("numpy._core.umath")?.getattr("_UFUNC_API")?;
    let table = capsule.cast::<PyCapsule>()?.pointer_checked(None)?;
    // SAFETY: the table is an array of function pointers in which slot 27 is
    // `void PyUFunc_clearfperr(void)` (NumPy 1.x and 2.x), and it lives as long as NumPy.
    let clear = unsafe {
        let slot = *table.as_ptr().cast::<*const c_void>().add(27);
        std::mem::transmute::<*const c_void, unsafe extern "C" fn()>(slot)
    };
    let _ = CLEAR_FP_STATUS.set(clear);
    Ok(())
}

/// Clears the FPU's exception flags so NumPy reports no spurious floating-point warnings for
/// the vector gufuncs (comparisons and max/min on NaN raise "invalid" on x86); their NaN/inf
/// results speak for themselves. The element-wise ufuncs keep NumPy's warnings.
fn clear_fp_status() {
    if let Some(clear) = CLEAR_FP_STATUS.get() {
        // SAFETY: NumPy's own function; it only clears the FPU status flags, needs no GIL.
        unsafe { clear() }
    }
}

// ---------------------------------------------------------------------------------------------
// Strided operands
// ---------------------------------------------------------------------------------------------

/// The arguments of one loop call.
struct LoopArgs {
    args: *mut *mut c_char,
    dims: *const npy_intp,
    steps: *const npy_intp,
}

impl LoopArgs {
    /// # Safety
    /// `i` must be below the operand count.
    unsafe fn ptr(&self, i: usize) -> *mut c_char {
        // SAFETY: NumPy passes one pointer per operand.
        unsafe { *self.args.add(i) }
    }
    /// # Safety
    /// `i` must be below 1 + the number of core dimensions.
    unsafe fn dim(&self, i: usize) -> usize {
        // SAFETY: NumPy passes the loop length then each core dimension; all are >= 0.
        unsafe { *self.dims.add(i) as usize }
    }
    /// # Safety
    /// `i` must be below the number of strides of this signature.
    unsafe fn step(&self, i: usize) -> isize {
        // SAFETY: NumPy passes outer strides then core strides.
        unsafe { *self.steps.add(i) }
    }
}

/// `rows` x `cols` elements of some `T` at `ptr` with byte strides, as NumPy hands them over.
#[derive(Clone, Copy)]
struct Strided {
    ptr: *mut c_char,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl Strided {
    fn new(
        ptr: *mut c_char,
        rows: usize,
        cols: usize,
        row_stride: isize,
        col_stride: isize,
    ) -> Self {
        Strided {
            ptr,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A column of `rows` single values.
    fn column(ptr: *mut c_char, rows: usize, stride: isize) -> Self {
        Strided::new(ptr, rows, 1, stride, 0)
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Byte offset of element (r, c).
    fn offset(&self, r: usize, c: usize) -> isize {
        r as isize * self.row_stride + c as isize * self.col_stride
    }

    /// The bytes `[lo, hi)` the elements may occupy (padded to the widest element, 8 bytes,
    /// so views of different dtypes compare safely; a false overlap only costs a copy).
    fn span(&self) -> (usize, usize) {
        let ends = [
            (0, 0),
            (self.rows - 1, 0),
            (0, self.cols - 1),
            (self.rows - 1, self.cols - 1),
        ];
        let offsets = ends.map(|(r, c)| self.offset(r, c));
        let base = self.ptr as usize;
        let (lo, hi) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
        (
            base.wrapping_add_signed(*lo),
            base.wrapping_add_signed(*hi) + 8,
        )
    }

    fn overlaps(&self, other: &Strided) -> bool {
        if self.len() == 0 || other.len() == 0 {
            return false;
        }
        let ((a_lo, a_hi), (b_lo, b_hi)) = (self.span(), other.span());
        a_lo < b_hi && b_lo < a_hi
    }

    fn is_contiguous<T>(&self) -> bool {
        let unit = size_of::<T>() as isize;
        (self.cols <= 1 || self.col_stride == unit)
            && (self.rows <= 1 || self.row_stride == self.cols as isize * unit)
            && (self.ptr as usize).is_multiple_of(align_of::<T>())
    }

    /// # Safety
    /// The view must describe valid, initialised `T`s that stay alive and unmodified for `'a`.
    unsafe fn as_slice<'a, T>(&self) -> Option<&'a [T]> {
        if self.len() == 0 {
            return Some(&[]);
        }
        // SAFETY: contiguous and aligned, per the caller's contract.
        self.is_contiguous::<T>()
            .then(|| unsafe { std::slice::from_raw_parts(self.ptr.cast::<T>(), self.len()) })
    }

    /// The elements in row-major order: borrowed when contiguous and disjoint from every output,
    /// else copied.
    ///
    /// # Safety
    /// As `as_slice`, except that `outputs` may overlap (then the values are copied first).
    unsafe fn read<'a, T: Copy>(&self, outputs: &[Strided]) -> Cow<'a, [T]> {
        if !outputs.iter().any(|o| self.overlaps(o)) {
            // SAFETY: forwarded.
            if let Some(slice) = unsafe { self.as_slice::<T>() } {
                return Cow::Borrowed(slice);
            }
        }
        let mut values = Vec::with_capacity(self.len());
        for r in 0..self.rows {
            for c in 0..self.cols {
                // SAFETY: (r, c) is inside the view; read_unaligned allows any alignment.
                values.push(unsafe {
                    self.ptr
                        .offset(self.offset(r, c))
                        .cast::<T>()
                        .read_unaligned()
                });
            }
        }
        Cow::Owned(values)
    }

    /// Runs `fill` on a row-major buffer for this output view: the view itself when contiguous
    /// and clear of the views in `apart` (other outputs borrowed meanwhile), else a temporary
    /// scattered back after. Inputs overlapping it must have been copied by `read`.
    ///
    /// # Safety
    /// The view must describe writable `T`s not otherwise borrowed during the call, except
    /// through views listed in `apart`.
    unsafe fn fill<T: Copy + Default>(&self, apart: &[Strided], fill: impl FnOnce(&mut [T])) {
        if self.len() == 0 {
            return fill(&mut []);
        }
        if self.is_contiguous::<T>() && !apart.iter().any(|o| self.overlaps(o)) {
            // SAFETY: contiguous, aligned, writable and unaliased, per the caller's contract.
            return fill(unsafe {
                std::slice::from_raw_parts_mut(self.ptr.cast::<T>(), self.len())
            });
        }
        let mut values = vec![T::default(); self.len()];
        fill(&mut values);
        for r in 0..self.rows {
            for c in 0..self.cols {
                // SAFETY: (r, c) is inside the view; write_unaligned allows any alignment.
                unsafe {
                    self.ptr
                        .offset(self.offset(r, c))
                        .cast::<T>()
                        .write_unaligned(values[r * self.cols + c])
                };
            }
        }
    }

    /// The same view moved by `rows` rows and cut to `len` rows.
    fn rows_from(&self, first: usize, len: usize) -> Strided {
        // wrapping: a pure address computation, only dereferenced inside the view.
        Strided {
            ptr: self.ptr.wrapping_offset(first as isize * self.row_stride),
            rows: len,
            ..*self
        }
    }
}

/// Loop-dimension groups that share one database operand: all N at once when its outer stride
/// is 0 (the usual broadcast database), else one query at a time.
fn groups(n: usize, db_outer_stride: isize) -> impl Iterator<Item = (usize, usize)> {
    let size = if db_outer_stride == 0 { n.max(1) } else { 1 };
    (0..n)
        .step_by(size)
        .map(move |start| (start, size.min(n - start)))
}

// ---------------------------------------------------------------------------------------------
// The loops
// ---------------------------------------------------------------------------------------------

const NORM_L2: u8 = 0;
const NORM_L1: u8 = 1;
const NORM_MAX: u8 = 2;

fn norm_kind(code: u8) -> Norm {
    match code {
        NORM_L2 => Norm::L2,
        NORM_L1 => Norm::L1,
        _ => Norm::Max,
    }
}

fn norm_code(kind: Norm) -> u8 {
    match kind {
        Norm::L2 => NORM_L2,
        Norm::L1 => NORM_L1,
        Norm::Max => NORM_MAX,
    }
}

/// `(d)->(d)`: dims `[N, d]`, steps `[in, out, in_d, out_d]`.
unsafe extern "C" fn normalize_loop<T: Real, const NORM: u8>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: NumPy's (d)->(d) loop arguments, indexed per the layout above.
        unsafe {
            let (n, d) = (a.dim(0), a.dim(1));
            let input = Strided::new(a.ptr(0), n, d, a.step(0), a.step(2));
            let output = Strided::new(a.ptr(1), n, d, a.step(1), a.step(3));
            let x = input.read::<T>(&[output]);
            output.fill(&[], |out| normalize_rows(norm_kind(NORM), &x, d, out));
        }
    });
    clear_fp_status();
}

/// `(d)->()`: dims `[N, d]`, steps `[in, out, in_d]`.
unsafe extern "C" fn norm_loop<T: Real, const NORM: u8>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: NumPy's (d)->() loop arguments, indexed per the layout above.
        unsafe {
            let (n, d) = (a.dim(0), a.dim(1));
            let input = Strided::new(a.ptr(0), n, d, a.step(0), a.step(2));
            let output = Strided::column(a.ptr(1), n, a.step(1));
            let x = input.read::<T>(&[output]);
            output.fill(&[], |out: &mut [T]| {
                for (o, row) in out.iter_mut().zip((0..n).map(|i| &x[i * d..(i + 1) * d])) {
                    *o = T::from_f64(norm(norm_kind(NORM), row));
                }
            });
        }
    });
    clear_fp_status();
}

fn metric_kind(code: u8) -> Metric {
    [
        Metric::Cosine,
        Metric::Dot,
        Metric::Euclidean,
        Metric::Manhattan,
    ][code as usize]
}

fn metric_code(metric: Metric) -> u8 {
    metric as u8
}

/// `(d),(n,d)->(n)`: dims `[N, d, n]`, steps `[q, db, out, q_d, db_n, db_d, out_n]`.
unsafe extern "C" fn pairwise_loop<T: Real, const METRIC: u8>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: NumPy's (d),(n,d)->(n) loop arguments, indexed per the layout above.
        unsafe {
            let (big_n, d, n) = (a.dim(0), a.dim(1), a.dim(2));
            let queries = Strided::new(a.ptr(0), big_n, d, a.step(0), a.step(3));
            let out = Strided::new(a.ptr(2), big_n, n, a.step(2), a.step(6));
            for (start, len) in groups(big_n, a.step(1)) {
                let db_ptr = a.ptr(1).wrapping_offset(start as isize * a.step(1));
                let db = Strided::new(db_ptr, n, d, a.step(4), a.step(5));
                let (q_view, out_view) = (queries.rows_from(start, len), out.rows_from(start, len));
                let (q, db_values) = (q_view.read::<T>(&[out_view]), db.read::<T>(&[out_view]));
                out_view.fill(&[], |o| {
                    pairwise(
                        metric_kind(METRIC),
                        Rows::new(&q, len, d),
                        Rows::new(&db_values, n, d),
                        o,
                    )
                });
            }
        }
    });
    clear_fp_status();
}

/// `(d),(n,d),()->(k),(k)`: dims `[N, d, n, k]`,
/// steps `[q, db, exclude, scores, ids, q_d, db_n, db_d, scores_k, ids_k]`.
unsafe extern "C" fn topk_loop<T: Real, const METRIC: u8>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: NumPy's (d),(n,d),()->(k),(k) loop arguments, indexed per the layout above.
        unsafe {
            let (big_n, d, n, k) = (a.dim(0), a.dim(1), a.dim(2), a.dim(3));
            let queries = Strided::new(a.ptr(0), big_n, d, a.step(0), a.step(5));
            let exclude = Strided::column(a.ptr(2), big_n, a.step(2));
            let scores = Strided::new(a.ptr(3), big_n, k, a.step(3), a.step(8));
            let ids = Strided::new(a.ptr(4), big_n, k, a.step(4), a.step(9));
            for (start, len) in groups(big_n, a.step(1)) {
                let db_ptr = a.ptr(1).wrapping_offset(start as isize * a.step(1));
                let db = Strided::new(db_ptr, n, d, a.step(6), a.step(7));
                let outputs = [scores.rows_from(start, len), ids.rows_from(start, len)];
                let q = queries.rows_from(start, len).read::<T>(&outputs);
                let db_values = db.read::<T>(&outputs);
                let skip = exclude.rows_from(start, len).read::<i64>(&outputs);
                outputs[0].fill(&[], |s: &mut [T]| {
                    outputs[1].fill(&outputs[..1], |i: &mut [i64]| {
                        let (q, db) = (Rows::new(&q, len, d), Rows::new(&db_values, n, d));
                        topk(metric_kind(METRIC), q, db, &skip, k, s, i);
                    })
                });
            }
        }
    });
    clear_fp_status();
}

/// `(d),()->(d)`: dims `[N, d]`, steps `[x, w, out, x_d, out_d]`.
unsafe extern "C" fn scale_loop<T: Real>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: NumPy's (d),()->(d) loop arguments, indexed per the layout above.
        unsafe {
            let (n, d) = (a.dim(0), a.dim(1));
            let x = Strided::new(a.ptr(0), n, d, a.step(0), a.step(3));
            let weights = Strided::column(a.ptr(1), n, a.step(1));
            let out = Strided::new(a.ptr(2), n, d, a.step(2), a.step(4));
            let (x_values, w) = (x.read::<T>(&[out]), weights.read::<T>(&[out]));
            out.fill(&[], |o| scale_rows(&x_values, d, &w, o));
        }
    });
    clear_fp_status();
}

/// Element-wise `(a, b) -> out`: dims `[N]`, steps `[a, b, out]`. Keeps NumPy's floating-point
/// warnings (divide by zero, overflow, ...), like `np.add` and friends.
unsafe extern "C" fn binary_loop<T: Real, const OP: u8>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: NumPy's element-wise loop arguments, indexed per the layout above.
        unsafe {
            let n = a.dim(0);
            let [x, y, out] = [0, 1, 2].map(|i| Strided::column(a.ptr(i), n, a.step(i)));
            if [x, y]
                .iter()
                .any(|input| out.overlaps(input) && !same_elements(input, &out))
            {
                // `reduce` and `accumulate` feed each result into the next step.
                return sequential_binary::<T>(binary_op(OP), x, y, out);
            }
            let operand = |view: Strided| {
                if view.row_stride == 0 && n > 0 {
                    OperandValues::One(view.ptr.cast::<T>().read_unaligned())
                } else {
                    OperandValues::Many(view.read::<T>(&[out]))
                }
            };
            let (x, y) = (operand(x), operand(y));
            out.fill(&[], |o| binary(binary_op(OP), x.operand(), y.operand(), o));
        }
    });
}

/// In-place element by element: the same elements at the same non-zero stride.
fn same_elements(input: &Strided, out: &Strided) -> bool {
    input.ptr == out.ptr && input.row_stride == out.row_stride && out.row_stride != 0
}

/// One element at a time, in order, each read after the previous write.
///
/// # Safety
/// The views must describe `n` valid `T`s each (the output writable).
unsafe fn sequential_binary<T: Real>(op: BinaryOp, x: Strided, y: Strided, out: Strided) {
    for i in 0..out.rows {
        let at = |view: &Strided| view.ptr.wrapping_offset(view.offset(i, 0)).cast::<T>();
        // SAFETY: element i of each view, per the caller's contract; unaligned access allowed.
        unsafe {
            at(&out).write_unaligned(op.apply(at(&x).read_unaligned(), at(&y).read_unaligned()))
        };
    }
}

/// An element-wise operand: one broadcast value or (borrowed or copied) values.
enum OperandValues<'a, T: Clone> {
    One(T),
    Many(Cow<'a, [T]>),
}

impl<T: Real> OperandValues<'_, T> {
    fn operand(&self) -> Operand<'_, T> {
        match self {
            OperandValues::One(v) => Operand::Broadcast(*v),
            OperandValues::Many(values) => Operand::Values(values),
        }
    }
}

fn binary_op(code: u8) -> BinaryOp {
    [
        BinaryOp::Add,
        BinaryOp::Subtract,
        BinaryOp::Multiply,
        BinaryOp::Divide,
    ][code as usize]
}

/// `(d)->()`, always panics: lets the tests prove panics surface as RuntimeError.
unsafe extern "C" fn panic_loop(
    _args: *mut *mut c_char,
    _dims: *mut npy_intp,
    _steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || panic!("deliberate panic from _panic_check"));
}

/// `(d)->()`: 1 where the loop ran holding the GIL, 0 where NumPy had released it.
/// dims `[N, d]`, steps `[in, out, in_d]`.
unsafe extern "C" fn gil_held_loop<T: Real>(
    args: *mut *mut c_char,
    dims: *mut npy_intp,
    steps: *mut npy_intp,
    data: *mut c_void,
) {
    guarded(data, || {
        let a = LoopArgs { args, dims, steps };
        // SAFETY: `PyGILState_Check` may be called with or without the GIL; the output is
        // NumPy's (N,) output operand.
        unsafe {
            let held = if pyo3::ffi::PyGILState_Check() == 1 {
                T::ONE
            } else {
                T::ZERO
            };
            Strided::column(a.ptr(1), a.dim(0), a.step(1)).fill(&[], |o: &mut [T]| o.fill(held));
        }
    });
}

// The loop pairs lib.rs registers.

pub(crate) fn normalize_loops(kind: Norm) -> Loops {
    match norm_code(kind) {
        NORM_L2 => [
            normalize_loop::<f32, NORM_L2>,
            normalize_loop::<f64, NORM_L2>,
        ],
        NORM_L1 => [
            normalize_loop::<f32, NORM_L1>,
            normalize_loop::<f64, NORM_L1>,
        ],
        _ => [
            normalize_loop::<f32, NORM_MAX>,
            normalize_loop::<f64, NORM_MAX>,
        ],
    }
}

pub(crate) fn norm_loops(kind: Norm) -> Loops {
    match norm_code(kind) {
        NORM_L2 => [norm_loop::<f32, NORM_L2>, norm_loop::<f64, NORM_L2>],
        NORM_L1 => [norm_loop::<f32, NORM_L1>, norm_loop::<f64, NORM_L1>],
        _ => [norm_loop::<f32, NORM_MAX>, norm_loop::<f64, NORM_MAX>],
    }
}

pub(crate) fn pairwise_loops(metric: Metric) -> Loops {
    const C: u8 = Metric::Cosine as u8;
    const D: u8 = Metric::Dot as u8;
    const E: u8 = Metric::Euclidean as u8;
    const M: u8 = Metric::Manhattan as u8;
    match metric_code(metric) {
        C => [pairwise_loop::<f32, C>, pairwise_loop::<f64, C>],
        D => [pairwise_loop::<f32, D>, pairwise_loop::<f64, D>],
        E => [pairwise_loop::<f32, E>, pairwise_loop::<f64, E>],
        _ => [pairwise_loop::<f32, M>, pairwise_loop::<f64, M>],
    }
}

pub(crate) fn topk_loops(metric: Metric) -> Loops {
    const C: u8 = Metric::Cosine as u8;
    const D: u8 = Metric::Dot as u8;
    const E: u8 = Metric::Euclidean as u8;
    const M: u8 = Metric::Manhattan as u8;
    match metric_code(metric) {
        C => [topk_loop::<f32, C>, topk_loop::<f64, C>],
        D => [topk_loop::<f32, D>, topk_loop::<f64, D>],
        E => [topk_loop::<f32, E>, topk_loop::<f64, E>],
        _ => [topk_loop::<f32, M>, topk_loop::<f64, M>],
    }
}

pub(crate) fn binary_loops(op: BinaryOp) -> Loops {
    match op {
        BinaryOp::Add => [binary_loop::<f32, 0>, binary_loop::<f64, 0>],
        BinaryOp::Subtract => [binary_loop::<f32, 1>, binary_loop::<f64, 1>],
        BinaryOp::Multiply => [binary_loop::<f32, 2>, binary_loop::<f64, 2>],
        BinaryOp::Divide => [binary_loop::<f32, 3>, binary_loop::<f64, 3>],
    }
}

pub(crate) fn scale_loops() -> Loops {
    [scale_loop::<f32>, scale_loop::<f64>]
}

pub(crate) fn panic_loops() -> Loops {
    [panic_loop, panic_loop]
}

pub(crate) fn gil_held_loops() -> Loops {
    [gil_held_loop::<f32>, gil_held_loop::<f64>]
}
