//! The SIMD score kernel, with runtime CPU-feature dispatch (no `-C target-cpu=native`).
//!
//! Both operands come packed in panels (see `pack_rows`): `MR` query rows or `NR` database rows
//! interleaved coordinate by coordinate, so that for every coordinate the kernel loads `NR`
//! database values as vectors, broadcasts each of `MR` query values, and updates an `MR x NR`
//! register tile (the BLIS/GEMM scheme; no horizontal sums). Each score is accumulated in one
//! vector lane, block by block (`BLOCK` coordinates in order, then the block sums in order), the
//! same for every position in a tile: a pair's score depends only on its two vectors and the ISA.
//!
//! The finished register tile never goes through memory: a *sink* takes it straight from the
//! registers, either storing it (all-pairs scores) or comparing each query's row of scores with
//! that query's current top-k bar and handing only the few scores that pass to the selector.
//!
//! Database panels are packed with in-register 16 x 16 transposes on AVX-512 (f32), so packing
//! runs at memory speed. This module (with `bf16`) is the crate's only SIMD code; all
//! intrinsics and their `unsafe` live here.
//!
//! A few queries (up to `FILTER_QUERIES`) are scored by the row-streaming kernel only where it
//! matters: a filter reads each row along its coordinates in whole vectors, as a
//! matrix-vector product does, and passes on to the exact score only the rows whose filter
//! score, widened by a rigorous bound on both sums' rounding, could beat the query's bar.
//! From `bf16::BF16_QUERIES` queries up, on CPUs with AVX512_BF16, the `bf16` filter does
//! the same with bfloat16 dot products; from three to sixteen, on AVX-512, its pair filter
//! (`bf16::pairs`) with float32 products in a tile that wastes no lanes.

use std::any::TypeId;
use std::array;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::Real;

mod bf16;
pub use bf16::{FilterQueries, BF16_MAX_FEATURES};

/// The instruction sets the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with the bfloat16 dot product (AVX512_BF16) as well: the AVX-512 kernels, and
    /// a bfloat16 filter in front of the row-streaming kernel (`bf16`), which leaves every
    /// score's bits as they are.
    Avx512Bf16,
    /// x86-64 with AVX-512F and FMA: 512-bit vectors, 32 registers.
    Avx512,
    /// x86-64 with AVX2 and FMA: 256-bit vectors, 16 registers.
    Avx2,
    /// Plain Rust on short arrays; whatever the compiler makes of it for the target.
    Portable,
}

/// The environment variable that caps the ISA the kernels use: `avx512bf16`, `avx512`, `avx2`
/// or `portable` (unset, empty or `auto`: the best this CPU has). Scores depend on the ISA in
/// the last bits (`avx512bf16` and `avx512` give the same), so a cluster of mixed CPUs pinned
/// to one ISA gives the same bits on every worker.
pub const ISA_ENV: &str = "DASK_VECOPS_ISA";

impl Isa {
    /// The lower-case name `ISA_ENV` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Parses an `ISA_ENV` value: `None` for auto, an error message for anything unknown.
    pub fn parse(value: &str) -> Result<Option<Isa>, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "avx512bf16" => Ok(Some(Isa::Avx512Bf16)),
            "avx512" => Ok(Some(Isa::Avx512)),
            "avx2" => Ok(Some(Isa::Avx2)),
            "portable" => Ok(Some(Isa::Portable)),
            other => Err(format!(
                "{ISA_ENV}={other:?} is not one of auto, avx512bf16, avx512, avx2, portable"
            )),
        }
    }
}

/// The ISA `ISA_ENV` asks for (`None`: auto, or a value that does not parse; `import
/// dask_vecops` refuses such a value before any kernel runs, in `_config.check_isa_env`).
fn requested() -> Option<Isa> {
    static REQUESTED: OnceLock<Option<Isa>> = OnceLock::new();
    *REQUESTED.get_or_init(|| {
        std::env::var(ISA_ENV)
            .ok()
            .and_then(|v| Isa::parse(&v).ok().flatten())
    })
}

/// The best ISA of this CPU (std caches the feature detection).
pub fn best() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("fma");
        if fma && is_x86_feature_detected!("avx512f") {
            if is_x86_feature_detected!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            return Isa::Avx512;
        }
        if fma && is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The ISA the kernels use: the best of this CPU, capped by `ISA_ENV`.
pub fn detect() -> Isa {
    let best = best();
    match requested() {
        Some(cap) if supported_by(best, cap) => cap,
        _ => best,
    }
}

/// Whether a CPU whose best ISA is `best` can run `isa`.
fn supported_by(best: Isa, isa: Isa) -> bool {
    match isa {
        Isa::Avx512Bf16 => best == Isa::Avx512Bf16,
        Isa::Avx512 => matches!(best, Isa::Avx512Bf16 | Isa::Avx512),
        Isa::Avx2 => matches!(best, Isa::Avx512Bf16 | Isa::Avx512 | Isa::Avx2),
        Isa::Portable => true,
    }
}

/// Every ISA this CPU can run, best first.
pub fn available() -> Vec<Isa> {
    [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|&isa| supported(isa))
        .collect()
}

fn supported(isa: Isa) -> bool {
    supported_by(best(), isa)
}

/// The vector kernels for `isa`: its own if this CPU has it (AVX-512's for `Avx512Bf16`),
/// else the portable ones.
fn effective(isa: Isa) -> Isa {
    match isa {
        _ if !supported(isa) => Isa::Portable,
        Isa::Avx512Bf16 => Isa::Avx512,
        _ => isa,
    }
}

/// Whether the row-streaming kernel may put the bfloat16 filter in front (`bf16`).
fn has_bf16(isa: Isa) -> bool {
    isa == Isa::Avx512Bf16 && supported(isa)
}

/// What a score accumulates over the coordinates, and how the kernel finishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulator {
    /// sum q*b
    Dot,
    /// sqrt(sum (q-b)^2): the kernel takes the square root before the sink sees the score
    SquaredDiff,
    /// sum |q-b|
    AbsDiff,
}

/// Coordinates per block of every score: a score is the sum, in order, of the sequential sums
/// of its blocks of `BLOCK` consecutive coordinates (the last block may be shorter). Every
/// kernel keeps this order, so a pair's score has the same bits whichever kernel computes it,
/// and the rounding error grows with `BLOCK + d / BLOCK` rather than with `d` (at d = 1536
/// about a sixth of one sequential sum's: docs/design.md).
pub const BLOCK: usize = 64;

const AVX512_MR: usize = 8;
const AVX2_MR: usize = 6;
const PORTABLE_MR: usize = 4;
/// Database panels are two vectors wide for every ISA.
const NV: usize = 2;
/// The widest database panel of any ISA (f32 on AVX-512).
const MAX_NR: usize = 32;

/// `(MR, NR)`: query rows per query panel and database rows per database panel for `isa`.
pub fn panel_shape<T: Real>(isa: Isa) -> (usize, usize) {
    let (mr, vector_bytes) = match effective(isa) {
        Isa::Avx512 | Isa::Avx512Bf16 => (AVX512_MR, 64),
        Isa::Avx2 => (AVX2_MR, 32),
        Isa::Portable => (PORTABLE_MR, 16),
    };
    (mr, NV * vector_bytes / T::BYTES)
}

/// Packed operands: every query panel is scored against every database panel.
#[derive(Clone, Copy)]
pub struct PanelJob<'a, T> {
    pub kind: Accumulator,
    /// `q_panels` panels of `MR` rows x `d` coordinates, laid out `[panel][coordinate][row]`.
    pub q: &'a [T],
    pub q_panels: usize,
    /// `db_panels` panels of `NR` rows x `d` coordinates, laid out `[panel][coordinate][row]`.
    pub db: &'a [T],
    pub db_panels: usize,
    pub d: usize,
    /// When given (`db_panels * NR` values), every score against packed database row `j` is
    /// multiplied by `scale[j]` (cosine: the row's `1 / norm`), after the accumulation.
    pub scale: Option<&'a [T]>,
}

/// Sink that stores the scores: packed query row `i` and packed database row `j` go to
/// `out[i * ld + j]`, for `i < rows` and `j < cols` (padding rows are dropped).
pub struct Store<'a, T> {
    pub out: &'a mut [T],
    pub ld: usize,
    pub rows: usize,
    pub cols: usize,
}

/// What a top-k selector tells the kernel and takes from it.
pub trait Candidates<T> {
    /// Similarities (higher is better) or distances.
    const HIGHER: bool;
    /// The score packed query row `q` must strictly beat to be offered, or `None` to be offered
    /// every score (while its selector is not yet full).
    fn bar(&self, q: usize) -> Option<T>;
    /// Scores of packed query row `q` against packed database rows `first..first + scores.len()`;
    /// only the positions whose bit is set in `mask` passed the bar (they may be NaN when the
    /// bar was `None`).
    fn offer(&mut self, q: usize, first: usize, scores: &[T], mask: u64);
    /// Scores of packed queries `first..first + scores.len()` against database row `row`
    /// (the row-streaming kernel's view); `mask` as in `offer`.
    fn offer_row(&mut self, first: usize, row: usize, scores: &[T], mask: u64);
}

/// Sink that feeds a selector: of packed query row `i < rows` only the scores against packed
/// database rows `j < cols` that beat the row's bar leave the registers.
pub struct Select<'a, C> {
    pub candidates: &'a mut C,
    pub rows: usize,
    pub cols: usize,
}

/// Scores every panel pair of `job` with the kernel for `isa` (`panel_shape(isa)` must be the
/// shape the operands were packed with) into `sink`.
pub fn score_store<T: Real>(isa: Isa, job: PanelJob<T>, sink: Store<T>) {
    let (mr, nr) = check(isa, &job);
    assert!(sink.rows <= job.q_panels * mr && sink.cols <= job.db_panels * nr);
    assert!(sink.cols <= sink.ld, "score stride");
    if sink.rows > 0 && sink.cols > 0 {
        assert!(
            sink.out.len() >= (sink.rows - 1) * sink.ld + sink.cols,
            "score output size"
        );
    }
    dispatch(isa, job, sink);
}

/// As `score_store`, into a selector.
pub fn score_select<T: Real, C: Candidates<T>>(isa: Isa, job: PanelJob<T>, sink: Select<C>) {
    let (mr, nr) = check(isa, &job);
    assert!(sink.rows <= job.q_panels * mr && sink.cols <= job.db_panels * nr);
    dispatch(isa, job, sink);
}

fn check<T: Real>(isa: Isa, job: &PanelJob<T>) -> (usize, usize) {
    let (mr, nr) = panel_shape::<T>(isa);
    assert_eq!(job.q.len(), job.q_panels * mr * job.d, "packed queries");
    assert_eq!(job.db.len(), job.db_panels * nr * job.d, "packed database");
    if let Some(scale) = job.scale {
        assert_eq!(
            scale.len(),
            job.db_panels * nr,
            "one scale per packed database row"
        );
    }
    (mr, nr)
}

fn dispatch<T: Real, S: Sink<T>>(isa: Isa, job: PanelJob<T>, sink: S) {
    match effective(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `effective` returned Avx512 only because this CPU has avx512f and fma.
        Isa::Avx512 => unsafe { x86::avx512(job, sink) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `effective` returned Avx2 only because this CPU has avx2 and fma.
        Isa::Avx2 => unsafe { x86::avx2(job, sink) },
        // SAFETY: portable lanes use no instructions beyond the target's baseline.
        _ => unsafe { run::<T, T::PortableLanes, S, PORTABLE_MR>(job, sink) },
    }
}

/// Packs `n` rows of `d` values (`data`, row-major) into panels of `panel` rows,
/// coordinate-major inside a panel (`out[(p * d + k) * panel + lane] = row[p * panel + lane][k]`),
/// each row multiplied by `scale[row]` when given, the last panel zero-padded.
pub fn pack_rows<T: Real>(
    isa: Isa,
    data: &[T],
    n: usize,
    d: usize,
    scale: Option<&[T]>,
    panel: usize,
    out: &mut [T],
) {
    assert_eq!(data.len(), n * d, "rows");
    assert_eq!(out.len(), n.div_ceil(panel) * panel * d, "packed size");
    if let Some(s) = scale {
        assert_eq!(s.len(), n, "one scale per row");
    }
    #[cfg(target_arch = "x86_64")]
    if effective(isa) == Isa::Avx512 && panel == 32 && TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32 (same type, so the casts are identities); the CPU has avx512f; the
        // lengths were checked above.
        unsafe {
            let cast = |x: &[T]| std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len());
            let out = std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len());
            return x86::pack32_f32(cast(data), n, d, scale.map(cast), out);
        }
    }
    let _ = isa;
    pack_rows_portable(data, n, d, scale, panel, out);
}

