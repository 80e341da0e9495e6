//! The bfloat16 filter in front of the row-streaming kernel: f32 dot products (the dot and
//! cosine metrics) of three queries or more, on CPUs with AVX512_BF16.
//!
//! From three queries up the row-streaming kernel is bound by its multiply-adds, one vector of
//! queries times one broadcast database value per instruction. `vdpbf16ps` does two products
//! per f32 lane per instruction at the same rate, on values rounded to bfloat16 (8 significant
//! bits). Such a score is only good enough to filter: a row goes on to the exact kernel for a
//! query unless its bfloat16 score, raised by a rigorous bound on how far it can be from the
//! exact score, still cannot beat the query's bar. Every score offered is the exact kernel's,
//! so the results have the same bits as without the filter.
//!
//! The bound, for a query `q` and a row `x`, their bfloat16 roundings `b_q`, `b_x` (unit
//! roundoff `u_b = 2^-8`; the instructions treat subnormals as zero, so a value below `2^-126`
//! counts as rounded to zero) and the residuals `r_q = q - b_q`, `r_x = x - b_x`:
//! - `q . x - b_q . b_x = r_q . x + b_q . r_x` exactly. Cauchy-Schwarz bounds the first term by
//!   `|r_q| |x|`, with the query's residual computed once per scan (rounding errors spread
//!   over half a unit make `|r_q|` about `0.4 u_b |q|`, where `u_b |q_j|` per coordinate would
//!   allow `u_b |q|`); the second by `u_b |b_q| |x|`, plus `2^-126` per coordinate where the
//!   row's value was flushed;
//! - the products of two bfloat16 values are exact in f32, and their sum goes through at most
//!   `2 * ceil(d / 2)` roundings per term (`gamma_f`, on `|b_q| |b_x| <= |b_q| (1 + u_b) |x|`),
//!   or flushes below `2^-126`;
//! - the exact kernel's own sum is off the true one by at most `gamma_e |q| |x|` (`BLOCK`
//!   order) plus its underflow;
//!
//! so `|exact - filter| <= a |x| + c`, with `a = |r_q| + (u_b + gamma_f (1 + u_b)) |b_q| +
//! gamma_e |q| + sqrt(d) 2^-126` and `c` the absolute allowances (`BoundTerms`). The
//! comparison with the bar is evaluated with upward rounding, so the arithmetic of the test
//! itself cannot lose a row. A score that is not finite (an input that overflowed bfloat16,
//! NaN) never rejects a row.
//!
//! Three to sixteen queries (`PAIR_QUERIES`) take the same filter with float32 products in
//! another register tile (`pairs`): each pair of a row's coordinates is broadcast at once
//! against vectors of eight queries x the pair's two coordinates, so that one load feeds one
//! multiply-add a vector of queries (two for nine queries or more), where the row-streaming
//! kernel needs a load for each, and up to eight queries fill a vector where the row-streaming
//! kernel leaves half its lanes or more empty. Its scores sum the even and the odd coordinates
//! apart, another order than the exact kernel's, so they too only filter; the bound is then
//! the two orders' rounding alone (`BoundTerms::new` for `Products::F32Pairs`).

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{effective, has_bf16, Accumulator, Isa, Real, BLOCK};

mod pairs;

/// Fewest queries the filter takes. With one panel (16 queries or fewer) the row-streaming
/// kernel is close to the memory's speed, and on the benchmark's clustered data the filter
/// measured slower there (16 queries: 0.84x); from two panels on it is faster (32: 1.20x,
/// 128: 1.43x on a repeat search; benchmarks/RESULTS.md, "bfloat16 filter").
pub const BF16_QUERIES: usize = 17;
/// Most coordinates the filter takes: beyond, a group's converted rows and a panel of query
/// pairs outgrow L1 and the filter measured slower (1,536: 0.86x at 1,000 queries; 768:
/// 1.05x; 384 and 64: 1.4x).
pub const BF16_MAX_FEATURES: usize = 768;
/// The filter starts a scan's rows only after its first `WINDOW` rows (which the plain kernel
/// takes: the bars start open and rise fast, so early rows pass whatever the data, and an exact
/// score for one row costs more than the plain kernel's for a row of a group), and gives up on
/// the scan once, in a window of `WINDOW` rows, more than one row-panel test in this many sent
/// its row to the exact kernel (data with many near ties to the bars).
const GIVE_UP_ONE_IN: usize = 4;
/// Rows per window.
const WINDOW: usize = 4096;
/// Queries per panel: the f32 lanes of one AVX-512 vector.
const LANES: usize = 16;
/// Database rows scored together, one accumulator each.
const GROUP: usize = 16;
/// Queries the float32 pair filter takes (`pairs`): from three (one or two go through the
/// few-query filter) to one panel.
pub const PAIR_QUERIES: std::ops::RangeInclusive<usize> = 3..=16;
/// bfloat16 unit roundoff: 8 significant bits.
const U_BF16: f64 = 1.0 / 256.0;
/// f32 unit roundoff.
const U_F32: f64 = 1.0 / 16_777_216.0;
/// The smallest normal f32 (2^-126): below it the bfloat16 instructions flush to zero.
const FLUSH: f64 = f32::MIN_POSITIVE as f64;

/// The products a filter scores with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Products {
    /// `vdpbf16ps` on values rounded to bfloat16, from `BF16_QUERIES` queries.
    Bf16,
    /// float32 multiply-adds on pairs of coordinates (`pairs`), `PAIR_QUERIES` queries.
    F32Pairs,
}

/// The queries of a row-streaming scan in the filter's layout, prepared once per scan, and
/// per query the two terms of its bound. For `Products::Bf16`, for every panel of `LANES`
/// queries and every pair of coordinates `2j, 2j + 1`, one vector of `LANES` lanes, each
/// holding that query's two coordinates as bfloat16 (low half: `2j`). For
/// `Products::F32Pairs` (one panel), for every pair of coordinates `vectors` vectors of f32
/// bits, lane `2i + c` of vector `v` holding query `8v + i` at coordinate `2j + c`.
pub struct FilterQueries {
    products: Products,
    /// `Products::F32Pairs`: vectors per pair of coordinates (one up to eight queries).
    vectors: usize,
    pairs: Vec<u32>,
    /// `ceil(d / 2)`: pairs per panel (an odd `d` ends with a zero).
    n_pairs: usize,
    panels: usize,
    /// Per panel and lane: `|exact - filter| <= a * |row| + c` (rounded up to f32).
    a: Vec<f32>,
    c: Vec<f32>,
    /// Rows of the scan so far; rows and row-panel tests in the filter's current window, and
    /// how many tests sent the row to the exact kernel; whether the filter gave up.
    seen: AtomicUsize,
    rows: AtomicUsize,
    tested: AtomicUsize,
    passed: AtomicUsize,
    given_up: AtomicBool,
}

