//! Exact top-k: score query panels against packed database blocks (see `pairwise`) and let the
//! kernel compare each query's scores with that query's current bar in registers, so only the
//! few scores that can enter its top k ever reach the selector.
//!
//! Ranking: best score first (highest similarity, lowest distance); equal scores rank by lower
//! database row id; NaN scores are never selected; missing places are padded with (NaN, -1).
//!
//! Work split: one thread scans the database once for as many queries as the selector budget
//! allows. With more threads (`threads::num_threads`), many queries are split between threads
//! (each scans the whole database for its queries); few queries split the database instead
//! (each thread scans a slice for all queries) and the partial top-k lists are merged. The
//! result never depends on the split.

use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::merge::{merge_partials, Partial};
use super::pairwise::{cosine_scale, exact_scale, fill_norms, Rows, Scorer};
use super::scratch::Buf;
use super::simd::{
    self, score_select, Candidates, NormsOnTheWay, PanelJob, RowJob, ScaleBounds, Select,
};
use super::{threads, Metric, Real};

/// The id written to places no candidate filled.
pub const NO_ID: i64 = -1;

/// Everything a top-k call may be given besides the operands.
pub struct TopkOptions<'a, T> {
    /// Per query, a database row to leave out (-1, or any id not in the database, for none).
    pub exclude: Option<&'a [i64]>,
    /// Cosine: the L2 norms of the database rows (as `pairwise::cosine_norm` computes them);
    /// used as given, never recomputed.
    pub db_norms: Option<&'a [T]>,
    /// Cosine without `db_norms`: receives the database norms the call computes on the way.
    /// Left untouched for the other metrics or when `db_norms` is given.
    pub norms_out: Option<&'a mut [T]>,
    /// Cosine without `db_norms`: the call may leave `norms_out` unwritten where it needs the
    /// exact norms of only a few rows (a few f32 queries on the row-streaming kernel, which
    /// then bounds the scales from float32 sums: `simd::ScaleBounds`), provided every database
    /// row is finite. `topk_with` says whether it wrote them.
    pub lazy_norms: bool,
    /// Per query, a score known to be reached by at least k rows of the whole database of
    /// which `db` is a part (another part's k-th best, say), or NaN for none: rows scoring
    /// worse are left out from the start, so the query may get fewer than k rows back
    /// (padded). Rows scoring exactly as well are kept (a lower id may win the tie).
    pub bars: Option<&'a [T]>,
    /// Threads the call may use (1: all work on the calling thread).
    pub threads: usize,
}

/// For each query row `i`: the best `k` database rows other than row `exclude[i]` (use -1 for
/// none), their scores to `scores[i*k..(i+1)*k]` and row ids to `ids[i*k..(i+1)*k]`. Uses up
/// to `threads::num_threads()` threads.
pub fn topk<T: Real>(
    metric: Metric,
    q: Rows<T>,
    db: Rows<T>,
    exclude: &[i64],
    k: usize,
    scores: &mut [T],
    ids: &mut [i64],
) {
    let options = TopkOptions {
        exclude: Some(exclude),
        db_norms: None,
        norms_out: None,
        lazy_norms: false,
        bars: None,
        threads: threads::num_threads(),
    };
    topk_with(metric, q, db, k, options, scores, ids);
}

/// `topk` with every option. Returns whether it wrote `options.norms_out`.
pub fn topk_with<T: Real>(
    metric: Metric,
    q: Rows<T>,
    db: Rows<T>,
    k: usize,
    options: TopkOptions<T>,
    scores: &mut [T],
    ids: &mut [i64],
) -> bool {
    assert_eq!(q.d, db.d, "queries and database differ in width");
    if let Some(exclude) = options.exclude {
        assert_eq!(exclude.len(), q.n, "one exclude entry per query");
    }
    if let Some(bars) = options.bars {
        assert_eq!(bars.len(), q.n, "one bar per query");
    }
    assert_eq!(scores.len(), q.n * k, "scores length");
    assert_eq!(ids.len(), q.n * k, "ids length");
    assert!(
        db.n as u64 <= T::MAX_KEY_ID,
        "at most {} database rows per call",
        T::MAX_KEY_ID
    );
    let mut scorer = Scorer::new(metric, q, db);
    if let Some(norms) = options.db_norms {
        assert_eq!(norms.len(), db.n, "one norm per database row");
        if metric == Metric::Cosine {
            scorer.db_norms = Some(norms);
        }
    }
    let needs_norms = metric == Metric::Cosine && scorer.db_norms.is_none();
    let norms_out = match options.norms_out {
        Some(out) if needs_norms => {
            assert_eq!(out.len(), db.n, "one norm per database row");
            Some(out)
        }
        _ => None,
    };
    let threads = options.threads.max(1);
    if k == 0 || q.n == 0 {
        return match norms_out {
            Some(out) => {
                fill_norms(db, out, threads);
                true
            }
            None => false,
        };
    }
    let not_finite = AtomicBool::new(false);
    let mut problem = Problem {
        scorer,
        exclude: options.exclude,
        bars: options.bars,
        k,
        max_group: usize::MAX,
        bounds: None,
    };
    let lazy = options.lazy_norms && norms_out.is_some() && problem.bounds_norms(threads);
    let (norms_out, unwritten) = if lazy {
        problem.bounds = Some(&not_finite);
        (None, norms_out)
    } else {
        (norms_out, None)
    };
    let wrote = norms_out.is_some();
    if metric.higher_is_better() {
        problem.run::<true>(norms_out, threads, scores, ids);
    } else {
        problem.run::<false>(norms_out, threads, scores, ids);
    }

    match unwritten {
        // The caller screens rows that are not finite by their norms, so it gets them all.
        Some(out) if not_finite.load(Ordering::Relaxed) => {
            fill_norms(db, out, threads);
            true
        }
        _ => wrote,
    }
}

/// Queries up to this many vectors of lanes (8 x 16 = 128 f32 queries on AVX-512) use the
/// row-streaming kernel: it skips packing the database, which the packed-panel kernel only
/// earns back over more queries (measured: equal at about 128-256 queries, d = 384).
const ROWS_PATH_PANELS: usize = 8;
/// Query panels up to which a first cosine search bounds the database scales rather than
/// computing every norm (`Problem::bounds_norms`): a row that could enter a top k gets its
/// exact norm once per panel it passes in, which ate the gain at 8 panels (measured:
/// benchmarks/RESULTS.md, "A first search without the norms").
const BOUNDS_PANELS: usize = 4;
/// Where more queries than the row-streaming kernel takes scan a database in groups of its
/// size, for the bfloat16 filter (`Problem::filter_group`): at least this many rows, and
/// `FILTER_GROUP_ROWS_PER_K` per unit of k (the larger k, the lower the bars and the more rows
/// pass); k at most `FILTER_GROUP_MAX_K`; the coordinates within `FILTER_GROUP_FEATURES`
/// (fewer: the packed panels are fast enough that rereading the database for each group costs
/// more than the filter saves; the filter's own limit above).
const FILTER_GROUP_MIN_ROWS: usize = 65_536;
const FILTER_GROUP_ROWS_PER_K: usize = 6_500;
const FILTER_GROUP_MAX_K: usize = 32;
const FILTER_GROUP_FEATURES: RangeInclusive<usize> = 128..=simd::BF16_MAX_FEATURES;
/// Queries per thread below which threads never split the queries.
const MIN_QUERIES_PER_THREAD: usize = 64;
/// Database rows per thread below which threads never split the database.
const MIN_ROWS_PER_THREAD: usize = 4096;
/// Bytes of per-slice top-k lists (all queries x k, per thread) above which a database split
/// gives way to a query split, which writes each query's list once.
const PARTIALS_BUDGET: usize = 256 << 20;

/// How a call's threads share its work (`Problem::split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Each thread takes a range of queries and scans the whole database for them.
    Queries,
    /// Each thread scans a slice of the database for all queries; the lists are merged.
    Database,
    /// One thread.
    Serial,
}

