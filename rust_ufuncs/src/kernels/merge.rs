//! Merging partial top-k lists: the best `k` of each query's candidates from several lists
//! (the pair tasks of a Dask graph, or the database slices of a threaded call), in the ranking
//! of `topk`: best score first, equal scores to the lower id, NaN scores and ids below zero
//! (padding) never chosen, missing places padded with (NaN, -1).
//!
//! Each query's candidates become integer keys that sort in that order, then a selection of
//! the best `k` and a sort of those: linear in the candidates, where sorting them all (what
//! `numpy.lexsort` does for the NumPy backends) is not. Ids take 64 bits of the key, so any
//! id an int64 holds is kept as it is.

use rayon::prelude::*;

use super::topk::NO_ID;
use super::{threads, Real};

/// One partial list per query: `nq x width` scores and ids, row-major.
#[derive(Clone, Copy)]
pub struct Partial<'a, T> {
    pub scores: &'a [T],
    pub ids: &'a [i64],
    pub width: usize,
}

/// Writes the best `k` of each query's candidates in `parts` to `scores` and `ids` (`nq x k`),
/// on up to `threads` threads (rows of queries each). `higher`: larger scores are better.
pub fn merge_partials<T: Real>(
    parts: &[Partial<T>],
    nq: usize,
    k: usize,
    higher: bool,
    threads: usize,
    scores: &mut [T],
    ids: &mut [i64],
) {
    for p in parts {
        assert!(
            p.scores.len() == nq * p.width && p.ids.len() == nq * p.width,
            "a partial list: {nq} rows of {} candidates",
            p.width
        );
    }
    assert!(
        scores.len() == nq * k && ids.len() == nq * k,
        "the merged lists"
    );
    if k == 0 {
        return;
    }
    let merge = |q: usize, keys: &mut Vec<u128>, s: &mut [T], i: &mut [i64]| {
        if higher {
            merge_row::<T, true>(parts, q, k, keys, s, i);
        } else {
            merge_row::<T, false>(parts, q, k, keys, s, i);
        }
    };
    let candidates: usize = parts.iter().map(|p| p.width).sum();
    let threads = threads.min(nq * candidates / MIN_PER_THREAD).max(1);
    if threads == 1 {
        let mut keys = Vec::with_capacity(candidates);
        let rows = scores.chunks_mut(k).zip(ids.chunks_mut(k)).enumerate();
        for (q, (s, i)) in rows {
            merge(q, &mut keys, s, i);
        }
        return;
    }
    threads::install(threads, || {
        let rows = scores
            .par_chunks_mut(k)
            .zip(ids.par_chunks_mut(k))
            .enumerate();
        rows.for_each_init(Vec::new, |keys, (q, (s, i))| merge(q, keys, s, i));
    });
}

/// Candidates (all queries) per thread below which a merge stays on one thread: spreading
/// the rows costs more (tests spread every merge).
const MIN_PER_THREAD: usize = if cfg!(test) { 1 } else { 1 << 16 };

/// Query `q`'s best `k` into `scores`/`ids` (its row of the result).
fn merge_row<T: Real, const HIGHER: bool>(
    parts: &[Partial<T>],
    q: usize,
    k: usize,
    keys: &mut Vec<u128>,
    scores: &mut [T],
    ids: &mut [i64],
) {
    keys.clear();
    for p in parts {
        let at = q * p.width..(q + 1) * p.width;
        let candidates = p.scores[at.clone()].iter().zip(&p.ids[at]);
        keys.extend(
            candidates
                .filter(|&(s, &id)| id >= 0 && !s.is_nan())
                .map(|(&s, &id)| key::<T, HIGHER>(s, id)),
        );
    }
    if keys.len() > k {
        keys.select_nth_unstable(k);
        keys.truncate(k);
    }
    keys.sort_unstable();
    for (place, &key) in keys.iter().enumerate() {
        (scores[place], ids[place]) = unkey::<T, HIGHER>(key);
    }
    scores[keys.len()..].fill(T::NAN);
    ids[keys.len()..].fill(NO_ID);
}