fn pack_rows_portable<T: Real>(
    data: &[T],
    n: usize,
    d: usize,
    scale: Option<&[T]>,
    panel: usize,
    out: &mut [T],
) {
    if d == 0 {
        return;
    }
    for (p, packed) in out.chunks_exact_mut(panel * d).enumerate() {
        let lanes = panel.min(n - p * panel);
        for lane in 0..lanes {
            let r = p * panel + lane;
            let row = &data[r * d..(r + 1) * d];
            match scale {
                Some(s) => {
                    let s = s[r];
                    for (k, &x) in row.iter().enumerate() {
                        packed[k * panel + lane] = x * s;
                    }
                }
                None => {
                    for (k, &x) in row.iter().enumerate() {
                        packed[k * panel + lane] = x;
                    }
                }
            }
        }
        for lane in lanes..panel {
            for k in 0..d {
                packed[k * panel + lane] = T::ZERO;
            }
        }
    }
}

/// Accumulators of the row sums (`sum_squares`, `sum_abs`): element `i` of a row goes to
/// accumulator `i % ROW_ACCS`, in f64, and the accumulators are added up in one fixed order, so
/// every ISA's vector code gives the same bits as the others with FMA (AVX-512 keeps them in
/// 4 registers of 8 lanes, AVX2 in 8 of 4).
const ROW_ACCS: usize = 32;

/// The fixed-order reduction of the row accumulators: a pairwise tree.
fn reduce_accs(acc: &[f64; ROW_ACCS]) -> f64 {
    let mut level = *acc;
    let mut len = ROW_ACCS;
    while len > 1 {
        len /= 2;
        for i in 0..len {
            level[i] = level[2 * i] + level[2 * i + 1];
        }
    }
    level[0]
}

/// What a row sum adds up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowSum {
    Squares,
    Abs,
}

/// `sum(x^2)` of a row, accumulated in f64 (see `ROW_ACCS` for the order).
pub fn sum_squares<T: Real>(row: &[T]) -> f64 {
    row_sum(detect(), row, RowSum::Squares)
}

/// `sum(|x|)` of a row, accumulated in f64 (see `ROW_ACCS` for the order).
pub fn sum_abs<T: Real>(row: &[T]) -> f64 {
    row_sum(detect(), row, RowSum::Abs)
}

fn row_sum<T: Real>(isa: Isa, row: &[T], sum: RowSum) -> f64 {
    let mut out = [0.0];
    row_sums(isa, row, row.len(), sum, &mut out);
    out[0]
}

/// `out[i]` = the sum of row `i` of `data` (rows of `d` values), several rows at a time.
fn row_sums<T: Real>(isa: Isa, data: &[T], d: usize, sum: RowSum, out: &mut [f64]) {
    assert_eq!(data.len(), out.len() * d, "rows");
    #[cfg(target_arch = "x86_64")]
    {
        let is = |t: TypeId| TypeId::of::<T>() == t;
        // SAFETY: the casts are identities (T is that type); the ISA was detected.
        unsafe {
            let as32 = || std::slice::from_raw_parts(data.as_ptr().cast::<f32>(), data.len());
            let as64 = || std::slice::from_raw_parts(data.as_ptr().cast::<f64>(), data.len());
            match effective(isa) {
                Isa::Avx512 if is(TypeId::of::<f32>()) => {
                    return x86::row_sum_avx512_f32(as32(), d, sum, out)
                }
                Isa::Avx512 if is(TypeId::of::<f64>()) => {
                    return x86::row_sum_avx512_f64(as64(), d, sum, out)
                }
                Isa::Avx2 if is(TypeId::of::<f32>()) => {
                    return x86::row_sum_avx2_f32(as32(), d, sum, out)
                }
                Isa::Avx2 if is(TypeId::of::<f64>()) => {
                    return x86::row_sum_avx2_f64(as64(), d, sum, out)
                }
                _ => {}
            }
        }
    }
    let _ = isa;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &data[r * d..(r + 1) * d];
        let mut acc = [0.0f64; ROW_ACCS];
        for (i, &x) in row.iter().enumerate() {
            let x = x.to_f64();
            let a = &mut acc[i % ROW_ACCS];
            *a = match sum {
                RowSum::Squares if cfg!(target_arch = "aarch64") => x.mul_add(x, *a),
                RowSum::Squares => x * x + *a,
                RowSum::Abs => *a + x.abs(),
            };
        }
        *o = reduce_accs(&acc);
    }
}

/// `out[i] = sum_squares(row i)` for the rows of `data` (rows of `d` values), faster than
/// one row at a time.
pub fn sum_squares_rows<T: Real>(data: &[T], d: usize, out: &mut [f64]) {
    row_sums(detect(), data, d, RowSum::Squares, out);
}

/// `out[i]`: the sum of squares of row `i` of `data` (rows of `d` values) accumulated in `T`
/// in `V`'s lanes, four vectors of partial sums per row (four chains of multiply-adds in
/// flight): within `approx_sum_slack(d)` of the exact sum, for bounds (`ScaleBounds`). On f32
/// it costs a fraction of `sum_squares_rows`, which converts every value to f64.
///
/// # Safety
/// The CPU must support `V`'s ISA; `data.len() == out.len() * d`, `d > 0`.
#[inline(always)]
unsafe fn approx_sums<T: Real, V: Lanes<T>>(data: &[T], d: usize, out: &mut [T]) {
    let w = V::W;
    for (row, o) in data.chunks_exact(d).zip(out.iter_mut()) {
        // SAFETY: forwarded; every load reads W values of the row.
        unsafe {
            let mut acc = [V::zero(); 4];
            let mut quads = row.chunks_exact(4 * w);
            for quad in &mut quads {
                for (j, a) in acc.iter_mut().enumerate() {
                    let x = V::load(&quad[j * w..]);
                    *a = V::mul_add(x, x, *a);
                }
            }
            let mut vectors = quads.remainder().chunks_exact(w);
            for x in &mut vectors {
                let x = V::load(x);
                acc[0] = V::mul_add(x, x, acc[0]);
            }
            let tail = vectors
                .remainder()
                .iter()
                .fold(T::ZERO, |s, &x| x.mul_add(x, s));
            let sum = V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3]));
            *o = sum.reduce_add() + tail;
        }
    }
}

/// A bound on the relative error of `approx_sums` for rows of `d` values whose sum is at
/// least `T::MIN_POSITIVE.sqrt()` (smaller sums may have lost bits to underflow):
/// `gamma(d + 1)`, which covers each square's rounding and every addition in any order.
pub fn approx_sum_slack<T: Real>(d: usize) -> f64 {
    let nu = (d + 1) as f64 * T::EPSILON.to_f64() / 2.0;
    nu / (1.0 - nu)
}

/// Runs `f` compiled for the best ISA of this CPU: plain loops in `f` (inlined into the
/// target-feature function) get that ISA's vectors. Only for code whose results do not depend
/// on the instructions (no FMA contraction happens without `mul_add`).
#[inline]
pub fn with_best_isa<R>(f: impl FnOnce() -> R) -> R {
    match effective(detect()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: effective() returned Avx512 only because this CPU has avx512f and fma.
        Isa::Avx512 => unsafe { x86::call_avx512(f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: effective() returned Avx2 only because this CPU has avx2 and fma.
        Isa::Avx2 => unsafe { x86::call_avx2(f) },
        _ => f(),
    }
}

/// A vector register of `T`.
///
/// # Safety
/// Implementations may use instructions of one ISA in every method; callers must only call
/// them when this CPU supports that ISA (the kernel entry points check before they dispatch).
/// That is the whole safety contract of every method below.
#[allow(clippy::missing_safety_doc)]
pub unsafe trait Lanes<T: Real>: Copy {
    const W: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: T) -> Self;
    /// The first `W` values of `src` (panics if shorter).
    unsafe fn load(src: &[T]) -> Self;
    /// Into the first `W` places of `dst` (panics if shorter).
    unsafe fn store(self, dst: &mut [T]);
    unsafe fn mul_add(a: Self, b: Self, acc: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn abs(a: Self) -> Self;
    unsafe fn sqrt(a: Self) -> Self;
    /// Bit `l` set where `a[l] > b[l]` (false for NaN).
    unsafe fn gt_mask(a: Self, b: Self) -> u64;
    /// Bit `l` set where `a[l] < b[l]` (false for NaN).
    unsafe fn lt_mask(a: Self, b: Self) -> u64;
    /// Adds the squares of the lanes, in f64, to the row-sum accumulators: lane `l` of the
    /// vector of coordinates `c..c + W` goes to `acc[(c + l) % ROW_ACCS]` (the order of
    /// `sum_squares`). Exact squares only: for f32 lanes any instructions give the same bits.
    #[inline(always)]
    unsafe fn add_squares(self, c: usize, acc: &mut [f64; ROW_ACCS]) {
        let mut buf = [T::ZERO; MAX_NR];
        // SAFETY: forwarded; W <= MAX_NR.
        unsafe { self.store(&mut buf) };
        for (l, x) in buf[..Self::W].iter().enumerate() {
            let x = x.to_f64();
            let a = &mut acc[(c + l) % ROW_ACCS];
            *a = x.mul_add(x, *a);
        }
    }
    /// The sum of the lanes, in an order of at most `W - 1` roundings per lane (any order:
    /// only the few-query filter uses it, and its bound allows for that).
    #[inline(always)]
    unsafe fn reduce_add(self) -> T {
        let mut buf = [T::ZERO; MAX_NR];
        // SAFETY: forwarded; W <= MAX_NR.
        unsafe { self.store(&mut buf) };
        buf[..Self::W].iter().fold(T::ZERO, |s, &x| s + x)
    }
}

trait Accumulate {
    const SQRT: bool;
    /// Whether the terms can be negative (else a sum is its terms' magnitude).
    const SIGNED: bool = false;
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V;
}

struct DotAcc;
struct SquaredDiffAcc;
struct AbsDiffAcc;

impl Accumulate for DotAcc {
    const SQRT: bool = false;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V {
        unsafe { V::mul_add(q, b, acc) }
    }
}

impl Accumulate for SquaredDiffAcc {
    const SQRT: bool = true;
    #[inline(always)]
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V {
        unsafe {
            let diff = V::sub(q, b);
            V::mul_add(diff, diff, acc)
        }
    }
}

impl Accumulate for AbsDiffAcc {
    const SQRT: bool = false;
    #[inline(always)]
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V {
        unsafe { V::add(acc, V::abs(V::sub(q, b))) }
    }
}

/// Where a finished register tile goes (implemented by `Store` and `Select` only).
trait Sink<T: Real> {
    /// Packed query rows that are real (the rest of the last panel is padding).
    fn rows(&self) -> usize;

    /// The tile of packed query rows `q0..q0 + R` and database panel `s`, scores already
    /// finished.
    ///
    /// # Safety
    /// The CPU must support `V`'s ISA.
    unsafe fn accept<V: Lanes<T>, const R: usize>(
        &mut self,
        q0: usize,
        s: usize,
        tile: &[[V; NV]; R],
    );
}

impl<T: Real> Sink<T> for Store<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }

    #[inline(always)]
    unsafe fn accept<V: Lanes<T>, const R: usize>(
        &mut self,
        q0: usize,
        s: usize,
        tile: &[[V; NV]; R],
    ) {
        for (i, row) in tile.iter().enumerate() {
            let q = q0 + i;
            if q >= self.rows {
                break;
            }
            for (v, &lanes) in row.iter().enumerate() {
                let c = s * NV * V::W + v * V::W;
                if c >= self.cols {
                    break;
                }
                let at = q * self.ld + c;
                if c + V::W <= self.cols {
                    // SAFETY: forwarded; `store` writes W values of a slice at least W long.
                    unsafe { lanes.store(&mut self.out[at..at + V::W]) };
                } else {
                    let mut buf = [T::ZERO; MAX_NR];
                    // SAFETY: as above (W <= MAX_NR).
                    unsafe { lanes.store(&mut buf) };
                    let len = self.cols - c;
                    self.out[at..at + len].copy_from_slice(&buf[..len]);
                }
            }
        }
    }
}