#[derive(Clone, Copy)]
struct Problem<'a, T> {
    scorer: Scorer<'a, T>,
    exclude: Option<&'a [i64]>,
    /// Per query, a score at least k rows of the whole database reach (`TopkOptions::bars`).
    bars: Option<&'a [T]>,
    k: usize,
    /// Most queries per scan (tests lower it to force several scans).
    max_group: usize,
    /// Cosine without known norms: the row-streaming kernel bounds the scales rather than
    /// computing every norm (`simd::ScaleBounds`), and sets this flag when a database
    /// row is not finite. None: norms computed.
    bounds: Option<&'a AtomicBool>,
}

impl<T: Real> Problem<'_, T> {
    /// Whether a call on `threads` threads would need the exact norms of only a few rows if
    /// it bounded the scales: cosine on f32 (f64 sums cost no more than bounds) without known
    /// norms, every scan on the plain row-streaming kernel with up to `BOUNDS_PANELS` query
    /// panels (not the query split, which computes all norms first; not the filters, which
    /// compute them as they read the rows).
    fn bounds_norms(&self, threads: usize) -> bool {
        let s = &self.scorer;
        let nq = s.q.n;
        let (w, _) = simd::rows_shape::<T>(s.isa);
        T::BYTES == 4
            && s.cosine()
            && s.db_norms.is_none()
            && self.split(threads) != Split::Queries
            && nq > simd::FILTER_QUERIES
            && nq <= BOUNDS_PANELS * w
            && !simd::FilterQueries::bfloat16::<T>(s.isa, s.kind(), s.q.d, nq)
    }

    fn run<const HIGHER: bool>(
        &self,
        norms_out: Option<&mut [T]>,
        threads: usize,
        scores: &mut [T],
        ids: &mut [i64],
    ) {
        match self.split(threads) {
            Split::Queries => self.split_queries::<HIGHER>(norms_out, threads, scores, ids),
            Split::Database => self.split_database::<HIGHER>(norms_out, threads, scores, ids),
            Split::Serial => {
                self.solve::<HIGHER>(0..self.scorer.q.n, 0, norms_out, scores, ids);
            }
        }
    }

    /// How `threads` threads share this call. The database split reads every row once in
    /// all, where the query split reads it once per thread (and, for cosine without the norms,
    /// once more for them first), so it is the rule wherever the database is large enough to
    /// share. The queries are split when the database is too small, when the per-slice lists
    /// would take more than `PARTIALS_BUDGET`, and when the split gives each thread few enough
    /// queries for the bfloat16 filter while all of them would take the packed-panel kernel
    /// (129 to 256 f32 queries on two threads: 1.1-1.5x faster; benchmarks/RESULTS.md,
    /// "Threads: which split").
    fn split(&self, threads: usize) -> Split {
        let (nq, n, d) = (self.scorer.q.n, self.scorer.db.n, self.scorer.q.d);
        let queries = threads > 1 && nq >= 2 * MIN_QUERIES_PER_THREAD;
        let database = threads > 1 && n >= 2 * MIN_ROWS_PER_THREAD;
        if !(queries || database) {
            return Split::Serial;
        }
        if !queries {
            return Split::Database;
        }
        let parts = threads.min(n / MIN_ROWS_PER_THREAD);
        let partials = nq * self.k * parts * (T::BYTES + std::mem::size_of::<i64>());
        let rows_path = self.rows_path_queries();
        let (mr, _) = self.scorer.shape();
        let per_thread = nq.div_ceil(threads).div_ceil(mr) * mr; // as `split_queries` deals
        let (isa, kind) = (self.scorer.isa, self.scorer.kind());
        let filter_by_split = nq > rows_path
            && per_thread <= rows_path
            && simd::FilterQueries::applies::<T>(isa, kind, d, per_thread);
        if !database || partials > PARTIALS_BUDGET || filter_by_split {
            Split::Queries
        } else {
            Split::Database
        }
    }

    /// Threads take contiguous query ranges; each scans the whole database.
    fn split_queries<const HIGHER: bool>(
        &self,
        norms_out: Option<&mut [T]>,
        threads: usize,
        scores: &mut [T],
        ids: &mut [i64],
    ) {
        let (nq, k) = (self.scorer.q.n, self.k);
        let (mr, _) = self.scorer.shape();
        // Cosine without known norms: compute them once, in parallel, before the split.
        let mut own = Vec::new();
        let norms: Option<&[T]> = match (self.scorer.db_norms, norms_out) {
            (Some(norms), _) => Some(norms),
            _ if self.scorer.metric != Metric::Cosine => None,
            (None, Some(out)) => {
                fill_norms(self.scorer.db, out, threads);
                Some(&*out)
            }
            (None, None) => {
                own.resize(self.scorer.db.n, T::ZERO);
                fill_norms(self.scorer.db, &mut own, threads);
                Some(&own)
            }
        };
        let problem = Problem {
            scorer: Scorer {
                db_norms: norms,
                ..self.scorer
            },
            ..*self
        };
        let rows_per = nq.div_ceil(threads).div_ceil(mr) * mr;
        threads::install(threads, || {
            scores
                .par_chunks_mut(rows_per * k)
                .zip(ids.par_chunks_mut(rows_per * k))
                .enumerate()
                .for_each(|(t, (scores, ids))| {
                    let start = t * rows_per;
                    let queries = start..start + scores.len() / k;
                    problem.solve::<HIGHER>(queries, 0, None, scores, ids);
                })
        });
    }

    /// Threads take contiguous database slices, each for all queries; the partial top-k lists
    /// are merged per query.
    fn split_database<const HIGHER: bool>(
        &self,
        norms_out: Option<&mut [T]>,
        threads: usize,
        scores: &mut [T],
        ids: &mut [i64],
    ) {
        let (nq, n, k) = (self.scorer.q.n, self.scorer.db.n, self.k);
        let (_, nr) = self.scorer.shape();
        let parts = threads.min(n / MIN_ROWS_PER_THREAD).max(1);
        let per = n.div_ceil(parts).div_ceil(nr) * nr;
        let slices: Vec<Range<usize>> = (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect();
        let mut outs: Vec<Option<&mut [T]>> = match norms_out {
            Some(out) => out.chunks_mut(per).map(Some).collect(),
            None => slices.iter().map(|_| None).collect(),
        };
        let partial: Vec<(Vec<T>, Vec<i64>)> = threads::install(threads, || {
            slices
                .par_iter()
                .zip(outs.par_iter_mut())
                .map(|(rows, out)| {
                    let part = Problem {
                        scorer: Scorer {
                            db: self.scorer.db.slice(rows.clone()),
                            db_norms: self.scorer.db_norms.map(|n| &n[rows.clone()]),
                            ..self.scorer
                        },
                        ..*self
                    };
                    let (mut s, mut i) = (vec![T::ZERO; nq * k], vec![NO_ID; nq * k]);
                    part.solve::<HIGHER>(0..nq, rows.start, out.take(), &mut s, &mut i);
                    (s, i)
                })
                .collect()
        });
        let parts: Vec<Partial<T>> = partial
            .iter()
            .map(|(s, i)| Partial {
                scores: s,
                ids: i,
                width: k,
            })
            .collect();
        merge_partials(&parts, nq, k, HIGHER, threads, scores, ids);
    }

    /// Top-k of queries `queries` over this problem's database, whose row 0 has id `base`,
    /// into `scores`/`ids` (`queries.len() * k` each). Cosine norms not known are computed in
    /// the first scan and written to `norms_out` when given.
    fn solve<const HIGHER: bool>(
        &self,
        queries: Range<usize>,
        base: usize,
        norms_out: Option<&mut [T]>,
        scores: &mut [T],
        ids: &mut [i64],
    ) {
        let n = self.scorer.db.n;
        let group = self.query_group(queries.len());
        let mut own = Buf::take();
        let mut norms: Option<&mut [T]> = None;
        let unknown = self.scorer.metric == Metric::Cosine && self.scorer.db_norms.is_none();
        if unknown && (self.bounds.is_none() || norms_out.is_some()) {
            norms = Some(match norms_out {
                Some(out) => out,
                None => {
                    own.resize(n, T::ZERO);
                    &mut own[..]
                }
            });
        }
        let mut selectors = Selectors::<T, HIGHER>::new(group.min(queries.len()), self.k, n);
        let mut first = true;
        for gs in queries.clone().step_by(group) {
            let g = gs..(gs + group).min(queries.end);
            let at = (gs - queries.start) * self.k..(g.end - queries.start) * self.k;
            let (scores, ids) = (&mut scores[at.clone()], &mut ids[at]);
            match norms.as_deref_mut() {
                Some(norms) if first => self.scan::<HIGHER>(
                    self.scorer,
                    g,
                    base,
                    Some(norms),
                    &mut selectors,
                    scores,
                    ids,
                ),
                Some(norms) => {
                    let scorer = Scorer {
                        db_norms: Some(&*norms),
                        ..self.scorer
                    };
                    self.scan::<HIGHER>(scorer, g, base, None, &mut selectors, scores, ids)
                }
                None => {
                    self.scan::<HIGHER>(self.scorer, g, base, None, &mut selectors, scores, ids)
                }
            }
            first = false;
        }
    }

    /// One scan of the database for queries `g`: the row-streaming kernel for few queries
    /// (behind the few-query filter for one or two, `simd::FILTER_QUERIES`), the packed-panel
    /// kernel for more.
    #[allow(clippy::too_many_arguments)]
    fn scan<const HIGHER: bool>(
        &self,
        scorer: Scorer<T>,
        g: Range<usize>,
        base: usize,
        mut norms_out: Option<&mut [T]>,
        selectors: &mut Selectors<T, HIGHER>,
        scores: &mut [T],
        ids: &mut [i64],
    ) {
        let (mr, nr) = scorer.shape();
        let (w, _) = simd::rows_shape::<T>(scorer.isa);
        let nq = g.len();
        let d = scorer.q.d;
        selectors.clear(nq, self.bars.map(|b| &b[g.clone()]));
        let exclude = self.exclude.map(|e| &e[g.clone()]);
        let mut q_packed = Buf::take_dirty();
        let mut scale = Buf::take();
        let rows_path = nq <= self.rows_path_queries();
        let block = if rows_path {
            scorer.row_block_rows()
        } else {
            scorer.db_block_rows(nq)
        };
        let n = scorer.db.n;
        if rows_path {
            scorer.pack_queries_in(g.clone(), w, &mut q_packed);
            // Bounded scales (a first search that keeps no norms) skip the exact norms that
            // the pair filter would make on the way, and measured faster than it.
            let prepared = simd::FilterQueries::new(scorer.isa, scorer.kind(), &q_packed, d, nq)
                .filter(|f| !(f.pairs() && self.bounds.is_some()));
            if let (Some(b), true) = (&prepared, selectors.barred(nq)) {
                b.bars_given();
            }
            // The few-query filter is bound by the memory, and makes float32 rows' norms as
            // they stream by (the same bits) faster than it reads given ones: 43 against 47 ns
            // a row on one thread (benchmarks/RESULTS.md, "Few-query searches").
            let recompute = nq <= simd::FILTER_QUERIES && T::BYTES == 4;
            let unknown_norms = scorer.cosine() && (scorer.db_norms.is_none() || recompute);
            let slack = scorer.scale_slack();
            let mut own_norms = Buf::take();
            for start in (0..n).step_by(block) {
                let rows = start..(start + block).min(n);
                // The filter (bfloat16 or pairs) takes this block unless it is among the
                // scan's first rows (none when every query's bar was given) or the filter gave
                // up (`FilterQueries::worth_it`).
                let filter = prepared.as_ref().filter(|b| b.worth_it());
                if let (Some(b), None) = (&prepared, filter) {
                    b.skipped(rows.len());
                }
                // Unknown cosine norms: the filters compute them as they read the rows.
                let filtered = nq <= simd::FILTER_QUERIES || filter.is_some();
                let on_the_way = filtered && unknown_norms;
                let out = norms_out.as_deref_mut().map(|n| &mut n[rows.clone()]);
                let bounds = match self.bounds {
                    Some(not_finite) if unknown_norms && !filtered && out.is_none() => {
                        Some(ScaleBounds {
                            slack,
                            exact: exact_scale::<T>,
                            not_finite,
                        })
                    }
                    _ => None,
                };
                let (scaled, norms) = if bounds.is_some() {
                    (false, None)
                } else if on_the_way {
                    let norms = out.unwrap_or_else(|| {
                        own_norms.resize(rows.len(), T::ZERO);
                        &mut own_norms[..rows.len()]
                    });
                    (
                        false,
                        Some(NormsOnTheWay {
                            norms,
                            scale: cosine_scale::<T>,
                        }),
                    )
                } else {
                    (
                        scorer.db_scale(rows.clone(), rows.len(), &mut scale, out),
                        None,
                    )
                };
                let next = rows.end..(rows.end + block).min(n);
                let job = RowJob {
                    kind: scorer.kind(),
                    q: &q_packed,
                    q_panels: nq.div_ceil(w),
                    db: scorer.db.slice(rows.clone()).data,
                    n: rows.len(),
                    d,
                    scale: scaled.then_some(&scale[..]),
                    prefetch: scorer.db.slice(next).data,
                    filter,
                    scale_bounds: bounds,
                };
                let mut candidates = Group {
                    selectors: &mut *selectors,
                    exclude,
                    base: base + start,
                };
                simd::score_rows(scorer.isa, job, &mut candidates, nq, norms);
            }
        } else {
            scorer.pack_queries(g.clone(), &mut q_packed);
            let mut db_packed = Buf::take_dirty();
            for start in (0..n).step_by(block) {
                let rows = start..(start + block).min(n);
                let out = norms_out.as_deref_mut().map(|n| &mut n[rows.clone()]);
                let padded = rows.len().div_ceil(nr) * nr;
                let scaled = scorer.db_scale(rows.clone(), padded, &mut scale, out);
                scorer.pack_db(rows.clone(), &mut db_packed);
                let job = PanelJob {
                    kind: scorer.kind(),
                    q: &q_packed,
                    q_panels: nq.div_ceil(mr),
                    db: &db_packed,
                    db_panels: rows.len().div_ceil(nr),
                    d,
                    scale: scaled.then_some(&scale[..]),
                };
                let mut candidates = Group {
                    selectors: &mut *selectors,
                    exclude,
                    base: base + start,
                };
                let sink = Select {
                    candidates: &mut candidates,
                    rows: nq,
                    cols: rows.len(),
                };
                score_select(scorer.isa, job, sink);
            }
        }
        for r in 0..nq {
            let at = r * self.k..(r + 1) * self.k;
            selectors.write_best(r, &mut scores[at.clone()], &mut ids[at]);
        }
    }

    /// Most queries the row-streaming kernel takes in one scan (`ROWS_PATH_PANELS` vectors).
    fn rows_path_queries(&self) -> usize {
        ROWS_PATH_PANELS * simd::rows_shape::<T>(self.scorer.isa).0
    }

    /// Queries scanned together: each scan packs the database once, so the more the better,
    /// up to about 64 MiB of selector keys; but groups the bfloat16 filter takes where it pays
    /// (`filter_group`).
    fn query_group(&self, queries: usize) -> usize {
        const BUDGET: usize = 64 << 20;
        let (mr, _) = self.scorer.shape();
        let cap = Selectors::<T, true>::capacity(self.k, self.scorer.db.n);
        let bytes = cap * std::mem::size_of::<T::Key>();
        let group = (BUDGET / bytes.max(1)).max(mr) / mr * mr;
        group
            .min(self.filter_group(queries).unwrap_or(usize::MAX))
            .min(queries.div_ceil(mr) * mr)
            .min(self.max_group)
            .max(mr)
    }

    /// The row-streaming kernel's most queries (128 f32 on AVX-512), when more queries than
    /// that would do better in groups of that size, each scanning the database through the
    /// bfloat16 filter, than all together on the packed panels: a large database (the bars
    /// then soon reject nearly every row), a small k and `FILTER_GROUP_FEATURES` coordinates.
    /// Measured with 1,000 queries (benchmarks/RESULTS.md, "Many queries in groups for the
    /// bfloat16 filter", and "Filter groups up to 768 dimensions"): 1.1-1.4x faster from
    /// 65,536 rows at k = 10 (Dask's default chunks of 128 MiB hold 87,381 rows of 384 f32),
    /// 1.0-1.13x at d = 768, but 0.85-0.93x at k = 64 and 100, about 1.0x at d = 64.
    fn filter_group(&self, queries: usize) -> Option<usize> {
        let s = &self.scorer;
        let group = self.rows_path_queries();
        let pays = filter_group_pays(queries, group, self.k, s.q.d, s.db.n)
            && simd::FilterQueries::applies::<T>(s.isa, s.kind(), s.q.d, group);
        pays.then_some(group)
    }
}

