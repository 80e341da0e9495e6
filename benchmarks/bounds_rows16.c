/* Lower bounds for a 16-query search of float32 rows on an AVX-512 CPU, for
 * benchmarks/bench_bounds.py (compiled there with `cc -O3 -march=native`). Not part of the
 * package: each loop is the least work of its kind, with no selection, no bars and no checks.
 *
 * read:     one streaming sum of the rows (four 512-bit chains).
 * f32_rows: sixteen queries in the lanes of a vector times each database value broadcast
 *           (the row-streaming kernel's loop: 384 multiply-adds a row at d = 384), sixteen rows
 *           a group, the group four ahead prefetched; with `norms`, each group's exact float64
 *           sums of squares (convert, then multiply-add) after its scores, while it is in L1.
 * f32_pair_rows: the same products in another register tile: fourteen rows a group, each
 *           pair of a row's coordinates broadcast at once (vbroadcastsd) against two vectors
 *           of eight queries x the pair's two coordinates, so that one load feeds two
 *           multiply-adds (the loop above needs a load for each); the pair's two partial sums
 *           are added at the end of the row. The fastest float32 loop found for 16 queries.
 * bf16_rows: the same with each group's rows rounded to bfloat16 pairs first (vcvtne2ps2bf16)
 *           and vdpbf16ps: two products a lane per instruction, half the instructions.
 * i8_rows:  the same with each group's rows quantised to bytes first: one scale a row (its
 *           largest magnitude over 127), round(x / scale) + 128 by one multiply-add and a
 *           conversion, packed to unsigned bytes; then vpdpbusd against signed query bytes:
 *           four products a lane per instruction; then the offset's correction (a constant a
 *           query) and both scales.
 * i8_copy_rows: i8_rows's products on a byte copy of the rows made beforehand (a cache).
 *
 * Each returns the largest score it computed, which bench_bounds.py checks against NumPy's.
 */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>

#define G 16

#ifdef __AVX512F__

float read_rows(const float *x, size_t values) {
    __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 64 <= values; i += 64) {
        a = _mm512_add_ps(a, _mm512_loadu_ps(x + i));
        b = _mm512_add_ps(b, _mm512_loadu_ps(x + i + 16));
        c = _mm512_add_ps(c, _mm512_loadu_ps(x + i + 32));
        d = _mm512_add_ps(d, _mm512_loadu_ps(x + i + 48));
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
    for (; i < values; i++) s += x[i];
    return s;
}

static void sums_of_squares(const float *rows, size_t n, size_t dim, double *out) {
    for (size_t r = 0; r < n; r++) {
        const float *x = rows + r * dim;
        __m512d a = _mm512_setzero_pd(), b = a;
        for (size_t k = 0; k + 16 <= dim; k += 16) {
            __m512d u = _mm512_cvtps_pd(_mm256_loadu_ps(x + k));
            __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + k + 8));
            a = _mm512_fmadd_pd(u, u, a);
            b = _mm512_fmadd_pd(v, v, b);
        }
        out[r] = _mm512_reduce_add_pd(_mm512_add_pd(a, b));
    }
}

/* q: dim x 16 (coordinate-major, one lane a query); rows: n x dim. Inlined into `f32_rows`
 * with dim a constant where it is 384, so that the rows' offsets are constants as well. */
static inline __attribute__((always_inline)) float f32_rows_at(
    const float *q, const float *rows, size_t n, size_t dim, double *norms) {
    __m512 best = _mm512_set1_ps(-1e30f);
    const char *end = (const char *)(rows + n * dim);
    for (size_t r0 = 0; r0 + G <= n; r0 += G) {
        const float *base = rows + r0 * dim;
        const char *ahead = (const char *)(base + 4 * G * dim);
        __m512 acc[G];
        for (int r = 0; r < G; r++) acc[r] = _mm512_setzero_ps();
        for (size_t k = 0; k < dim; k++) {
            if (ahead < end) _mm_prefetch(ahead, _MM_HINT_T0);
            ahead += G * sizeof(float);
            __m512 qk = _mm512_loadu_ps(q + k * 16);
            for (int r = 0; r < G; r++)
                acc[r] = _mm512_fmadd_ps(qk, _mm512_set1_ps(base[r * dim + k]), acc[r]);
        }
        if (norms) sums_of_squares(base, G, dim, norms + r0);
        for (int r = 0; r < G; r++) best = _mm512_max_ps(best, acc[r]);
    }
    return _mm512_reduce_max_ps(best);
}