/// A key whose order is the ranking: the score's order (reversed where higher is better), then
/// the id.
#[inline]
fn key<T: Real, const HIGHER: bool>(score: T, id: i64) -> u128 {
    let bits = score.order_bits();
    let rank = if HIGHER { bits ^ T::RANK_MASK } else { bits };
    (u128::from(rank) << 64) | u128::from(id as u64)
}

#[inline]
fn unkey<T: Real, const HIGHER: bool>(key: u128) -> (T, i64) {
    let rank = (key >> 64) as u64;
    let bits = if HIGHER { rank ^ T::RANK_MASK } else { rank };
    (T::from_order_bits(bits), key as u64 as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::Lcg;

    /// The straightforward merge: every candidate sorted by (rank, id).
    fn sorted<T: Real>(parts: &[Partial<T>], nq: usize, k: usize, higher: bool) -> Vec<(T, i64)> {
        let mut out = Vec::new();
        for q in 0..nq {
            let mut all: Vec<(T, i64)> = parts
                .iter()
                .flat_map(|p| {
                    let at = q * p.width..(q + 1) * p.width;
                    p.scores[at.clone()]
                        .iter()
                        .copied()
                        .zip(p.ids[at].iter().copied())
                })
                .filter(|&(s, id)| id >= 0 && !s.is_nan())
                .collect();
            all.sort_by(|a, b| {
                let by_score = a.0.to_f64().partial_cmp(&b.0.to_f64()).unwrap();
                let by_score = if higher { by_score.reverse() } else { by_score };
                by_score.then(a.1.cmp(&b.1))
            });
            all.resize(k, (T::NAN, NO_ID));
            out.extend(all.into_iter().take(k));
        }
        out
    }

    fn check<T: Real>(threads: usize) {
        let mut rng = Lcg::new(11);
        let nq = 37;
        let widths = [5, 12, 1, 12];
        // Scores from a few values: many ties, broken by id; some NaN and -1 padding; ids up
        // to 2^40 (beyond 32 bits).
        let lists: Vec<(Vec<T>, Vec<i64>)> = widths
            .iter()
            .enumerate()
            .map(|(p, &w)| {
                let scores = (0..nq * w)
                    .map(|j| match j % 11 {
                        3 => T::NAN,
                        _ => T::from_f64((rng.next_f64() * 4.0).round() / 4.0),
                    })
                    .collect();
                let ids = (0..nq * w)
                    .map(|j| {
                        if j % 13 == 5 {
                            NO_ID
                        } else {
                            ((p * 1000 + j) as i64) << 28
                        }
                    })
                    .collect();
                (scores, ids)
            })
            .collect();
        let parts: Vec<Partial<T>> = lists
            .iter()
            .zip(widths)
            .map(|((s, i), width)| Partial {
                scores: s,
                ids: i,
                width,
            })
            .collect();
        for k in [1, 3, 10, 30, 40] {
            for higher in [true, false] {
                let (mut s, mut i) = (vec![T::ZERO; nq * k], vec![0; nq * k]);
                merge_partials(&parts, nq, k, higher, threads, &mut s, &mut i);
                let want = sorted(&parts, nq, k, higher);
                let got: Vec<(T, i64)> = s.iter().copied().zip(i.iter().copied()).collect();
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.1, w.1, "k={k} higher={higher}");
                    assert!(
                        g.0.to_f64() == w.0.to_f64() || (g.0.is_nan() && w.0.is_nan()),
                        "k={k} higher={higher}"
                    );
                }
            }
        }
    }

    #[test]
    fn merges_match_a_full_sort_f32() {
        check::<f32>(1);
        check::<f32>(3);
    }

    #[test]
    fn merges_match_a_full_sort_f64() {
        check::<f64>(1);
    }
}
