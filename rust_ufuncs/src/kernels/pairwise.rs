//! All-pairs scores of query rows against database rows, GEMM-style: the queries are packed
//! into register-tile panels once, the database is packed block by block (cache-sized blocks,
//! one pass over its memory), and every block is scored against all query panels with the SIMD
//! kernel of `simd`, whose sink takes the scores straight from the registers.
//!
//! Cosine is `dot(q * s_q, b) * s_b`, where `s = 1 / norm` and the norm is the row's L2 norm
//! (accumulated in f64, see `normalize::l2_norm`) rounded to the element type: queries are
//! scaled when packed, database rows' scores in the kernel's registers, so cosine costs what a
//! dot product does, and a pair's cosine depends only on its two rows (and the norms, when the
//! caller passes them), whichever kernel computed it.

use std::ops::Range;

use rayon::prelude::*;

use super::normalize::l2_norm;
use super::scratch::Buf;
use super::simd::{self, panel_shape, score_store, Accumulator, Isa, PanelJob, Store};
use super::{threads, Metric, Real};

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

/// The L2 norm of a row as cosine uses it: accumulated in f64, rounded to `T` (the value the
/// `norm_l2` ufunc returns).
#[inline]
pub fn cosine_norm<T: Real>(row: &[T]) -> T {
    T::from_f64(l2_norm(row))
}

/// `norms[i] = cosine_norm(rows.row(i))`, several rows at a time.
pub fn cosine_norms<T: Real>(rows: Rows<T>, norms: &mut [T]) {
    assert_eq!(norms.len(), rows.n, "one norm per row");
    let mut sums = Buf::filled(rows.n, 0.0f64);
    simd::sum_squares_rows(rows.data, rows.d, &mut sums);
    for (n, &s) in norms.iter_mut().zip(sums.iter()) {
        *n = T::from_f64(s.sqrt());
    }
}

/// The factor a row is multiplied by for cosine: `1 / norm` (rounded to `T`), 0 for a zero
/// vector (whose cosine with anything is then 0), NaN for an infinite or NaN norm.
#[inline]
pub fn cosine_scale<T: Real>(norm: T) -> T {
    let n = norm.to_f64();
    if n == 0.0 {
        T::ZERO
    } else if n.is_finite() {
        T::from_f64(1.0 / n)
    } else {
        T::NAN
    }
}

/// The exact scale of a row for cosine: `cosine_scale(cosine_norm(row))`.
pub fn exact_scale<T: Real>(row: &[T]) -> T {
    cosine_scale(cosine_norm(row))
}

/// Writes `metric(q[i], db[j])` to `out[i * db.n + j]` for every pair, using up to
/// `threads::num_threads()` threads (split by query rows).
pub fn pairwise<T: Real>(metric: Metric, q: Rows<T>, db: Rows<T>, out: &mut [T]) {
    pairwise_threads(metric, q, db, out, threads::num_threads());
}

/// `pairwise` with an explicit thread count.
pub fn pairwise_threads<T: Real>(
    metric: Metric,
    q: Rows<T>,
    db: Rows<T>,
    out: &mut [T],
    threads: usize,
) {
    assert_eq!(out.len(), q.n * db.n, "output length");
    if q.n == 0 || db.n == 0 {
        return;
    }
    let scorer = Scorer::new(metric, q, db);
    let (mr, _) = scorer.shape();
    // Enough queries per thread to keep the kernel busy; else one thread does it all.
    let parts = threads.min(q.n.div_ceil(4 * mr)).max(1);
    if parts == 1 {
        let mut norms = Buf::take();
        return scorer.store_rows(0..q.n, out, &mut norms);
    }
    let rows_per = q.n.div_ceil(parts).div_ceil(mr) * mr;
    // Cosine: the database norms once, up front, shared by every thread.
    let norms = scorer.db_norms_parallel(threads);
    let scorer = Scorer {
        db_norms: norms.as_deref(),
        ..scorer
    };
    threads::install(threads, || {
        out.par_chunks_mut(rows_per * db.n)
            .enumerate()
            .for_each(|(t, out)| {
                let start = t * rows_per;
                let mut none = Buf::take();
                scorer.store_rows(start..start + out.len() / db.n, out, &mut none);
            })
    });
}