/// Whether `queries` queries of `d` coordinates, top `k` of `n` rows, do better scanned in
/// groups of `group` through the bfloat16 filter than together (`Problem::filter_group`, which
/// also needs the filter to apply).
fn filter_group_pays(queries: usize, group: usize, k: usize, d: usize, n: usize) -> bool {
    let rows = FILTER_GROUP_MIN_ROWS.max(FILTER_GROUP_ROWS_PER_K * k);
    queries > group && k <= FILTER_GROUP_MAX_K && FILTER_GROUP_FEATURES.contains(&d) && n >= rows
}

/// A (score, id) pair as a key whose integer order is the ranking: best first, then lower id.
#[inline]
fn key<T: Real, const HIGHER: bool>(score: T, id: i64) -> T::Key {
    let bits = score.order_bits();
    let rank = if HIGHER { bits ^ T::RANK_MASK } else { bits };
    T::make_key(rank, id as u64)
}

#[inline]
fn unkey<T: Real, const HIGHER: bool>(key: T::Key) -> (T, i64) {
    let (rank, id) = T::split_key(key);
    let bits = if HIGHER { rank ^ T::RANK_MASK } else { rank };
    (T::from_order_bits(bits), id as i64)
}

/// Writes sorted `keys` (best first) to the first places, padding with (NaN, -1).
fn write_keys<T: Real, const HIGHER: bool>(keys: &[T::Key], scores: &mut [T], ids: &mut [i64]) {
    let found = keys.len().min(scores.len());
    for (place, &key) in keys[..found].iter().enumerate() {
        (scores[place], ids[place]) = unkey::<T, HIGHER>(key);
    }
    scores[found..].fill(T::NAN);
    ids[found..].fill(NO_ID);
}

