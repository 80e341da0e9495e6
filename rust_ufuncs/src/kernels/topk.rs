//! Exact top-k: score query blocks against database blocks (see `pairwise`) and feed each
//! query's row of the score tile straight into its selector.
//!
//! Ranking: best score first (highest similarity, lowest distance); equal scores rank by lower
//! database row id; NaN scores are never selected; missing places are padded with (NaN, -1).

use super::pairwise::{Rows, Scorer};
use super::{Metric, Real};

/// The id written to places no candidate filled.
pub const NO_ID: i64 = -1;

/// For each query row `i`: the best `k` database rows other than row `exclude[i]` (use -1 for
/// none), their scores to `scores[i*k..(i+1)*k]` and row ids to `ids[i*k..(i+1)*k]`.
pub fn topk<T: Real>(
    metric: Metric,
    q: Rows<T>,
    db: Rows<T>,
    exclude: &[i64],
    k: usize,
    scores: &mut [T],
    ids: &mut [i64],
) {
    assert_eq!(exclude.len(), q.n, "one exclude entry per query");
    assert_eq!(scores.len(), q.n * k, "scores length");
    assert_eq!(ids.len(), q.n * k, "ids length");
    if k == 0 || q.n == 0 {
        return;
    }
    let problem = Problem {
        scorer: Scorer::new(metric, q, db),
        nq: q.n,
        d: q.d,
        exclude,
        k,
    };
    if metric.higher_is_better() {
        problem.solve::<true>(problem.query_group(), scores, ids);
    } else {
        problem.solve::<false>(problem.query_group(), scores, ids);
    }
}

struct Problem<'a, T> {
    scorer: Scorer<'a, T>,
    nq: usize,
    d: usize,
    exclude: &'a [i64],
    k: usize,
}

impl<T: Real> Problem<'_, T> {
    /// Scans `group` queries at a time (a multiple of the scorer's query block).
    fn solve<const HIGHER: bool>(&self, group: usize, scores: &mut [T], ids: &mut [i64]) {
        let mut selectors: Vec<Selector<T, HIGHER>> = (0..group.min(self.nq))
            .map(|_| Selector::new(self.k))
            .collect();
        for gs in (0..self.nq).step_by(group) {
            let queries = gs..(gs + group).min(self.nq);
            let selectors = &mut selectors[..queries.len()];
            selectors.iter_mut().for_each(Selector::clear);
            self.scorer.scan(queries.clone(), |tile| {
                for (r, i) in tile.queries.clone().enumerate() {
                    selectors[i - gs].offer(tile.scores_of(r), tile.rows.start, self.exclude[i]);
                }
            });
            for (selector, i) in selectors.iter_mut().zip(queries) {
                let at = i * self.k..(i + 1) * self.k;
                selector.write_best(&mut scores[at.clone()], &mut ids[at]);
            }
        }
    }

    /// Queries scanned together: each scan packs the database once, so the more the better,
    /// up to about 64 MiB of selectors and 64 MiB of packed queries.
    fn query_group(&self) -> usize {
        const BUDGET: usize = 64 << 20;
        let (q_block, _) = self.scorer.block_rows();
        let selector_bytes = Selector::<T, true>::capacity(self.k) * std::mem::size_of::<u128>();
        let row_bytes = (self.d * T::BYTES).max(1);
        let queries = (BUDGET / selector_bytes).min(BUDGET / row_bytes);
        (queries / q_block).max(1) * q_block
    }
}

/// The best `k` (score, id) candidates of one query. Candidates collect in a buffer of about
/// 2k; when it fills, `select_nth` keeps the best k and their worst score becomes the threshold
/// that rejects most later candidates with a single comparison. Ids must be offered ascending.
///
/// Candidates are stored as `u128` keys whose integer order is the ranking (best first, then
/// lower id), so selecting and sorting compare plain integers.
pub struct Selector<T, const HIGHER: bool> {
    k: usize,
    keys: Vec<u128>,
    /// The k-th best score so far once `full`; before that the worst possible score.
    threshold: T,
    full: bool,
}

impl<T: Real, const HIGHER: bool> Selector<T, HIGHER> {
    pub fn new(k: usize) -> Self {
        let mut selector = Selector {
            k,
            keys: Vec::with_capacity(Self::capacity(k)),
            threshold: T::ZERO,
            full: false,
        };
        selector.clear();
        selector
    }

    pub(crate) fn capacity(k: usize) -> usize {
        2 * k + 16
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.threshold = if HIGHER { T::NEG_INFINITY } else { T::INFINITY };
        self.full = false;
    }

    #[inline(always)]
    fn beats(a: T, b: T) -> bool {
        if HIGHER {
            a > b
        } else {
            a < b
        }
    }

    fn key(score: T, id: i64) -> u128 {
        let bits = score.order_bits();
        let rank = if HIGHER { !bits } else { bits };
        ((rank as u128) << 64) | id as u64 as u128
    }