float f32_rows(const float *q, const float *rows, size_t n, size_t dim, double *norms) {
    if (dim % 16) return NAN; /* the norms' loop takes whole vectors */
    return dim == 384 ? f32_rows_at(q, rows, n, 384, norms) : f32_rows_at(q, rows, n, dim, norms);
}
/* q2: dim/2 x 32 (per coordinate pair, two vectors: lane 2i + c of vector v holds query 8v + i
 * at coordinate 2p + c); rows: n x dim, R rows a group. */
static inline __attribute__((always_inline)) __m512 f32_pair_group(
    const float *q2, const float *base, size_t dim, int R, const char *ahead, const char *end,
    __m512 best) {
    __m512 a[14], b[14];
    for (int r = 0; r < R; r++) a[r] = b[r] = _mm512_setzero_ps();
    for (size_t k = 0; k < dim; k += 2) {
        if (ahead + 64 < end) {
            _mm_prefetch(ahead, _MM_HINT_T0);
            _mm_prefetch(ahead + 64, _MM_HINT_T0);
        }
        ahead += 128;
        __m512 qa = _mm512_loadu_ps(q2 + k * 16), qb = _mm512_loadu_ps(q2 + k * 16 + 16);
        for (int r = 0; r < R; r++) {
            double pair;
            __builtin_memcpy(&pair, base + r * dim + k, sizeof pair);
            __m512 x = _mm512_castpd_ps(_mm512_set1_pd(pair));
            a[r] = _mm512_fmadd_ps(qa, x, a[r]);
            b[r] = _mm512_fmadd_ps(qb, x, b[r]);
        }
    }
    for (int r = 0; r < R; r++) { /* lanes 2i and 2i + 1 both end as query i's score */
        __m512 s = _mm512_add_ps(a[r], _mm512_permute_ps(a[r], 0xB1));
        __m512 t = _mm512_add_ps(b[r], _mm512_permute_ps(b[r], 0xB1));
        best = _mm512_max_ps(best, _mm512_max_ps(s, t));
    }
    return best;
}

static inline __attribute__((always_inline)) float f32_pair_rows_at(
    const float *q2, const float *rows, size_t n, size_t dim, double *norms) {
    enum { P = 14 };
    __m512 best = _mm512_set1_ps(-1e30f);
    const char *end = (const char *)(rows + n * dim);
    size_t r0 = 0;
    for (; r0 + P <= n; r0 += P) {
        const float *base = rows + r0 * dim;
        best = f32_pair_group(q2, base, dim, P, (const char *)(base + 4 * P * dim), end, best);
        if (norms) sums_of_squares(base, P, dim, norms + r0);
    }
    for (; r0 < n; r0++) { /* the last rows, one a group */
        const float *base = rows + r0 * dim;
        best = f32_pair_group(q2, base, dim, 1, end, end, best);
        if (norms) sums_of_squares(base, 1, dim, norms + r0);
    }
    return _mm512_reduce_max_ps(best);
}

float f32_pair_rows(const float *q2, const float *rows, size_t n, size_t dim, double *norms) {
    if (dim % 16) return NAN; /* the norms' loop takes whole vectors */
    return dim == 384 ? f32_pair_rows_at(q2, rows, n, 384, norms)
                      : f32_pair_rows_at(q2, rows, n, dim, norms);
}
#endif

#ifdef __AVX512BF16__
/* pairs: dim/2 x 16 bfloat16 pairs of the queries (coordinate pair-major, one lane a query);
 * dim a multiple of 32, at most 2048. */