/// One (queries, database) problem: packs operands and scores them block by block.
#[derive(Clone, Copy)]
pub(crate) struct Scorer<'a, T> {
    pub metric: Metric,
    pub q: Rows<'a, T>,
    pub db: Rows<'a, T>,
    /// For cosine: the database row norms, when known (given by the caller or computed before).
    pub db_norms: Option<&'a [T]>,
    pub isa: Isa,
}

impl<'a, T: Real> Scorer<'a, T> {
    pub(crate) fn new(metric: Metric, q: Rows<'a, T>, db: Rows<'a, T>) -> Self {
        Self::with_isa(metric, q, db, simd::detect())
    }

    pub(crate) fn with_isa(metric: Metric, q: Rows<'a, T>, db: Rows<'a, T>, isa: Isa) -> Self {
        assert_eq!(q.d, db.d, "queries and database differ in width");
        Scorer {
            metric,
            q,
            db,
            db_norms: None,
            isa,
        }
    }

    /// `(MR, NR)` of the kernel.
    pub(crate) fn shape(&self) -> (usize, usize) {
        panel_shape::<T>(self.isa)
    }

    pub(crate) fn cosine(&self) -> bool {
        self.metric == Metric::Cosine
    }

    pub(crate) fn kind(&self) -> Accumulator {
        match self.metric {
            Metric::Cosine | Metric::Dot => Accumulator::Dot,
            Metric::Euclidean => Accumulator::SquaredDiff,
            Metric::Manhattan => Accumulator::AbsDiff,
        }
    }

    /// Database rows per packed block: the packed block stays in a 1 MiB L2 (with room for a
    /// query panel and the score path) while every query panel is scored against it. With few
    /// query panels each block is used briefly, so smaller blocks keep it nearer the core.
    pub(crate) fn db_block_rows(&self, queries: usize) -> usize {
        let (mr, nr) = self.shape();
        let row_bytes = (self.db.d * T::BYTES).max(1);
        let budget = if queries <= 2 * mr {
            96 * 1024
        } else {
            384 * 1024
        };
        (budget / row_bytes).clamp(nr, 2048).div_ceil(nr) * nr
    }

    /// Database rows per block of the row-streaming kernel: the block being scored and the
    /// next one, prefetched meanwhile, fit in L2 together.
    pub(crate) fn row_block_rows(&self) -> usize {
        let (_, g) = simd::rows_shape::<T>(self.isa);
        let row_bytes = (self.db.d * T::BYTES).max(1);
        (192 * 1024 / row_bytes).clamp(g, 4096) / g * g
    }

    /// Packs query rows `range` into MR panels (scaled to unit norm for cosine).
    pub(crate) fn pack_queries(&self, range: Range<usize>, out: &mut Vec<T>) {
        let (mr, _) = self.shape();
        self.pack_queries_in(range, mr, out);
    }

    /// Packs query rows `range` into panels of `panel` rows (scaled for cosine).
    pub(crate) fn pack_queries_in(&self, range: Range<usize>, panel: usize, out: &mut Vec<T>) {
        let rows = self.q.slice(range);
        resize(out, rows.n.div_ceil(panel) * panel * rows.d);
        if self.cosine() {
            let mut scale = Buf::take();
            scale.extend((0..rows.n).map(|i| cosine_scale(cosine_norm(rows.row(i)))));
            simd::pack_rows(
                self.isa,
                rows.data,
                rows.n,
                rows.d,
                Some(&scale),
                panel,
                out,
            );
        } else {
            simd::pack_rows(self.isa, rows.data, rows.n, rows.d, None, panel, out);
        }
    }

    /// Packs database rows `range` into NR panels (unscaled: cosine scales the scores).
    pub(crate) fn pack_db(&self, range: Range<usize>, out: &mut Vec<T>) {
        let (_, nr) = self.shape();
        let rows = self.db.slice(range);
        resize(out, rows.n.div_ceil(nr) * nr * rows.d);
        simd::pack_rows(self.isa, rows.data, rows.n, rows.d, None, nr, out);
    }

