//! Pure-Rust kernels on slices: no Python; raw pointers and intrinsics only inside `simd`.
//! `ufunc.rs` adapts NumPy's strided buffers to these functions and `pyfuncs.rs` NumPy arrays;
//! `cargo test --no-default-features` tests them without libpython.
//!
//! `simd`: the register-tile kernels (packed panels for many queries, rows read in place for
//! few), their sinks (store, or compare with each query's top-k bar in registers), packing and
//! row sums. `pairwise`: operands, blocking, cosine scales. `topk`: selectors and the work split.
//! `threads`: the one capped rayon pool. `scratch`: per-thread buffers reused across calls.

pub mod elementwise;
pub mod merge;
pub mod normalize;
pub mod pairwise;
pub mod scratch;
pub mod simd;
pub mod threads;
pub mod topk;

#[cfg(test)]
pub(crate) mod testutil;

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The two element types the ufuncs have loops for (f32 and f64).
pub trait Real:
    Copy
    + Default
    + Debug
    + PartialOrd
    + Send
    + Sync
    + 'static
    + scratch::Pooled
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    /// The gap between 1 and the next value (twice the unit roundoff).
    const EPSILON: Self;
    /// The smallest positive normal value.
    const MIN_POSITIVE: Self;
    /// Size in bytes; the SIMD kernels pick their lane count from it.
    const BYTES: usize;
    /// The vector types of the SIMD score kernel (see `simd`).
    type PortableLanes: simd::Lanes<Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx512Lanes: simd::Lanes<Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx2Lanes: simd::Lanes<Self>;

    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_nan(self) -> bool;
    /// The greatest value below `self` (`f32::next_down`).
    fn next_down(self) -> Self;
    /// The least value above `self` (`f32::next_up`).
    fn next_up(self) -> Self;
    /// `self * a + b` rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Bits whose unsigned order is the numeric order of non-NaN values, -0 and +0 alike.
    fn order_bits(self) -> u64;
    /// The value of `order_bits` (zeros come back as +0).
    fn from_order_bits(bits: u64) -> Self;

    /// A (rank, row id) pair packed in one integer whose order is (rank, id): `u64` for f32
    /// (32-bit ranks and ids, so top-k selection compares and moves half the bytes), `u128`
    /// for f64.
    type Key: Copy + Ord + Default + Debug + Send + Sync + 'static + scratch::Pooled;
    /// All ones over the width of `order_bits`.
    const RANK_MASK: u64;
    /// The largest row id a key holds.
    const MAX_KEY_ID: u64;
    fn make_key(rank: u64, id: u64) -> Self::Key;
    /// `(rank, id)` of a key.
    fn split_key(key: Self::Key) -> (u64, u64);
}

macro_rules! impl_real {
    ($t:ty, $bits:ty, $portable:literal, $avx512:ident, $avx2:ident, $key:ty) => {
        impl Real for $t {
            type Key = $key;
            const RANK_MASK: u64 = <$bits>::MAX as u64;
            const MAX_KEY_ID: u64 = <$bits>::MAX as u64;
            #[inline(always)]
            fn make_key(rank: u64, id: u64) -> $key {
                ((rank as $key) << <$bits>::BITS) | id as $key
            }
            #[inline(always)]
            fn split_key(key: $key) -> (u64, u64) {
                (
                    (key >> <$bits>::BITS) as u64,
                    (key & <$bits>::MAX as $key) as u64,
                )
            }

            type PortableLanes = simd::Portable<$t, $portable>;
            #[cfg(target_arch = "x86_64")]
            type Avx512Lanes = simd::$avx512;
            #[cfg(target_arch = "x86_64")]
            type Avx2Lanes = simd::$avx2;

            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAN: Self = <$t>::NAN;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const EPSILON: Self = <$t>::EPSILON;
            const MIN_POSITIVE: Self = <$t>::MIN_POSITIVE;
            const BYTES: usize = std::mem::size_of::<$t>();

            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn next_down(self) -> Self {
                <$t>::next_down(self)
            }
            #[inline(always)]
            fn next_up(self) -> Self {
                <$t>::next_up(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline]
            fn order_bits(self) -> u64 {
                const SIGN: $bits = 1 << (<$bits>::BITS - 1);
                let bits = if self == 0.0 { 0 } else { self.to_bits() };
                (if bits & SIGN != 0 { !bits } else { bits | SIGN }) as u64
            }
            #[inline]
            fn from_order_bits(bits: u64) -> Self {
                const SIGN: $bits = 1 << (<$bits>::BITS - 1);
                let bits = bits as $bits;
                <$t>::from_bits(if bits & SIGN != 0 {
                    bits & !SIGN
                } else {
                    !bits
                })
            }
        }
    };
}

impl_real!(f32, u32, 4, F32x16, F32x8, u64);
impl_real!(f64, u64, 2, F64x8, F64x4, u128);

/// The four ways to compare two vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity; 0 when either vector is zero.
    Cosine,
    /// Inner product (similarity).
    Dot,
    /// L2 distance, `sqrt(sum((a - b)^2))` computed directly (no expansion).
    Euclidean,
    /// L1 distance, `sum(|a - b|)`.
    Manhattan,
}

impl Metric {
    /// Similarities rank high-first, distances low-first.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Cosine | Metric::Dot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_bits_sort_like_the_numbers() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-40,
            0.0,
            1e-40,
            2.0,
            f32::INFINITY,
        ];
        for pair in values.windows(2) {
            assert!(pair[0].order_bits() < pair[1].order_bits(), "{pair:?}");
        }
        assert_eq!((-0.0f32).order_bits(), 0.0f32.order_bits());
        for v in values {
            assert_eq!(f32::from_order_bits(v.order_bits()), v);
            assert_eq!(f64::from_order_bits((v as f64).order_bits()), v as f64);
        }
        assert!((-1.0f64).order_bits() < 1e-300f64.order_bits());
    }
}
