//! The SIMD score kernel, with runtime CPU-feature dispatch (no `-C target-cpu=native`).
//!
//! Both operands come packed in panels (see `pairwise::pack_panels`): `MR` query rows or `NR`
//! database rows interleaved coordinate by coordinate, so that for every coordinate the kernel
//! loads `NR` database values as vectors, broadcasts each of `MR` query values, and updates an
//! `MR x NR` register tile (the BLIS/GEMM scheme; no horizontal sums). Each score is a plain
//! sequential accumulation over the `d` coordinates in one vector lane, the same for every
//! position in a tile: a pair's score depends only on its two vectors and the ISA.
//!
//! This is the crate's only SIMD code; all intrinsics and their `unsafe` live here.

use std::array;

use super::Real;

/// The instruction sets the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F and FMA: 512-bit vectors, 32 registers.
    Avx512,
    /// x86-64 with AVX2 and FMA: 256-bit vectors, 16 registers.
    Avx2,
    /// Plain Rust on short arrays; whatever the compiler makes of it for the target.
    Portable,
}

/// The best ISA of this CPU (std caches the feature detection).
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("fma");
        if fma && is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if fma && is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// Every ISA this CPU can run, best first.
pub fn available() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|&isa| supported(isa))
        .collect()
}

fn supported(isa: Isa) -> bool {
    match isa {
        Isa::Avx512 => detect() == Isa::Avx512,
        Isa::Avx2 => matches!(detect(), Isa::Avx512 | Isa::Avx2),
        Isa::Portable => true,
    }
}

/// `isa` if this CPU has it, else the portable kernel.
fn effective(isa: Isa) -> Isa {
    if supported(isa) {
        isa
    } else {
        Isa::Portable
    }
}

/// What a score accumulates over the coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulator {
    /// sum q*b
    Dot,
    /// sum (q-b)^2 (the caller takes the square root)
    SquaredDiff,
    /// sum |q-b|
    AbsDiff,
}

const AVX512_MR: usize = 8;
const AVX2_MR: usize = 6;
const PORTABLE_MR: usize = 4;
/// Database panels are two vectors wide for every ISA.
const NV: usize = 2;

/// `(MR, NR)`: query rows per query panel and database rows per database panel for `isa`.
pub fn panel_shape<T: Real>(isa: Isa) -> (usize, usize) {
    let (mr, vector_bytes) = match effective(isa) {
        Isa::Avx512 => (AVX512_MR, 64),
        Isa::Avx2 => (AVX2_MR, 32),
        Isa::Portable => (PORTABLE_MR, 16),
    };
    (mr, NV * vector_bytes / T::BYTES)
}

/// Packed operands and the score tile they fill.
pub struct PanelJob<'a, T> {
    pub kind: Accumulator,
    /// `q_panels` panels of `MR` rows x `d` coordinates, laid out `[panel][coordinate][row]`.
    pub q: &'a [T],
    pub q_panels: usize,
    /// `db_panels` panels of `NR` rows x `d` coordinates, laid out `[panel][coordinate][row]`.
    pub db: &'a [T],
    pub db_panels: usize,
    pub d: usize,
    /// Score of packed query row `i` and packed database row `j` goes to `out[i * ld + j]`.
    pub out: &'a mut [T],
    pub ld: usize,
}

/// Fills the score tile of `job` with the kernel for `isa` (`panel_shape(isa)` must be the shape
/// the operands were packed with).
pub fn score_panels<T: Real>(isa: Isa, job: PanelJob<T>) {
    let (mr, nr) = panel_shape::<T>(isa);
    assert_eq!(job.q.len(), job.q_panels * mr * job.d, "packed queries");
    assert_eq!(job.db.len(), job.db_panels * nr * job.d, "packed database");
    assert!(job.ld >= job.db_panels * nr, "score tile stride");
    assert!(
        job.out.len() >= job.q_panels * mr * job.ld,
        "score tile size"
    );
    match effective(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `effective` returned Avx512 only because this CPU has avx512f and fma.
        Isa::Avx512 => unsafe { x86::avx512(job) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `effective` returned Avx2 only because this CPU has avx2 and fma.
        Isa::Avx2 => unsafe { x86::avx2(job) },
        // SAFETY: portable lanes use no instructions beyond the target's baseline.
        _ => unsafe { run::<T, T::PortableLanes, PORTABLE_MR>(job) },
    }
}

/// A vector register of `T`.
///
/// # Safety
/// Implementations may use instructions of one ISA in every method; callers must only call
/// them when this CPU supports that ISA (`score_panels` checks before it dispatches). That
/// is the whole safety contract of every method below.
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
    unsafe fn abs(a: Self) -> Self;
}

trait Accumulate {
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V;
}

struct DotAcc;
struct SquaredDiffAcc;
struct AbsDiffAcc;

impl Accumulate for DotAcc {
    #[inline(always)]
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V {
        unsafe { V::mul_add(q, b, acc) }
    }
}

impl Accumulate for SquaredDiffAcc {
    #[inline(always)]
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V {
        unsafe {
            let diff = V::sub(q, b);
            V::mul_add(diff, diff, acc)
        }
    }
}

impl Accumulate for AbsDiffAcc {
    #[inline(always)]
    unsafe fn step<T: Real, V: Lanes<T>>(acc: V, q: V, b: V) -> V {
        unsafe { V::add(acc, V::abs(V::sub(q, b))) }
    }
}