    fn unkey(key: u128) -> (T, i64) {
        let rank = (key >> 64) as u64;
        let bits = if HIGHER { !rank } else { rank };
        (T::from_order_bits(bits), key as u64 as i64)
    }

    /// Offers `scores[j]` as row `first_id + j`, skipping row `exclude`.
    #[inline]
    pub fn offer(&mut self, scores: &[T], first_id: usize, exclude: i64) {
        for (j, &s) in scores.iter().enumerate() {
            // An equal score never displaces a kept one: its id is higher.
            if Self::beats(s, self.threshold) || (!self.full && !s.is_nan()) {
                let id = (first_id + j) as i64;
                if id != exclude {
                    self.push(s, id);
                }
            }
        }
    }

    fn push(&mut self, score: T, id: i64) {
        self.keys.push(Self::key(score, id));
        if self.keys.len() == Self::capacity(self.k) {
            self.keep_best();
            self.threshold = Self::unkey(self.keys[self.k - 1]).0;
            self.full = true;
        }
    }

    /// Keeps the best k keys (in no particular order).
    fn keep_best(&mut self) {
        if self.keys.len() > self.k {
            self.keys.select_nth_unstable(self.k);
            self.keys.truncate(self.k);
        }
        if let Some(worst) = self.keys.iter().max().copied() {
            // The threshold must be the k-th best: put it last.
            let at = self.keys.iter().position(|&key| key == worst).unwrap();
            let last = self.keys.len() - 1;
            self.keys.swap(at, last);
        }
    }