static inline __attribute__((always_inline)) float bf16_rows_at(
    const unsigned *pairs, const float *rows, size_t n, size_t dim, double *norms) {
    __m512 best = _mm512_set1_ps(-1e30f);
    const char *end = (const char *)(rows + n * dim);
    unsigned converted[G * 1024] __attribute__((aligned(64)));
    size_t half = dim / 2;
    for (size_t r0 = 0; r0 + G <= n; r0 += G) {
        const float *base = rows + r0 * dim;
        const char *ahead = (const char *)(base + 4 * G * dim);
        for (int r = 0; r < G; r++)
            for (size_t k = 0; k < dim; k += 32) {
                __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(base + r * dim + k + 16),
                                                 _mm512_loadu_ps(base + r * dim + k));
                _mm512_store_si512((void *)(converted + r * half + k / 2), (__m512i)h);
            }
        if (norms) sums_of_squares(base, G, dim, norms + r0);
        __m512 acc[G];
        for (int r = 0; r < G; r++) acc[r] = _mm512_setzero_ps();
        for (size_t j = 0; j < half; j++) {
            if (ahead < end) {
                _mm_prefetch(ahead, _MM_HINT_T0);
                _mm_prefetch(ahead + 64, _MM_HINT_T0);
            }
            ahead += 128;
            __m512bh qj = (__m512bh)_mm512_loadu_si512((const void *)(pairs + j * 16));
            for (int r = 0; r < G; r++)
                acc[r] = _mm512_dpbf16_ps(
                    acc[r], qj, (__m512bh)_mm512_set1_epi32((int)converted[r * half + j]));
        }
        for (int r = 0; r < G; r++) best = _mm512_max_ps(best, acc[r]);
    }
    return _mm512_reduce_max_ps(best);
}

float bf16_rows(const unsigned *pairs, const float *rows, size_t n, size_t dim, double *norms) {
    if (dim % 32 || dim > 2048) return NAN; /* whole conversions, into `converted` */
    return dim == 384 ? bf16_rows_at(pairs, rows, n, 384, norms)
                      : bf16_rows_at(pairs, rows, n, dim, norms);
}
#endif

#ifdef __AVX512VNNI__
/* The largest of `best` and the scores of a group's G rows of bytes (`words`, `quads` words a
 * row, unsigned: round(x / scale) + 128) against the query bytes of `q8` (as i8_rows takes
 * them), with the offset's correction and both scales. One line from `ahead` on (while below
 * `end`) is prefetched per word of a row: at d = 384, 96 lines a group. */
static inline __attribute__((always_inline)) __m512 i8_group(
    const unsigned *q8, const unsigned *words, const float *row_scales, size_t quads,
    const char *ahead, const char *end, __m512 best) {
    __m512i correction = _mm512_loadu_si512((const void *)(q8 + quads * 16));
    __m512 q_scale = _mm512_loadu_ps((const float *)(q8 + quads * 16 + 16));
    __m512i acc[G];
    for (int r = 0; r < G; r++) acc[r] = _mm512_setzero_si512();
    for (size_t j = 0; j < quads; j++) {
        if (ahead < end) _mm_prefetch(ahead, _MM_HINT_T0);
        ahead += 64;
        __m512i qj = _mm512_loadu_si512((const void *)(q8 + j * 16));
        for (int r = 0; r < G; r++) {
            __m512i xj = _mm512_set1_epi32((int)words[r * quads + j]);
            acc[r] = _mm512_dpbusd_epi32(acc[r], xj, qj);
        }
    }
    for (int r = 0; r < G; r++) {
        __m512 dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r], correction));
        __m512 scales = _mm512_mul_ps(q_scale, _mm512_set1_ps(row_scales[r]));
        best = _mm512_max_ps(best, _mm512_mul_ps(dots, scales));
    }
    return best;
}