impl FilterQueries {
    /// Whether `new` gives the filter for a scan of `queries` queries of `d` coordinates.
    pub fn applies<T: Real>(isa: Isa, kind: Accumulator, d: usize, queries: usize) -> bool {
        Self::products::<T>(isa, kind, d, queries).is_some()
    }

    /// Whether `new` gives the bfloat16 filter (`Products::Bf16`) for such a scan.
    pub fn bfloat16<T: Real>(isa: Isa, kind: Accumulator, d: usize, queries: usize) -> bool {
        Self::products::<T>(isa, kind, d, queries) == Some(Products::Bf16)
    }

    /// The filter's products for such a scan, if any: f32 dot products only; bfloat16 for
    /// `BF16_QUERIES` queries up on CPUs with AVX512_BF16, float32 pairs for `PAIR_QUERIES`
    /// with AVX-512 and an even number of coordinates.
    fn products<T: Real>(
        isa: Isa,
        kind: Accumulator,
        d: usize,
        queries: usize,
    ) -> Option<Products> {
        let f32_dots = kind == Accumulator::Dot && TypeId::of::<T>() == TypeId::of::<f32>();
        if !f32_dots {
            None
        } else if has_bf16(isa) && queries >= BF16_QUERIES && (1..=BF16_MAX_FEATURES).contains(&d) {
            Some(Products::Bf16)
        } else if effective(isa) == Isa::Avx512
            && PAIR_QUERIES.contains(&queries)
            && d > 0
            && d.is_multiple_of(2)
        {
            Some(Products::F32Pairs)
        } else {
            None
        }
    }

    /// Whether this is the pair filter (`Products::F32Pairs`).
    pub fn pairs(&self) -> bool {
        self.products == Products::F32Pairs
    }

    /// Whether `isa` runs this filter's products.
    pub fn runs_on(&self, isa: Isa) -> bool {
        match self.products {
            Products::Bf16 => has_bf16(isa),
            Products::F32Pairs => effective(isa) == Isa::Avx512,
        }
    }

    /// The filter's queries when it applies to a scan on `isa` of `queries` packed queries
    /// (`q`: panels of `LANES` lanes x `d` coordinates, `[panel][coordinate][lane]`), else
    /// `None`: the CPU lacks AVX512_BF16 or `isa` caps it off, the scores are not f32 dot
    /// products, there are fewer than `BF16_QUERIES` queries or more than `BF16_MAX_FEATURES`
    /// coordinates.
    pub fn new<T: Real>(
        isa: Isa,
        kind: Accumulator,
        q: &[T],
        d: usize,
        queries: usize,
    ) -> Option<Self> {
        let products = Self::products::<T>(isa, kind, d, queries)?;
        let panels = queries.div_ceil(LANES);
        assert!(q.len() >= panels * LANES * d, "packed queries");
        let n_pairs = d.div_ceil(2);
        let value = |p: usize, k: usize, l: usize| {
            if k < d {
                q[(p * d + k) * LANES + l].to_f64() as f32
            } else {
                0.0
            }
        };
        let vectors = if products == Products::F32Pairs {
            queries.div_ceil(LANES / 2)
        } else {
            1
        };
        let mut pairs = vec![0u32; panels * n_pairs * LANES * vectors];
        for p in 0..panels {
            for j in 0..n_pairs {
                for l in 0..LANES * vectors {
                    let at = (p * n_pairs + j) * LANES * vectors + l;
                    pairs[at] = match products {
                        Products::Bf16 => {
                            let (lo, hi) = (value(p, 2 * j, l), value(p, 2 * j + 1, l));
                            u32::from(to_bf16(lo)) | u32::from(to_bf16(hi)) << 16
                        }
                        // Lane `l % 16` of vector `l / 16`: query `8 (l / 16) + l % 16 / 2`.
                        Products::F32Pairs => {
                            value(0, 2 * j + l % 2, l / LANES * 8 + l % LANES / 2).to_bits()
                        }
                    };
                }
            }
        }
        let terms = BoundTerms::new(d, products);
        let mut a = vec![0.0f32; panels * LANES];
        let mut c = vec![0.0f32; panels * LANES];
        for p in 0..panels {
            for l in 0..LANES {
                let values = (0..d).map(|k| value(p, k, l));
                let sizes = match products {
                    Products::Bf16 => QuerySizes::new(values),
                    Products::F32Pairs => QuerySizes::unrounded(values),
                };
                a[p * LANES + l] = round_up(terms.a(&sizes));
                c[p * LANES + l] = round_up(terms.per_size * sizes.q + terms.fixed);
            }
        }
        Some(FilterQueries {
            products,
            vectors,
            pairs,
            n_pairs,
            panels,
            a,
            c,
            seen: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
            tested: AtomicUsize::new(0),
            passed: AtomicUsize::new(0),
            given_up: AtomicBool::new(false),
        })
    }

    /// Whether the filter takes the scan's next rows (see `GIVE_UP_ONE_IN`); the caller gives
    /// those it does not take to the plain kernel and counts them with `skipped`.
    pub fn worth_it(&self) -> bool {
        self.seen.load(Ordering::Relaxed) >= WINDOW && !self.given_up.load(Ordering::Relaxed)
    }

    /// Lets the filter take the scan from its first row: the bars were given, already up.
    pub fn bars_given(&self) {
        self.seen.fetch_max(WINDOW, Ordering::Relaxed);
    }

    /// Counts rows the plain kernel took.
    pub fn skipped(&self, rows: usize) {
        self.seen.fetch_add(rows, Ordering::Relaxed);
    }

