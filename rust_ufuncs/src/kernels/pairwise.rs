//! All-pairs scores of query rows against database rows, GEMM-style: queries and database are
//! cut into cache-sized blocks, packed into register-tile panels once, and scored block pair by
//! block pair with the SIMD kernel of `simd`. Norms for cosine are computed once per call.

use std::ops::Range;

use super::normalize::l2_norm;
use super::simd::{self, panel_shape, score_panels, Accumulator, Isa, PanelJob};
use super::{Metric, Real};

/// A row-major matrix of `n` rows of `d` values.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a, T> {
    pub data: &'a [T],
    pub n: usize,
    pub d: usize,
}

impl<'a, T> Rows<'a, T> {
    /// Panics unless `data` holds exactly `n * d` values.
    pub fn new(data: &'a [T], n: usize, d: usize) -> Self {
        assert_eq!(data.len(), n * d, "matrix data length");
        Rows { data, n, d }
    }

    #[inline]
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// Rows `range` as a matrix of their own.
    pub fn slice(&self, range: Range<usize>) -> Rows<'a, T> {
        Rows::new(
            &self.data[range.start * self.d..range.end * self.d],
            range.len(),
            self.d,
        )
    }
}

/// Writes `metric(q[i], db[j])` to `out[i * db.n + j]` for every pair.
pub fn pairwise<T: Real>(metric: Metric, q: Rows<T>, db: Rows<T>, out: &mut [T]) {
    assert_eq!(out.len(), q.n * db.n, "output length");
    let scorer = Scorer::new(metric, q, db);
    scorer.scan(0..q.n, |tile| {
        for (r, i) in tile.queries.clone().enumerate() {
            out[i * db.n + tile.rows.start..i * db.n + tile.rows.end]
                .copy_from_slice(tile.scores_of(r));
        }
    });
}

/// The scores of query rows `queries` against database rows `rows`.
pub(crate) struct Tile<'t, T> {
    pub queries: Range<usize>,
    pub rows: Range<usize>,
    scores: &'t [T],
    ld: usize,
}

impl<T> Tile<'_, T> {
    /// Scores of query `queries.start + r` against `rows`, in row order.
    #[inline]
    pub fn scores_of(&self, r: usize) -> &[T] {
        &self.scores[r * self.ld..r * self.ld + self.rows.len()]
    }
}

/// Scores one (queries, database) problem block by block.
pub(crate) struct Scorer<'a, T> {
    metric: Metric,
    q: Rows<'a, T>,
    db: Rows<'a, T>,
    q_inv_norm: Vec<f64>,
    db_inv_norm: Vec<f64>,
    isa: Isa,
}

impl<'a, T: Real> Scorer<'a, T> {
    pub(crate) fn new(metric: Metric, q: Rows<'a, T>, db: Rows<'a, T>) -> Self {
        Self::with_isa(metric, q, db, simd::detect())
    }

    pub(crate) fn with_isa(metric: Metric, q: Rows<'a, T>, db: Rows<'a, T>, isa: Isa) -> Self {
        assert_eq!(q.d, db.d, "queries and database differ in width");
        let inv = |m: Rows<T>| -> Vec<f64> {
            if metric == Metric::Cosine {
                (0..m.n).map(|i| inverse_norm(m.row(i))).collect()
            } else {
                Vec::new()
            }
        };
        Scorer {
            metric,
            q_inv_norm: inv(q),
            db_inv_norm: inv(db),
            q,
            db,
            isa,
        }
    }

    /// (query rows, database rows) per block: a packed block pair and its score tile fit in a
    /// typical 1-2 MiB L2.
    pub(crate) fn block_rows(&self) -> (usize, usize) {
        let (mr, nr) = panel_shape::<T>(self.isa);
        let row_bytes = (self.q.d * T::BYTES).max(1);
        let q_block = (192 * 1024 / row_bytes).clamp(1, 256).div_ceil(mr) * mr;
        let db_block = (384 * 1024 / row_bytes).clamp(1, 1024).div_ceil(nr) * nr;
        (q_block, db_block)
    }