/* q8: dim/4 x 16 words, each four signed query bytes (quad-major, one lane a query), then 16
 * int32 (each query's bytes summed, times 128) and 16 float32 (the queries' scales); dim a
 * multiple of 64, at most 2048. A row's bytes leave the packs interleaved by 128-bit lane, and
 * the queries' bytes are laid out alike (bench_bounds.py). */
static inline __attribute__((always_inline)) float i8_rows_at(
    const unsigned *q8, const float *rows, size_t n, size_t dim, double *norms) {
    __m512 best = _mm512_set1_ps(-1e30f);
    const char *end = (const char *)(rows + n * dim);
    unsigned converted[G * 512] __attribute__((aligned(64)));
    float scale[G];
    __m512 offset = _mm512_set1_ps(128.0f);
    for (size_t r0 = 0; r0 + G <= n; r0 += G) {
        const float *base = rows + r0 * dim;
        const char *ahead = (const char *)(base + 4 * G * dim);
        for (int r = 0; r < G; r++) {
            const float *x = base + r * dim;
            __m512 m0 = _mm512_setzero_ps(), m1 = m0;
            for (size_t k = 0; k < dim; k += 32) {
                m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
                m1 = _mm512_max_ps(m1, _mm512_abs_ps(_mm512_loadu_ps(x + k + 16)));
            }
            float top = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
            scale[r] = top / 127.0f;
            __m512 inv = _mm512_set1_ps(top > 0 ? 127.0f / top : 0.0f);
            for (size_t k = 0; k < dim; k += 64) {
                __m512i v[4];
                for (int i = 0; i < 4; i++) {
                    __m512 t = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * i), inv, offset);
                    v[i] = _mm512_cvtps_epi32(t);
                }
                __m512i lo = _mm512_packus_epi32(v[0], v[1]);
                __m512i hi = _mm512_packus_epi32(v[2], v[3]);
                void *at = (char *)converted + r * dim + k;
                _mm512_store_si512(at, _mm512_packus_epi16(lo, hi));
            }
        }
        if (norms) sums_of_squares(base, G, dim, norms + r0);
        best = i8_group(q8, converted, scale, dim / 4, ahead, end, best);
    }
    return _mm512_reduce_max_ps(best);
}

float i8_rows(const unsigned *q8, const float *rows, size_t n, size_t dim, double *norms) {
    if (dim % 64 || dim > 2048) return NAN; /* whole packs, into `converted` */
    return dim == 384 ? i8_rows_at(q8, rows, n, 384, norms) : i8_rows_at(q8, rows, n, dim, norms);
}

/* i8_copy_rows: the products of i8_rows on a copy of the rows quantised beforehand (bytes: n x
 * dim unsigned bytes, round(x / scale) + 128 in coordinate order; scales: one a row), read
 * from memory in place of the float32 rows: what a repeat search over a cached byte copy of
 * the database would at least cost. q8 as for i8_rows, in coordinate order. */
static inline __attribute__((always_inline)) float i8_copy_rows_at(
    const unsigned *q8, const unsigned char *bytes, const float *scales, size_t n, size_t dim) {
    __m512 best = _mm512_set1_ps(-1e30f);
    const char *end = (const char *)(bytes + n * dim);
    for (size_t r0 = 0; r0 + G <= n; r0 += G) {
        const unsigned *words = (const unsigned *)(bytes + r0 * dim);
        const char *ahead = (const char *)(bytes + (r0 + 4 * G) * dim);
        best = i8_group(q8, words, scales + r0, dim / 4, ahead, end, best);
    }
    return _mm512_reduce_max_ps(best);
}

float i8_copy_rows(const unsigned *q8, const unsigned char *bytes, const float *scales, size_t n,
                   size_t dim) {
    if (dim % 64 || dim > 2048) return NAN; /* as i8_rows */
    return dim == 384 ? i8_copy_rows_at(q8, bytes, scales, n, 384)
                      : i8_copy_rows_at(q8, bytes, scales, n, dim);
}
#endif