    /// Counts a call's rows and passes, judging each window as it fills.
    fn count(&self, rows: usize, passed: usize) {
        self.seen.fetch_add(rows, Ordering::Relaxed);
        let tested = self.tested.fetch_add(rows * self.panels, Ordering::Relaxed);
        let tested = tested + rows * self.panels;
        let passed = self.passed.fetch_add(passed, Ordering::Relaxed) + passed;
        if self.rows.fetch_add(rows, Ordering::Relaxed) + rows >= WINDOW {
            if passed * GIVE_UP_ONE_IN > tested {
                self.given_up.store(true, Ordering::Relaxed);
            }
            for counter in [&self.rows, &self.tested, &self.passed] {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// The terms of the bound for `d` coordinates (see the module's doc; each allowance doubled
/// for room): `a = |r_q| + x_side |b_q| + exact |q| + per_size` and `c = per_size |q| + fixed`.
struct BoundTerms {
    /// Per unit of `|b_q| |x|`: the row's rounding to bfloat16 and the filter's sums.
    x_side: f64,
    /// Per unit of `|q| |x|`: the exact kernel's sums.
    exact: f64,
    /// Per unit of `|x|` (in `a`) or `|q|` (in `c`): an input flushed to zero.
    per_size: f64,
    /// Flushed products and partial sums (filter), and the exact kernel's underflow.
    fixed: f64,
}

impl BoundTerms {
    fn new(d: usize, products: Products) -> Self {
        let gamma = |h: f64| h * U_F32 / (1.0 - h * U_F32).max(0.5);
        // Each rounding counted twice over (an implementation that truncates is off by 2 u).
        // bfloat16: a sum over the pairs, two products a step; float32 pairs: a chain of
        // multiply-adds over the even (or odd) coordinates, then the two chains' sum.
        let filter_roundings = match products {
            Products::Bf16 => 4.0 * d.div_ceil(2) as f64 + 4.0,
            Products::F32Pairs => 2.0 * (d.div_ceil(2) + 1) as f64 + 4.0,
        };
        // The filter's inputs as they are (float32) or rounded to bfloat16.
        let u_inputs = if products == Products::Bf16 {
            U_BF16
        } else {
            0.0
        };
        let exact_roundings = 2.0 * BLOCK as f64 + d.div_ceil(BLOCK) as f64 + 4.0;
        let (gamma_f, gamma_e) = (gamma(filter_roundings), gamma(exact_roundings));
        let room = 1.0 + 1.0 / 1024.0;
        BoundTerms {
            x_side: (u_inputs + gamma_f * (1.0 + u_inputs)) * room,
            exact: gamma_e * room,
            per_size: 2.0 * (d as f64).sqrt() * FLUSH,
            fixed: 2.0 * (d as f64 + filter_roundings + 4.0 * (d as f64 + 1.0)) * FLUSH,
        }
    }

    /// `a` for a query of these sizes (before rounding up to f32).
    fn a(&self, sizes: &QuerySizes) -> f64 {
        sizes.residual + self.x_side * sizes.rounded + self.exact * sizes.q + self.per_size
    }
}

/// A query's sizes, each rounded up (their f64 sums are far more accurate than the room
/// below): `|q|`, `|b_q|` (the query as the filter's products see it: rounded to bfloat16,
/// flushed to zero below `FLUSH`) and `|r_q| = |q - b_q|`.
///
/// `q . x - b_q . b_x = r_q . x + b_q . r_x` exactly, and Cauchy-Schwarz bounds the first
/// term by `|r_q| |x|`, with the query's own rounding, where counting `u_b |q_j|` for every
/// coordinate would allow about twice as much (rounding errors are spread over half a unit).
struct QuerySizes {
    q: f64,
    rounded: f64,
    residual: f64,
}

impl QuerySizes {
    fn new(values: impl Iterator<Item = f32>) -> Self {
        let (mut q, mut rounded, mut residual) = (0.0f64, 0.0f64, 0.0f64);
        for v in values {
            let b = f32::from_bits(u32::from(to_bf16(v)) << 16);
            let b = if b.abs() < f32::MIN_POSITIVE { 0.0 } else { b };
            // Exact: both are f32 values within a factor of two (or b is zero).
            let r = f64::from(v) - f64::from(b);
            q += f64::from(v).powi(2);
            rounded += f64::from(b).powi(2);
            residual += r * r;
        }
        let up = |sum: f64| sum.sqrt() * (1.0 + 1e-12);
        QuerySizes {
            q: up(q),
            rounded: up(rounded),
            residual: up(residual),
        }
    }

    /// The sizes of a query whose products take it as it is (no rounding, no residual).
    fn unrounded(values: impl Iterator<Item = f32>) -> Self {
        let q = values.map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt() * (1.0 + 1e-12);
        QuerySizes {
            q,
            rounded: q,
            residual: 0.0,
        }
    }
}

/// `x` rounded up to f32 (x >= 0; the margin covers the conversion's rounding to nearest).
fn round_up(x: f64) -> f32 {
    (x * (1.0 + 1.0 / 1_048_576.0)).max(FLUSH) as f32
}

/// `x` rounded to the nearest bfloat16 (ties to even), as the conversion instructions do;
/// NaN stays NaN (quiet), and values past the largest bfloat16 become infinite.
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    ((bits + round) >> 16) as u16
}

/// An upper bound on `|x|` from the f32 `1 / |x|` of the cosine metric (`cosine_scale`, from
/// a norm rounded to f32 twice), or infinity when the scale says nothing (0, infinite, NaN).
#[inline(always)]
fn size_from_scale(scale: f32) -> f32 {
    if scale.is_finite() && scale > 0.0 {
        round_up(1.0 / f64::from(scale) * (1.0 + 1.0 / 262_144.0))
    } else {
        f32::INFINITY
    }
}

/// An upper bound on `|x|` from `sum`, its sum of squares in f64 (`sum_squares`: exact
/// squares, so off by far less than the room here).
#[inline(always)]
fn size_from_sum(sum: f64) -> f32 {
    if sum.is_finite() {
        round_up(sum.sqrt() * (1.0 + 1.0 / 1_048_576.0))
    } else {
        f32::INFINITY
    }
}

/// The rows of `job` against its queries through the filter `job.filter` prepared, exact
/// scores into `candidates`; cosine norms computed on the way when `norms` is given.
///
/// # Safety
/// The CPU must run the filter's products (`FilterQueries::runs_on`); `job` checked as in
/// `score_rows`, with `job.filter` given.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn rows<T: Real, C: super::Candidates<T>>(
    job: super::RowJob<T>,
    candidates: &mut C,
    queries: usize,
    norms: Option<super::NormsOnTheWay<T>>,
) {
    use x86::{NORMS, SCALED, SQUARES};
    let prep = job.filter.expect("the filter's queries");
    assert!(T::BYTES == 4 && C::HIGHER, "filters: f32 similarities");
    // The filter `$f` for the way its bound takes a row's size, which matches what is given.
    macro_rules! by_mode {
        ($($f:ident)::+) => {
            match (norms, job.scale.is_some()) {
                (Some(norms), _) => $($f)::+::<T, T::Avx512Lanes, C, NORMS>(
                    job, candidates, queries, Some(norms)
                ),
                (None, true) => $($f)::+::<T, T::Avx512Lanes, C, SCALED>(
                    job, candidates, queries, None
                ),
                (None, false) => $($f)::+::<T, T::Avx512Lanes, C, SQUARES>(
                    job, candidates, queries, None
                ),
            }
        };
    }
    // SAFETY (all arms): `runs_on` is each filter's CPU check; the rest is forwarded.
    unsafe {
        match prep.products {
            Products::Bf16 => by_mode!(x86::filter),
            Products::F32Pairs => by_mode!(pairs::filter),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::super::scratch::Buf;
    use super::super::{
        prefetch_l2, sum_squares_rows, Candidates, Lanes, NormsOnTheWay, Real, RowJob, BLOCK,
    };
    use super::{size_from_scale, size_from_sum, FilterQueries, GROUP, LANES};

    /// `$call` with `$s` a constant equal to `$stride`, one of `STRIDES`.
    macro_rules! at_stride {
        ($stride:expr, $s:ident => $call:expr) => {
            match $stride {
                32 => {
                    const $s: usize = 32;
                    $call
                }
                80 => {
                    const $s: usize = 80;
                    $call
                }
                144 => {
                    const $s: usize = 144;
                    $call
                }
                272 => {
                    const $s: usize = 272;
                    $call
                }
                528 => {
                    const $s: usize = 528;
                    $call
                }
                other => unreachable!("{other} is not one of STRIDES"),
            }
        };
    }

    pub(super) const UP: i32 = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC;
    /// Where the bound takes a row's size from.
    pub(super) const NORMS: u8 = 0;
    pub(super) const SCALED: u8 = 1;
    pub(super) const SQUARES: u8 = 2;
    /// Cache lines to pull toward L2 (the next block's rows), spread evenly over a group's
    /// work: a burst of prefetches fills the memory queues while the arithmetic after it
    /// leaves the memory idle.
    #[derive(Clone, Copy)]
    pub(super) struct Spread {
        at: *const u8,
        lines: usize,
        next: usize,
        /// Lines owed, in 1/65536ths, and owed per step.
        owed: usize,
        rate: usize,
    }

    impl Spread {
        /// `bytes` from `at` over `steps` calls of `step`.
        pub(super) fn new(at: *const u8, bytes: usize, steps: usize) -> Self {
            let lines = bytes.div_ceil(64);
            Spread {
                at,
                lines,
                next: 0,
                owed: 0,
                rate: (lines << 16).div_ceil(steps.max(1)),
            }
        }

        #[inline(always)]
        pub(super) fn step(&mut self) {
            self.owed += self.rate;
            while self.owed >= 1 << 16 && self.next < self.lines {
                prefetch_l2(self.at.wrapping_add(self.next * 64));
                self.next += 1;
                self.owed -= 1 << 16;
            }
        }
    }

    /// The rows of `job` against its queries through the bfloat16 filter, exact scores into
    /// `candidates`, for one way of bounding a row's size: `NORMS` computes the cosine norms
    /// (with `cosine_norm`'s bits) and scales, `SCALED` takes the scales given, `SQUARES` (the
    /// dot metric) the rows' sums of squares. Both sums are `sum_squares_rows` over a group's
    /// rows while they are in L1, four rows at a time.
    ///
    /// # Safety
    /// The CPU must have avx512f, avx512bf16, avx2 and fma (`has_bf16`); `job` checked as in
    /// `score_rows`, with `job.filter` given for `Products::Bf16` (so T is f32 and the scores
    /// are dot products); `norms` is given iff `MODE == NORMS`, `job.scale` iff
    /// `MODE == SCALED`.
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    pub(super) unsafe fn filter<T: Real, V: Lanes<T>, C: Candidates<T>, const MODE: u8>(
        job: RowJob<T>,
        candidates: &mut C,
        queries: usize,
        mut norms: Option<NormsOnTheWay<T>>,
    ) {
        let prep: &FilterQueries = job.filter.expect("the bfloat16 filter's queries");
        let (d, n, panels) = (job.d, job.n, prep.panels);
        assert!(V::W == LANES && panels <= job.q_panels);
        assert!(queries <= panels * LANES && queries > (panels - 1) * LANES);
        assert_eq!(prep.n_pairs, d.div_ceil(2), "queries prepared for this d");
        let stride = row_stride(d);
        // Every value `dots` reads is written first, so the buffers need no clearing.
        let mut converted = Buf::<u32>::take_dirty();
        converted.resize(GROUP * stride, 0);
        let mut scales = Buf::<T>::take_dirty();
        scales.resize(if MODE == NORMS { n } else { 0 }, T::ZERO);
        let mut sizes = [0.0f32; GROUP];
        let mut bars: Vec<Bars<T>> = (0..panels)
            .map(|p| Bars::new(candidates, p, valid_lanes(queries, p)))
            .collect();
        let mut passed = 0;
        // SAFETY (this block): the CPU has the features `filter` was compiled for; every pointer
        // read stays inside the row, the prepared queries or `converted` (lengths above).
        unsafe {
            for r0 in (0..n).step_by(GROUP) {
                let rows = GROUP.min(n - r0);
                // The same rows of the next block, toward L2, one line now and then over the
                // conversions and the products.
                let len = job.prefetch.len();
                let pf_bytes = ((r0 + rows) * d).min(len).saturating_sub(r0 * d) * 4;
                let pf_at = job.prefetch.as_ptr().wrapping_add(r0 * d).cast::<u8>();
                let steps = panels * prep.n_pairs;
                let mut pf = Spread::new(pf_at, pf_bytes, steps);
                let src = job.db.as_ptr().add(r0 * d).cast::<f32>();
                let first = prep.pairs.as_ptr();
                let mut first_acc = [_mm512_setzero_ps(); GROUP];
                if rows == GROUP {
                    // The first panel's products as the rows are converted, so that the
                    // arithmetic overlaps the reading.
                    first_acc = stream_any(first, src, d, converted.as_mut_ptr(), stride, &mut pf);
                } else {
                    for r in 0..rows {
                        convert(
                            src.add(r * d),
                            d,
                            converted.as_mut_ptr().add(r * stride),
                            &mut pf,
                        );
                    }
                }
                row_sizes::<T, MODE>(&job, r0, rows, &mut norms, &mut scales, &mut sizes);
                let exact_job = RowJob {
                    scale: if MODE == NORMS {
                        Some(&scales[..])
                    } else {
                        job.scale
                    },
                    ..job
                };
                for (p, bars) in bars.iter_mut().enumerate() {
                    let q = prep.pairs.as_ptr().add(p * prep.n_pairs * LANES);
                    let test = Test {
                        a: _mm512_loadu_ps(prep.a.as_ptr().add(p * LANES)),
                        c: _mm512_loadu_ps(prep.c.as_ptr().add(p * LANES)),
                        valid: valid_lanes(queries, p),
                        p,
                    };
                    if rows == GROUP {
                        let acc = if p == 0 {
                            first_acc
                        } else {
                            dots_any::<GROUP>(q, converted.as_ptr(), prep.n_pairs, stride, &mut pf)
                        };
                        for (r, &acc) in acc.iter().enumerate() {
                            passed += usize::from(test.row::<T, V, C>(
                                &exact_job,
                                candidates,
                                r0 + r,
                                acc,
                                sizes[r],
                                bars,
                            ));
                        }
                    } else {
                        for (r, &size) in sizes.iter().enumerate().take(rows) {
                            let at = converted.as_ptr().add(r * stride);
                            let [acc] = dots_any::<1>(q, at, prep.n_pairs, stride, &mut pf);
                            passed += usize::from(test.row::<T, V, C>(
                                &exact_job,
                                candidates,
                                r0 + r,
                                acc,
                                size,
                                bars,
                            ));
                        }
                    }
                }
            }
        }
        prep.count(n, passed);
    }

    /// Upper bounds on the sizes `|x|` of rows `r0..r0 + rows` into `sizes`, by `MODE`: from
    /// the norms computed here (written to `norms` and their scales to `scales`), from the
    /// scales given, or from the sums of squares. The sums are `sum_squares_rows` over the
    /// group while it is in L1 (four rows at a time: the norms' own order and bits).
    #[inline(always)]
    pub(super) fn row_sizes<T: Real, const MODE: u8>(
        job: &RowJob<T>,
        r0: usize,
        rows: usize,
        norms: &mut Option<NormsOnTheWay<T>>,
        scales: &mut [T],
        sizes: &mut [f32; GROUP],
    ) {
        let d = job.d;
        let mut sums = [0.0f64; GROUP];
        if MODE != SCALED {
            sum_squares_rows(&job.db[r0 * d..(r0 + rows) * d], d, &mut sums[..rows]);
        }
        for (r, &sum) in sums.iter().enumerate().take(rows) {
            let row = r0 + r;
            sizes[r] = match MODE {
                NORMS => {
                    let on_the_way = norms.as_mut().expect("norms on the way");
                    let norm = T::from_f64(sum.sqrt());
                    on_the_way.norms[row] = norm;
                    scales[row] = (on_the_way.scale)(norm);
                    size_from_scale(scales[row].to_f64() as f32)
                }
                SCALED => size_from_scale(job.scale.expect("scales")[row].to_f64() as f32),
                _ => size_from_sum(sum),
            };
        }
    }

    /// One panel's test: per lane, `|exact - filter| <= a * size + c`.
    pub(super) struct Test {
        pub(super) a: __m512,
        pub(super) c: __m512,
        /// Lanes that hold a query.
        pub(super) valid: u16,
        pub(super) p: usize,
    }

    impl Test {
        /// Hands `row` to the exact kernel (and says so) if, in a lane, its exact score could
        /// beat the bar: the filter score `acc` raised by the bound for a row of at most `size`
        /// (times the row's scale for cosine), all rounded up, is not below `bar`, or `acc` is
        /// not finite.
        ///
        /// # Safety
        /// As `filter`; `row < job.n`, `job` the exact kernel's (scales included).
        #[inline(always)]
        pub(super) unsafe fn row<T: Real, V: Lanes<T>, C: Candidates<T>>(
            &self,
            job: &RowJob<T>,
            candidates: &mut C,
            row: usize,
            acc: __m512,
            size: f32,
            bars: &mut Bars<T>,
        ) -> bool {
            // SAFETY: register arithmetic of the features `filter` was compiled for; forwarded.
            unsafe {
                let slack = _mm512_fmadd_round_ps::<UP>(self.a, _mm512_set1_ps(size), self.c);
                let mut high = _mm512_add_round_ps::<UP>(acc, slack);
                if let Some(scale) = job.scale {
                    let scale = _mm512_set1_ps(scale[row].to_f64() as f32);
                    high = _mm512_mul_round_ps::<UP>(high, scale);
                }
                let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(
                    _mm512_abs_ps(acc),
                    _mm512_set1_ps(f32::INFINITY),
                );
                let hopeless = finite & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(high, bars.filter);
                let pass = !hopeless & self.valid != 0;
                if pass {
                    exact::<T, V, C>(job, candidates, self.p, row, bars);
                }
                pass
            }
        }
    }

    /// A panel's bars as the selectors give them: each query's bar (NaN while it takes
    /// everything: `open`), kept up to date by refreshing the lanes offered to, and the same as
    /// f32 lanes for the filter's test (minus infinity where open or not a query).
    pub(super) struct Bars<T> {
        values: [T; LANES],
        open: u16,
        valid: u16,
        filter: __m512,
    }

    impl<T: Real> Bars<T> {
        #[inline(always)]
        pub(super) unsafe fn new<C: Candidates<T>>(candidates: &C, p: usize, valid: u16) -> Self {
            let mut bars = Bars {
                values: [T::NAN; LANES],
                open: 0,
                valid,
                // SAFETY: the caller has avx512f.
                filter: unsafe { _mm512_setzero_ps() },
            };
            // SAFETY: forwarded.
            unsafe { bars.refresh(candidates, p, valid) };
            bars
        }

        /// Re-reads the bars of the lanes in `lanes`.
        #[inline(always)]
        unsafe fn refresh<C: Candidates<T>>(&mut self, candidates: &C, p: usize, lanes: u16) {
            let mut rest = lanes & self.valid;
            while rest != 0 {
                let l = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                match candidates.bar(p * LANES + l) {
                    Some(v) => {
                        self.values[l] = v;
                        self.open &= !(1 << l);
                    }
                    None => {
                        self.values[l] = T::NAN;
                        self.open |= 1 << l;
                    }
                }
            }
            let mut filter = [f32::NEG_INFINITY; LANES];
            for (l, f) in filter.iter_mut().enumerate() {
                if (self.valid & !self.open) >> l & 1 == 1 {
                    *f = self.values[l].to_f64() as f32;
                }
            }
            // SAFETY: `filter` holds LANES values; the caller has avx512f.
            self.filter = unsafe { _mm512_loadu_ps(filter.as_ptr()) };
        }
    }

    /// Lanes of panel `p` that hold one of the `queries`.
    pub(super) fn valid_lanes(queries: usize, p: usize) -> u16 {
        let valid = (queries - p * LANES).min(LANES);
        (((1u32 << valid) - 1) & 0xFFFF) as u16
    }

    /// The exact scores of panel `p` against `row` (the row-streaming kernel's, one row),
    /// offered as that kernel offers them (`emit_rows`): the lanes that beat their bar or whose
    /// query still takes everything.
    ///
    /// # Safety
    /// As `filter`; `row < job.n`.
    #[inline(always)]
    unsafe fn exact<T: Real, V: Lanes<T>, C: Candidates<T>>(
        job: &RowJob<T>,
        candidates: &mut C,
        p: usize,
        row: usize,
        bars: &mut Bars<T>,
    ) {
        let d = job.d;
        let q_panel = &job.q[p * LANES * d..(p + 1) * LANES * d];
        let values = &job.db[row * d..(row + 1) * d];
        // SAFETY: forwarded; the slices hold a panel and a row, `bars.values` LANES values.
        unsafe {
            let mut s = exact_row::<T, V>(q_panel, values, d);
            if let Some(scale) = job.scale {
                s = V::mul(s, V::splat(scale[row]));
            }
            let beat = V::gt_mask(s, V::load(&bars.values)) as u16;
            let offered = (beat | bars.open) & bars.valid;
            if offered != 0 {
                let mut scores = [T::ZERO; LANES];
                s.store(&mut scores);
                candidates.offer_row(p * LANES, row, &scores, u64::from(offered));
                bars.refresh(candidates, p, offered);
            }
        }
    }

    /// Blocks of one row's exact score run side by side, at most.
    const CHAINS: usize = 8;

    /// The row-streaming kernel's scores of one row against a panel (`micro_rows` with one
    /// row: the same sums, so the same bits), with up to `CHAINS` blocks' sums interleaved:
    /// each block is a chain of `BLOCK` dependent multiply-adds, and one after another they
    /// would leave the multipliers idle for most of their latency. The whole blocks go in
    /// groups of a constant size (no test per step), the partial block last, as it comes.
    ///
    /// # Safety
    /// As `filter`; `q_panel` holds `LANES * d` values, `values` `d`.
    #[inline(always)]
    unsafe fn exact_row<T: Real, V: Lanes<T>>(q_panel: &[T], values: &[T], d: usize) -> V {
        assert!(q_panel.len() == V::W * d && values.len() == d);
        let whole = d / BLOCK;
        // SAFETY (this block): forwarded; every block read lies within `d`.
        unsafe {
            let mut total = V::zero();
            let mut b0 = 0;
            while b0 + CHAINS <= whole {
                total = blocks::<T, V, CHAINS>(q_panel, values, b0, total);
                b0 += CHAINS;
            }
            total = match whole - b0 {
                0 => total,
                1 => blocks::<T, V, 1>(q_panel, values, b0, total),
                2 => blocks::<T, V, 2>(q_panel, values, b0, total),
                3 => blocks::<T, V, 3>(q_panel, values, b0, total),
                4 => blocks::<T, V, 4>(q_panel, values, b0, total),
                5 => blocks::<T, V, 5>(q_panel, values, b0, total),
                6 => blocks::<T, V, 6>(q_panel, values, b0, total),
                _ => blocks::<T, V, 7>(q_panel, values, b0, total),
            };
            let mut acc = V::zero();
            for k in whole * BLOCK..d {
                let q = V::load(q_panel.get_unchecked(k * V::W..));
                acc = V::mul_add(q, V::splat(*values.get_unchecked(k)), acc);
            }
            if whole * BLOCK < d {
                total = V::add(total, acc);
            }
            total
        }
    }

    /// `total` plus the sums of the `C` whole blocks from block `b0`, each a chain of
    /// multiply-adds, interleaved, added to `total` in order.
    ///
    /// # Safety
    /// As `exact_row`; `(b0 + C) * BLOCK <= values.len()`.
    #[inline(always)]
    unsafe fn blocks<T: Real, V: Lanes<T>, const C: usize>(
        q_panel: &[T],
        values: &[T],
        b0: usize,
        mut total: V,
    ) -> V {
        // SAFETY: k < (b0 + C) * BLOCK <= d: inside the panel and the row.
        unsafe {
            let mut acc = [V::zero(); C];
            for j in 0..BLOCK {
                for (i, a) in acc.iter_mut().enumerate() {
                    let k = (b0 + i) * BLOCK + j;
                    let q = V::load(q_panel.get_unchecked(k * V::W..));
                    *a = V::mul_add(q, V::splat(*values.get_unchecked(k)), *a);
                }
            }
            for a in acc {
                total = V::add(total, a);
            }
            total
        }
    }

    /// `stream` with the stride as a constant where it is one of `STRIDES`. Not inlined: on
    /// its own the compiler keeps the sixteen accumulators in registers, where inlined into
    /// `filter` it was seen to spill them.
    ///
    /// # Safety
    /// As `stream`.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    unsafe fn stream_any(
        q: *const u32,
        src: *const f32,
        d: usize,
        out: *mut u32,
        stride: usize,
        pf: &mut Spread,
    ) -> [__m512; GROUP] {
        // SAFETY: forwarded.
        unsafe { at_stride!(stride, S => stream::<S>(q, src, d, out, pf)) }
    }

    /// `GROUP` rows from `src` (one after another) against the panel `q`, 32 coordinates at a
    /// time, software-pipelined: while the products of one chunk of 32 coordinates run (16
    /// steps of pairs), each step converts one row's next chunk as in `convert` (to
    /// `out + r * S`). The memory is then read evenly while the products run, rather than in
    /// a burst before them.
    ///
    /// # Safety
    /// As `filter`; `src` holds `GROUP * d` values, `out` `GROUP * S` u32, `q` `ceil(d / 2)`
    /// vectors of pairs.
    #[inline(always)]
    unsafe fn stream<const S: usize>(
        q: *const u32,
        src: *const f32,
        d: usize,
        out: *mut u32,
        pf_out: &mut Spread,
    ) -> [__m512; GROUP] {
        let n_pairs = d.div_ceil(2);
        // SAFETY: loads masked to the rows, stores and broadcasts inside `out`, query loads
        // inside the panel.
        unsafe {
            for r in 0..GROUP {
                convert_chunk(src.add(r * d), d, out.add(r * S), 0);
            }
            // A copy the compiler keeps in registers (through the reference it stored it back
            // every step).
            let mut spread = *pf_out;
            let pf = &mut spread;
            let mut acc = [_mm512_setzero_ps(); GROUP];
            let mut c = 0;
            // Whole chunks with a next one to convert: every pair of the chunk is in the rows.
            while c + 32 < d {
                let next = c + 32;
                let (at, mut row) = (out.add(c / 2), src.add(next));
                for j in 0..16 {
                    pf.step();
                    // The row's chunk after this one, from L2 toward L1 (past the row's end:
                    // the next row's first values, needed soon too).
                    _mm_prefetch::<_MM_HINT_T0>(row.add(32).cast());
                    _mm_prefetch::<_MM_HINT_T0>(row.add(48).cast());
                    if next + 32 <= d {
                        convert_whole(row, out.add(j * S + next / 2));
                    } else {
                        convert_chunk(row.sub(next), d, out.add(j * S), next);
                    }
                    row = row.add(d);
                    add_pair::<GROUP, S>(&mut acc, q.add(c / 2 * LANES), at, j);
                }
                c = next;
            }
            for pair in c / 2..n_pairs {
                pf.step();
                add_pair::<GROUP, S>(&mut acc, q, out, pair);
            }
            *pf_out = spread;
            acc
        }
    }

    /// The filter's scores, before any bound, of `rows` (`d` values each) against panel `p`
    /// of `prep`: one `[f32; LANES]` per row.
    ///
    /// # Safety
    /// The CPU must have avx512f, avx512bf16, avx2 and fma; `prep` made for `d`.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    pub(super) unsafe fn filter_scores(
        prep: &FilterQueries,
        p: usize,
        rows: &[f32],
        d: usize,
    ) -> Vec<[f32; LANES]> {
        assert!(p < prep.panels && prep.n_pairs == d.div_ceil(2));
        let stride = row_stride(d);
        let mut converted = vec![0u32; stride];
        let mut pf = Spread::new(std::ptr::null(), 0, 1);
        let q = prep.pairs[p * prep.n_pairs * LANES..].as_ptr();
        let mut scores = Vec::new();
        for row in rows.chunks_exact(d) {
            // SAFETY: forwarded; `converted` holds a row at the stride, `q` a panel of pairs.
            unsafe {
                convert(row.as_ptr(), d, converted.as_mut_ptr(), &mut pf);
                let [acc] = dots_any::<1>(q, converted.as_ptr(), prep.n_pairs, stride, &mut pf);
                let mut out = [0.0f32; LANES];
                _mm512_storeu_ps(out.as_mut_ptr(), acc);
                scores.push(out);
            }
        }
        scores
    }

    /// 32 values at `src` as bfloat16 pairs to `out` (`convert_chunk` of a whole chunk).
    ///
    /// # Safety
    /// As `filter`; `src` holds 32 values, `out` 16 u32.
    #[inline(always)]
    unsafe fn convert_whole(src: *const f32, out: *mut u32) {
        // SAFETY: forwarded.
        unsafe {
            let (x0, x1) = (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
            _mm512_storeu_si512(out.cast(), pairs);
        }
    }

    /// A row's 32 values from coordinate `c` (of `d` at `src`) as bfloat16 to `out + c / 2`
    /// (zero past `d`).
    ///
    /// # Safety
    /// As `filter`; `c < d`, `src` holds `d` values, `out` `c / 2 + 16` u32.
    #[inline(always)]
    unsafe fn convert_chunk(src: *const f32, d: usize, out: *mut u32, c: usize) {
        // SAFETY: loads masked to the row, the store inside `out`.
        unsafe {
            let w = d - c;
            let (x0, x1) = if w >= 32 {
                (
                    _mm512_loadu_ps(src.add(c)),
                    _mm512_loadu_ps(src.add(c + 16)),
                )
            } else {
                (
                    _mm512_maskz_loadu_ps(lanes_mask(w), src.add(c)),
                    _mm512_maskz_loadu_ps(lanes_mask(w.saturating_sub(16)), src.add(c + 16)),
                )
            };
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
            _mm512_storeu_si512(out.add(c / 2).cast(), pairs);
        }
    }

    /// One row from `src` (`d` f32) as bfloat16 in order to `out` (so that u32 `j` is the pair
    /// `2j, 2j + 1`), zero-filled to whole 64-byte stores, a step of `pf` per 32 values.
    ///
    /// # Safety
    /// As `filter`; `src` holds `d` values, `out` `ceil(d / 32) * 16` u32.
    #[inline(always)]
    unsafe fn convert(src: *const f32, d: usize, out: *mut u32, pf: &mut Spread) {
        // SAFETY: forwarded.
        unsafe {
            for c in (0..d).step_by(32) {
                pf.step();
                convert_chunk(src, d, out, c);
            }
        }
    }

    /// The first `w` (at most 16) lanes.
    fn lanes_mask(w: usize) -> u16 {
        ((1u32 << w.min(16)) - 1) as u16
    }

    /// Strides (u32) of the converted rows, known at compile time (`at_stride`) so that the
    /// broadcasts address every row from one pointer: whole 64-byte stores, a line more than a
    /// power of two so that the rows do not share cache sets; up to `BF16_MAX_FEATURES`.
    const STRIDES: [usize; 5] = [32, 80, 144, 272, 528];

    /// The stride of the converted rows of `d` coordinates (`d <= BF16_MAX_FEATURES`).
    fn row_stride(d: usize) -> usize {
        let needed = d.div_ceil(32) * 16;
        let stride = STRIDES.into_iter().find(|&s| s >= needed);
        stride.expect("the filter takes at most BF16_MAX_FEATURES coordinates")
    }

    /// `dots` at the constant stride `stride` (not inlined, as `stream_any`).
    ///
    /// # Safety
    /// As `dots`; `stride` one of `STRIDES`.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    unsafe fn dots_any<const R: usize>(
        q: *const u32,
        rows: *const u32,
        n_pairs: usize,
        stride: usize,
        pf: &mut Spread,
    ) -> [__m512; R] {
        // SAFETY: forwarded.
        unsafe { at_stride!(stride, S => dots::<R, S>(q, rows, n_pairs, pf)) }
    }

    /// `R` converted rows (`S` u32 apart) against one panel of bfloat16 query pairs, a step
    /// of `pf` per pair.
    ///
    /// # Safety
    /// As `filter`; `q` holds `n_pairs * LANES` u32, each row `n_pairs`.
    #[inline(always)]
    unsafe fn dots<const R: usize, const S: usize>(
        q: *const u32,
        rows: *const u32,
        n_pairs: usize,
        pf: &mut Spread,
    ) -> [__m512; R] {
        // SAFETY: forwarded.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for pair in 0..n_pairs {
                pf.step();
                add_pair::<R, S>(&mut acc, q, rows, pair);
            }
            acc
        }
    }