    /// Cosine: the scales (`1 / norm`) of database rows `range` into `scale`, zero-padded to
    /// `len` values; the norms come from `db_norms` when known, else are computed here and
    /// written to `norms_out` (one per row of `range`) when given. Other metrics: `false`, and
    /// `scale` is left alone.
    pub(crate) fn db_scale(
        &self,
        range: Range<usize>,
        len: usize,
        scale: &mut Vec<T>,
        norms_out: Option<&mut [T]>,
    ) -> bool {
        if !self.cosine() {
            return false;
        }
        let rows = self.db.slice(range.clone());
        scale.clear();
        match (self.db_norms, norms_out) {
            (Some(norms), _) => scale.extend(norms[range].iter().map(|&n| cosine_scale(n))),
            (None, Some(norms)) => {
                cosine_norms(rows, norms);
                scale.extend(norms.iter().map(|&n| cosine_scale(n)));
            }
            (None, None) => {
                let mut norms = Buf::filled(rows.n, T::ZERO);
                cosine_norms(rows, &mut norms);
                scale.extend(norms.iter().map(|&n| cosine_scale(n)));
            }
        }
        scale.resize(len, T::ZERO);
        true
    }

    /// The relative slack of scales bounded from sums of squares in `T` (`simd::ScaleBounds`),
    /// and of scores made with them: the sums' bound (twice what an inverse square root
    /// makes of it), with room for the roundings of the square root, the inverse and the
    /// product on either side.
    pub(crate) fn scale_slack(&self) -> T {
        let u = T::EPSILON.to_f64() / 2.0;
        T::from_f64(simd::approx_sum_slack::<T>(self.db.d) + 8.0 * u)
    }

    /// For cosine without known norms: all database norms, computed by up to `threads`
    /// threads. `None` for the other metrics or when the norms are known.
    pub(crate) fn db_norms_parallel(&self, threads: usize) -> Option<Vec<T>> {
        if !self.cosine() || self.db_norms.is_some() {
            return None;
        }
        let mut norms = vec![T::ZERO; self.db.n];
        fill_norms(self.db, &mut norms, threads);
        Some(norms)
    }

    /// Scores of queries `queries` against every database row into `out` (row-major,
    /// `queries.len() x db.n`). When the norms are unknown (cosine), they are computed block
    /// by block into `norms` (resized to `db.n`).
    fn store_rows(&self, queries: Range<usize>, out: &mut [T], norms: &mut Buf<T>) {
        let (mr, nr) = self.shape();
        let nq = queries.len();
        let mut q_packed = Buf::take_dirty();
        self.pack_queries(queries, &mut q_packed);
        let mut db_packed = Buf::take_dirty();
        let mut scale = Buf::take();
        let fill_norms = self.cosine() && self.db_norms.is_none();
        if fill_norms {
            resize(norms, self.db.n);
        }
        let block = self.db_block_rows(nq);
        for start in (0..self.db.n).step_by(block) {
            let rows = start..(start + block).min(self.db.n);
            let norms_out = if fill_norms {
                Some(&mut norms[rows.clone()])
            } else {
                None
            };
            let padded = rows.len().div_ceil(nr) * nr;
            let scaled = self.db_scale(rows.clone(), padded, &mut scale, norms_out);
            self.pack_db(rows.clone(), &mut db_packed);
            let job = PanelJob {
                kind: self.kind(),
                q: &q_packed,
                q_panels: nq.div_ceil(mr),
                db: &db_packed,
                db_panels: rows.len().div_ceil(nr),
                d: self.q.d,
                scale: scaled.then_some(&scale[..]),
            };
            let sink = Store {
                out: &mut out[start..],
                ld: self.db.n,
                rows: nq,
                cols: rows.len(),
            };
            score_store(self.isa, job, sink);
        }
    }
}

/// `out` resized to `len`; the contents are left as they are (every caller overwrites all of
/// it), so a reused buffer is not cleared on every call.
fn resize<T: Real>(out: &mut Vec<T>, len: usize) {
    if out.len() < len {
        out.resize(len, T::ZERO);
    }
    out.truncate(len);
}

