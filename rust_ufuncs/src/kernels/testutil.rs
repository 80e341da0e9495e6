//! Helpers for the kernels' unit tests.

use super::{Metric, Real};

/// Every metric, for tests that run over all of them.
pub const METRICS: [Metric; 4] = [
    Metric::Cosine,
    Metric::Dot,
    Metric::Euclidean,
    Metric::Manhattan,
];

/// A tiny deterministic generator (no dependency needed for test data).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    /// Uniform in [-1, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

pub fn random_matrix<T: Real>(rng: &mut Lcg, rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .map(|_| T::from_f64(rng.next_f64()))
        .collect()
}

/// The straightforward f64 loop each metric is checked against.
pub fn reference_score<T: Real>(metric: Metric, a: &[T], b: &[T]) -> f64 {
    let pairs = || a.iter().zip(b).map(|(&x, &y)| (x.to_f64(), y.to_f64()));
    match metric {
        Metric::Dot => pairs().map(|(x, y)| x * y).sum(),
        Metric::Cosine => {
            let dot: f64 = pairs().map(|(x, y)| x * y).sum();
            let na = pairs().map(|(x, _)| x * x).sum::<f64>().sqrt();
            let nb = pairs().map(|(_, y)| y * y).sum::<f64>().sqrt();
            if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot / (na * nb)
            }
        }
        Metric::Euclidean => pairs().map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt(),
        Metric::Manhattan => pairs().map(|(x, y)| (x - y).abs()).sum(),
    }
}
