//! Row norms and row normalisation. Norms are accumulated in f64 (also for f32 rows), so they
//! neither overflow for large f32 values nor lose digits over long rows.

use super::{simd, Real};

/// Which norm a row is measured (and divided) by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    L2,
    L1,
    /// max |x|
    Max,
}

/// The norm of `row`, as f64. NaN anywhere gives NaN.
pub fn norm<T: Real>(kind: Norm, row: &[T]) -> f64 {
    match kind {
        Norm::L2 => l2_norm(row),
        Norm::L1 => simd::sum_abs(row),
        Norm::Max => max_abs(row),
    }
}

/// sqrt(sum x^2) in f64 (the order of the sum: `simd::sum_squares`).
pub fn l2_norm<T: Real>(row: &[T]) -> f64 {
    simd::sum_squares(row).sqrt()
}

/// max |x|, NaN if any element is NaN (plain `max` would skip NaNs).
fn max_abs<T: Real>(row: &[T]) -> f64 {
    let mut max = 0.0f64;
    let mut any_nan = false;
    for &x in row {
        let a = x.to_f64().abs();
        any_nan |= a.is_nan();
        max = if a > max { a } else { max };
    }
    if any_nan {
        f64::NAN
    } else {
        max
    }
}

/// Each row of `x` (rows of width `d`) divided by its norm, into `out`. Zero rows stay zero;
/// NaN and inf propagate as IEEE division gives.
pub fn normalize_rows<T: Real>(kind: Norm, x: &[T], d: usize, out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "input and output lengths");
    if d == 0 {
        return;
    }
    // The same loop, compiled for the best vector ISA (the arithmetic, hence every bit of the
    // result, is the same: IEEE division and rounding).
    simd::with_best_isa(|| {
        for (row, out_row) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let n = norm(kind, row);
            let divisor = if n == 0.0 { 1.0 } else { n };
            for (o, &v) in out_row.iter_mut().zip(row) {
                // One rounding: the f64 quotient rounded to T.
                *o = T::from_f64(v.to_f64() / divisor);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{random_matrix, Lcg};

    fn reference_norm(kind: Norm, row: &[f64]) -> f64 {
        match kind {
            Norm::L2 => row.iter().map(|x| x * x).sum::<f64>().sqrt(),
            Norm::L1 => row.iter().map(|x| x.abs()).sum(),
            Norm::Max => row.iter().fold(0.0, |m: f64, x| m.max(x.abs())),
        }
    }

    #[test]
    fn norms_match_f64_loops() {
        let mut rng = Lcg::new(1);
        for d in [1, 7, 8, 9, 64, 385] {
            let row: Vec<f32> = random_matrix(&mut rng, 1, d);
            let wide: Vec<f64> = row.iter().map(|&x| x as f64).collect();
            for kind in [Norm::L2, Norm::L1, Norm::Max] {
                let (got, want) = (norm(kind, &row), reference_norm(kind, &wide));
                assert!(
                    (got - want).abs() <= 1e-12 * want,
                    "{kind:?} d={d}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn normalized_rows_have_unit_norm_and_zero_rows_stay_zero() {
        let x = [3.0f32, -4.0, 0.0, 0.0, 1.0, 1.0];
        let mut out = [f32::NAN; 6];
        normalize_rows(Norm::L2, &x, 2, &mut out);
        assert_eq!(
            out,
            [0.6, -0.8, 0.0, 0.0, 1.0 / 2f32.sqrt(), 1.0 / 2f32.sqrt()]
        );
        normalize_rows(Norm::L1, &x, 2, &mut out);
        assert_eq!(out[..2], [3.0 / 7.0, -4.0 / 7.0]);
        normalize_rows(Norm::Max, &x, 2, &mut out);
        assert_eq!(out[..2], [0.75, -1.0]);
        assert_eq!(out[2..4], [0.0, 0.0]);
    }

    #[test]
    fn large_f32_values_do_not_overflow() {
        let x = [3e30f32, 4e30];
        assert!((l2_norm(&x) - 5e30).abs() < 1e24);
        let mut out = [0.0f32; 2];
        normalize_rows(Norm::L2, &x, 2, &mut out);
        assert!(
            (out[0] - 0.6).abs() < 1e-7 && (out[1] - 0.8).abs() < 1e-7,
            "{out:?}"
        );
    }

    #[test]
    fn nan_and_inf_propagate() {
        assert!(norm(Norm::Max, &[1.0f64, f64::NAN, 2.0]).is_nan());
        assert!(norm(Norm::L2, &[1.0f64, f64::NAN]).is_nan());
        let mut out = [0.0f64; 2];
        normalize_rows(Norm::L2, &[f64::INFINITY, 1.0], 2, &mut out);
        assert!(out[0].is_nan());
        assert_eq!(out[1], 0.0);
    }

    #[test]
    fn zero_width_rows() {
        normalize_rows::<f32>(Norm::L2, &[], 0, &mut []);
        assert_eq!(norm::<f32>(Norm::L1, &[]), 0.0);
    }
}
