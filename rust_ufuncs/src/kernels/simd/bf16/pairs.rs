//! The float32 pair filter (`Products::F32Pairs`): three to sixteen queries, AVX-512.
//!
//! The row-streaming kernel puts the queries in the lanes of one vector and multiplies it by
//! each database value broadcast: one load a multiply-add, and with eight queries half of
//! every vector's lanes are empty. Here each pair of a row's coordinates is broadcast at once
//! (one 64-bit load) against vectors holding eight queries x the pair's two coordinates
//! (lane `2i + c`: query `i`, coordinate `2j + c`): up to eight queries take one vector, so
//! half the multiply-adds, and nine to sixteen take two, one load feeding both. Each lane
//! sums the even or the odd coordinates, and the two are added at the row's end: another
//! order than the exact kernel's, so the scores only filter, as the bfloat16 ones do (the
//! parent module's `Test`, `Bars` and `exact`).

#[cfg(target_arch = "x86_64")]
pub(super) use x86::filter;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::super::super::scratch::Buf;
    use super::super::super::{Candidates, Lanes, NormsOnTheWay, Real, RowJob};
    use super::super::x86::{row_sizes, valid_lanes, Bars, Spread, Test, NORMS};
    use super::super::{FilterQueries, Products, GROUP, LANES};

    /// Rows a register tile takes: with two vectors of queries a pair, sixteen accumulators
    /// (fourteen rows measured no faster); with one, eight chains of multiply-adds are enough
    /// to keep both multipliers busy, and sixteen rows spilled one accumulator.
    const HALF: usize = GROUP / 2;
    /// Tiles ahead the products pull rows toward L1, a line a pair of coordinates, past the
    /// block into the next (the rows that follow in memory; a prefetch never faults): with
    /// one vector of queries (`VECS`), one tile, and the next block's rows toward L2 as well
    /// (`Spread`, as the bfloat16 filter does); with two, two tiles and nothing toward L2.
    /// Each measured the fastest of the four ways in both of the memory's spells, but for one
    /// vector in a fast spell (two tiles without `Spread` 3% faster, but 10% slower in a slow
    /// spell, where the L1's few misses in flight cannot cover the memory's latency).
    const fn ahead_tiles(vecs: usize) -> usize {
        if vecs == 1 {
            1
        } else {
            2
        }
    }

    /// The rows of `job` against its queries through the pair filter, exact scores into
    /// `candidates`, for one way of bounding a row's size (as the bfloat16 filter's `filter`):
    /// each group of `GROUP` rows is scored, its sizes taken while it is in L1, and each row
    /// tested against the bars, the rows that could beat one scored exactly.
    ///
    /// # Safety
    /// The CPU must have avx512f, avx2 and fma (`FilterQueries::runs_on`); `job` checked as in
    /// `score_rows`, with `job.filter` given for `Products::F32Pairs` (so T is f32, the scores
    /// are dot products and `d` is even); `norms` is given iff `MODE == NORMS`, `job.scale` iff
    /// `MODE == SCALED`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(in super::super) unsafe fn filter<
        T: Real,
        V: Lanes<T>,
        C: Candidates<T>,
        const MODE: u8,
    >(
        job: RowJob<T>,
        candidates: &mut C,
        queries: usize,
        mut norms: Option<NormsOnTheWay<T>>,
    ) {
        let prep: &FilterQueries = job.filter.expect("the pair filter's queries");
        let (d, n, vectors) = (job.d, job.n, prep.vectors);
        assert!(prep.products == Products::F32Pairs && V::W == LANES);
        assert!(prep.panels == 1 && job.q_panels == 1 && queries <= vectors * LANES / 2);
        assert!(
            d.is_multiple_of(2) && prep.n_pairs == d / 2,
            "queries prepared for this d"
        );
        let mut scales = Buf::<T>::take_dirty();
        scales.resize(if MODE == NORMS { n } else { 0 }, T::ZERO);
        let mut sizes = [0.0f32; GROUP];
        let valid = valid_lanes(queries, 0);
        let q = prep.pairs.as_ptr().cast::<f32>();
        let mut passed = 0;
        // SAFETY (this block): the CPU has the features `filter` was compiled for; every pointer
        // read stays inside the rows or the prepared queries.
        unsafe {
            let mut bars = Bars::new(candidates, 0, valid);
            let test = Test {
                a: _mm512_loadu_ps(prep.a.as_ptr()),
                c: _mm512_loadu_ps(prep.c.as_ptr()),
                valid,
                p: 0,
            };
            for r0 in (0..n).step_by(GROUP) {
                let rows = GROUP.min(n - r0);
                // With one vector of queries, the same rows of the next block toward L2, one
                // line now and then over the products.
                let len = if vectors == 1 { job.prefetch.len() } else { 0 };
                let pf_bytes = ((r0 + rows) * d).min(len).saturating_sub(r0 * d) * 4;
                let pf_at = job.prefetch.as_ptr().wrapping_add(r0 * d).cast::<u8>();
                let mut pf = Spread::new(pf_at, pf_bytes, tiles(rows) * prep.n_pairs);
                let src = job.db.as_ptr().add(r0 * d).cast::<f32>();
                let scores = group_scores(q, src, d, rows, vectors, &mut pf);
                row_sizes::<T, MODE>(&job, r0, rows, &mut norms, &mut scales, &mut sizes);
                let exact_job = RowJob {
                    scale: if MODE == NORMS {
                        Some(&scales[..])
                    } else {
                        job.scale
                    },
                    ..job
                };
                for (r, (&score, &size)) in scores.iter().zip(&sizes).take(rows).enumerate() {
                    let row = r0 + r;
                    let pass =
                        test.row::<T, V, C>(&exact_job, candidates, row, score, size, &mut bars);
                    passed += usize::from(pass);
                }
            }
        }
        prep.count(n, passed);
    }

    /// The filter's scores of `rows` (at most `GROUP`) rows from `src` against the prepared
    /// queries `q` (`vectors` a pair), query `i` in lane `i`: a whole group in two tiles of
    /// `HALF` rows, the last rows of a scan one at a time (`tiles` calls of `products`).
    ///
    /// # Safety
    /// As `filter`; `src` holds `rows * d` values, `q` `d / 2 * vectors` vectors.
    #[inline(always)]
    unsafe fn group_scores(
        q: *const f32,
        src: *const f32,
        d: usize,
        rows: usize,
        vectors: usize,
        pf: &mut Spread,
    ) -> [__m512; GROUP] {
        let mut out = [_mm512_setzero_ps(); GROUP];
        // SAFETY: forwarded; each call's rows lie within the group's.
        unsafe {
            if rows == GROUP {
                let high = src.add(HALF * d);
                let (low, high) = if vectors == 1 {
                    (
                        products::<HALF, 1>(q, src, d, pf),
                        products::<HALF, 1>(q, high, d, pf),
                    )
                } else {
                    (
                        products::<HALF, 2>(q, src, d, pf),
                        products::<HALF, 2>(q, high, d, pf),
                    )
                };
                out[..HALF].copy_from_slice(&low);
                out[HALF..].copy_from_slice(&high);
            } else {
                for (r, score) in out.iter_mut().enumerate().take(rows) {
                    let at = src.add(r * d);
                    [*score] = if vectors == 1 {
                        products::<1, 1>(q, at, d, pf)
                    } else {
                        products::<1, 2>(q, at, d, pf)
                    };
                }
            }
        }
        out
    }

    /// Calls of `products` that `group_scores` makes for `rows` rows.
    fn tiles(rows: usize) -> usize {
        if rows == GROUP {
            GROUP / HALF
        } else {
            rows
        }
    }

    /// `R` rows (`d` apart from `rows`) against the queries `q`, `VECS` vectors a pair of
    /// coordinates (a step of `pf` per pair with one vector); then each row's even and odd
    /// sums added, query `i` to lane `i` (lanes past the queries hold what they hold). Not
    /// inlined: on its own the compiler keeps the accumulators in registers.
    ///
    /// # Safety
    /// As `filter`; `rows` holds `R * d` values, `q` `d / 2 * VECS` vectors.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn products<const R: usize, const VECS: usize>(
        q: *const f32,
        rows: *const f32,
        d: usize,
        pf: &mut Spread,
    ) -> [__m512; R] {
        // SAFETY: forwarded.
        unsafe {
            match d {
                // The rows' offsets then constants (`R` row pointers do not fit the registers).
                384 => products_in::<R, VECS>(q, rows, 384, pf),
                768 => products_in::<R, VECS>(q, rows, 768, pf),
                _ => products_in::<R, VECS>(q, rows, d, pf),
            }
        }
    }

    /// # Safety
    /// As `products`.
    #[inline(always)]
    unsafe fn products_in<const R: usize, const VECS: usize>(
        q: *const f32,
        rows: *const f32,
        d: usize,
        pf: &mut Spread,
    ) -> [__m512; R] {
        // SAFETY: every read lies within the rows (pair j of a row: values 2j and 2j + 1 < d)
        // or the queries.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); VECS]; R];
            let mut qv = [_mm512_setzero_ps(); VECS];
            // A copy the compiler keeps in registers.
            let mut spread = *pf;
            // The rows `ahead_tiles` tiles on (as many lines as this tile's), a line a pair.
            let ahead = rows.wrapping_add(ahead_tiles(VECS) * R * d).cast::<i8>();
            for j in 0..d / 2 {
                if VECS == 1 {
                    spread.step();
                }
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(j * 64));
                for (v, qv) in qv.iter_mut().enumerate() {
                    *qv = _mm512_loadu_ps(q.add((j * VECS + v) * LANES));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = rows.add(r * d + 2 * j).cast::<f64>().read_unaligned();
                    let x = _mm512_castpd_ps(_mm512_set1_pd(pair));
                    for (a, &qv) in acc.iter_mut().zip(&qv) {
                        *a = _mm512_fmadd_ps(qv, x, *a);
                    }
                }
            }
            *pf = spread;
            // Lanes 2i and 2i + 1 of a vector: query i's even and odd sums. (No closures
            // here: they would not inherit the target features, and the intrinsics in them
            // would be calls.)
            let evens =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let mut out = [_mm512_setzero_ps(); R];
            for (out, acc) in out.iter_mut().zip(&acc) {
                let low = _mm512_add_ps(acc[0], _mm512_permute_ps::<0xB1>(acc[0]));
                let last = acc[VECS - 1];
                let high = _mm512_add_ps(last, _mm512_permute_ps::<0xB1>(last));
                *out = _mm512_permutex2var_ps(low, evens, high);
            }
            out
        }
    }

    /// The pair filter's scores, before any bound, of `rows` (`d` values each): one
    /// `[f32; LANES]` per row.
    ///
    /// # Safety
    /// The CPU must have avx512f, avx2 and fma; `prep` made for the pair filter and `d`.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(in super::super) unsafe fn filter_scores(
        prep: &FilterQueries,
        rows: &[f32],
        d: usize,
    ) -> Vec<[f32; LANES]> {
        assert!(prep.products == Products::F32Pairs && prep.n_pairs * 2 == d);
        let n = rows.len() / d;
        let mut pf = Spread::new(std::ptr::null(), 0, 1);
        let q = prep.pairs.as_ptr().cast::<f32>();
        let mut scores = Vec::new();
        for r0 in (0..n).step_by(GROUP) {
            let count = GROUP.min(n - r0);
            // SAFETY: forwarded; the group's rows lie within `rows`.
            let group = unsafe {
                group_scores(q, rows[r0 * d..].as_ptr(), d, count, prep.vectors, &mut pf)
            };
            for score in group.iter().take(count) {
                let mut out = [0.0f32; LANES];
                // SAFETY: `out` holds LANES values.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), *score) };
                scores.push(out);
            }
        }
        scores
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(super) use x86::filter_scores;