    /// Writes the best k, best first, padding with (NaN, -1).
    pub fn write_best(&mut self, scores: &mut [T], ids: &mut [i64]) {
        self.keep_best();
        self.keys.sort_unstable();
        let found = self.keys.len();
        for (place, &key) in self.keys.iter().enumerate() {
            (scores[place], ids[place]) = Self::unkey(key);
        }
        scores[found..].fill(T::NAN);
        ids[found..].fill(NO_ID);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{random_matrix, reference_score, Lcg};

    /// Sort every non-NaN candidate (reference scores in f64), ties by id.
    fn reference_topk(
        metric: Metric,
        q: &[f64],
        db: &[f64],
        d: usize,
        exclude: i64,
        k: usize,
    ) -> Vec<(f64, i64)> {
        let mut all: Vec<(f64, i64)> = (0..db.len() / d.max(1))
            .map(|j| {
                (
                    reference_score(metric, q, &db[j * d..(j + 1) * d]),
                    j as i64,
                )
            })
            .filter(|&(s, j)| !s.is_nan() && j != exclude)
            .collect();
        let sign = if metric.higher_is_better() { -1.0 } else { 1.0 };
        all.sort_by(|a, b| {
            (sign * a.0)
                .partial_cmp(&(sign * b.0))
                .unwrap()
                .then(a.1.cmp(&b.1))
        });
        all.truncate(k);
        all
    }

    fn run<T: Real>(
        metric: Metric,
        q: &[T],
        db: &[T],
        d: usize,
        exclude: &[i64],
        k: usize,
    ) -> (Vec<T>, Vec<i64>) {
        let (nq, ndb) = (exclude.len(), db.len() / d.max(1));
        let (mut scores, mut ids) = (vec![T::ZERO; nq * k], vec![0i64; nq * k]);
        topk(
            metric,
            Rows::new(q, nq, d),
            Rows::new(db, ndb, d),
            exclude,
            k,
            &mut scores,
            &mut ids,
        );
        (scores, ids)
    }

    #[test]
    fn matches_a_full_sort_for_every_metric_and_k() {
        let (nq, ndb, d) = (21, 1500, 13);
        let mut rng = Lcg::new(5);
        let q: Vec<f64> = random_matrix(&mut rng, nq, d);
        let db: Vec<f64> = random_matrix(&mut rng, ndb, d);
        let exclude: Vec<i64> = (0..nq as i64)
            .map(|i| if i % 3 == 0 { -1 } else { i * 50 })
            .collect();
        for metric in [
            Metric::Cosine,
            Metric::Dot,
            Metric::Euclidean,
            Metric::Manhattan,
        ] {
            for k in [1, 3, 10, 100, 1000] {
                let (scores, ids) = run(metric, &q, &db, d, &exclude, k);
                for i in 0..nq {
                    let want =
                        reference_topk(metric, &q[i * d..(i + 1) * d], &db, d, exclude[i], k);
                    let got_ids = &ids[i * k..i * k + want.len()];
                    assert_eq!(
                        got_ids,
                        want.iter().map(|w| w.1).collect::<Vec<_>>(),
                        "{metric:?} k={k} q={i}"
                    );
                    for (g, w) in scores[i * k..].iter().zip(&want) {
                        assert!((g - w.0).abs() <= 1e-12 * (1.0 + w.0.abs()));
                    }
                }
            }
        }
    }

    #[test]
    fn query_groups_give_the_same_answer() {
        let (nq, ndb, d, k) = (300, 700, 5, 9);
        let mut rng = Lcg::new(21);
        let q: Vec<f32> = random_matrix(&mut rng, nq, d);
        let db: Vec<f32> = random_matrix(&mut rng, ndb, d);
        let exclude: Vec<i64> = (0..nq as i64).collect();
        let (q, db) = (Rows::new(&q, nq, d), Rows::new(&db, ndb, d));
        let problem = Problem {
            scorer: Scorer::new(Metric::Euclidean, q, db),
            nq,
            d,
            exclude: &exclude,
            k,
        };
        let (q_block, _) = problem.scorer.block_rows();
        let mut whole = (vec![0.0f32; nq * k], vec![0i64; nq * k]);
        problem.solve::<false>(problem.query_group(), &mut whole.0, &mut whole.1);
        let mut grouped = (vec![0.0f32; nq * k], vec![0i64; nq * k]);
        problem.solve::<false>(q_block, &mut grouped.0, &mut grouped.1);
        assert!(q_block < nq);
        assert_eq!(whole, grouped);
    }

    #[test]
    fn ties_go_to_the_lower_id_across_blocks() {
        // 3000 copies of 4 distinct rows: every score ties with 749 others, over several blocks.
        let d = 3;
        let distinct = [
            [1.0f32, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ];
        let db: Vec<f32> = (0..3000).flat_map(|j| distinct[j % 4]).collect();
        let q = [1.0f32, 0.9, 0.0];
        let (scores, ids) = run(Metric::Cosine, &q, &db, d, &[-1], 6);
        assert_eq!(ids, [2, 6, 10, 14, 18, 22]);
        assert!(scores.iter().all(|&s| s == scores[0]));
        let (_, ids) = run(Metric::Euclidean, &q, &db, d, &[6], 4);
        assert_eq!(ids, [2, 10, 14, 18]);
    }

    #[test]
    fn k_larger_than_n_pads_with_nan_and_minus_one() {
        let db = [0.0f32, 1.0, 2.0, 3.0];
        let (scores, ids) = run(Metric::Manhattan, &[2.2f32], &db, 1, &[-1], 6);
        assert_eq!(ids, [2, 3, 1, 0, -1, -1]);
        assert!(scores[4].is_nan() && scores[5].is_nan());
        let (scores, ids) = run::<f64>(Metric::Dot, &[1.0], &[], 1, &[-1], 2);
        assert!(scores.iter().all(|s| s.is_nan()) && ids == [-1, -1]);
    }

    #[test]
    fn nan_scores_are_never_selected() {
        let db = [1.0f64, f64::NAN, 3.0, f64::INFINITY, -1.0];
        let (scores, ids) = run(Metric::Dot, &[1.0f64], &db, 1, &[-1], 5);
        assert_eq!(ids, [3, 2, 0, 4, -1]);
        assert_eq!(scores[..4], [f64::INFINITY, 3.0, 1.0, -1.0]);
        // An infinite distance is still a candidate.
        let (_, ids) = run(Metric::Euclidean, &[0.0f64], &db, 1, &[-1], 5);
        assert_eq!(ids, [0, 4, 2, 3, -1]);
    }

    #[test]
    fn zero_k_and_zero_queries_are_no_ops() {
        let (scores, ids) = run(Metric::Cosine, &[1.0f32], &[1.0], 1, &[-1], 0);
        assert!(scores.is_empty() && ids.is_empty());
        let (scores, _) = run::<f32>(Metric::Cosine, &[], &[1.0], 1, &[], 3);
        assert!(scores.is_empty());
    }

    #[test]
    fn f32_results_match_f64_reference_scores() {
        let (nq, ndb, d) = (70, 2100, 40);
        let mut rng = Lcg::new(9);
        let q: Vec<f32> = random_matrix(&mut rng, nq, d);
        let db: Vec<f32> = random_matrix(&mut rng, ndb, d);
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (qw, dbw) = (wide(&q), wide(&db));
        let k = 7;
        for metric in [
            Metric::Cosine,
            Metric::Dot,
            Metric::Euclidean,
            Metric::Manhattan,
        ] {
            let (scores, ids) = run(metric, &q, &db, d, &vec![-1; nq], k);
            for i in 0..nq {
                let want = reference_topk(metric, &qw[i * d..(i + 1) * d], &dbw, d, -1, k);
                for p in 0..k {
                    let id = ids[i * k + p] as usize;
                    let exact = reference_score(
                        metric,
                        &qw[i * d..(i + 1) * d],
                        &dbw[id * d..(id + 1) * d],
                    );
                    let tol = 1e-5 * (1.0 + exact.abs());
                    assert!(
                        (scores[i * k + p] as f64 - exact).abs() <= tol,
                        "{metric:?}"
                    );
                    assert!(
                        (exact - want[p].0).abs() <= 2.0 * tol,
                        "{metric:?} q={i} place {p}"
                    );
                }
            }
        }
    }
}