    /// Calls `visit` with the scores of every query in `queries` against every database row,
    /// database blocks in ascending order (so each query sees its rows in ascending order).
    pub(crate) fn scan(&self, queries: Range<usize>, mut visit: impl FnMut(Tile<T>)) {
        let (mr, nr) = panel_shape::<T>(self.isa);
        let (q_block, db_block) = self.block_rows();
        let d = self.q.d;
        let mut q_packed = Vec::new();
        pack_panels(self.q.slice(queries.clone()), mr, &mut q_packed);
        let mut db_packed = Vec::new();
        let mut tile = vec![T::ZERO; q_block * db_block];
        for ds in (0..self.db.n).step_by(db_block) {
            let rows = ds..(ds + db_block).min(self.db.n);
            pack_panels(self.db.slice(rows.clone()), nr, &mut db_packed);
            let db_panels = rows.len().div_ceil(nr);
            let ld = db_panels * nr;
            for qs in queries.clone().step_by(q_block) {
                let block = qs..(qs + q_block).min(queries.end);
                let (first, q_panels) = ((qs - queries.start) / mr, block.len().div_ceil(mr));
                let q = &q_packed[first * mr * d..(first + q_panels) * mr * d];
                let kind = accumulator(self.metric);
                score_panels(
                    self.isa,
                    PanelJob {
                        kind,
                        q,
                        q_panels,
                        db: &db_packed,
                        db_panels,
                        d,
                        out: &mut tile,
                        ld,
                    },
                );
                self.finish_scores(block.clone(), rows.clone(), &mut tile, ld);
                visit(Tile {
                    queries: block,
                    rows: rows.clone(),
                    scores: &tile,
                    ld,
                });
            }
        }
    }

    /// Turns the kernel's sums into the metric: square roots, or cosine from dot products.
    fn finish_scores(&self, queries: Range<usize>, rows: Range<usize>, tile: &mut [T], ld: usize) {
        for (r, i) in queries.enumerate() {
            let scores = &mut tile[r * ld..r * ld + rows.len()];
            match self.metric {
                Metric::Euclidean => scores.iter_mut().for_each(|s| *s = s.sqrt()),
                Metric::Cosine => {
                    cosine_from_dots(scores, self.q_inv_norm[i], &self.db_inv_norm[rows.clone()])
                }
                Metric::Dot | Metric::Manhattan => {}
            }
        }
    }
}

fn accumulator(metric: Metric) -> Accumulator {
    match metric {
        Metric::Cosine | Metric::Dot => Accumulator::Dot,
        Metric::Euclidean => Accumulator::SquaredDiff,
        Metric::Manhattan => Accumulator::AbsDiff,
    }
}

/// Packs `rows` into panels of `panel` rows, coordinate-major inside a panel
/// (`out[(p * d + k) * panel + lane] = rows[p * panel + lane][k]`), zero-padding the last panel.
pub(crate) fn pack_panels<T: Real>(rows: Rows<T>, panel: usize, out: &mut Vec<T>) {
    let d = rows.d;
    out.clear();
    out.resize(rows.n.div_ceil(panel) * panel * d, T::ZERO);
    if d == 0 {
        return;
    }
    for (p, packed) in out.chunks_exact_mut(panel * d).enumerate() {
        for lane in 0..panel.min(rows.n - p * panel) {
            for (k, &x) in rows.row(p * panel + lane).iter().enumerate() {
                packed[k * panel + lane] = x;
            }
        }
    }
}

/// 1/|x|, with 0 standing for a zero vector (whose cosine with anything is 0) and NaN for an
/// infinite one (inf/inf).
fn inverse_norm<T: Real>(x: &[T]) -> f64 {
    let norm = l2_norm(x);
    if norm == 0.0 {
        0.0
    } else if norm.is_infinite() {
        f64::NAN
    } else {
        1.0 / norm
    }
}