    /// One pair of coordinates into `R` rows' accumulators: the panel's vector of query pairs
    /// times each row's pair (rows `S` u32 apart) broadcast.
    ///
    /// # Safety
    /// As `filter`; `pair` inside the panel `q` and the rows.
    #[inline(always)]
    unsafe fn add_pair<const R: usize, const S: usize>(
        acc: &mut [__m512; R],
        q: *const u32,
        rows: *const u32,
        pair: usize,
    ) {
        // SAFETY: forwarded; the transmutes reinterpret 512 bits as 32 bfloat16.
        unsafe {
            let qv: __m512bh = std::mem::transmute(_mm512_loadu_si512(q.add(pair * LANES).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_epi32(*rows.add(r * S + pair) as i32);
                *a = _mm512_dpbf16_ps(*a, qv, std::mem::transmute::<__m512i, __m512bh>(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::{random_matrix, Lcg};
    use super::*;

    /// `a . b` summed in f64 (each product exact).
    fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    }

    /// Values that round to bfloat16 toward zero by 0.49 of a unit in every coordinate, all
    /// positive: the residuals of a query and a row then add up in every term, and the
    /// filter's score falls short of the exact one by most of the bound.
    fn rounding_down(rng: &mut Lcg, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let m = ((rng.next_f64() + 1.0) * 64.0).floor() as f32;
                scale * (1.0 + (m + 0.49) / 128.0)
            })
            .collect()
    }

    /// The filter's scores (`x86::filter_scores`) stay within the module's bound,
    /// `a |x| + c`, of the exact dot products (f64): random queries and rows at several
    /// scales, values that flush to zero, and values that all round the same way, where the
    /// error reaches most of the bound (so a bound a quarter too tight fails here, and one
    /// with the room for the residuals zeroed fails everywhere).
    #[test]
    fn filter_scores_stay_within_the_bound() {
        if !has_bf16(super::super::detect()) {
            return;
        }
        let mut rng = Lcg::new(17);
        for d in [7usize, 64, 384, 385] {
            let mut worst_adversarial = 0.0f64;
            for case in 0..4 {
                let scale = [1.0f32, 1e-3, 3e4, 1e-39][case];
                let mut queries: Vec<f32> = if case == 0 {
                    rounding_down(&mut rng, 17 * d, 1.0)
                } else {
                    random_matrix::<f32>(&mut rng, 17, d)
                        .iter()
                        .map(|v| v * scale.max(1e-3))
                        .collect()
                };
                let mut rows: Vec<f32> = rounding_down(&mut rng, 8 * d, 0.5);
                rows.extend(
                    random_matrix::<f32>(&mut rng, 8, d)
                        .iter()
                        .map(|v| v * scale),
                );
                if case == 3 {
                    // Queries with flushed values too.
                    queries[..d].iter_mut().for_each(|v| *v *= 1e-36);
                }
                // Packed as the scan packs them: [panel][coordinate][lane].
                let mut packed = vec![0.0f32; 2 * LANES * d];
                for i in 0..17 {
                    for k in 0..d {
                        packed[((i / LANES) * d + k) * LANES + i % LANES] = queries[i * d + k];
                    }
                }
                let prep =
                    FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &packed, d, 17).unwrap();
                for p in 0..2 {
                    // SAFETY: the CPU has AVX512_BF16 (checked above); `prep` is for `d`.
                    let scores = unsafe { x86::filter_scores(&prep, p, &rows, d) };
                    for (r, row) in rows.chunks_exact(d).enumerate() {
                        let size = dot_f64(row, row).sqrt();
                        for l in 0..LANES.min(17 - p * LANES) {
                            let q = &queries[(p * LANES + l) * d..][..d];
                            let exact = dot_f64(q, row);
                            let i = p * LANES + l;
                            let bound = f64::from(prep.a[i]) * size + f64::from(prep.c[i]);
                            let error = (exact - f64::from(scores[r][l])).abs();
                            assert!(error <= bound, "d={d} case={case} row={r} query={i}");
                            if case == 0 && r < 8 {
                                worst_adversarial = worst_adversarial.max(error / bound);
                            }
                        }
                    }
                }
            }
            assert!(worst_adversarial > 0.7, "d={d}: {worst_adversarial}");
        }
    }

    /// The pair filter's scores (`pairs::filter_scores`) stay within the module's bound,
    /// `a |x| + c`, of the exact dot products (f64), for 3 to 16 queries (one vector a pair
    /// up to eight, two from nine), whole groups of rows and the 13 rows after them, one at a time; and they
    /// are close to it where the sums cancel (terms of 1e6 with alternating signs).
    #[test]
    fn pair_filter_scores_stay_within_the_bound() {
        if effective(super::super::detect()) != Isa::Avx512 {
            return;
        }
        let mut rng = Lcg::new(19);
        for d in [2usize, 64, 384, 386] {
            for nq in [3usize, 8, 9, 16] {
                let queries: Vec<f32> = random_matrix(&mut rng, nq, d);
                let mut rows: Vec<f32> = random_matrix(&mut rng, 45, d);
                for (c, v) in rows[..d].iter_mut().enumerate() {
                    *v += if c % 2 == 0 { 1e6 } else { -1e6 };
                }
                let mut packed = vec![0.0f32; LANES * d];
                for i in 0..nq {
                    for k in 0..d {
                        packed[k * LANES + i] = queries[i * d + k];
                    }
                }
                let prep =
                    FilterQueries::new(Isa::Avx512, Accumulator::Dot, &packed, d, nq).unwrap();
                assert_eq!(prep.products, Products::F32Pairs);
                assert_eq!(prep.vectors, nq.div_ceil(8));
                // SAFETY: the CPU has AVX-512 (checked above); `prep` is for `d`.
                let scores = unsafe { pairs::filter_scores(&prep, &rows, d) };
                assert_eq!(scores.len(), 45);
                for (r, row) in rows.chunks_exact(d).enumerate() {
                    let size = dot_f64(row, row).sqrt();
                    for i in 0..nq {
                        let q = &queries[i * d..][..d];
                        let exact = dot_f64(q, row);
                        let bound = f64::from(prep.a[i]) * size + f64::from(prep.c[i]);
                        let error = (exact - f64::from(scores[r][i])).abs();
                        assert!(
                            error <= bound,
                            "d={d} nq={nq} row={r} query={i}: {error} > {bound}"
                        );
                        assert!(
                            bound <= 1e-4 * size * 4.0,
                            "d={d} nq={nq}: a loose bound {bound}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bfloat16_rounding_is_to_nearest_even_with_overflow_and_nan() {
        let back = |h: u16| f32::from_bits(u32::from(h) << 16);
        assert_eq!(back(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1).
        assert_eq!(back(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(back(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(back(to_bf16(-1.0 - 1.0 / 512.0)), -1.0);
        assert_eq!(back(to_bf16(f32::MAX)), f32::INFINITY);
        assert!(back(to_bf16(f32::NAN)).is_nan());
        for x in [0.1f32, -3.7, 1e-30, 6.5e30] {
            let y = back(to_bf16(x));
            assert!(((y - x) / x).abs() <= U_BF16 as f32, "{x} -> {y}");
        }
    }

    #[test]
    fn the_filter_starts_after_a_window_and_gives_up_when_too_many_rows_pass() {
        let q = vec![0.5f32; 2 * LANES * 8];
        let Some(prep) = FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &q, 8, 20) else {
            return; // no AVX512_BF16 here
        };
        assert!(!prep.worth_it(), "the plain kernel takes the first window");
        prep.skipped(WINDOW - 1);
        assert!(!prep.worth_it());
        prep.skipped(1);
        assert!(prep.worth_it());
        // Every test passing (two panels a row): the window gives up once full.
        prep.count(WINDOW - 1, 2 * WINDOW - 2);
        assert!(prep.worth_it(), "a window not yet full");
        prep.count(1, 0);
        assert!(!prep.worth_it());
        prep.count(WINDOW, 0);
        assert!(!prep.worth_it(), "giving up is for the whole scan");
        let fine = FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &q, 8, 20).unwrap();
        fine.skipped(WINDOW);
        for _ in 0..5 {
            fine.count(WINDOW, 2 * WINDOW / GIVE_UP_ONE_IN);
        }
        assert!(fine.worth_it());
        assert!(FilterQueries::new(Isa::Avx512, Accumulator::Dot, &q, 8, 20).is_none());
        let sixteen = FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &q, 8, 16).unwrap();
        assert!(sixteen.pairs(), "sixteen queries: the pair filter");
        assert!(FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &q, 7, 16).is_none());
        assert!(FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &q, 8, 2).is_none());
        assert!(FilterQueries::new(Isa::Avx2, Accumulator::Dot, &q, 8, 16).is_none());
        let wide = vec![0.5f32; 2 * LANES * (BF16_MAX_FEATURES + 1)];
        let d = BF16_MAX_FEATURES + 1;
        assert!(FilterQueries::new(Isa::Avx512Bf16, Accumulator::Dot, &wide, d, 20).is_none());
        assert!(FilterQueries::new(Isa::Avx512Bf16, Accumulator::SquaredDiff, &q, 8, 20).is_none());
    }

    #[test]
    fn size_bounds_are_upper_bounds() {
        for norm in [1e-30f32, 0.5, 1.0, 3.0, 7e20] {
            let scale = super::super::super::pairwise::cosine_scale(norm);
            assert!(size_from_scale(scale) >= norm, "{norm}");
            assert!(size_from_scale(scale) <= norm * 1.001, "{norm}");
        }
        assert_eq!(size_from_scale(0.0), f32::INFINITY);
        assert_eq!(size_from_scale(f32::INFINITY), f32::INFINITY);
        assert!(size_from_sum(4.0) >= 2.0 && size_from_sum(4.0) < 2.001);
        assert_eq!(size_from_sum(f64::NAN), f32::INFINITY);
    }
}