/// # Safety
/// The CPU must support `V`'s ISA; `job` must be checked as in `score_panels`.
#[inline(always)]
unsafe fn run<T: Real, V: Lanes<T>, const MR: usize>(job: PanelJob<T>) {
    unsafe {
        match job.kind {
            Accumulator::Dot => run_with::<T, V, DotAcc, MR>(job),
            Accumulator::SquaredDiff => run_with::<T, V, SquaredDiffAcc, MR>(job),
            Accumulator::AbsDiff => run_with::<T, V, AbsDiffAcc, MR>(job),
        }
    }
}

/// # Safety
/// As `run`.
#[inline(always)]
unsafe fn run_with<T: Real, V: Lanes<T>, A: Accumulate, const MR: usize>(job: PanelJob<T>) {
    let nr = NV * V::W;
    let d = job.d;
    for p in 0..job.q_panels {
        let q_panel = &job.q[p * MR * d..(p + 1) * MR * d];
        for s in 0..job.db_panels {
            let db_panel = &job.db[s * nr * d..(s + 1) * nr * d];
            // SAFETY: forwarded from the caller.
            let acc = unsafe { micro::<T, V, A, MR>(q_panel, db_panel) };
            for (i, row) in acc.iter().enumerate() {
                let at = (p * MR + i) * job.ld + s * nr;
                for (v, &lanes) in row.iter().enumerate() {
                    // SAFETY: as above; `store` writes W values of a slice at least W long.
                    unsafe { lanes.store(&mut job.out[at + v * V::W..at + (v + 1) * V::W]) };
                }
            }
        }
    }
}

/// One `MR x NR` register tile over all coordinates.
///
/// # Safety
/// As `run`.
#[inline(always)]
unsafe fn micro<T: Real, V: Lanes<T>, A: Accumulate, const MR: usize>(
    q_panel: &[T],
    db_panel: &[T],
) -> [[V; NV]; MR] {
    let nr = NV * V::W;
    unsafe {
        let mut acc = [[V::zero(); NV]; MR];
        for (q, b) in q_panel.chunks_exact(MR).zip(db_panel.chunks_exact(nr)) {
            let b: [V; NV] = array::from_fn(|v| V::load(&b[v * V::W..(v + 1) * V::W]));
            for i in 0..MR {
                let qi = V::splat(q[i]);
                for v in 0..NV {
                    acc[i][v] = A::step::<T, V>(acc[i][v], qi, b[v]);
                }
            }
        }
        acc
    }
}

/// `W` values in a plain array: the fallback for CPUs without the x86 kernels.
#[derive(Clone, Copy)]
pub struct Portable<T, const W: usize>([T; W]);

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
    unsafe fn abs(a: Self) -> Self {
        Portable(array::from_fn(|l| a.0[l].abs()))
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{F32x16, F32x8, F64x4, F64x8};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{run, Lanes, PanelJob, Real, AVX2_MR, AVX512_MR};

    /// # Safety
    /// The CPU must have avx512f and fma; `job` checked as in `score_panels`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512<T: Real>(job: PanelJob<T>) {
        unsafe { run::<T, T::Avx512Lanes, AVX512_MR>(job) }
    }

    /// # Safety
    /// The CPU must have avx2 and fma; `job` checked as in `score_panels`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<T: Real>(job: PanelJob<T>) {
        unsafe { run::<T, T::Avx2Lanes, AVX2_MR>(job) }
    }

    macro_rules! x86_lanes {
        ($name:ident, $t:ty, $v:ty, $w:expr, $zero:ident, $set1:ident, $loadu:ident, $storeu:ident,
         $fmadd:ident, $add:ident, $sub:ident, |$x:ident| $abs:expr) => {
            #[derive(Clone, Copy)]
            pub struct $name($v);

            // SAFETY: every method uses only the instructions of the ISA this type is named for;
            // `score_panels` reaches it only after detecting that ISA.
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
                unsafe fn abs(a: Self) -> Self {
                    let $x = a.0;
                    unsafe { $name($abs) }
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
        |x| _mm512_abs_ps(x)
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
        |x| _mm512_abs_pd(x)
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
        |x| _mm256_andnot_ps(_mm256_set1_ps(-0.0), x)
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
        |x| _mm256_andnot_pd(_mm256_set1_pd(-0.0), x)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_is_available_first() {
        assert_eq!(available()[0], detect());
        assert_eq!(*available().last().unwrap(), Isa::Portable);
    }

    #[test]
    fn panels_are_two_vectors_wide() {
        for isa in available() {
            let (mr32, nr32) = panel_shape::<f32>(isa);
            let (mr64, nr64) = panel_shape::<f64>(isa);
            assert_eq!((mr32, nr32), (mr64, 2 * nr64), "{isa:?}");
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
                    (j - 1.0).powi(2) + (j - 3.0).powi(2) + (j - 5.0).powi(2)
                }),
                (Accumulator::AbsDiff, |j: f64| {
                    (j - 1.0).abs() + (j - 3.0).abs() + (j - 5.0).abs()
                }),
            ];
            for (kind, want) in cases {
                let mut out = vec![f64::NAN; mr * nr];
                score_panels(
                    isa,
                    PanelJob {
                        kind,
                        q: &q,
                        q_panels: 1,
                        db: &db,
                        db_panels: 1,
                        d,
                        out: &mut out,
                        ld: nr,
                    },
                );
                for (j, &score) in out[..nr].iter().enumerate() {
                    assert_eq!(score, want(j as f64), "{isa:?} {kind:?} {j}");
                }
            }
        }
    }
}