/// Dot products of one query with database rows, in place, to cosines (scaled in f64, so
/// f32 results are correctly rounded products). Branch-free inside, so it vectorises.
fn cosine_from_dots<T: Real>(dots: &mut [T], q_inv: f64, db_inv: &[f64]) {
    if q_inv == 0.0 {
        return dots.fill(T::ZERO);
    }
    for (s, &inv) in dots.iter_mut().zip(db_inv) {
        let cosine = T::from_f64(s.to_f64() * (q_inv * inv));
        *s = if inv == 0.0 { T::ZERO } else { cosine };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{random_matrix, reference_score, Lcg};

    const METRICS: [Metric; 4] = [
        Metric::Cosine,
        Metric::Dot,
        Metric::Euclidean,
        Metric::Manhattan,
    ];

    fn scores_on<T: Real>(isa: Isa, metric: Metric, q: Rows<T>, db: Rows<T>) -> Vec<T> {
        let mut out = vec![T::NAN; q.n * db.n];
        Scorer::with_isa(metric, q, db, isa).scan(0..q.n, |tile| {
            for (r, i) in tile.queries.clone().enumerate() {
                out[i * db.n + tile.rows.start..i * db.n + tile.rows.end]
                    .copy_from_slice(tile.scores_of(r));
            }
        });
        out
    }

    fn check_metric<T: Real>(metric: Metric, nq: usize, ndb: usize, d: usize, tol: f64) {
        let mut rng = Lcg::new(7 + d as u64);
        let q: Vec<T> = random_matrix(&mut rng, nq, d);
        let db: Vec<T> = random_matrix(&mut rng, ndb, d);
        for isa in simd::available() {
            let out = scores_on(isa, metric, Rows::new(&q, nq, d), Rows::new(&db, ndb, d));
            for i in 0..nq {
                for j in 0..ndb {
                    let want =
                        reference_score(metric, &q[i * d..(i + 1) * d], &db[j * d..(j + 1) * d]);
                    let got = out[i * ndb + j].to_f64();
                    assert!(
                        (got - want).abs() <= tol * (1.0 + want.abs()),
                        "{metric:?} {isa:?} ({i},{j}) {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_metric_matches_f64_loops_with_ragged_edges() {
        for metric in METRICS {
            for &(nq, ndb, d) in &[
                (1, 1, 1),
                (5, 7, 3),
                (9, 13, 17),
                (8, 32, 16),
                (3, 5, 33),
                (13, 70, 100),
            ] {
                check_metric::<f64>(metric, nq, ndb, d, 1e-12);
                check_metric::<f32>(metric, nq, ndb, d, 2e-5);
            }
        }
    }

    #[test]
    fn many_blocks_match_the_reference() {
        // Small d makes the blocks tall: several query and database blocks, ragged at both ends.
        check_metric::<f32>(Metric::Dot, 300, 2100, 2, 1e-6);
    }

    #[test]
    fn score_of_a_pair_does_not_depend_on_its_position() {
        let d = 37;
        let mut rng = Lcg::new(11);
        let base: Vec<f32> = random_matrix(&mut rng, 2, d);
        // The same two vectors at every position of ragged tiles, across several blocks.
        let (nq, ndb) = (300, 1100);
        let q: Vec<f32> = (0..nq).flat_map(|_| base[..d].to_vec()).collect();
        let db: Vec<f32> = (0..ndb).flat_map(|_| base[d..].to_vec()).collect();
        for metric in METRICS {
            for isa in simd::available() {
                let out = scores_on(isa, metric, Rows::new(&q, nq, d), Rows::new(&db, ndb, d));
                assert!(
                    out.iter().all(|s| s.to_bits() == out[0].to_bits()),
                    "{metric:?} {isa:?}"
                );
                let single = scores_on(
                    isa,
                    metric,
                    Rows::new(&base[..d], 1, d),
                    Rows::new(&base[d..], 1, d),
                );
                assert_eq!(single[0].to_bits(), out[0].to_bits());
            }
        }
    }

    #[test]
    fn pairwise_fills_the_whole_matrix() {
        let (nq, ndb, d) = (70, 1500, 24);
        let mut rng = Lcg::new(3);
        let q: Vec<f32> = random_matrix(&mut rng, nq, d);
        let db: Vec<f32> = random_matrix(&mut rng, ndb, d);
        let mut out = vec![f32::NAN; nq * ndb];
        pairwise(
            Metric::Manhattan,
            Rows::new(&q, nq, d),
            Rows::new(&db, ndb, d),
            &mut out,
        );
        for i in (0..nq).step_by(7) {
            for j in (0..ndb).step_by(13) {
                let want = reference_score(
                    Metric::Manhattan,
                    &q[i * d..(i + 1) * d],
                    &db[j * d..(j + 1) * d],
                );
                assert!((out[i * ndb + j] as f64 - want).abs() < 1e-4);
            }
        }
        assert!(out.iter().all(|s| !s.is_nan()));
    }

    #[test]
    fn cosine_with_a_zero_vector_is_zero() {
        let q = [0.0f64, 0.0, 1.0, 2.0];
        let db = [3.0f64, 4.0, 0.0, 0.0];
        let mut out = [f64::NAN; 4];
        pairwise(
            Metric::Cosine,
            Rows::new(&q, 2, 2),
            Rows::new(&db, 2, 2),
            &mut out,
        );
        assert_eq!(out[0], 0.0);
        assert_eq!(out[1], 0.0);
        assert!((out[2] - 11.0 / (5.0 * 5f64.sqrt())).abs() < 1e-15);
        assert_eq!(out[3], 0.0);
    }

    #[test]
    fn euclidean_is_exact_for_near_identical_rows() {
        let d = 64;
        let a: Vec<f32> = (0..d).map(|i| 1000.0 + i as f32).collect();
        let mut b = a.clone();
        b[5] += 0.0625;
        let mut out = [1.0f32; 2];
        pairwise(
            Metric::Euclidean,
            Rows::new(&a, 1, d),
            Rows::new(&[a.clone(), b].concat(), 2, d),
            &mut out,
        );
        assert_eq!(out, [0.0, 0.0625]);
    }

    #[test]
    fn zero_width_and_empty_inputs() {
        let mut out = [f64::NAN; 6];
        pairwise(
            Metric::Euclidean,
            Rows::new(&[], 2, 0),
            Rows::new(&[], 3, 0),
            &mut out,
        );
        assert_eq!(out, [0.0; 6]);
        pairwise(
            Metric::Cosine,
            Rows::new(&[], 2, 0),
            Rows::new(&[], 3, 0),
            &mut out,
        );
        assert_eq!(out, [0.0; 6]);
        pairwise::<f64>(
            Metric::Dot,
            Rows::new(&[], 0, 4),
            Rows::new(&[1.0; 8], 2, 4),
            &mut [],
        );
        pairwise::<f64>(
            Metric::Dot,
            Rows::new(&[1.0; 8], 2, 4),
            Rows::new(&[], 0, 4),
            &mut [],
        );
    }

    #[test]
    fn packing_interleaves_rows_and_pads_with_zeros() {
        let rows = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 rows of 2
        let mut packed = Vec::new();
        pack_panels(Rows::new(&rows, 3, 2), 2, &mut packed);
        assert_eq!(packed, [1.0, 3.0, 2.0, 4.0, 5.0, 0.0, 6.0, 0.0]);
    }

    #[test]
    fn blocks_are_whole_panels() {
        for d in [0, 1, 3, 384, 1536, 100_000] {
            let data = vec![0.0f32; d];
            let scorer = Scorer::new(Metric::Dot, Rows::new(&data, 1, d), Rows::new(&data, 1, d));
            let (mr, nr) = panel_shape::<f32>(simd::detect());
            let (qb, dbb) = scorer.block_rows();
            assert!(
                qb >= mr && qb % mr == 0 && dbb >= nr && dbb % nr == 0,
                "{d}: {qb} {dbb}"
            );
        }
    }
}