/// `norms[i] = cosine_norm(rows.row(i))`, split over up to `threads` threads.
pub(crate) fn fill_norms<T: Real>(rows: Rows<T>, norms: &mut [T], threads: usize) {
    assert_eq!(norms.len(), rows.n);
    let one = |start: usize, norms: &mut [T]| {
        cosine_norms(rows.slice(start..start + norms.len()), norms);
    };
    const CHUNK: usize = 4096;
    if threads <= 1 || rows.n <= CHUNK {
        return one(0, norms);
    }
    threads::install(threads, || {
        norms
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, norms)| one(c * CHUNK, norms))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{random_matrix, reference_score, Lcg, METRICS};

    fn scores_on<T: Real>(isa: Isa, metric: Metric, q: Rows<T>, db: Rows<T>) -> Vec<T> {
        let mut out = vec![T::NAN; q.n * db.n];
        if q.n > 0 && db.n > 0 {
            let mut norms = Buf::take();
            Scorer::with_isa(metric, q, db, isa).store_rows(0..q.n, &mut out, &mut norms);
        }
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
        // Small d makes the blocks tall: several database blocks, ragged at the end.
        check_metric::<f32>(Metric::Dot, 300, 5100, 2, 1e-6);
    }

    #[test]
    fn score_of_a_pair_does_not_depend_on_its_position() {
        let d = 37;
        let mut rng = Lcg::new(11);
        let base: Vec<f32> = random_matrix(&mut rng, 2, d);
        // The same two vectors at every position of ragged tiles, across several blocks.
        let (nq, ndb) = (300, 3100);
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
    fn pairwise_fills_the_whole_matrix_with_any_thread_count() {
        let (nq, ndb, d) = (70, 1500, 24);
        let mut rng = Lcg::new(3);
        let q: Vec<f32> = random_matrix(&mut rng, nq, d);
        let db: Vec<f32> = random_matrix(&mut rng, ndb, d);
        for metric in METRICS {
            let mut one = vec![f32::NAN; nq * ndb];
            pairwise_threads(
                metric,
                Rows::new(&q, nq, d),
                Rows::new(&db, ndb, d),
                &mut one,
                1,
            );
            for i in (0..nq).step_by(7) {
                for j in (0..ndb).step_by(13) {
                    let want =
                        reference_score(metric, &q[i * d..(i + 1) * d], &db[j * d..(j + 1) * d]);
                    assert!((one[i * ndb + j] as f64 - want).abs() < 1e-4);
                }
            }
            assert!(one.iter().all(|s| !s.is_nan()));
            let mut three = vec![f32::NAN; nq * ndb];
            pairwise_threads(
                metric,
                Rows::new(&q, nq, d),
                Rows::new(&db, ndb, d),
                &mut three,
                3,
            );
            assert_eq!(
                one.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                three.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{metric:?}"
            );
        }
    }

    #[test]
    fn given_norms_are_used_and_match_computed_ones() {
        let (nq, ndb, d) = (5, 300, 10);
        let mut rng = Lcg::new(4);
        let q: Vec<f64> = random_matrix(&mut rng, nq, d);
        let db: Vec<f64> = random_matrix(&mut rng, ndb, d);
        let (q, db) = (Rows::new(&q, nq, d), Rows::new(&db, ndb, d));
        let computed = scores_on(simd::detect(), Metric::Cosine, q, db);
        let norms: Vec<f64> = (0..ndb).map(|j| cosine_norm(db.row(j))).collect();
        let mut given = vec![0.0; nq * ndb];
        let scorer = Scorer {
            db_norms: Some(&norms),
            ..Scorer::new(Metric::Cosine, q, db)
        };
        scorer.store_rows(0..nq, &mut given, &mut Buf::take());
        assert_eq!(computed, given);
        let doubled: Vec<f64> = norms.iter().map(|n| 2.0 * n).collect();
        let scorer = Scorer {
            db_norms: Some(&doubled),
            ..scorer
        };
        scorer.store_rows(0..nq, &mut given, &mut Buf::take());
        for (g, c) in given.iter().zip(&computed) {
            assert!((g - c / 2.0).abs() < 1e-15);
        }
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
    fn blocks_are_whole_panels() {
        for d in [0, 1, 3, 384, 1536, 100_000] {
            let data = vec![0.0f32; d];
            let scorer = Scorer::new(Metric::Dot, Rows::new(&data, 1, d), Rows::new(&data, 1, d));
            let (_, nr) = scorer.shape();
            for queries in [1, 1000] {
                let rows = scorer.db_block_rows(queries);
                assert!(rows >= nr && rows.is_multiple_of(nr), "{d}: {rows}");
            }
        }
    }
}