impl<T: Real, C: Candidates<T>> Sink<T> for Select<'_, C> {
    fn rows(&self) -> usize {
        self.rows
    }

    #[inline(always)]
    unsafe fn accept<V: Lanes<T>, const R: usize>(
        &mut self,
        q0: usize,
        s: usize,
        tile: &[[V; NV]; R],
    ) {
        let first = s * NV * V::W;
        let valid = (self.cols - first).min(NV * V::W);
        let valid_mask = if valid >= 64 {
            u64::MAX
        } else {
            (1u64 << valid) - 1
        };
        for (i, row) in tile.iter().enumerate() {
            let q = q0 + i;
            if q >= self.rows {
                break;
            }
            let mask = match self.candidates.bar(q) {
                None => valid_mask,
                Some(bar) => {
                    // SAFETY: forwarded.
                    let bar = unsafe { V::splat(bar) };
                    let mut mask = 0;
                    for (v, &lanes) in row.iter().enumerate() {
                        // SAFETY: forwarded.
                        let pass = unsafe {
                            if C::HIGHER {
                                V::gt_mask(lanes, bar)
                            } else {
                                V::lt_mask(lanes, bar)
                            }
                        };
                        mask |= pass << (v * V::W);
                    }
                    mask & valid_mask
                }
            };
            if mask != 0 {
                let mut buf = [T::ZERO; MAX_NR];
                for (v, &lanes) in row.iter().enumerate() {
                    // SAFETY: forwarded; NV * W <= MAX_NR.
                    unsafe { lanes.store(&mut buf[v * V::W..(v + 1) * V::W]) };
                }
                self.candidates.offer(q, first, &buf[..NV * V::W], mask);
            }
        }
    }
}

/// # Safety
/// The CPU must support `V`'s ISA; `job` must be checked as in `score_store`.
#[inline(always)]
unsafe fn run<T: Real, V: Lanes<T>, S: Sink<T>, const MR: usize>(job: PanelJob<T>, sink: S) {
    unsafe {
        match job.kind {
            Accumulator::Dot => run_with::<T, V, DotAcc, S, MR>(job, sink),
            Accumulator::SquaredDiff => run_with::<T, V, SquaredDiffAcc, S, MR>(job, sink),
            Accumulator::AbsDiff => run_with::<T, V, AbsDiffAcc, S, MR>(job, sink),
        }
    }
}

/// # Safety
/// As `run`.
#[inline(always)]
unsafe fn run_with<T: Real, V: Lanes<T>, A: Accumulate, S: Sink<T>, const MR: usize>(
    job: PanelJob<T>,
    mut sink: S,
) {
    for p in 0..job.q_panels {
        // The last panel of a few queries gets a kernel of fewer rows (1 query: 1 row).
        let used = sink.rows().saturating_sub(p * MR).min(MR);
        // SAFETY: forwarded from the caller; every R is <= MR.
        unsafe {
            match used {
                0 => {}
                1 => panel::<T, V, A, S, MR, 1>(&job, p, &mut sink),
                2 => panel::<T, V, A, S, MR, 2>(&job, p, &mut sink),
                3 | 4 if MR >= 4 => panel::<T, V, A, S, MR, 4>(&job, p, &mut sink),
                _ => panel::<T, V, A, S, MR, MR>(&job, p, &mut sink),
            }
        }
    }
}

/// Query panel `p` (its first `R` rows) against every database panel.
///
/// # Safety
/// As `run`; `R <= MR`.
#[inline(always)]
unsafe fn panel<
    T: Real,
    V: Lanes<T>,
    A: Accumulate,
    S: Sink<T>,
    const MR: usize,
    const R: usize,
>(
    job: &PanelJob<T>,
    p: usize,
    sink: &mut S,
) {
    let nr = NV * V::W;
    let d = job.d;
    let q_panel = &job.q[p * MR * d..(p + 1) * MR * d];
    for s in 0..job.db_panels {
        let db_panel = &job.db[s * nr * d..(s + 1) * nr * d];
        // SAFETY: forwarded from the caller.
        unsafe {
            let mut acc = micro::<T, V, A, MR, R>(q_panel, db_panel);
            if A::SQRT {
                for row in acc.iter_mut() {
                    for lanes in row.iter_mut() {
                        *lanes = V::sqrt(*lanes);
                    }
                }
            }
            if let Some(scale) = job.scale {
                let scale: [V; NV] =
                    array::from_fn(|v| V::load(&scale[s * nr + v * V::W..s * nr + (v + 1) * V::W]));
                for row in acc.iter_mut() {
                    for (lanes, &f) in row.iter_mut().zip(&scale) {
                        *lanes = V::mul(*lanes, f);
                    }
                }
            }
            sink.accept::<V, R>(p * MR, s, &acc);
        }
    }
}

/// One `R x NR` register tile over all coordinates, from the first `R` rows of an `MR`-row
/// query panel.
///
/// # Safety
/// As `run`; `R <= MR`.
#[inline(always)]
unsafe fn micro<T: Real, V: Lanes<T>, A: Accumulate, const MR: usize, const R: usize>(
    q_panel: &[T],
    db_panel: &[T],
) -> [[V; NV]; R] {
    debug_assert!(R <= MR);
    let nr = NV * V::W;
    unsafe {
        let mut total = [[V::zero(); NV]; R];
        let q_blocks = q_panel.chunks(BLOCK * MR);
        for (q_block, db_block) in q_blocks.zip(db_panel.chunks(BLOCK * nr)) {
            let mut acc = [[V::zero(); NV]; R];
            for (q, b) in q_block.chunks_exact(MR).zip(db_block.chunks_exact(nr)) {
                let b: [V; NV] = array::from_fn(|v| V::load(&b[v * V::W..(v + 1) * V::W]));
                for i in 0..R {
                    let qi = V::splat(q[i]);
                    for v in 0..NV {
                        acc[i][v] = A::step::<T, V>(acc[i][v], qi, b[v]);
                    }
                }
            }
            for i in 0..R {
                for v in 0..NV {
                    total[i][v] = V::add(total[i][v], acc[i][v]);
                }
            }
        }
        total
    }
}

// ---------------------------------------------------------------------------------------------
// The row-streaming kernel (few queries)
// ---------------------------------------------------------------------------------------------

const AVX512_ROWS: usize = 16;
const AVX2_ROWS: usize = 8;
const PORTABLE_ROWS: usize = 4;

/// `(W, G)` of the row-streaming kernel for `isa`: queries per query panel (one vector of
/// lanes) and database rows per register group.
pub fn rows_shape<T: Real>(isa: Isa) -> (usize, usize) {
    let (g, vector_bytes) = match effective(isa) {
        Isa::Avx512 | Isa::Avx512Bf16 => (AVX512_ROWS, 64),
        Isa::Avx2 => (AVX2_ROWS, 32),
        Isa::Portable => (PORTABLE_ROWS, 16),
    };
    (vector_bytes / T::BYTES, g)
}

/// A few query panels against database rows read where they lie (no packing): for every
/// coordinate the kernel loads one vector of `W` queries' values and multiplies it by each of
/// `G` database values broadcast straight from the rows, into `G` vectors of scores. Each score
/// is the same accumulation over the coordinates as in the panel kernel (blocks of `BLOCK`), so
/// both kernels give the same bits for a pair.
#[derive(Clone, Copy)]
pub struct RowJob<'a, T> {
    pub kind: Accumulator,
    /// `q_panels` panels of `W` query lanes x `d` coordinates, laid out `[panel][coordinate][lane]`.
    pub q: &'a [T],
    pub q_panels: usize,
    /// `n` database rows of `d` values, row-major.
    pub db: &'a [T],
    pub n: usize,
    pub d: usize,
    /// As `PanelJob::scale`, one per database row.
    pub scale: Option<&'a [T]>,
    /// Memory to pull into the L2 cache meanwhile (the next job's rows), spread over the run,
    /// so that reading it overlaps with this job's arithmetic.
    pub prefetch: &'a [T],
    /// The queries in a filter's layout (`FilterQueries::new`, given `isa` and `q`: the
    /// bfloat16 filter or the float32 pair filter), when that filter is to screen the rows;
    /// the results are the same bits either way.
    pub filter: Option<&'a FilterQueries>,
    /// Cosine with the database norms unknown and not wanted (`scale` is then `None`): the
    /// kernel bounds each row's scale and computes the exact one only where it matters.
    pub scale_bounds: Option<ScaleBounds<'a, T>>,
}

/// Cosine scales the row-streaming kernel bounds as it goes: each row's sum of squares in `T`
/// (`approx_sums`, over each group of rows just before its first query panel, which then finds
/// them in L1) gives its scale within a relative `slack`; a score made with it and widened by the slack must beat its
/// query's bar before the row's `exact` scale is computed and its exact score offered. A first
/// cosine search of a few queries so skips the exact norms (float64 sums, bound by the
/// float32-to-float64 conversions) of the rows that cannot enter any top k: almost all.
#[derive(Clone, Copy)]
pub struct ScaleBounds<'a, T> {
    pub slack: T,
    /// The exact scale of a row (`pairwise::cosine_scale` of `pairwise::cosine_norm`): NaN
    /// for a row that is not finite.
    pub exact: fn(&[T]) -> T,
    /// Set when a row is not finite.
    pub not_finite: &'a AtomicBool,
}