/// The best `k` (score, id) candidates of each of a group of queries. Candidates of a query
/// collect in its buffer of about 2k keys; when it fills, `select_nth` keeps the best k and
/// their worst score becomes the bar that rejects most later candidates in the kernel's
/// registers. Ids must be offered ascending per query. All buffers share one allocation,
/// reused across calls on the same thread.
pub(crate) struct Selectors<T: Real, const HIGHER: bool> {
    k: usize,
    cap: usize,
    keys: Buf<T::Key>,
    slots: Vec<Slot<T>>,
}

#[derive(Clone, Copy)]
struct Slot<T> {
    len: usize,
    /// Once `barred`: the score a candidate must beat. The k-th best score so far once the
    /// buffer has filled, until then the score just worse than the bar given (`clear`).
    bar: T,
    barred: bool,
}

impl<T: Real, const HIGHER: bool> Selectors<T, HIGHER> {
    /// Selectors for up to `count` queries over a database of `n` rows.
    pub(crate) fn new(count: usize, k: usize, n: usize) -> Self {
        let cap = Self::capacity(k, n);
        let mut keys = Buf::take();
        keys.resize(count * cap, T::Key::default());
        Selectors {
            k,
            cap,
            keys,
            slots: Vec::with_capacity(count),
        }
    }

    /// Keys per query buffer: 2k + 16, or room for every row (then it never fills).
    fn capacity(k: usize, n: usize) -> usize {
        let cap = 2 * k + 16;
        if n < cap {
            n + 1
        } else {
            cap
        }
    }

    /// Empties the first `count` selectors, each barred from the start by its entry of
    /// `bars` (NaN: not barred; see `TopkOptions::bars`).
    pub(crate) fn clear(&mut self, count: usize, bars: Option<&[T]>) {
        assert!(count * self.cap <= self.keys.len());
        self.slots.clear();
        let empty = Slot {
            len: 0,
            bar: T::ZERO,
            barred: false,
        };
        self.slots.resize(count, empty);
        if let Some(bars) = bars {
            assert_eq!(bars.len(), count, "one bar per selector");
            for (slot, &bar) in self.slots.iter_mut().zip(bars) {
                // Candidates must beat the bar or equal it: beat the score just worse. The
                // worst score of all (-inf for similarities) bars nothing: none is worse.
                let worse = if HIGHER {
                    bar.next_down()
                } else {
                    bar.next_up()
                };
                if !bar.is_nan() && worse != bar {
                    slot.bar = worse;
                    slot.barred = true;
                }
            }
        }
    }

    /// Whether every one of the first `count` selectors is barred.
    fn barred(&self, count: usize) -> bool {
        self.slots[..count].iter().all(|s| s.barred)
    }

    #[inline(always)]
    fn beats(a: T, b: T) -> bool {
        if HIGHER {
            a > b
        } else {
            a < b
        }
    }

    #[inline]
    fn bar(&self, q: usize) -> Option<T> {
        let slot = &self.slots[q];
        slot.barred.then_some(slot.bar)
    }

    /// Offers `score` as row `id` to query `q` (NaN and scores not beating a barred
    /// selector's bar are dropped).
    #[inline]
    pub(crate) fn offer(&mut self, q: usize, score: T, id: i64) {
        let slot = &mut self.slots[q];
        // An equal score never displaces a kept one: its id is higher.
        if score.is_nan() || (slot.barred && !Self::beats(score, slot.bar)) {
            return;
        }
        let at = q * self.cap;
        self.keys[at + slot.len] = key::<T, HIGHER>(score, id);
        slot.len += 1;
        if slot.len == self.cap {
            let kept = &mut self.keys[at..at + self.cap];
            keep_best(kept, self.k);
            slot.len = self.k;
            slot.bar = unkey::<T, HIGHER>(kept[self.k - 1]).0;
            slot.barred = true;
        }
    }

    /// Writes query `q`'s best k, best first, padding with (NaN, -1).
    pub(crate) fn write_best(&mut self, q: usize, scores: &mut [T], ids: &mut [i64]) {
        let at = q * self.cap;
        let keys = &mut self.keys[at..at + self.slots[q].len];
        if keys.len() > self.k {
            keys.select_nth_unstable(self.k);
        }
        let kept = keys.len().min(self.k);
        let best = &mut keys[..kept];
        best.sort_unstable();
        write_keys::<T, HIGHER>(best, scores, ids);
    }
}

/// Keeps the best k of `keys` in its first k places, the worst of them last (k < keys.len()).
fn keep_best<K: Ord + Copy>(keys: &mut [K], k: usize) {
    keys.select_nth_unstable(k);
    let best = &mut keys[..k];
    let (at, _) = best
        .iter()
        .enumerate()
        .max_by_key(|&(_, &key)| key)
        .expect("k >= 1");
    best.swap(at, k - 1);
}