/// Scores the first `queries` packed queries of `job` against all its rows into `candidates`
/// (`offer_row`), rows in ascending order. Up to `FILTER_QUERIES` queries go through the
/// few-query filter, more through the bfloat16 or pair filter when `job.filter` is given; any filter
/// can also compute cosine norms on the way (`norms`; `job.scale` must then be `None`).
pub fn score_rows<T: Real, C: Candidates<T>>(
    isa: Isa,
    job: RowJob<T>,
    candidates: &mut C,
    queries: usize,
    norms: Option<NormsOnTheWay<T>>,
) {
    let (w, _) = rows_shape::<T>(isa);
    assert_eq!(job.q.len(), job.q_panels * w * job.d, "packed queries");
    assert_eq!(job.db.len(), job.n * job.d, "database rows");
    assert!(queries <= job.q_panels * w);
    if let Some(scale) = job.scale {
        assert_eq!(scale.len(), job.n, "one scale per database row");
    }
    if let Some(on_the_way) = &norms {
        assert!(
            (queries <= FILTER_QUERIES && job.q_panels == 1) || job.filter.is_some(),
            "norms on the way: a filter"
        );
        assert!(
            job.scale.is_none() && job.kind == Accumulator::Dot,
            "norms on the way: cosine"
        );
        assert_eq!(on_the_way.norms.len(), job.n, "one norm per database row");
    }
    if job.scale_bounds.is_some() {
        assert!(
            job.kind == Accumulator::Dot && job.scale.is_none(),
            "scale bounds: cosine, no scales given"
        );
        assert!(
            job.filter.is_none()
                && norms.is_none()
                && (queries > FILTER_QUERIES || job.q_panels > 1),
            "scale bounds: not a filter"
        );
    }
    if let Some(filter) = job.filter {
        assert!(
            filter.runs_on(isa),
            "the filter's products need their instructions"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runs_on` checked the CPU; `FilterQueries` exist only for f32 dot products.
        return unsafe { bf16::rows(job, candidates, queries, norms) };
    }
    match effective(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `effective` returned Avx512 only because this CPU has avx512f and fma.
        Isa::Avx512 => unsafe { x86::avx512_rows(job, candidates, queries, norms) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `effective` returned Avx2 only because this CPU has avx2 and fma.
        Isa::Avx2 => unsafe { x86::avx2_rows(job, candidates, queries, norms) },
        // SAFETY: portable lanes use no instructions beyond the target's baseline.
        _ => unsafe {
            run_rows::<T, T::PortableLanes, C, PORTABLE_ROWS>(job, candidates, queries, norms)
        },
    }
}

/// A hint to bring the cache line at `p` into L2 (never faults; a no-op off x86-64).
#[inline(always)]
fn prefetch_l2<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// # Safety
/// The CPU must support `V`'s ISA; `job` checked as in `score_rows`.
#[inline(always)]
unsafe fn run_rows<T: Real, V: Lanes<T>, C: Candidates<T>, const G: usize>(
    job: RowJob<T>,
    candidates: &mut C,
    queries: usize,
    norms: Option<NormsOnTheWay<T>>,
) {
    unsafe {
        match job.kind {
            Accumulator::Dot => {
                run_rows_with::<T, V, DotAcc, C, G>(job, candidates, queries, norms)
            }
            Accumulator::SquaredDiff => {
                run_rows_with::<T, V, SquaredDiffAcc, C, G>(job, candidates, queries, norms)
            }
            Accumulator::AbsDiff => {
                run_rows_with::<T, V, AbsDiffAcc, C, G>(job, candidates, queries, norms)
            }
        }
    }
}

/// # Safety
/// As `run_rows`.
#[inline(always)]
unsafe fn run_rows_with<T: Real, V: Lanes<T>, A: Accumulate, C: Candidates<T>, const G: usize>(
    job: RowJob<T>,
    candidates: &mut C,
    queries: usize,
    norms: Option<NormsOnTheWay<T>>,
) {
    if let Some(norms) = norms {
        // SAFETY: forwarded; `score_rows` checked the filter's conditions.
        return unsafe {
            filter_rows_with::<T, V, A, C, true>(job, candidates, queries, Some(norms))
        };
    }
    if queries <= FILTER_QUERIES && job.q_panels == 1 {
        // SAFETY: forwarded.
        return unsafe { filter_rows_with::<T, V, A, C, false>(job, candidates, queries, None) };
    }
    let (w, d) = (V::W, job.d);
    let groups = job.n.div_ceil(G);
    // Group g pulls in the same rows of the next block: G rows, spread over its d steps.
    let pf_end = job.prefetch.as_ptr_range().end;
    for g in 0..groups {
        let r0 = g * G;
        let rows = (job.n - r0).min(G);
        let pf = Prefetch {
            at: job.prefetch.as_ptr().wrapping_add(r0 * d),
            end: pf_end,
        };
        // The group's scales: given, or bounded before its first panel (whose pass then
        // finds the rows in L1).
        let mut bounded = [T::ZERO; G];
        let scale = match job.scale_bounds {
            Some(bounds) => {
                let group = &job.db[r0 * d..(r0 + rows) * d];
                // SAFETY: forwarded; `group` holds `rows * d` values.
                unsafe { bound_scales::<T, V>(group, d, &bounds, &mut bounded[..rows]) };
                Some(&bounded[..rows])
            }
            None => job.scale.map(|s| &s[r0..r0 + rows]),
        };
        for p in 0..job.q_panels {
            let first = p * w;
            if first >= queries {
                break;
            }
            let q_panel = &job.q[p * w * d..(p + 1) * w * d];
            let pf = if p == 0 { pf } else { Prefetch::NONE };
            // SAFETY: forwarded; the row slices hold `R * d` values.
            unsafe {
                if rows == G {
                    let rows = &job.db[r0 * d..(r0 + G) * d];
                    let acc = micro_rows::<T, V, A, G>(q_panel, rows, d, pf);
                    emit_rows::<T, V, A, C, G>(&job, candidates, queries, first, r0, acc, scale);
                } else {
                    for (i, r) in (r0..r0 + rows).enumerate() {
                        let row = &job.db[r * d..(r + 1) * d];
                        let acc = micro_rows::<T, V, A, 1>(q_panel, row, d, Prefetch::NONE);
                        let scale = scale.map(|s| &s[i..i + 1]);
                        emit_rows::<T, V, A, C, 1>(&job, candidates, queries, first, r, acc, scale);
                    }
                }
            }
        }
    }
}

/// Memory `micro_rows` pulls toward L2 while it runs: `R` rows of `d` values from `at` (not
/// past `end`), one slice of `R` values per coordinate step.
#[derive(Clone, Copy)]
struct Prefetch<T> {
    at: *const T,
    end: *const T,
}

impl<T> Prefetch<T> {
    const NONE: Self = Prefetch {
        at: std::ptr::null(),
        end: std::ptr::null(),
    };
}

/// `R` database rows (row-major, `R * d` values) against one panel of `W` queries.
///
/// # Safety
/// As `run_rows`; `rows.len() == R * d`, `q_panel.len() == W * d`.
#[inline(always)]
unsafe fn micro_rows<T: Real, V: Lanes<T>, A: Accumulate, const R: usize>(
    q_panel: &[T],
    rows: &[T],
    d: usize,
    pf: Prefetch<T>,
) -> [V; R] {
    assert!(rows.len() == R * d && q_panel.len() == V::W * d);
    let base = rows.as_ptr();
    // R values per step cover the R rows' R * d values in d steps; a line at a time.
    let step_bytes = R * std::mem::size_of::<T>();
    let pf_lines = if (pf.at as usize) < (pf.end as usize) {
        step_bytes.div_ceil(64)
    } else {
        0
    };
    let (pf_at, pf_end) = (pf.at.cast::<u8>(), pf.end as usize);
    unsafe {
        let mut total = [V::zero(); R];
        for (block, q_block) in q_panel.chunks(BLOCK * V::W).enumerate() {
            let mut acc = [V::zero(); R];
            for (j, q) in q_block.chunks_exact(V::W).enumerate() {
                let k = block * BLOCK + j;
                for line in 0..pf_lines {
                    let p = pf_at.wrapping_add(k * step_bytes + line * 64);
                    if (p as usize) < pf_end {
                        prefetch_l2(p);
                    }
                }
                let q = V::load(q);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: r < R and k < d, so r * d + k is inside `rows` (checked above).
                    let b = V::splat(*base.add(r * d + k));
                    *a = A::step::<T, V>(*a, q, b);
                }
            }
            for (t, a) in total.iter_mut().zip(acc) {
                *t = V::add(*t, a);
            }
        }
        total
    }
}

/// Finishes the scores of database rows `r0..r0 + R` against the query panel starting at
/// packed query `first` (times the rows' `scale`, when given), and offers those that beat
/// their query's bar.
///
/// # Safety
/// As `run_rows`.
#[inline(always)]
unsafe fn emit_rows<T: Real, V: Lanes<T>, A: Accumulate, C: Candidates<T>, const R: usize>(
    job: &RowJob<T>,
    candidates: &mut C,
    queries: usize,
    first: usize,
    r0: usize,
    acc: [V; R],
    scale: Option<&[T]>,
) {
    let valid = (queries - first).min(V::W);
    let valid_mask = if valid >= 64 {
        u64::MAX
    } else {
        (1u64 << valid) - 1
    };
    // Each query's bar as one lane; queries still taking everything are `open`.
    let bars = |candidates: &C| {
        let mut bar = [T::NAN; MAX_NR];
        let mut open = 0u64;
        for (l, b) in bar.iter_mut().enumerate().take(valid) {
            match candidates.bar(first + l) {
                Some(v) => *b = v,
                None => open |= 1 << l,
            }
        }
        // SAFETY: forwarded.
        (unsafe { V::load(&bar) }, open)
    };
    let (mut bar, mut open) = bars(candidates);
    for (i, &a) in acc.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe {
            let mut s = a;
            if A::SQRT {
                s = V::sqrt(s);
            }
            let unscaled = s;
            if let Some(scale) = scale {
                s = V::mul(s, V::splat(scale[i]));
            }
            let mut mask = match job.scale_bounds {
                Some(bounds) => beats::<T, V, C>(widen::<T, V, C>(s, bounds.slack), bar),
                None => beats::<T, V, C>(s, bar),
            };
            mask = (mask | open) & valid_mask;
            if mask != 0 {
                if let Some(bounds) = job.scale_bounds {
                    let row = &job.db[(r0 + i) * job.d..(r0 + i + 1) * job.d];
                    s = V::mul(unscaled, V::splat((bounds.exact)(row)));
                    mask = (beats::<T, V, C>(s, bar) | open) & valid_mask;
                    if mask == 0 {
                        continue;
                    }
                }
                let mut buf = [T::ZERO; MAX_NR];
                s.store(&mut buf);
                candidates.offer_row(first, r0 + i, &buf[..V::W], mask);
                (bar, open) = bars(candidates);
            }
        }
    }
}

/// The scales of the rows of `rows` (rows of `d` values) into `out`: within `bounds.slack` of
/// the exact ones from sums of squares in `T`, exact where a sum may have lost bits to
/// underflow (below `sqrt(MIN_POSITIVE)`) or bounds nothing (infinite or NaN).
///
/// # Safety
/// The CPU must support `V`'s ISA; `rows.len() == out.len() * d`.
#[inline(always)]
unsafe fn bound_scales<T: Real, V: Lanes<T>>(
    rows: &[T],
    d: usize,
    bounds: &ScaleBounds<T>,
    out: &mut [T],
) {
    if d == 0 {
        out.fill(T::ZERO); // zero vectors: cosine 0
        return;
    }
    // SAFETY: forwarded.
    unsafe { approx_sums::<T, V>(rows, d, out) };
    let smallest = T::MIN_POSITIVE.sqrt();
    for (row, s) in rows.chunks_exact(d).zip(out.iter_mut()) {
        *s = if *s >= smallest && *s < T::INFINITY {
            T::ONE / s.sqrt()
        } else {
            let exact = (bounds.exact)(row);
            if exact.is_nan() {
                bounds.not_finite.store(true, Ordering::Relaxed);
            }
            exact
        };
    }
}

/// The lanes of scores `s` better than their bars.
///
/// # Safety
/// As `run_rows`.
#[inline(always)]
unsafe fn beats<T: Real, V: Lanes<T>, C: Candidates<T>>(s: V, bar: V) -> u64 {
    unsafe {
        if C::HIGHER {
            V::gt_mask(s, bar)
        } else {
            V::lt_mask(s, bar)
        }
    }
}

/// Scores `s`, made with scales known within a relative `slack`, moved toward better by as much
/// as the exact scales could move them (and by the smallest normal value, for products that
/// lost bits to underflow): an exact score that beats a bar leaves its widened score beating
/// it too.
///
/// # Safety
/// As `run_rows`.
#[inline(always)]
unsafe fn widen<T: Real, V: Lanes<T>, C: Candidates<T>>(s: V, slack: T) -> V {
    unsafe {
        let by = V::mul_add(V::abs(s), V::splat(slack), V::splat(T::MIN_POSITIVE));
        if C::HIGHER {
            V::add(s, by)
        } else {
            V::sub(s, by)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The few-query filter (one query or two): whole vectors along the coordinates
// ---------------------------------------------------------------------------------------------

/// Most queries the row-streaming call hands to the filter (measured: benchmarks/RESULTS.md,
/// "One query").
pub const FILTER_QUERIES: usize = 2;

/// Cosine norms a row-streaming call computes on its way through the rows (the database norms
/// are not known yet): the filter reads each row once for both, where a separate pass would
/// leave the memory idle while it computes.
pub struct NormsOnTheWay<'a, T> {
    /// One per row of the job: `pairwise::cosine_norm`'s bits.
    pub norms: &'a mut [T],
    /// The factor a row's scores are multiplied by, from its norm (`pairwise::cosine_scale`).
    pub scale: fn(T) -> T,
}

/// A few queries against database rows where they lie, one query and one row at a time, each
/// row read along its coordinates in whole vectors: the speed of a matrix-vector product,
/// where the row-streaming kernel gives one query one lane in `W`.
///
/// These sums run in another order than the one every score must have (`BLOCK`), so they only
/// filter: a row goes on to its exact score (`offer_exact`) unless its filter score, widened by
/// a bound on the rounding of both orders (`FilterBound`), cannot beat the query's bar. The
/// bound is rigorous, so no row whose exact score would have been offered is lost and every
/// score offered is the exact one: the results have the same bits as the row-streaming
/// kernel's. With `NORMS` the first query's pass also computes each row's cosine norm while the
/// row is in L1 (`job.scale` is then unused).
///
/// One row at a time, the rows' next block pulled toward L2 in address order, measured faster
/// than 2 to 16 rows at a time (more concurrent streams) at two threads.
///
/// # Safety
/// As `run_rows`; `job.q_panels == 1`, `queries <= W`, and `norms` is given iff `NORMS`.
#[inline(always)]
unsafe fn filter_rows_with<
    T: Real,
    V: Lanes<T>,
    A: Accumulate,
    C: Candidates<T>,
    const NORMS: bool,
>(
    job: RowJob<T>,
    candidates: &mut C,
    queries: usize,
    norms: Option<NormsOnTheWay<T>>,
) {
    // SAFETY (all arms): forwarded; each QN covers `queries`.
    unsafe {
        match queries {
            0 => {}
            1 => filter_rows_qn::<T, V, A, C, NORMS, 1>(job, candidates, queries, norms),
            _ => filter_rows_qn::<T, V, A, C, NORMS, 2>(job, candidates, queries, norms),
        }
    }
}

/// `filter_rows_with` for up to `QN` queries, all in one pass over the rows.
///
/// # Safety
/// As `filter_rows_with`; `queries <= QN`.
#[inline(always)]
unsafe fn filter_rows_qn<
    T: Real,
    V: Lanes<T>,
    A: Accumulate,
    C: Candidates<T>,
    const NORMS: bool,
    const QN: usize,
>(
    job: RowJob<T>,
    candidates: &mut C,
    queries: usize,
    mut norms: Option<NormsOnTheWay<T>>,
) {
    let (w, d, n) = (V::W, job.d, job.n);
    assert!(job.q_panels == 1 && queries <= w.min(QN) && norms.is_some() == NORMS);
    let bound = FilterBound::new::<T>(d, w);
    let full = d / w * w;
    let padded = d.div_ceil(w) * w;
    // The queries one after another, each zero-padded to whole vectors (padding queries: 0).
    let mut q = vec![T::ZERO; QN * padded];
    for i in 0..queries {
        for k in 0..d {
            q[i * padded + k] = job.q[k * w + i];
        }
    }
    // |q|, rounded up (its f64 sum is far more accurate than the bound's room).
    let q_norm: [f64; QN] =
        array::from_fn(|i| sum_squares(&q[i * padded..(i + 1) * padded]).sqrt() * (1.0 + 1e-12));
    // Dot without a scale (the dot metric) bounds the terms' magnitudes by summing them.
    let magnitudes = A::SIGNED && job.scale.is_none() && !NORMS;
    // The norms' squares as the rows stream by, where they are exact (f32 in f64) and so have
    // `sum_squares`' bits whatever the instructions; f64 rows take `sum_squares` itself. Only
    // whole vectors of coordinates at multiples of W fit `add_squares`' layout.
    let squares_here = NORMS && T::BYTES == 4 && ROW_ACCS.is_multiple_of(w);
    let mut tail = [T::ZERO; MAX_NR];
    let pf_end = job.prefetch.as_ptr_range().end.cast::<u8>();
    let lines_per_step = (w * T::BYTES).div_ceil(64);
    let mut bars: [Option<T>; QN] =
        array::from_fn(|i| if i < queries { candidates.bar(i) } else { None });
    for row in 0..n {
        let values = &job.db[row * d..(row + 1) * d];
        let at = values.as_ptr();
        // The same row of the next block, toward L2, a line per step (none past its end).
        let pf = job.prefetch.as_ptr().wrapping_add(row * d).cast::<u8>();
        let pf_lines = if pf.wrapping_add(full * T::BYTES) <= pf_end {
            lines_per_step
        } else {
            0
        };
        // Two sums per query, alternate vectors: half the dependent chain of one.
        let mut acc = [[V::zero(); QN]; 2];
        let mut mag = [[V::zero(); QN]; 2];
        let mut squares = [0.0f64; ROW_ACCS];
        let row_q = RowStep {
            at,
            pf,
            pf_lines,
            q: q.as_ptr(),
            padded,
            magnitudes,
            squares_here,
        };
        // Whole turns of the squares' accumulators first: their slots are then constants, and
        // the accumulators stay in registers.
        let turn = ROW_ACCS.max(w);
        let mut c = 0;
        // SAFETY (both loops): forwarded; c + w <= full <= d.
        unsafe {
            while c + turn <= full {
                for j in 0..turn / w {
                    row_q.step::<V, A, QN>(
                        c + j * w,
                        j * w % ROW_ACCS,
                        &mut acc[j % 2],
                        &mut mag[j % 2],
                        &mut squares,
                    );
                }
                c += turn;
            }
            while c < full {
                let half = c / w % 2;
                let (acc, mag) = (&mut acc[half], &mut mag[half]);
                row_q.step::<V, A, QN>(c, c % ROW_ACCS, acc, mag, &mut squares);
                c += w;
            }
        }
        if c < d {
            tail[..w].fill(T::ZERO);
            tail[..d - c].copy_from_slice(&values[c..]);
            // SAFETY: forwarded; `tail` holds `w` values and `c + w <= padded`.
            unsafe {
                let b = V::load(&tail[..w]);
                row_q.add::<V, A, QN>(b, c, c % ROW_ACCS, &mut acc[0], &mut mag[0], &mut squares);
            }
        }
        let scale = match norms.as_mut() {
            Some(on_the_way) => {
                let mut sum = 0.0;
                if squares_here {
                    sum = reduce_accs(&squares);
                } else {
                    sum_squares_rows(values, d, std::slice::from_mut(&mut sum));
                }
                let norm = T::from_f64(sum.sqrt());
                on_the_way.norms[row] = norm;
                Some((on_the_way.scale)(norm))
            }
            None => job.scale.map(|s| s[row]),
        };
        for i in 0..queries {
            // SAFETY: forwarded.
            let sum = unsafe { V::add(acc[0][i], acc[1][i]).reduce_add() }.to_f64();
            let size = match scale {
                _ if !A::SIGNED => sum,
                // Cauchy-Schwarz: the terms' magnitudes add up to at most |q| |row|.
                Some(scale) => q_norm[i] / scale.to_f64(),
                // SAFETY: forwarded.
                None => unsafe { V::add(mag[0][i], mag[1][i]).reduce_add() }.to_f64(),
            };
            let (score, slack) = bound.finish::<T, A>(sum, size, scale);
            let hopeless = match bars[i] {
                None => false,
                Some(b) if C::HIGHER => score + slack < b.to_f64(),
                Some(b) => score - slack > b.to_f64(),
            };
            if !hopeless {
                // SAFETY: forwarded; `row < n`, `i < W`.
                unsafe { offer_exact::<T, V, A, C>(&job, candidates, i, row, scale) };
                bars[i] = candidates.bar(i);
            }
        }
    }
}

/// What one step of the filter needs of its row: where the row and the prefetch lie, the
/// padded queries, and which of the extra sums to keep.
struct RowStep<T> {
    /// The row's first value.
    at: *const T,
    /// Where the next block's same row lies, and the lines to pull per step (0: none).
    pf: *const u8,
    pf_lines: usize,
    /// `QN` queries of `padded` values each, one after another.
    q: *const T,
    padded: usize,
    magnitudes: bool,
    squares_here: bool,
}

impl<T: Real> RowStep<T> {
    /// The vector of coordinates `c..c + W`: its squares go to `squares` from `slot`
    /// (`c % ROW_ACCS`), its products with each query to `acc` (and `mag`).
    ///
    /// # Safety
    /// As `filter_rows_with`; `c + W` within the row and within `padded`.
    #[inline(always)]
    unsafe fn step<V: Lanes<T>, A: Accumulate, const QN: usize>(
        &self,
        c: usize,
        slot: usize,
        acc: &mut [V; QN],
        mag: &mut [V; QN],
        squares: &mut [f64; ROW_ACCS],
    ) {
        unsafe {
            for line in 0..self.pf_lines {
                prefetch_l2(self.pf.wrapping_add(c * T::BYTES + line * 64));
            }
            let b = V::load(std::slice::from_raw_parts(self.at.add(c), V::W));
            self.add::<V, A, QN>(b, c, slot, acc, mag, squares);
        }
    }

    /// Adds `b`, the row's coordinates `c..c + W` (zero-padded past the row's end), to the sums.
    ///
    /// # Safety
    /// As `step`, with `b` given.
    #[inline(always)]
    unsafe fn add<V: Lanes<T>, A: Accumulate, const QN: usize>(
        &self,
        b: V,
        c: usize,
        slot: usize,
        acc: &mut [V; QN],
        mag: &mut [V; QN],
        squares: &mut [f64; ROW_ACCS],
    ) {
        unsafe {
            if self.squares_here {
                b.add_squares(slot, squares);
            }
            for i in 0..QN {
                let qv = V::load(std::slice::from_raw_parts(
                    self.q.add(i * self.padded + c),
                    V::W,
                ));
                acc[i] = A::step::<T, V>(acc[i], qv, b);
                if self.magnitudes {
                    mag[i] = V::mul_add(V::abs(qv), V::abs(b), mag[i]);
                }
            }
        }
    }
}

/// The exact score of query `i` against database `row` (the row-streaming kernel, one row,
/// times `scale`), offered to the query's selector if it beats the bar.
///
/// # Safety
/// As `run_rows`; `row < job.n`, `i < W`.
#[inline(always)]
unsafe fn offer_exact<T: Real, V: Lanes<T>, A: Accumulate, C: Candidates<T>>(
    job: &RowJob<T>,
    candidates: &mut C,
    i: usize,
    row: usize,
    scale: Option<T>,
) {
    let d = job.d;
    let values = &job.db[row * d..(row + 1) * d];
    let mut buf = [T::ZERO; MAX_NR];
    // SAFETY: forwarded.
    unsafe {
        let [mut s] = micro_rows::<T, V, A, 1>(&job.q[..V::W * d], values, d, Prefetch::NONE);
        if A::SQRT {
            s = V::sqrt(s);
        }
        if let Some(scale) = scale {
            s = V::mul(s, V::splat(scale));
        }
        s.store(&mut buf);
    }
    let score = buf[i];
    let pass = match candidates.bar(i) {
        None => true,
        Some(b) if C::HIGHER => score > b,
        Some(b) => score < b,
    };
    if pass {
        candidates.offer_row(i, row, &[score], 1);
    }
}

/// How far a filter score can be from the exact score of the same pair, from the rounding of
/// both sums (standard error analysis: a sum whose terms each go through at most `h`
/// roundings is off by at most `h * u / (1 - h * u)` times the sum of the terms' magnitudes).
struct FilterBound {
    /// Relative bound on the two sums' difference, for the terms' magnitude sum, with room.
    rel: f64,
    /// Unit roundoff of `T`, for the finishing steps.
    u: f64,
    /// Absolute allowance for underflow: every rounding in the subnormal range.
    tiny: f64,
}

impl FilterBound {
    fn new<T: Real>(d: usize, w: usize) -> Self {
        let u = T::EPSILON.to_f64() / 2.0;
        // Without a fused multiply-add (portable lanes) each step rounds twice.
        let per_step = 2.0;
        let exact = per_step * BLOCK as f64 + d.div_ceil(BLOCK) as f64;
        // The filter's lanes (two sums of alternate vectors, then one add), then their sum (at
        // most W - 1 more roundings).
        let filter = per_step * d.div_ceil(w) as f64 + 1.0 + w as f64;
        let h = exact + filter + 4.0;
        FilterBound {
            rel: 2.0 * h * u / (1.0 - h * u).max(0.5),
            u,
            tiny: 4.0 * (d as f64 + 1.0) * T::MIN_POSITIVE.to_f64(),
        }
    }

    /// The filter's score as the sink would see it (square root, scale), in f64, and how far
    /// the exact score can be from it. `size` bounds the sum of the terms' magnitudes.
    #[inline(always)]
    fn finish<T: Real, A: Accumulate>(&self, sum: f64, size: f64, scale: Option<T>) -> (f64, f64) {
        let mut score = sum;
        let mut slack = self.rel * size + self.tiny;
        if A::SQRT {
            let root = sum.max(0.0).sqrt();
            // |sqrt(a) - sqrt(b)| <= sqrt(|a - b|), and <= |a - b| / sqrt(b).
            slack = slack.sqrt().min(if root > 0.0 {
                slack / root
            } else {
                f64::INFINITY
            });
            score = root;
            slack += 4.0 * self.u * (root + slack);
        }
        if let Some(scale) = scale {
            let scale = scale.to_f64();
            score *= scale;
            slack = slack * scale.abs() + 4.0 * self.u * (score.abs() + slack * scale.abs());
        }
        (score, slack)
    }
}

/// `W` values in a plain array: the fallback for CPUs without the x86 kernels.
#[derive(Clone, Copy)]
pub struct Portable<T, const W: usize>([T; W]);

fn bits<const W: usize>(f: impl Fn(usize) -> bool) -> u64 {
    (0..W).fold(0, |m, l| m | ((f(l) as u64) << l))
}

// SAFETY: plain Rust arithmetic, no target features.
unsafe impl<T: Real, const W: usize> Lanes<T> for Portable<T, W> {
    const W: usize = W;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([T::ZERO; W])
    }
    #[inline(always)]
    unsafe fn splat(x: T) -> Self {
        Portable([x; W])
    }
    #[inline(always)]
    unsafe fn load(src: &[T]) -> Self {
        Portable(src[..W].try_into().expect("W values"))
    }
    #[inline(always)]
    unsafe fn store(self, dst: &mut [T]) {
        dst[..W].copy_from_slice(&self.0);
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, acc: Self) -> Self {
        // aarch64 always has FMA; elsewhere `mul_add` could be a slow libm call.
        Portable(array::from_fn(|l| {
            if cfg!(target_arch = "aarch64") {
                a.0[l].mul_add(b.0[l], acc.0[l])
            } else {
                a.0[l] * b.0[l] + acc.0[l]
            }
        }))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Portable(array::from_fn(|l| a.0[l] + b.0[l]))
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Portable(array::from_fn(|l| a.0[l] - b.0[l]))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Portable(array::from_fn(|l| a.0[l] * b.0[l]))
    }
    #[inline(always)]
    unsafe fn abs(a: Self) -> Self {
        Portable(array::from_fn(|l| a.0[l].abs()))
    }
    #[inline(always)]
    unsafe fn sqrt(a: Self) -> Self {
        Portable(array::from_fn(|l| a.0[l].sqrt()))
    }
    #[inline(always)]
    unsafe fn gt_mask(a: Self, b: Self) -> u64 {
        bits::<W>(|l| a.0[l] > b.0[l])
    }
    #[inline(always)]
    unsafe fn lt_mask(a: Self, b: Self) -> u64 {
        bits::<W>(|l| a.0[l] < b.0[l])
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{F32x16, F32x8, F64x4, F64x8};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        reduce_accs, run, run_rows, Candidates, Lanes, NormsOnTheWay, PanelJob, Real, RowJob,
        RowSum, Sink, AVX2_MR, AVX2_ROWS, AVX512_MR, AVX512_ROWS, ROW_ACCS,
    };

    /// # Safety
    /// The CPU must have avx512f and fma; `job` checked as in `score_store`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512<T: Real, S: Sink<T>>(job: PanelJob<T>, sink: S) {
        unsafe { run::<T, T::Avx512Lanes, S, AVX512_MR>(job, sink) }
    }

    /// # Safety
    /// The CPU must have avx2 and fma; `job` checked as in `score_store`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<T: Real, S: Sink<T>>(job: PanelJob<T>, sink: S) {
        unsafe { run::<T, T::Avx2Lanes, S, AVX2_MR>(job, sink) }
    }

    /// # Safety
    /// The CPU must have avx512f and fma; `job` checked as in `score_rows`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512_rows<T: Real, C: Candidates<T>>(
        job: RowJob<T>,
        candidates: &mut C,
        queries: usize,
        norms: Option<NormsOnTheWay<T>>,
    ) {
        unsafe { run_rows::<T, T::Avx512Lanes, C, AVX512_ROWS>(job, candidates, queries, norms) }
    }

    /// # Safety
    /// The CPU must have avx2 and fma; `job` checked as in `score_rows`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_rows<T: Real, C: Candidates<T>>(
        job: RowJob<T>,
        candidates: &mut C,
        queries: usize,
        norms: Option<NormsOnTheWay<T>>,
    ) {
        unsafe { run_rows::<T, T::Avx2Lanes, C, AVX2_ROWS>(job, candidates, queries, norms) }
    }

    /// # Safety
    /// The CPU must have avx512f and fma.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn call_avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// # Safety
    /// The CPU must have avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn call_avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `pack_rows` for f32 panels of 32 rows: 16 rows x 16 coordinates at a time are loaded
    /// (masked at the row's end), scaled, transposed in registers and stored as 16 coordinate
    /// vectors.
    ///
    /// # Safety
    /// The CPU must have avx512f; `data.len() == n * d`, `out.len() == ceil(n / 32) * 32 * d`,
    /// `scale` (when given) holds `n` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack32_f32(
        data: &[f32],
        n: usize,
        d: usize,
        scale: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let panels = n.div_ceil(32);
        let (src, dst) = (data.as_ptr(), out.as_mut_ptr());
        for p in 0..panels {
            for half in 0..2 {
                let r0 = p * 32 + half * 16;
                let rows = n.saturating_sub(r0).min(16);
                let mut sc = [0.0f32; 16];
                if let (Some(s), true) = (scale, rows > 0) {
                    sc[..rows].copy_from_slice(&s[r0..r0 + rows]);
                }
                // SAFETY: rows r0..r0 + rows exist; every store lands in panel p's d x 32
                // values (coordinates c..c + width, lanes half * 16..half * 16 + 16).
                unsafe {
                    let row = |l: usize| src.add((r0 + l.min(rows.max(1) - 1)) * d);
                    let out = dst.add(p * d * 32 + half * 16);
                    let mut c = 0;
                    while c < d {
                        let width = (d - c).min(16);
                        let mask: __mmask16 = if width == 16 {
                            0xFFFF
                        } else {
                            (1u16 << width) - 1
                        };
                        let mut r = [_mm512_setzero_ps(); 16];
                        if rows == 16 && width == 16 {
                            for (l, reg) in r.iter_mut().enumerate() {
                                // A few cache lines ahead on each of the 16 rows: 16
                                // interleaved streams are more than hardware prefetchers follow.
                                _mm_prefetch::<_MM_HINT_T0>(
                                    row(l).wrapping_add(c + PREFETCH).cast(),
                                );
                                *reg = _mm512_loadu_ps(row(l).add(c));
                            }
                        } else {
                            for (l, reg) in r.iter_mut().enumerate() {
                                if l < rows {
                                    *reg = _mm512_maskz_loadu_ps(mask, row(l).add(c));
                                }
                            }
                        }
                        if scale.is_some() {
                            for (reg, &f) in r.iter_mut().zip(&sc) {
                                *reg = _mm512_mul_ps(*reg, _mm512_set1_ps(f));
                            }
                        }
                        transpose16(&mut r);
                        if width == 16 {
                            for (t, reg) in r.iter().enumerate() {
                                _mm512_storeu_ps(out.add((c + t) * 32), *reg);
                            }
                        } else {
                            for (t, reg) in r.iter().enumerate().take(width) {
                                _mm512_storeu_ps(out.add((c + t) * 32), *reg);
                            }
                        }
                        c += 16;
                    }
                }
            }
        }
    }

    /// `reduce_accs` of the AVX-512 accumulators (lanes `8 j..8 j + 8` in register `j`) in
    /// the registers: each level of the pairwise tree adds the even lanes to the odd ones, so
    /// the same additions in the same order, the same bits (and a third faster a row than
    /// storing the lanes for the scalar tree).
    ///
    /// # Safety
    /// The CPU must have avx512f.
    #[inline(always)]
    unsafe fn reduce_accs_avx512(acc: &[__m512d; ROW_ACCS / 8]) -> f64 {
        // SAFETY: register arithmetic of a CPU with avx512f (the caller's).
        unsafe {
            let even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
            let odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
            // Lane i of the result: lanes 2i and 2i + 1 of the sixteen in `x` then `y`.
            let pairs = |x: __m512d, y: __m512d| {
                let (e, o) = (
                    _mm512_permutex2var_pd(x, even, y),
                    _mm512_permutex2var_pd(x, odd, y),
                );
                _mm512_add_pd(e, o)
            };
            let level16 = (pairs(acc[0], acc[1]), pairs(acc[2], acc[3]));
            let level8 = pairs(level16.0, level16.1);
            // From here the lanes past the level's width are ignored.
            let level4 = pairs(level8, level8);
            let level2 = pairs(level4, level4);
            _mm512_cvtsd_f64(pairs(level2, level2))
        }
    }

    /// `reduce_accs` of the AVX2 accumulators (lanes `4 j..4 j + 4` in register `j`).
    ///
    /// # Safety
    /// The CPU must have avx2.
    #[inline(always)]
    unsafe fn reduce_accs_avx2(acc: &[__m256d; ROW_ACCS / 4]) -> f64 {
        let mut lanes = [0.0f64; ROW_ACCS];
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: `lanes` holds 4 values from 4 j.
            unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(j * 4), *a) };
        }
        reduce_accs(&lanes)
    }

    /// Row sums in f64 with AVX-512: 4 accumulators of 8 lanes, element `i` into lane
    /// `i % 32`; the last partial block is zero-padded (adding 0 leaves a sum of non-negative
    /// terms unchanged).
    macro_rules! row_sum_x86 {
        ($name:ident, $feat:literal, $t:ty, $acc:ty, $per:expr, $zero:ident, $load:expr,
         $fmadd:ident, $add:ident, $abs:expr, $reduce:ident) => {
            /// Row sums of `out.len()` rows of `d` values, four rows at a time (independent
            /// chains); each row's arithmetic is that of the one-row loop.
            ///
            /// # Safety
            /// The CPU must have the features this function is compiled for;
            /// `data.len() == out.len() * d`.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(data: &[$t], d: usize, sum: RowSum, out: &mut [f64]) {
                assert_eq!(data.len(), out.len() * d);
                unsafe {
                    match sum {
                        RowSum::Squares => go::<true>(data, d, out),
                        RowSum::Abs => go::<false>(data, d, out),
                    }
                }

                const ACCS: usize = ROW_ACCS / $per;

                #[inline(always)]
                unsafe fn step<const SQ: bool>(a: $acc, p: *const $t) -> $acc {
                    unsafe {
                        let x: $acc = $load(p);
                        if SQ {
                            $fmadd(x, x, a)
                        } else {
                            $add(a, $abs(x))
                        }
                    }
                }

                /// Adds the zero-padded last partial block and reduces.
                #[inline(always)]
                unsafe fn finish<const SQ: bool>(acc: &mut [$acc; ACCS], rest: &[$t]) -> f64 {
                    unsafe {
                        if !rest.is_empty() {
                            let mut padded = [0.0 as $t; ROW_ACCS];
                            padded[..rest.len()].copy_from_slice(rest);
                            for (j, a) in acc.iter_mut().enumerate() {
                                *a = step::<SQ>(*a, padded.as_ptr().add(j * $per));
                            }
                        }
                        $reduce(acc)
                    }
                }

                #[inline(always)]
                unsafe fn go<const SQ: bool>(data: &[$t], d: usize, out: &mut [f64]) {
                    const R: usize = 4;
                    let full = d / ROW_ACCS * ROW_ACCS;
                    let n = out.len();
                    let mut r = 0;
                    // SAFETY (all pointer reads): rows r..r + R exist and b + ROW_ACCS <= full <= d.
                    unsafe {
                        while r + R <= n {
                            let base = data.as_ptr().add(r * d);
                            let mut acc = [[$zero(); ACCS]; R];
                            let mut b = 0;
                            while b < full {
                                for (i, acc) in acc.iter_mut().enumerate() {
                                    for (j, a) in acc.iter_mut().enumerate() {
                                        *a = step::<SQ>(*a, base.add(i * d + b + j * $per));
                                    }
                                }
                                b += ROW_ACCS;
                            }
                            for (i, acc) in acc.iter_mut().enumerate() {
                                let rest = &data[(r + i) * d + full..(r + i + 1) * d];
                                out[r + i] = finish::<SQ>(acc, rest);
                            }
                            r += R;
                        }
                        while r < n {
                            let base = data.as_ptr().add(r * d);
                            let mut acc = [$zero(); ACCS];
                            let mut b = 0;
                            while b < full {
                                for (j, a) in acc.iter_mut().enumerate() {
                                    *a = step::<SQ>(*a, base.add(b + j * $per));
                                }
                                b += ROW_ACCS;
                            }
                            out[r] = finish::<SQ>(&mut acc, &data[r * d + full..(r + 1) * d]);
                            r += 1;
                        }
                    }
                }
            }
        };
    }

    row_sum_x86!(
        row_sum_avx512_f32,
        "avx512f,avx2,fma",
        f32,
        __m512d,
        8,
        _mm512_setzero_pd,
        |p: *const f32| _mm512_cvtps_pd(_mm256_loadu_ps(p)),
        _mm512_fmadd_pd,
        _mm512_add_pd,
        |x| _mm512_abs_pd(x),
        reduce_accs_avx512
    );
    row_sum_x86!(
        row_sum_avx512_f64,
        "avx512f,avx2,fma",
        f64,
        __m512d,
        8,
        _mm512_setzero_pd,
        |p: *const f64| _mm512_loadu_pd(p),
        _mm512_fmadd_pd,
        _mm512_add_pd,
        |x| _mm512_abs_pd(x),
        reduce_accs_avx512
    );
    row_sum_x86!(
        row_sum_avx2_f32,
        "avx2,fma",
        f32,
        __m256d,
        4,
        _mm256_setzero_pd,
        |p: *const f32| _mm256_cvtps_pd(_mm_loadu_ps(p)),
        _mm256_fmadd_pd,
        _mm256_add_pd,
        |x| _mm256_andnot_pd(_mm256_set1_pd(-0.0), x),
        reduce_accs_avx2
    );
    row_sum_x86!(
        row_sum_avx2_f64,
        "avx2,fma",
        f64,
        __m256d,
        4,
        _mm256_setzero_pd,
        |p: *const f64| _mm256_loadu_pd(p),
        _mm256_fmadd_pd,
        _mm256_add_pd,
        |x| _mm256_andnot_pd(_mm256_set1_pd(-0.0), x),
        reduce_accs_avx2
    );

    /// How far ahead (in f32 values) `pack32_f32` prefetches each row.
    const PREFETCH: usize = 128;

    /// Transposes 16 rows of 16 f32 in place (row `i` becomes column `i`).
    #[inline(always)]
    fn transpose16(r: &mut [__m512; 16]) {
        // SAFETY: register-only shuffles; callers are avx512f functions.
        unsafe {
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // u[4g + j]: column j, j + 4, j + 8, j + 12 (one per 128-bit lane) of rows 4g..4g+4.
            let mut u = [_mm512_setzero_ps(); 16];
            for g in 0..4 {
                let (a, b, c, e) = (t[4 * g], t[4 * g + 2], t[4 * g + 1], t[4 * g + 3]);
                u[4 * g] = _mm512_shuffle_ps::<0x44>(a, b);
                u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a, b);
                u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(c, e);
                u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(c, e);
            }
            // v[j] (j < 4): columns j, j + 8 of rows 0..8; v[4 + j]: columns j + 4, j + 12;
            // v[8 + ...]: the same for rows 8..16.
            let mut v = [_mm512_setzero_ps(); 16];
            for h in 0..2 {
                for j in 0..4 {
                    let (a, b) = (u[8 * h + j], u[8 * h + 4 + j]);
                    v[8 * h + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
                    v[8 * h + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(a, b);
                }
            }
            for j in 0..8 {
                r[j] = _mm512_shuffle_f32x4::<0x88>(v[j], v[8 + j]);
                r[j + 8] = _mm512_shuffle_f32x4::<0xDD>(v[j], v[8 + j]);
            }
        }
    }

    macro_rules! x86_lanes {
        ($name:ident, $t:ty, $v:ty, $w:expr, $zero:ident, $set1:ident, $loadu:ident, $storeu:ident,
         $fmadd:ident, $add:ident, $sub:ident, $mul:ident, $sqrt:ident, |$x:ident| $abs:expr,
         |$a:ident, $b:ident| $gt:expr, |$c:ident, $e:ident| $lt:expr, |$h:ident| $hsum:expr,
         |$sx:ident, $sc:ident, $sacc:ident| $squares:expr) => {
            #[derive(Clone, Copy)]
            pub struct $name($v);

            // SAFETY: every method uses only the instructions of the ISA this type is named for;
            // the kernel entry points reach it only after detecting that ISA.
            unsafe impl Lanes<$t> for $name {
                const W: usize = $w;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    unsafe { $name($zero()) }
                }
                #[inline(always)]
                unsafe fn splat(x: $t) -> Self {
                    unsafe { $name($set1(x)) }
                }
                #[inline(always)]
                unsafe fn load(src: &[$t]) -> Self {
                    let src = &src[..$w];
                    // SAFETY: `src` holds W readable values; loadu allows any alignment.
                    unsafe { $name($loadu(src.as_ptr())) }
                }
                #[inline(always)]
                unsafe fn store(self, dst: &mut [$t]) {
                    let dst = &mut dst[..$w];
                    // SAFETY: `dst` holds W writable values; storeu allows any alignment.
                    unsafe { $storeu(dst.as_mut_ptr(), self.0) }
                }
                #[inline(always)]
                unsafe fn mul_add(a: Self, b: Self, acc: Self) -> Self {
                    unsafe { $name($fmadd(a.0, b.0, acc.0)) }
                }
                #[inline(always)]
                unsafe fn add(a: Self, b: Self) -> Self {
                    unsafe { $name($add(a.0, b.0)) }
                }
                #[inline(always)]
                unsafe fn sub(a: Self, b: Self) -> Self {
                    unsafe { $name($sub(a.0, b.0)) }
                }
                #[inline(always)]
                unsafe fn mul(a: Self, b: Self) -> Self {
                    unsafe { $name($mul(a.0, b.0)) }
                }
                #[inline(always)]
                unsafe fn abs(a: Self) -> Self {
                    let $x = a.0;
                    unsafe { $name($abs) }
                }
                #[inline(always)]
                unsafe fn sqrt(a: Self) -> Self {
                    unsafe { $name($sqrt(a.0)) }
                }
                #[inline(always)]
                unsafe fn gt_mask(a: Self, b: Self) -> u64 {
                    let ($a, $b) = (a.0, b.0);
                    unsafe { $gt as u64 }
                }
                #[inline(always)]
                unsafe fn lt_mask(a: Self, b: Self) -> u64 {
                    let ($c, $e) = (a.0, b.0);
                    unsafe { $lt as u64 }
                }
                #[inline(always)]
                unsafe fn reduce_add(self) -> $t {
                    let $h = self.0;
                    unsafe { $hsum }
                }
                #[inline(always)]
                unsafe fn add_squares(self, c: usize, acc: &mut [f64; ROW_ACCS]) {
                    let ($sx, $sc, $sacc) = (self, c, acc);
                    unsafe { $squares }
                }
            }
        };
    }

    x86_lanes!(
        F32x16,
        f32,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_sqrt_ps,
        |x| _mm512_abs_ps(x),
        |a, b| _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b),
        |a, b| _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b),
        |x| _mm512_reduce_add_ps(x),
        |x, c, acc| {
            // Coordinates c..c + 16 (c a multiple of 16) land in acc[c % 32..][..16].
            debug_assert!(c % 16 == 0);
            let at = acc[c % ROW_ACCS..c % ROW_ACCS + 16].as_mut_ptr();
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x.0));
            let hi = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_shuffle_f32x4::<0xEE>(
                x.0, x.0,
            )));
            _mm512_storeu_pd(at, _mm512_fmadd_pd(lo, lo, _mm512_loadu_pd(at)));
            _mm512_storeu_pd(
                at.add(8),
                _mm512_fmadd_pd(hi, hi, _mm512_loadu_pd(at.add(8))),
            );
        }
    );
    x86_lanes!(
        F64x8,
        f64,
        __m512d,
        8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd,
        _mm512_sub_pd,
        _mm512_mul_pd,
        _mm512_sqrt_pd,
        |x| _mm512_abs_pd(x),
        |a, b| _mm512_cmp_pd_mask::<_CMP_GT_OQ>(a, b),
        |a, b| _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, b),
        |x| _mm512_reduce_add_pd(x),
        |x, c, acc| {
            let at = acc[c % ROW_ACCS..c % ROW_ACCS + 8].as_mut_ptr();
            _mm512_storeu_pd(at, _mm512_fmadd_pd(x.0, x.0, _mm512_loadu_pd(at)));
        }
    );
    x86_lanes!(
        F32x8,
        f32,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_sqrt_ps,
        |x| _mm256_andnot_ps(_mm256_set1_ps(-0.0), x),
        |a, b| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(a, b)) as u32,
        |a, b| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(a, b)) as u32,
        |x| {
            let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        },
        |x, c, acc| {
            let at = acc[c % ROW_ACCS..c % ROW_ACCS + 8].as_mut_ptr();
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x.0));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x.0));
            _mm256_storeu_pd(at, _mm256_fmadd_pd(lo, lo, _mm256_loadu_pd(at)));
            _mm256_storeu_pd(
                at.add(4),
                _mm256_fmadd_pd(hi, hi, _mm256_loadu_pd(at.add(4))),
            );
        }
    );
    x86_lanes!(
        F64x4,
        f64,
        __m256d,
        4,
        _mm256_setzero_pd,
        _mm256_set1_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd,
        _mm256_sub_pd,
        _mm256_mul_pd,
        _mm256_sqrt_pd,
        |x| _mm256_andnot_pd(_mm256_set1_pd(-0.0), x),
        |a, b| _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(a, b)) as u32,
        |a, b| _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_LT_OQ>(a, b)) as u32,
        |x| {
            let s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd::<1>(x));
            _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
        },
        |x, c, acc| {
            let at = acc[c % ROW_ACCS..c % ROW_ACCS + 4].as_mut_ptr();
            _mm256_storeu_pd(at, _mm256_fmadd_pd(x.0, x.0, _mm256_loadu_pd(at)));
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` values in about [-2.8, 2.8] with no pattern the kernels could align to: multiples of
    /// a large prime folded into `modulus`, centred and divided by `scale`.
    fn spread(len: usize, prime: usize, modulus: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|x| ((x * prime % modulus) as f32 - (modulus / 2) as f32) / scale)
            .collect()
    }

    #[test]
    fn detect_is_available_first() {
        assert_eq!(available()[0], best());
        assert!(available().contains(&detect()));
        assert_eq!(*available().last().unwrap(), Isa::Portable);
    }

    #[test]
    fn isa_names_parse_and_unknown_ones_are_refused() {
        for isa in [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable] {
            assert_eq!(Isa::parse(isa.name()), Ok(Some(isa)));
        }
        assert_eq!(Isa::parse(" AVX2 "), Ok(Some(Isa::Avx2)));
        assert_eq!(Isa::parse(""), Ok(None));
        assert_eq!(Isa::parse("auto"), Ok(None));
        let error = Isa::parse("sse4").unwrap_err();
        assert!(
            error.contains("DASK_VECOPS_ISA=\"sse4\"") && error.contains("avx2"),
            "{error}"
        );
    }

    #[test]
    fn a_cap_above_the_cpu_is_not_supported() {
        assert!(supported_by(Isa::Avx2, Isa::Avx2));
        assert!(supported_by(Isa::Avx2, Isa::Portable));
        assert!(!supported_by(Isa::Avx2, Isa::Avx512));
        assert!(!supported_by(Isa::Portable, Isa::Avx2));
        assert!(supported_by(Isa::Avx512, Isa::Avx2));
        assert!(!supported_by(Isa::Avx512, Isa::Avx512Bf16));
        assert!(supported_by(Isa::Avx512Bf16, Isa::Avx512));
    }

    #[test]
    fn panels_are_two_vectors_wide() {
        for isa in available() {
            let (mr32, nr32) = panel_shape::<f32>(isa);
            let (mr64, nr64) = panel_shape::<f64>(isa);
            assert_eq!((mr32, nr32), (mr64, 2 * nr64), "{isa:?}");
            assert!(nr32 <= MAX_NR);
        }
    }

    /// Every ISA's packing (the AVX-512 transposes included) matches the plain loop, for ragged
    /// row counts and widths, with and without scaling.
    #[test]
    fn packing_matches_the_plain_loop() {
        for isa in available() {
            for &(n, d) in &[
                (1usize, 1usize),
                (3, 5),
                (16, 16),
                (31, 17),
                (33, 40),
                (70, 100),
                (5, 0),
            ] {
                let data: Vec<f32> = (0..n * d).map(|x| x as f32 * 0.5 - 7.0).collect();
                let scale: Vec<f32> = (0..n).map(|r| 1.0 + r as f32).collect();
                for panel in [4, 8, 16, 32] {
                    for s in [None, Some(&scale[..])] {
                        let len = n.div_ceil(panel) * panel * d;
                        let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                        pack_rows(isa, &data, n, d, s, panel, &mut got);
                        pack_rows_portable(&data, n, d, s, panel, &mut want);
                        assert_eq!(
                            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "{isa:?} n={n} d={d} panel={panel}"
                        );
                        for p in 0..n.div_ceil(panel) {
                            for lane in 0..panel {
                                for k in 0..d {
                                    let r = p * panel + lane;
                                    let x = if r < n {
                                        data[r * d + k] * s.map_or(1.0, |s| s[r])
                                    } else {
                                        0.0
                                    };
                                    assert_eq!(want[(p * d + k) * panel + lane], x);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every ISA's row sums agree with the plain loop (FMA or not: within an ulp or two) and
    /// the FMA ISAs agree with each other bit for bit.
    #[test]
    fn row_sums_match_across_isas() {
        for d in [0usize, 1, 7, 31, 32, 33, 100, 384, 1537] {
            let row: Vec<f32> = (0..d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let wide: Vec<f64> = row.iter().map(|&x| x as f64).collect();
            let want_sq: f64 = wide.iter().map(|x| x * x).sum();
            let want_abs: f64 = wide.iter().map(|x| x.abs()).sum();
            let mut fma_results = Vec::new();
            for isa in available() {
                let mut sums = Vec::new();
                for (sum, want) in [(RowSum::Squares, want_sq), (RowSum::Abs, want_abs)] {
                    let (a, b) = (row_sum(isa, &row, sum), row_sum(isa, &wide, sum));
                    assert!((a - want).abs() <= 1e-13 * want.max(1.0), "{isa:?} {d}");
                    assert_eq!(a, b, "f32 and f64 rows of the same values, {isa:?} {d}");
                    sums.push(a);
                }
                if isa != Isa::Portable {
                    fma_results.push(sums);
                }
            }
            assert!(fma_results.windows(2).all(|w| w[0] == w[1]), "{d}");
            // Many rows at once give each row's own sum.
            let rows: Vec<f32> = (0..7)
                .flat_map(|r| row.iter().map(move |x| x * r as f32))
                .collect();
            for isa in available() {
                let mut out = vec![0.0; 7];
                row_sums(isa, &rows, d, RowSum::Squares, &mut out);
                for (r, &o) in out.iter().enumerate() {
                    assert_eq!(o, row_sum(isa, &rows[r * d..(r + 1) * d], RowSum::Squares));
                }
            }
        }
    }

    /// The accumulation order every kernel follows, written out: a sequential sum per block of
    /// `BLOCK` coordinates (fused multiply-add on the x86 SIMD paths and on aarch64), then the
    /// block sums added in order. Bit for bit, for d across block boundaries.
    #[test]
    fn dot_scores_follow_the_block_order_bit_for_bit() {
        for d in [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
            let (nq, n) = (3usize, 37usize);
            let q = spread(nq * d, 7919, 211, 37.0);
            let db = spread(n * d, 104729, 199, 41.0);
            for isa in available() {
                let fused = isa != Isa::Portable || cfg!(target_arch = "aarch64");
                let want: Vec<u32> = (0..nq * n)
                    .map(|at| {
                        let (a, b) = (&q[at / n * d..][..d], &db[at % n * d..][..d]);
                        let mut total = 0.0f32;
                        for (qa, qb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
                            let mut acc = 0.0f32;
                            for (&x, &y) in qa.iter().zip(qb) {
                                acc = if fused {
                                    x.mul_add(y, acc)
                                } else {
                                    x * y + acc
                                };
                            }
                            total += acc;
                        }
                        total.to_bits()
                    })
                    .collect();
                let (mr, nr) = panel_shape::<f32>(isa);
                let mut qp = vec![0.0; nq.div_ceil(mr) * mr * d];
                pack_rows(isa, &q, nq, d, None, mr, &mut qp);
                let mut dbp = vec![0.0; n.div_ceil(nr) * nr * d];
                pack_rows(isa, &db, n, d, None, nr, &mut dbp);
                let mut out = vec![f32::NAN; nq * n];
                let job = PanelJob {
                    kind: Accumulator::Dot,
                    q: &qp,
                    q_panels: nq.div_ceil(mr),
                    db: &dbp,
                    db_panels: n.div_ceil(nr),
                    d,
                    scale: None,
                };
                score_store(
                    isa,
                    job,
                    Store {
                        out: &mut out,
                        ld: n,
                        rows: nq,
                        cols: n,
                    },
                );
                let got: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{isa:?} d={d}");
            }
        }
    }

    /// A 1 x NR tile by hand: packed rows are interleaved coordinate by coordinate.
    #[test]
    fn every_isa_scores_a_packed_tile() {
        for isa in available() {
            let (mr, nr) = panel_shape::<f64>(isa);
            let d = 3;
            let mut q = vec![0.0f64; mr * d];
            (0..d).for_each(|k| q[k * mr] = (k + 1) as f64); // row 0 = [1, 2, 3]
            let db: Vec<f64> = (0..d * nr)
                .map(|x| (x % nr) as f64 - (x / nr) as f64)
                .collect(); // row j = [j, j-1, j-2]
            type Expected = fn(f64) -> f64;
            let cases: [(Accumulator, Expected); 3] = [
                (Accumulator::Dot, |j: f64| {
                    j + 2.0 * (j - 1.0) + 3.0 * (j - 2.0)
                }),
                (Accumulator::SquaredDiff, |j: f64| {
                    ((j - 1.0).powi(2) + (j - 3.0).powi(2) + (j - 5.0).powi(2)).sqrt()
                }),
                (Accumulator::AbsDiff, |j: f64| {
                    (j - 1.0).abs() + (j - 3.0).abs() + (j - 5.0).abs()
                }),
            ];
            for (kind, want) in cases {
                let job = PanelJob {
                    kind,
                    q: &q,
                    q_panels: 1,
                    db: &db,
                    db_panels: 1,
                    d,
                    scale: None,
                };
                // Only row 0 and the first nr - 1 columns are kept; the rest stays NaN.
                let mut out = vec![f64::NAN; 2 * nr];
                let sink = Store {
                    out: &mut out,
                    ld: nr,
                    rows: 1,
                    cols: nr - 1,
                };
                score_store(isa, job, sink);
                for (j, &score) in out[..nr - 1].iter().enumerate() {
                    assert_eq!(score, want(j as f64), "{isa:?} {kind:?} {j}");
                }
                assert!(out[nr - 1..].iter().all(|s| s.is_nan()));
            }
        }
    }

    /// The selecting sink hands over exactly the scores that beat each row's bar.
    #[test]
    fn select_passes_only_scores_beating_the_bar() {
        struct Log {
            bars: Vec<Option<f32>>,
            seen: Vec<(usize, usize, f32)>,
        }
        impl Candidates<f32> for Log {
            const HIGHER: bool = true;
            fn bar(&self, q: usize) -> Option<f32> {
                self.bars[q]
            }
            fn offer(&mut self, q: usize, first: usize, scores: &[f32], mask: u64) {
                for (j, &s) in scores.iter().enumerate() {
                    if mask >> j & 1 == 1 {
                        self.seen.push((q, first + j, s));
                    }
                }
            }
            fn offer_row(&mut self, first: usize, row: usize, scores: &[f32], mask: u64) {
                for (l, &s) in scores.iter().enumerate() {
                    if mask >> l & 1 == 1 {
                        self.seen.push((first + l, row, s));
                    }
                }
            }
        }
        for isa in available() {
            let (mr, nr) = panel_shape::<f32>(isa);
            let d = 1;
            let mut q = vec![0.0f32; mr];
            q[0] = 1.0;
            q[1] = -1.0;
            let n = nr + 3;
            let db: Vec<f32> = (0..n).map(|j| j as f32).collect();
            let mut packed = vec![0.0f32; n.div_ceil(nr) * nr];
            pack_rows(isa, &db, n, d, None, nr, &mut packed);
            let mut log = Log {
                bars: vec![Some(5.5), None, Some(0.0)],
                seen: Vec::new(),
            };
            let job = PanelJob {
                kind: Accumulator::Dot,
                q: &q,
                q_panels: 1,
                db: &packed,
                db_panels: 2,
                d,
                scale: None,
            };
            let sink = Select {
                candidates: &mut log,
                rows: 2,
                cols: n,
            };
            score_select(isa, job, sink);
            let mut want: Vec<(usize, usize, f32)> = (6..n).map(|j| (0, j, j as f32)).collect();
            want.extend((0..n).map(|j| (1, j, -(j as f32))));
            log.seen.sort_by_key(|a| (a.0, a.1));
            assert_eq!(log.seen, want, "{isa:?}");
        }
    }

    /// The row-streaming kernel and the panel kernel give the same bits for every pair, for
    /// every accumulator, with and without scales, ragged in rows and queries.
    #[test]
    fn row_kernel_matches_panel_kernel_bit_for_bit() {
        struct All(Vec<(usize, usize, u32)>);
        impl Candidates<f32> for All {
            const HIGHER: bool = true;
            fn bar(&self, _: usize) -> Option<f32> {
                None
            }
            fn offer(&mut self, q: usize, first: usize, scores: &[f32], mask: u64) {
                for (j, &s) in scores.iter().enumerate() {
                    if mask >> j & 1 == 1 {
                        self.0.push((q, first + j, s.to_bits()));
                    }
                }
            }
            fn offer_row(&mut self, first: usize, row: usize, scores: &[f32], mask: u64) {
                for (l, &s) in scores.iter().enumerate() {
                    if mask >> l & 1 == 1 {
                        self.0.push((first + l, row, s.to_bits()));
                    }
                }
            }
        }
        let (nq, n, d) = (5usize, 53usize, 37usize);
        let q = spread(nq * d, 7919, 211, 50.0);
        let db = spread(n * d, 104729, 199, 40.0);
        for isa in available() {
            let (mr, nr) = panel_shape::<f32>(isa);
            let (w, _) = rows_shape::<f32>(isa);
            let mut qp = vec![0.0; nq.div_ceil(mr) * mr * d];
            pack_rows(isa, &q, nq, d, None, mr, &mut qp);
            let mut dbp = vec![0.0; n.div_ceil(nr) * nr * d];
            pack_rows(isa, &db, n, d, None, nr, &mut dbp);
            let mut qw = vec![0.0; nq.div_ceil(w) * w * d];
            pack_rows(isa, &q, nq, d, None, w, &mut qw);
            let scale: Vec<f32> = (0..n.div_ceil(nr) * nr)
                .map(|j| 1.0 / (1.0 + j as f32))
                .collect();
            for kind in [
                Accumulator::Dot,
                Accumulator::SquaredDiff,
                Accumulator::AbsDiff,
            ] {
                for scaled in [false, true] {
                    let sc = scaled.then_some(&scale[..]);
                    let mut a = All(Vec::new());
                    let job = PanelJob {
                        kind,
                        q: &qp,
                        q_panels: nq.div_ceil(mr),
                        db: &dbp,
                        db_panels: n.div_ceil(nr),
                        d,
                        scale: sc,
                    };
                    let sink = Select {
                        candidates: &mut a,
                        rows: nq,
                        cols: n,
                    };
                    score_select(isa, job, sink);
                    let mut b = All(Vec::new());
                    let job = RowJob {
                        kind,
                        q: &qw,
                        q_panels: nq.div_ceil(w),
                        db: &db,
                        n,
                        d,
                        scale: sc.map(|s| &s[..n]),
                        prefetch: &db[..10],
                        filter: None,
                        scale_bounds: None,
                    };
                    score_rows(isa, job, &mut b, nq, None);
                    a.0.sort();
                    b.0.sort();
                    assert_eq!(a.0.len(), nq * n);
                    assert_eq!(a.0, b.0, "{isa:?} {kind:?} scaled={scaled}");
                }
            }
        }
    }
}