/// The selectors of one scan as the kernel sees them: packed query row `q` is selector `q`,
/// packed database row `j` of the block is row id `base + j`.
struct Group<'s, T: Real, const HIGHER: bool> {
    selectors: &'s mut Selectors<T, HIGHER>,
    exclude: Option<&'s [i64]>,
    base: usize,
}

impl<T: Real, const HIGHER: bool> Candidates<T> for Group<'_, T, HIGHER> {
    const HIGHER: bool = HIGHER;

    #[inline(always)]
    fn bar(&self, q: usize) -> Option<T> {
        self.selectors.bar(q)
    }

    #[inline(never)]
    fn offer_row(&mut self, first: usize, row: usize, scores: &[T], mut mask: u64) {
        let id = (self.base + row) as i64;
        while mask != 0 {
            let l = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let q = first + l;
            if self.exclude.is_none_or(|e| e[q] != id) {
                self.selectors.offer(q, scores[l], id);
            }
        }
    }

    #[inline(never)]
    fn offer(&mut self, q: usize, first: usize, scores: &[T], mut mask: u64) {
        let skip = self.exclude.map_or(NO_ID, |e| e[q]);
        while mask != 0 {
            let j = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let id = (self.base + first + j) as i64;
            if id != skip {
                self.selectors.offer(q, scores[j], id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pairwise::cosine_norm;
    use crate::kernels::testutil::{random_matrix, reference_score, Lcg, METRICS};

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

    type Out<T> = (Vec<T>, Vec<i64>);

    #[allow(clippy::too_many_arguments)]
    fn run_with<T: Real>(
        metric: Metric,
        q: &[T],
        db: &[T],
        d: usize,
        exclude: &[i64],
        k: usize,
        threads: usize,
        db_norms: Option<&[T]>,
    ) -> Out<T> {
        let (nq, ndb) = (exclude.len(), db.len() / d.max(1));
        let (mut scores, mut ids) = (vec![T::ZERO; nq * k], vec![0i64; nq * k]);
        let options = TopkOptions {
            exclude: Some(exclude),
            db_norms,
            norms_out: None,
            lazy_norms: false,
            bars: None,
            threads,
        };
        topk_with(
            metric,
            Rows::new(q, nq, d),
            Rows::new(db, ndb, d),
            k,
            options,
            &mut scores,
            &mut ids,
        );
        (scores, ids)
    }

    fn run<T: Real>(
        metric: Metric,
        q: &[T],
        db: &[T],
        d: usize,
        exclude: &[i64],
        k: usize,
    ) -> Out<T> {
        run_with(metric, q, db, d, exclude, k, 1, None)
    }

    /// `run_with` on `threads` threads with `bars` given.
    #[allow(clippy::too_many_arguments)]
    fn run_barred(
        metric: Metric,
        q: &[f32],
        db: &[f32],
        d: usize,
        exclude: &[i64],
        k: usize,
        threads: usize,
        bars: &[f32],
    ) -> Out<f32> {
        let (nq, ndb) = (exclude.len(), db.len() / d);
        let (mut scores, mut ids) = (vec![0.0; nq * k], vec![0i64; nq * k]);
        let options = TopkOptions {
            exclude: Some(exclude),
            db_norms: None,
            norms_out: None,
            lazy_norms: false,
            bars: Some(bars),
            threads,
        };
        let (q, db) = (Rows::new(q, nq, d), Rows::new(db, ndb, d));
        topk_with(metric, q, db, k, options, &mut scores, &mut ids);
        (scores, ids)
    }

    fn bits<T: Real>(out: &Out<T>) -> (Vec<u64>, Vec<i64>) {
        (
            out.0
                .iter()
                .map(|s| s.order_bits() ^ s.is_nan() as u64)
                .collect(),
            out.1.clone(),
        )
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
        for metric in METRICS {
            for k in [1, 3, 10, 100, 1000, 2000] {
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
                    assert!(ids[i * k + want.len()..(i + 1) * k]
                        .iter()
                        .all(|&id| id == NO_ID));
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
        for metric in METRICS {
            let whole = run(metric, &q, &db, d, &exclude, k);
            let problem = Problem {
                scorer: Scorer::new(metric, Rows::new(&q, nq, d), Rows::new(&db, ndb, d)),
                exclude: Some(&exclude),
                bars: None,
                k,
                max_group: 8,
                bounds: None,
            };
            assert!(problem.query_group(nq) < nq);
            let mut grouped = (vec![0.0f32; nq * k], vec![0i64; nq * k]);
            if metric.higher_is_better() {
                problem.solve::<true>(0..nq, 0, None, &mut grouped.0, &mut grouped.1);
            } else {
                problem.solve::<false>(0..nq, 0, None, &mut grouped.0, &mut grouped.1);
            }
            assert_eq!(bits(&whole), bits(&grouped), "{metric:?}");
        }
    }

    /// Query-parallel (many queries), database-parallel (few queries, many rows) and serial
    /// runs give identical bits, and so do given and computed cosine norms.
    #[test]
    fn thread_splits_and_given_norms_give_identical_results() {
        let d = 19;
        let mut rng = Lcg::new(8);
        // A query split (the database too small to share), database splits (few queries; many),
        // and, with AVX512_BF16, a query split that gives each thread the bfloat16 filter.
        for &(nq, ndb) in &[
            (300, 2000),
            (3, 20_000),
            (17, 9000),
            (300, 9000),
            (200, 9000),
        ] {
            let q: Vec<f32> = random_matrix(&mut rng, nq, d);
            let mut db: Vec<f32> = random_matrix(&mut rng, ndb, d);
            db[..d].fill(f32::NAN);
            db[5 * d..6 * d].fill(0.0);
            let exclude: Vec<i64> = (0..nq as i64).map(|i| i * 3 - 1).collect();
            let norms: Vec<f32> = (0..ndb)
                .map(|j| cosine_norm(&db[j * d..(j + 1) * d]))
                .collect();
            for metric in METRICS {
                for k in [1, 10, 300] {
                    let one = run(metric, &q, &db, d, &exclude, k);
                    for threads in [2, 3] {
                        let many = run_with(metric, &q, &db, d, &exclude, k, threads, None);
                        assert_eq!(
                            bits(&one),
                            bits(&many),
                            "{metric:?} {nq}x{ndb} k={k} t={threads}"
                        );
                    }
                    let given = run_with(metric, &q, &db, d, &exclude, k, 1, Some(&norms));
                    assert_eq!(bits(&one), bits(&given), "{metric:?} given norms");
                }
            }
        }
    }

    /// Bars given per query cut the result to the rows that reach them, with the same bits:
    /// a bar equal to a kept score keeps that row. Row-streaming, filtered (all queries
    /// barred, so the bfloat16 filter starts at once) and packed-panel scans, both splits.
    #[test]
    fn bars_keep_exactly_the_rows_that_reach_them() {
        let d = 24;
        let mut rng = Lcg::new(91);
        for &(nq, ndb, unbarred) in &[
            (3, 9000, 2),
            (40, 9000, 0),
            (40, 9000, 5),
            (300, 3000, 5),
            (200, 20_000, 0),
        ] {
            let q: Vec<f32> = random_matrix(&mut rng, nq, d);
            let db: Vec<f32> = random_matrix(&mut rng, ndb, d);
            let exclude: Vec<i64> = (0..nq as i64).map(|i| i * 7).collect();
            for metric in METRICS {
                for k in [1, 10, 300] {
                    let plain = run(metric, &q, &db, d, &exclude, k);
                    // Query i's bar: its (3i mod k)-th best score; every `unbarred`-th none.
                    let bars: Vec<f32> = (0..nq)
                        .map(|i| match unbarred {
                            u if u > 0 && i % u == u - 1 => f32::NAN,
                            _ => plain.0[i * k + (3 * i) % k],
                        })
                        .collect();
                    let mut want = plain.clone();
                    for (i, &bar) in bars.iter().enumerate() {
                        let reach = |s: f32| match metric.higher_is_better() {
                            true => s >= bar,
                            false => s <= bar,
                        };
                        for j in i * k..(i + 1) * k {
                            if !bar.is_nan() && !reach(want.0[j]) {
                                (want.0[j], want.1[j]) = (f32::NAN, NO_ID);
                            }
                        }
                    }
                    for threads in [1, 2] {
                        let got = run_barred(metric, &q, &db, d, &exclude, k, threads, &bars);
                        assert_eq!(
                            bits(&want),
                            bits(&got),
                            "{metric:?} {nq}x{ndb} k={k} t={threads}"
                        );
                    }
                }
            }
        }
    }

    /// A bar at the worst score of all bars nothing: rows whose scores overflow to it are
    /// kept, as without the bar.
    #[test]
    fn a_bar_at_the_worst_score_bars_nothing() {
        let db = [-1e30f32, 1.0, -1e30];
        for (metric, q, bar) in [
            (Metric::Dot, 1e30f32, f32::NEG_INFINITY),
            (Metric::Euclidean, 0.0, f32::INFINITY),
        ] {
            let plain = run(metric, &[q], &db, 1, &[NO_ID], 3);
            assert_eq!(plain.1, [1, 0, 2], "{metric:?}");
            let barred = run_barred(metric, &[q], &db, 1, &[NO_ID], 3, 1, &[bar]);
            assert_eq!(bits(&plain), bits(&barred), "{metric:?}");
        }
    }

    /// A problem of the f32 rows `q` and `db` (`d` coordinates) on `isa`, no exclusions.
    fn problem_on<'a>(
        isa: simd::Isa,
        metric: Metric,
        q: &'a [f32],
        db: &'a [f32],
        d: usize,
        k: usize,
    ) -> Problem<'a, f32> {
        let mut scorer = Scorer::new(
            metric,
            Rows::new(q, q.len() / d, d),
            Rows::new(db, db.len() / d, d),
        );
        scorer.isa = isa;
        Problem {
            scorer,
            exclude: None,
            bars: None,
            k,
            max_group: usize::MAX,
            bounds: None,
        }
    }

    /// `Problem::split`: the database split wherever the database can be shared, the query
    /// split where it cannot, where the lists would be too large, and where it gives each
    /// thread few enough queries for the bfloat16 filter.
    #[test]
    fn threads_split_the_database_unless_the_queries_are_better() {
        let d = 8;
        let q = vec![0.5f32; 3000 * d];
        let db = vec![0.25f32; 20_000 * d];
        let split = |isa, metric, nq: usize, ndb: usize, k, threads| {
            problem_on(isa, metric, &q[..nq * d], &db[..ndb * d], d, k).split(threads)
        };
        use Metric::{Cosine, Euclidean};
        let (bf16, plain) = (simd::Isa::Avx512Bf16, simd::Isa::Avx512);
        assert_eq!(split(plain, Cosine, 1000, 20_000, 10, 1), Split::Serial);
        assert_eq!(split(plain, Cosine, 3, 8000, 10, 2), Split::Serial);
        assert_eq!(split(plain, Cosine, 3, 8192, 10, 2), Split::Database);
        assert_eq!(split(plain, Cosine, 1000, 8192, 10, 2), Split::Database);
        assert_eq!(split(plain, Cosine, 1000, 8000, 10, 2), Split::Queries);
        assert_eq!(split(plain, Cosine, 200, 20_000, 10, 2), Split::Database);
        // Lists of 3000 queries x k = 5000 x 2 slices x 12 bytes: 360 MB, past the budget.
        assert_eq!(
            split(plain, Euclidean, 3000, 20_000, 5000, 2),
            Split::Queries
        );
        if simd::available().contains(&bf16) {
            assert_eq!(split(bf16, Cosine, 128, 20_000, 10, 2), Split::Database);
            assert_eq!(split(bf16, Cosine, 200, 20_000, 10, 2), Split::Queries);
            assert_eq!(split(bf16, Cosine, 256, 20_000, 10, 2), Split::Queries);
            assert_eq!(split(bf16, Cosine, 257, 20_000, 10, 2), Split::Database);
            assert_eq!(split(bf16, Cosine, 384, 20_000, 10, 3), Split::Queries);
            assert_eq!(split(bf16, Euclidean, 200, 20_000, 10, 2), Split::Database);
        }
    }

    /// More queries than the row-streaming kernel takes scan a large database in groups of
    /// 128 for the bfloat16 filter, only where it applies and pays (`filter_group`); the
    /// groups give the bits of the packed panels.
    #[test]
    fn many_queries_on_a_large_database_scan_in_filter_groups_with_the_same_bits() {
        let (d, ndb, nq) = (128, 100_000, 200);
        let mut rng = Lcg::new(77);
        let db: Vec<f32> = random_matrix(&mut rng, ndb, d);
        let mut q: Vec<f32> = random_matrix(&mut rng, nq, d);
        q[..d].copy_from_slice(&db[50_000 * d..50_001 * d]); // a query with an exact match
        let problem = |isa, metric, nq: usize, ndb: usize, k| {
            problem_on(isa, metric, &q[..nq * d], &db[..ndb * d], d, k)
        };
        let (bf16, plain) = (simd::Isa::Avx512Bf16, simd::Isa::Avx512);
        let group = |isa, metric, nq, ndb, k| problem(isa, metric, nq, ndb, k).query_group(nq);
        assert_eq!(
            group(plain, Metric::Cosine, nq, ndb, 10),
            200,
            "no filter: one scan"
        );
        if !simd::available().contains(&bf16) {
            return;
        }
        assert_eq!(group(bf16, Metric::Cosine, nq, ndb, 10), 128);
        assert_eq!(group(bf16, Metric::Dot, nq, ndb, 10), 128);
        assert_eq!(
            group(bf16, Metric::Cosine, 128, ndb, 10),
            128,
            "one scan anyway"
        );
        assert_eq!(
            group(bf16, Metric::Cosine, nq, 65_535, 10),
            200,
            "too few rows"
        );
        assert_eq!(
            group(bf16, Metric::Cosine, nq, ndb, 16),
            200,
            "k too large for the rows"
        );
        assert_eq!(
            group(bf16, Metric::Euclidean, nq, ndb, 10),
            200,
            "no filter"
        );
        for (d, pays) in [
            (64, false),
            (127, false),
            (128, true),
            (512, true),
            (768, true),
            (769, false),
        ] {
            assert_eq!(filter_group_pays(200, 128, 10, d, 100_000), pays, "d={d}");
        }
        assert!(filter_group_pays(200, 128, 10, 384, 65_536));
        assert!(!filter_group_pays(200, 128, 10, 384, 65_535));
        assert!(filter_group_pays(200, 128, 32, 384, 208_000));
        assert!(!filter_group_pays(200, 128, 32, 384, 207_999));
        assert!(!filter_group_pays(200, 128, 33, 384, 10_000_000));
        for metric in [Metric::Cosine, Metric::Dot] {
            for k in [1, 10] {
                let found = |isa| {
                    let p = problem(isa, metric, nq, ndb, k);
                    let mut out: Out<f32> = (vec![0.0; nq * k], vec![0; nq * k]);
                    p.solve::<true>(0..nq, 0, None, &mut out.0, &mut out.1);
                    out
                };
                let (grouped, panels) = (found(bf16), found(plain));
                assert_eq!(bits(&grouped), bits(&panels), "{metric:?} k={k}");
                if metric == Metric::Cosine {
                    assert_eq!(grouped.1[0], 50_000, "k={k}: the exact match");
                }
            }
        }
    }

    /// Rows built to tie with query 0 (row 0 scaled, or with every coordinate a few units in the
    /// last place away, and exact copies of row 1) or to cancel (large values of both signs),
    /// plus a NaN, an infinite and a zero row: the few-query filter's sums differ from the
    /// exact ones most there.
    fn near_ties<T: Real>(rng: &mut Lcg, ndb: usize, d: usize) -> Vec<T> {
        let mut db: Vec<T> = random_matrix(rng, ndb, d);
        let eps = T::EPSILON.to_f64();
        for r in 2..ndb.min(300) {
            let scale = 1.0 + rng.next_f64() / 2.0;
            for c in 0..d {
                let (x, y) = (db[c].to_f64(), db[d + c].to_f64());
                db[r * d + c] = T::from_f64(match r % 4 {
                    0 => y,
                    1 => x * scale,
                    2 => x * (1.0 + 3.0 * rng.next_f64() * eps),
                    _ if c == r % d => x * (1.0 + 4.0 * rng.next_f64() * eps),
                    _ => x,
                });
            }
        }
        for r in 300..ndb.min(400) {
            for c in 0..d {
                let sign = if c % 2 == 0 { 1.0 } else { -1.0 };
                db[r * d + c] = T::from_f64(sign * 1e6 + rng.next_f64());
            }
        }
        let last = ndb - 1;
        db[last * d] = T::NAN;
        db[(last - 1) * d] = T::INFINITY;
        db[(last - 2) * d..(last - 1) * d].fill(T::ZERO);
        db
    }

    /// One or two queries go through the few-query filter (`simd::FILTER_QUERIES`); 17 and 40,
    /// on `Avx512Bf16` for f32 cosine and dot, through the bfloat16 filter, and 3, 5 and 16 on
    /// AVX-512 with an even `d` through the pair filter (both after the first 4,096 rows),
    /// otherwise through the row-streaming kernel; 200 through the packed panels. All give the
    /// same bits, on every ISA, with norms given or computed on the way.
    fn filter_gives_the_exact_bits<T: Real>() {
        let mut rng = Lcg::new(31);
        for d in [3, 16, 37, 100, 385] {
            // The near ties after the first 4,096 rows, which the filters leave to the plain
            // kernel.
            let (plain, tied) = (4096, 1500);
            let ndb = plain + tied;
            let mut db: Vec<T> = random_matrix(&mut rng, plain, d);
            db.extend(near_ties::<T>(&mut rng, tied, d));
            let mut q: Vec<T> = random_matrix(&mut rng, 200, d);
            q[..d].copy_from_slice(&db[plain * d..(plain + 1) * d]);
            // Against the rows of alternating signs, terms of +-1e12 that cancel in fours.
            for c in 0..d {
                let sign = if (c / 2) % 2 == 0 { 1.0 } else { -1.0 };
                q[d + c] = T::from_f64(sign * 1e6 + rng.next_f64());
            }
            let exclude: Vec<i64> = (0..200).map(|i| if i == 1 { 3 } else { -1 }).collect();
            let norms: Vec<T> = (0..ndb)
                .map(|j| cosine_norm(&db[j * d..(j + 1) * d]))
                .collect();
            for isa in simd::available() {
                for metric in METRICS {
                    for k in [1, 5, 60] {
                        let solve = |nq: usize, norms: Option<&[T]>| {
                            let mut scorer = Scorer::new(
                                metric,
                                Rows::new(&q[..nq * d], nq, d),
                                Rows::new(&db, ndb, d),
                            );
                            scorer.isa = isa;
                            scorer.db_norms = if metric == Metric::Cosine {
                                norms
                            } else {
                                None
                            };
                            let problem = Problem {
                                scorer,
                                exclude: Some(&exclude[..nq]),
                                bars: None,
                                k,
                                max_group: 256,
                                bounds: None,
                            };
                            let mut out: Out<T> = (vec![T::ZERO; nq * k], vec![0; nq * k]);
                            if metric.higher_is_better() {
                                problem.solve::<true>(0..nq, 0, None, &mut out.0, &mut out.1);
                            } else {
                                problem.solve::<false>(0..nq, 0, None, &mut out.0, &mut out.1);
                            }
                            bits(&out)
                        };
                        let panel = solve(200, None);
                        for nq in [1, 2, 3, 5, 16, 17, 40] {
                            for given in [None, Some(&norms[..])] {
                                let want = (panel.0[..nq * k].to_vec(), panel.1[..nq * k].to_vec());
                                assert_eq!(
                                    solve(nq, given),
                                    want,
                                    "{isa:?} {metric:?} d={d} k={k} nq={nq} norms given: {}",
                                    given.is_some()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A first cosine search of a few f32 queries may bound the database scales from float32
    /// sums of squares (`Problem::bounds`, `simd::ScaleBounds`): the same bits as with the
    /// exact norms given, on every ISA, for near ties (rows along one direction, whose scores
    /// differ in the last bits), rows whose squares overflow or underflow float32, zero rows,
    /// and rows that are not finite (which set the flag). With the slack set to zero the near
    /// ties come out in another order.
    #[test]
    fn bounded_scales_give_the_exact_bits() {
        let mut rng = Lcg::new(41);
        for d in [1, 7, 100, 385] {
            // Random rows, then rows along the ties' direction whose squares overflow or
            // underflow float32, then the near ties (ending in a zero, an infinite, a NaN row).
            let ties = near_ties::<f32>(&mut rng, 1500, d);
            let direction = &ties[..d];
            let mut db: Vec<f32> = random_matrix(&mut rng, 300, d);
            for r in 0..40 {
                let size = if r % 2 == 0 { 1e21 } else { 1e-24 } * (1.0 + r as f32 / 7.0);
                db.extend(direction.iter().map(|&x| x * size));
            }
            db.extend(&ties);
            let ndb = db.len() / d;
            let mut q: Vec<f32> = random_matrix(&mut rng, 40, d);
            q[..d].copy_from_slice(direction);
            q[d..2 * d].copy_from_slice(&ties[300 * d..301 * d]);
            let norms: Vec<f32> = (0..ndb)
                .map(|j| cosine_norm(&db[j * d..(j + 1) * d]))
                .collect();
            let finite_ndb = ndb - 2;
            assert!(norms[..finite_ndb].iter().all(|n| n.is_finite()));
            for isa in simd::available() {
                for k in [1, 5, 60] {
                    for nq in [3, 5, 16, 40] {
                        for rows in [ndb, finite_ndb] {
                            let solve = |bounds: Option<&AtomicBool>, norms: Option<&[f32]>| {
                                let mut scorer = Scorer::new(
                                    Metric::Cosine,
                                    Rows::new(&q[..nq * d], nq, d),
                                    Rows::new(&db[..rows * d], rows, d),
                                );
                                scorer.isa = isa;
                                scorer.db_norms = norms.map(|n| &n[..rows]);
                                let problem = Problem {
                                    scorer,
                                    exclude: None,
                                    bars: None,
                                    k,
                                    max_group: 256,
                                    bounds,
                                };
                                let mut out: Out<f32> = (vec![0.0; nq * k], vec![0; nq * k]);
                                problem.solve::<true>(0..nq, 0, None, &mut out.0, &mut out.1);
                                bits(&out)
                            };
                            let not_finite = AtomicBool::new(false);
                            let at = format!("{isa:?} d={d} k={k} nq={nq} rows={rows}");
                            let want = solve(None, Some(&norms));
                            assert_eq!(solve(Some(&not_finite), None), want, "{at}");
                            // The row-streaming kernel bounds the rows the bfloat16 filter
                            // leaves to it (all these); the packed panels (40 queries on 4
                            // lanes) compute the norms.
                            let (w, _) = simd::rows_shape::<f32>(isa);
                            let bounded = nq <= ROWS_PATH_PANELS * w;
                            assert_eq!(not_finite.into_inner(), bounded && rows == ndb, "{at}");
                        }
                    }
                }
            }
        }
    }

    /// `lazy_norms`: `topk_with` leaves the norms unwritten (and says so) only where it
    /// bounded the scales (16 queries; not 1, nor 100) and every row was finite; otherwise it
    /// writes `cosine_norm`'s bits.
    #[test]
    fn lazy_norms_are_written_when_a_row_is_not_finite() {
        let mut rng = Lcg::new(43);
        let (d, ndb) = (24, 5000);
        let mut db: Vec<f32> = random_matrix(&mut rng, ndb, d);
        let q: Vec<f32> = random_matrix(&mut rng, 100, d);
        let norms: Vec<f32> = (0..ndb)
            .map(|j| cosine_norm(&db[j * d..(j + 1) * d]))
            .collect();
        let lazy = |db: &[f32], nq: usize, threads: usize| {
            let (_, out_norms, wrote) = cosine_search(&q[..nq * d], db, d, 3, threads, true);
            (wrote, out_norms)
        };
        for threads in [1, 2] {
            let (wrote, out) = lazy(&db, 16, threads);
            assert!(
                !wrote && out.iter().all(|n| n.is_nan()),
                "16 queries: bounded"
            );
            let (wrote, out) = lazy(&db, 1, threads);
            assert!(
                wrote && out == norms,
                "1 query: the filter computes them on the way"
            );
            let (wrote, out) = lazy(&db, 100, threads);
            assert!(
                wrote && out == norms,
                "100 queries: past BOUNDS_PANELS (or bfloat16)"
            );
        }
        db[4321 * d + 5] = f32::INFINITY;
        for threads in [1, 2] {
            let (wrote, out) = lazy(&db, 16, threads);
            assert!(
                wrote && out[4321].is_infinite(),
                "a row not finite: all norms"
            );
            assert_eq!(out[..4321], norms[..4321]);
        }
    }

    #[test]
    fn the_few_query_filter_gives_the_exact_bits_f32() {
        filter_gives_the_exact_bits::<f32>();
    }

    #[test]
    fn the_few_query_filter_gives_the_exact_bits_f64() {
        filter_gives_the_exact_bits::<f64>();
    }

    /// `topk_with` for cosine with `threads` threads, the database norms computed by the call
    /// (`db` rows of `d`): (scores' bits, ids), norms.
    fn cosine_with_norms<T: Real>(
        q: &[T],
        db: &[T],
        d: usize,
        k: usize,
        threads: usize,
    ) -> ((Vec<u64>, Vec<i64>), Vec<T>) {
        let (found, norms, _) = cosine_search(q, db, d, k, threads, false);
        (found, norms)
    }

    /// `cosine_with_norms` with the `lazy_norms` option, and whether the call wrote the norms
    /// (left NaN where it did not).
    fn cosine_search<T: Real>(
        q: &[T],
        db: &[T],
        d: usize,
        k: usize,
        threads: usize,
        lazy_norms: bool,
    ) -> ((Vec<u64>, Vec<i64>), Vec<T>, bool) {
        let (nq, ndb) = (q.len() / d, db.len() / d);
        let mut norms = vec![T::NAN; ndb];
        let mut out: Out<T> = (vec![T::ZERO; nq * k], vec![0; nq * k]);
        let options = TopkOptions {
            exclude: None,
            db_norms: None,
            norms_out: Some(&mut norms),
            lazy_norms,
            bars: None,
            threads,
        };
        let (q, db) = (Rows::new(q, nq, d), Rows::new(db, ndb, d));
        let wrote = topk_with(Metric::Cosine, q, db, k, options, &mut out.0, &mut out.1);
        (bits(&out), norms, wrote)
    }

    /// Every way a scan computes the norms (a separate pass, either filter on the way, each
    /// thread's slice) returns `cosine_norm`'s bits.
    fn computed_norms_are_returned_by_every_split<T: Real>() {
        let k = 4;
        let mut rng = Lcg::new(2);
        let cases = [
            (5, 3000, 1),
            (200, 3000, 2),
            (3, 10_000, 2),
            (0, 100, 1),
            (1, 5000, 2),
            (16, 5000, 2),
        ];
        for d in [7, 100] {
            for &(nq, ndb, threads) in &cases {
                let q: Vec<T> = random_matrix(&mut rng, nq, d);
                let db: Vec<T> = random_matrix(&mut rng, ndb, d);
                let want: Vec<T> = (0..ndb)
                    .map(|j| cosine_norm(&db[j * d..(j + 1) * d]))
                    .collect();
                let (_, norms) = cosine_with_norms(&q, &db, d, k, threads);
                let (got, want): (Vec<u64>, Vec<u64>) = norms
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a.to_f64().to_bits(), b.to_f64().to_bits()))
                    .unzip();
                assert_eq!(got, want, "d={d} nq={nq} ndb={ndb} threads={threads}");
            }
        }
    }

    #[test]
    fn computed_norms_are_returned_by_every_split_f32() {
        computed_norms_are_returned_by_every_split::<f32>();
    }

    #[test]
    fn computed_norms_are_returned_by_every_split_f64() {
        computed_norms_are_returned_by_every_split::<f64>();
    }

    /// Rows that all tie send every row to the exact kernel, so the bfloat16 filter gives up
    /// after a few blocks (`simd::FilterQueries::worth_it`) and the plain kernel finishes the
    /// scan, computing the norms the filter would have: the same bits as the packed panels.
    #[test]
    fn the_bfloat16_filter_gives_up_on_ties_with_the_same_bits() {
        let (ndb, d, k) = (20_000, 40, 5);
        let mut rng = Lcg::new(5);
        let row: Vec<f32> = random_matrix(&mut rng, 1, d);
        let db: Vec<f32> = row.iter().cycle().take(ndb * d).copied().collect();
        let q: Vec<f32> = random_matrix(&mut rng, 200, d);
        let want: Vec<f32> = (0..ndb)
            .map(|j| cosine_norm(&db[j * d..(j + 1) * d]))
            .collect();
        let solve = |nq: usize| cosine_with_norms(&q[..nq * d], &db, d, k, 1);
        let (panel, _) = solve(200);
        for nq in [20, 40] {
            let ((s, i), norms) = solve(nq);
            assert_eq!(s, panel.0[..nq * k], "{nq} scores");
            assert_eq!(i, panel.1[..nq * k], "{nq} ids");
            assert_eq!(norms, want, "{nq} norms");
        }
    }

    #[test]
    fn wrong_norms_change_the_result() {
        let (nq, ndb, d, k) = (4, 50, 6, 5);
        let mut rng = Lcg::new(3);
        let q: Vec<f64> = random_matrix(&mut rng, nq, d);
        let db: Vec<f64> = random_matrix(&mut rng, ndb, d);
        let exclude = vec![-1; nq];
        let right = run(Metric::Cosine, &q, &db, d, &exclude, k);
        // Norms of 1 make cosine rank like the dot product.
        let ones = vec![1.0; ndb];
        let wrong = run_with(Metric::Cosine, &q, &db, d, &exclude, k, 1, Some(&ones));
        let dot = run(Metric::Dot, &q, &db, d, &exclude, k);
        assert_ne!(right.1, wrong.1);
        assert_eq!(wrong.1, dot.1);
    }

    #[test]
    fn ties_go_to_the_lower_id_across_blocks() {
        // 9000 copies of 4 distinct rows: every score ties with 2249 others, over several
        // blocks and thread slices.
        let d = 3;
        let distinct = [
            [1.0f32, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ];
        let db: Vec<f32> = (0..9000).flat_map(|j| distinct[j % 4]).collect();
        let q = [1.0f32, 0.9, 0.0];
        for threads in [1, 2] {
            let (scores, ids) = run_with(Metric::Cosine, &q, &db, d, &[-1], 6, threads, None);
            assert_eq!(ids, [2, 6, 10, 14, 18, 22]);
            assert!(scores.iter().all(|&s| s == scores[0]));
            let (_, ids) = run_with(Metric::Euclidean, &q, &db, d, &[6], 4, threads, None);
            assert_eq!(ids, [2, 10, 14, 18]);
        }
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
        for metric in METRICS {
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
