# cython: freethreading_compatible = True
"""One pass over order rows sorted by (merchant_id, customer_id, order_ts).

The kernel emits int64 partial sums per (merchant, period) — the columns of
``PARTIAL_COLUMNS`` — and nothing else: ratios, buckets, grouping and YoY are
finalize code (SPEC §5-7). It knows nothing about files, chunks or threads.

Each row adds its contribution to the partials of its (merchant, period)
directly, without branching on whether it starts a store-customer or a run
(a store-customer's consecutive orders in one period): those facts are 0/1
values that are added, so the loop has no data-dependent branches but the
rare ones (a new merchant, a bad row).

Without refunds most rows go through the block path instead (``lm_block``):
64 rows of one merchant that start a run are checked together (order,
ranges, merchant: or-ed up, in AVX2 where the CPU has it). A block whose
timestamps lie in at most five periods (a "year" block, mostly) is done as
bitmasks: each row's period from compares with the period ends
(``period_ends``), store-customer and run starts eight or four rows a
compare, counts as popcounts per period, amounts as masked vector sums,
member rows as reward rows filled to their runs' ends, their revenue and the
reward rows' as sums over set bits eight or four a branch-free step (AVX2
copy; the scalar copy loops a bit a step); the block's last run,
which may go on past the block, is left out. In any other block (most
"month" blocks: a generated one spans 45-48 months) each row adds its revenue
and one packed word of five counts to its period (the words computed four
rows a step in AVX2 from the rows' periods and customers), and the
rows of the block's last run are taken back; reward rows (a minority) then
add their counts, and their runs the member counts, found from the block's
run-start bitmask. A block with a bad row, an overflow or one run over all
64 rows is taken back whole and the row loop does those rows, so errors name
the same row.

State lives in a ``ScanState`` and carries across calls, so a store-customer
split over two record batches is one store-customer. A call stops early and
says why (``NEED_SPACE`` when the caller-owned output is full, or an input
error at a row); it is resumable at the row it names.
"""
import numpy as np

from loyaltymetrics.periods import check_period_table, check_merchant_zones

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint64_t
from _types cimport customer_key_t, merchant_key_t, order_ts_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline int lm_add_overflows(int64_t a, int64_t b, int64_t *out) {
        return __builtin_add_overflow(a, b, out);
    }

    /* The row loop's rare branch (a new merchant) calls these. They are kept out of line: inlined
       in the 16 copies of the loop they would use up GCC's inline-unit-growth budget, and
       refund_row, the body of the refunds loop, would be called instead of inlined (its run
       cursor forced into memory: +20% of that loop's instructions). */
    #if defined(__GNUC__)
    #define LM_RARE __attribute__((noinline, cold))
    #else
    #define LM_RARE
    #endif

    typedef struct { int64_t lo, hi; } lm_range;

    /* The periods of timestamps lo and hi in one zone's period table ((INT64_MAX, -1) if lo > hi). */
    static LM_RARE lm_range lm_touched_periods(const int64_t *table, int shift, int64_t lo, int64_t hi) {
        lm_range r = {INT64_MAX, -1};
        int64_t b;
        if (lo > hi) return r;
        b = (lo >> shift) * 2;
        r.lo = table[b] + (lo > table[b + 1]);
        b = (hi >> shift) * 2;
        r.hi = table[b] + (hi > table[b + 1]);
        return r;
    }

    /* The period table of merchant m's zone: binary search of the sorted zone_merchant, else zone 0. */
    static LM_RARE const int64_t *lm_zone_table(const int64_t *tables, Py_ssize_t stride,
                                                const int64_t *zone_merchant, const int32_t *zone_index,
                                                Py_ssize_t n_zoned, int64_t m) {
        Py_ssize_t lo = 0, hi = n_zoned, mid;
        while (lo < hi) {
            mid = (lo + hi) >> 1;
            if (zone_merchant[mid] < m) lo = mid + 1; else hi = mid;
        }
        if (lo < n_zoned && zone_merchant[lo] == m) return tables + (Py_ssize_t)zone_index[lo] * stride;
        return tables;
    }

    /* Fold a merchant's earliest and latest order (lo > hi: none) into the state's: ties in the
       timestamp go to the smaller merchant_id first and the larger last. */
    static LM_RARE void lm_fold_orders(int64_t *first_ts, int64_t *first_merchant, int64_t *last_ts,
                                       int64_t *last_merchant, int64_t merchant, int64_t lo, int64_t hi) {
        if (lo > hi) return;
        if (lo < *first_ts || (lo == *first_ts && merchant < *first_merchant)) {
            *first_ts = lo;
            *first_merchant = merchant;
        }
        if (hi > *last_ts || (hi == *last_ts && merchant > *last_merchant)) {
            *last_ts = hi;
            *last_merchant = merchant;
        }
    }

    /* ---- The block path (refunds off): 64 rows at a time, runs complete in a block. ----
       Slot LM_PACKED of a period's acc row holds five 12-bit counters (orders, customers,
       new_customers, retained_customers, repeat_customers) that block rows add in one store;
       lm_fold_packed moves them into their columns before fewer than 64 of 4096 are left. */
    enum { LM_ORDERS, LM_REVENUE, LM_CUSTOMERS, LM_NEW_CUSTOMERS, LM_REPEAT_CUSTOMERS,
           LM_ORDERS_FROM_REPEAT, LM_RETAINED, LM_REWARD_ORDERS, LM_REWARD_REVENUE,
           LM_REWARD_CUSTOMERS, LM_MEMBER_ORDERS, LM_MEMBER_REVENUE, LM_MEMBER_REPEAT,
           LM_PACKED, LM_STRIDE = 16 };
    #define LM_BLOCK 64
    #define LM_FOLD_EVERY (4096 - LM_BLOCK)

    static LM_RARE void lm_fold_packed(int64_t *acc_base, lm_range r) {
        int64_t p;
        for (p = r.lo; p <= r.hi; p++) {
            int64_t *acc = acc_base + p * LM_STRIDE;
            uint64_t v = (uint64_t)acc[LM_PACKED];
            if (!v) continue;
            acc[LM_ORDERS] += v & 0xfff;
            acc[LM_CUSTOMERS] += (v >> 12) & 0xfff;
            acc[LM_NEW_CUSTOMERS] += (v >> 24) & 0xfff;
            acc[LM_RETAINED] += (v >> 36) & 0xfff;
            acc[LM_REPEAT_CUSTOMERS] += (v >> 48) & 0xfff;
            acc[LM_PACKED] = 0;
        }
    }

    #define LM_LOAD(ptr, size, j) ((size) == 4 ? (int64_t)((const int32_t *)(ptr))[j] : ((const int64_t *)(ptr))[j])

    typedef struct { int64_t prev_customer, prev_ts, run_period, order_lo, order_hi; } lm_block_cursor;

    /* The sum of a[j] over the set bits j of x (bit 63 clear; the sum < 2^63): STEP bits a step
       without a branch (bit 63 set in y marks the end: a step past x's last bit adds a[63],
       taken back at the end, in uint64, exact mod 2^64), so the loop's exit, taken after one
       step when x has at most STEP bits, is predicted. A loop of a bit a step mispredicts its
       exit once a mask: in the few-period block, two a period, that was a third of the time of
       lm_block_448 (issue 16); these sums add instructions (1 + 4 a slot) but save most of it. */
    #define LM_DEFINE_BITS_SUM(NAME, STEP) \
        static inline __attribute__((always_inline)) int64_t NAME(const int64_t *a, uint64_t x) { \
            uint64_t s = 0, y = x | (1ULL << 63), n = 0; \
            int k; \
            do { \
                _Pragma("GCC unroll 8") for (k = 0; k < STEP; k++) { \
                    s += (uint64_t)a[__builtin_ctzll(y)]; \
                    y = (y & (y - 1)) | (1ULL << 63); \
                } \
                n += STEP; \
            } while (y != (1ULL << 63)); \
            return (int64_t)(s - (n - (uint64_t)__builtin_popcountll(x)) * (uint64_t)a[63]); \
        }
    LM_DEFINE_BITS_SUM(lm_bits_sum8, 8)
    LM_DEFINE_BITS_SUM(lm_bits_sum4, 4)

    /* The reward flags of rows bit0..bit0+63 of an LSB bitmap, row j at bit j. */
    static inline uint64_t lm_reward_word(const uint8_t *bits, Py_ssize_t bit0) {
        uint64_t word;
        memcpy(&word, bits + (bit0 >> 3), 8);
        if (bit0 & 7) word = (word >> (bit0 & 7)) | ((uint64_t)bits[(bit0 >> 3) + 8] << (64 - (bit0 & 7)));
        return word;
    }

    /* A row's packed counts by its code: bit 0 a new store-customer (nc); bits 1-2 its period
       after the previous row's: 0 the same, 1 the next, 2 another; bit 3 the previous row
       started a run. Bit 63 of the value says the row starts a run (nr = nc | !same); it
       toggles bit 63 of the packed slot, which no counter reaches (fields are 12 bits: 0..59). */
    #define LM_W(nc, same, next, nr_prev) \
        (1ULL + ((uint64_t)((nc) | !(same)) << 12) + ((uint64_t)(nc) << 24) \
         + ((uint64_t)(!(nc) & (next)) << 36) + ((uint64_t)((nr_prev) & !((nc) | !(same))) << 48) \
         + ((uint64_t)((nc) | !(same)) << 63))
    #define LM_W2(s, n, r) LM_W(0, s, n, r), LM_W(1, s, n, r)
    static const uint64_t lm_packed_by_code[16] = {
        LM_W2(1, 0, 0), LM_W2(0, 1, 0), LM_W2(0, 0, 0), 0, 0,
        LM_W2(1, 0, 1), LM_W2(0, 1, 1), LM_W2(0, 0, 1), 0, 0};

    /* Rows 1..63 of a block against the row before each: bit 63 of .bad set if a row is out of
       order (a smaller customer_id, or the same and an earlier order_ts); .ts_or: the or of their
       timestamps (a range check); their earliest and latest timestamp. One function a key/ts
       type pair, in an AVX2 and a baseline copy (GCC picks one when the module loads): AVX2
       compares four int64 rows at once, the baseline one row at a time. */
    typedef struct { uint64_t bad, ts_or; int64_t lo, hi; } lm_checks;
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(LM_NO_CLONES)
    #define LM_CLONES __attribute__((target_clones("avx2", "default"), noinline))
    #else
    #define LM_CLONES __attribute__((noinline))
    #endif
    #define LM_DEFINE_CHECKS(NAME, CT, TT) \
        static LM_CLONES lm_checks NAME(const CT *c, const TT *t, int64_t lo, int64_t hi) { \
            uint64_t bad = 0, ts_or = 0; \
            int j; \
            for (j = 1; j < LM_BLOCK; j++) { \
                int64_t cj = c[j], tj = t[j], pt = t[j - 1]; \
                uint64_t d = (uint64_t)cj - (uint64_t)(int64_t)c[j - 1]; \
                uint64_t lt = (uint64_t)(cj < (int64_t)c[j - 1]) << 63; \
                ts_or |= (uint64_t)tj; \
                /* a smaller customer; the same one and t - pt < 0 (exact: both in [0, 2^63) */ \
                /* when ts_or passes) */ \
                bad |= lt | (((uint64_t)tj - (uint64_t)pt) & -(uint64_t)(d == 0)); \
                lo = tj < lo ? tj : lo; \
                hi = tj > hi ? tj : hi; \
            } \
            { lm_checks r = {bad, ts_or, lo, hi}; return r; } \
        }
    LM_DEFINE_CHECKS(lm_checks_44, int32_t, int32_t)
    LM_DEFINE_CHECKS(lm_checks_48, int32_t, int64_t)
    LM_DEFINE_CHECKS(lm_checks_84, int64_t, int32_t)
    LM_DEFINE_CHECKS(lm_checks_88, int64_t, int64_t)

    /* The few-period block (lm_block_body): rows 0..63 as bitmasks, row j at bit j. .nc: the
       row's customer is not the row before's (row 0: not `pc`); .g[k]: t > e[k], the last
       timestamp of the block's k-th period (the block's periods are q_lo + (t > e[0]) + ... +
       (t > e[3])); .s[0]: the sum of all amounts, .s[k + 1]: of the rows with t > e[k]
       (amounts < 2^57: no sum overflows). One function a key/ts type pair, in an AVX2
       copy (8 int32 or 4 int64 keys a compare into a mask, 4 timestamps a compare, masked vector
       sums) and a scalar one; lm_block_body calls the AVX2 one where the CPU has AVX2
       (lm_cpu_avx2, set when the module loads). */
    typedef struct { uint64_t nc, g[4], s[5]; } lm_marks;
    #define LM_DEFINE_MARKS(NAME, CT, TT) \
        static __attribute__((noinline)) void NAME(const CT *c, const TT *t, const int64_t *a, int64_t pc, \
                                                   const int64_t *e, lm_marks *m) { \
            uint64_t nc = (uint64_t)((int64_t)c[0] != pc), g0 = 0, g1 = 0, g2 = 0, g3 = 0; \
            uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0; \
            int64_t e0 = e[0], e1 = e[1], e2 = e[2], e3 = e[3]; \
            int j; \
            for (j = 1; j < LM_BLOCK; j++) nc |= (uint64_t)(c[j] != c[j - 1]) << j; \
            for (j = 0; j < LM_BLOCK; j++) { \
                int64_t tj = t[j]; \
                uint64_t aj = (uint64_t)a[j], b0 = tj > e0, b1 = tj > e1, b2 = tj > e2, b3 = tj > e3; \
                g0 |= b0 << j; \
                g1 |= b1 << j; \
                g2 |= b2 << j; \
                g3 |= b3 << j; \
                s0 += aj; \
                s1 += aj & -b0; \
                s2 += aj & -b1; \
                s3 += aj & -b2; \
                s4 += aj & -b3; \
            } \
            m->nc = nc; m->g[0] = g0; m->g[1] = g1; m->g[2] = g2; m->g[3] = g3; \
            m->s[0] = s0; m->s[1] = s1; m->s[2] = s2; m->s[3] = s3; m->s[4] = s4; \
        }
    LM_DEFINE_MARKS(lm_marks_44, int32_t, int32_t)
    LM_DEFINE_MARKS(lm_marks_48, int32_t, int64_t)
    LM_DEFINE_MARKS(lm_marks_84, int64_t, int32_t)
    LM_DEFINE_MARKS(lm_marks_88, int64_t, int64_t)

    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(LM_NO_CLONES)
    #define LM_HAVE_AVX2 1
    #include <immintrin.h>
    static int lm_cpu_avx2 = 0;
    static void lm_init_cpu(void) {
        __builtin_cpu_init();
        lm_cpu_avx2 = __builtin_cpu_supports("avx2") != 0;
    }
    /* Tests: run the scalar copy on a CPU with AVX2 (on = 0), or the AVX2 one again if it has it. */
    static int lm_use_avx2(int on) {
        int was = lm_cpu_avx2;
        __builtin_cpu_init();
        lm_cpu_avx2 = on && __builtin_cpu_supports("avx2");
        return was;
    }
    #define LM_AVX2 static inline __attribute__((target("avx2"), always_inline))
    /* Bit j of the result: c[j] != c[j - 1], for j = 1..63. */
    LM_AVX2 uint64_t lm_key_steps_4(const int32_t *c) {
        #define LM_NE8(p, q) ((uint64_t)(~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32( \
            _mm256_loadu_si256((const __m256i *)(p)), _mm256_loadu_si256((const __m256i *)(q))))) & 0xff))
        uint64_t m = LM_NE8(c + 1, c) << 1;
        int k;
        for (k = 8; k < LM_BLOCK; k += 8) m |= LM_NE8(c + k, c + k - 1) << k;
        #undef LM_NE8
        return m;
    }
    LM_AVX2 uint64_t lm_key_steps_8(const int64_t *c) {
        #define LM_NE4(p, q) ((uint64_t)(~_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64( \
            _mm256_loadu_si256((const __m256i *)(p)), _mm256_loadu_si256((const __m256i *)(q))))) & 0xf))
        uint64_t m = LM_NE4(c + 1, c) << 1;
        int k;
        for (k = 4; k < LM_BLOCK; k += 4) m |= LM_NE4(c + k, c + k - 1) << k;
        #undef LM_NE4
        return m;
    }
    /* Four rows of an int32 or int64 column (customers or timestamps) as four int64 lanes. */
    LM_AVX2 __m256i lm_load4_4(const int32_t *v) { return _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)v)); }
    LM_AVX2 __m256i lm_load4_8(const int64_t *v) { return _mm256_loadu_si256((const __m256i *)v); }
    LM_AVX2 uint64_t lm_hsum(__m256i v) {
        __m128i x = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        return (uint64_t)_mm_cvtsi128_si64(x) + (uint64_t)_mm_extract_epi64(x, 1);
    }
    #define LM_DEFINE_MARKS_AVX2(NAME, CT, TT, CS, TS) \
        static __attribute__((target("avx2"), noinline)) void NAME(const CT *c, const TT *t, const int64_t *a, \
                                                                   int64_t pc, const int64_t *e, lm_marks *m) { \
            __m256i e0 = _mm256_set1_epi64x(e[0]), e1 = _mm256_set1_epi64x(e[1]), e2 = _mm256_set1_epi64x(e[2]); \
            __m256i e3 = _mm256_set1_epi64x(e[3]); \
            __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0, s4 = s0; \
            uint64_t g0 = 0, g1 = 0, g2 = 0, g3 = 0; \
            int j; \
            for (j = 0; j < LM_BLOCK; j += 4) { \
                __m256i tj = lm_load4_##TS(t + j), aj = _mm256_loadu_si256((const __m256i *)(a + j)); \
                __m256i b0 = _mm256_cmpgt_epi64(tj, e0), b1 = _mm256_cmpgt_epi64(tj, e1); \
                __m256i b2 = _mm256_cmpgt_epi64(tj, e2), b3 = _mm256_cmpgt_epi64(tj, e3); \
                g0 |= (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(b0)) << j; \
                g1 |= (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(b1)) << j; \
                g2 |= (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(b2)) << j; \
                g3 |= (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(b3)) << j; \
                s0 = _mm256_add_epi64(s0, aj); \
                s1 = _mm256_add_epi64(s1, _mm256_and_si256(aj, b0)); \
                s2 = _mm256_add_epi64(s2, _mm256_and_si256(aj, b1)); \
                s3 = _mm256_add_epi64(s3, _mm256_and_si256(aj, b2)); \
                s4 = _mm256_add_epi64(s4, _mm256_and_si256(aj, b3)); \
            } \
            m->nc = lm_key_steps_##CS(c) | (uint64_t)((int64_t)c[0] != pc); \
            m->g[0] = g0; m->g[1] = g1; m->g[2] = g2; m->g[3] = g3; \
            m->s[0] = lm_hsum(s0); m->s[1] = lm_hsum(s1); m->s[2] = lm_hsum(s2); m->s[3] = lm_hsum(s3); \
            m->s[4] = lm_hsum(s4); \
        }
    LM_DEFINE_MARKS_AVX2(lm_marks_44_avx2, int32_t, int32_t, 4, 4)
    LM_DEFINE_MARKS_AVX2(lm_marks_48_avx2, int32_t, int64_t, 4, 8)
    LM_DEFINE_MARKS_AVX2(lm_marks_84_avx2, int64_t, int32_t, 8, 4)
    LM_DEFINE_MARKS_AVX2(lm_marks_88_avx2, int64_t, int64_t, 8, 8)
    /* lm_checks_* in AVX2 (their target_clones copies are auto-vectorized less well): rows
       1..4, then 4..7, 8..11, ..., 60..63 (row 4 twice: or-ed and min/max, no matter). */
    #define LM_DEFINE_CHECKS_AVX2(NAME, CT, TT, CS, TS) \
        static __attribute__((target("avx2"), noinline)) lm_checks NAME(const CT *c, const TT *t, int64_t lo, \
                                                                        int64_t hi) { \
            __m256i bad = _mm256_setzero_si256(), ts_or = bad; \
            __m256i vlo = _mm256_set1_epi64x(lo), vhi = _mm256_set1_epi64x(hi); \
            int64_t x[4]; \
            int j, k; \
            for (j = 0; j < LM_BLOCK; j += 4) { \
                int r = j ? j : 1; \
                __m256i cj = lm_load4_##CS(c + r), cp = lm_load4_##CS(c + r - 1); \
                __m256i tj = lm_load4_##TS(t + r), tp = lm_load4_##TS(t + r - 1); \
                /* a smaller customer; the same one and an earlier order_ts (signed: exact */ \
                /* when ts_or passes) */ \
                bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi64(cp, cj), \
                    _mm256_and_si256(_mm256_cmpeq_epi64(cp, cj), _mm256_cmpgt_epi64(tp, tj)))); \
                ts_or = _mm256_or_si256(ts_or, tj); \
                vlo = _mm256_blendv_epi8(vlo, tj, _mm256_cmpgt_epi64(vlo, tj)); \
                vhi = _mm256_blendv_epi8(vhi, tj, _mm256_cmpgt_epi64(tj, vhi)); \
            } \
            { \
                lm_checks out; \
                out.bad = _mm256_testz_si256(bad, bad) ? 0 : 1ULL << 63; \
                out.ts_or = lm_or4(ts_or); \
                _mm256_storeu_si256((__m256i *)x, vlo); \
                for (k = 0; k < 4; k++) lo = x[k] < lo ? x[k] : lo; \
                _mm256_storeu_si256((__m256i *)x, vhi); \
                for (k = 0; k < 4; k++) hi = x[k] > hi ? x[k] : hi; \
                out.lo = lo; \
                out.hi = hi; \
                return out; \
            } \
        }
    LM_AVX2 uint64_t lm_or4(__m256i v) {
        __m128i x = _mm_or_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        return (uint64_t)_mm_cvtsi128_si64(x) | (uint64_t)_mm_extract_epi64(x, 1);
    }
    LM_DEFINE_CHECKS_AVX2(lm_checks_44_avx2, int32_t, int32_t, 4, 4)
    LM_DEFINE_CHECKS_AVX2(lm_checks_48_avx2, int32_t, int64_t, 4, 8)
    LM_DEFINE_CHECKS_AVX2(lm_checks_84_avx2, int64_t, int32_t, 8, 4)
    LM_DEFINE_CHECKS_AVX2(lm_checks_88_avx2, int64_t, int64_t, 8, 8)
    /* The many-period block's packed words (lm_packed_by_code, four rows a step): q[j + 2] and
       c[j + 2] are row j's period and customer, q[1], c[1] the row before the block's and q[0],
       c[0] the same again (row 0's previous row then continues its run: no repeat bit, as in
       the row loop, where it starts a run anyway). Returns the run starts (row j at bit j). */
    static __attribute__((target("avx2"), noinline)) uint64_t lm_packed_avx2(const int64_t *q, const int64_t *c,
                                                                            uint64_t *packed) {
        const __m256i one = _mm256_set1_epi64x(1), k_nr = _mm256_set1_epi64x((int64_t)((1ULL << 12) | (1ULL << 63)));
        const __m256i k_nc = _mm256_set1_epi64x(1LL << 24), k_ret = _mm256_set1_epi64x(1LL << 36);
        const __m256i k_rep = _mm256_set1_epi64x(1LL << 48);
        uint64_t cont = 0;
        int j;
        for (j = 0; j < LM_BLOCK; j += 4) {
            __m256i q0 = _mm256_loadu_si256((const __m256i *)(q + j + 2));
            __m256i q1 = _mm256_loadu_si256((const __m256i *)(q + j + 1));
            __m256i q2 = _mm256_loadu_si256((const __m256i *)(q + j));
            __m256i c0 = _mm256_loadu_si256((const __m256i *)(c + j + 2));
            __m256i c1 = _mm256_loadu_si256((const __m256i *)(c + j + 1));
            __m256i c2 = _mm256_loadu_si256((const __m256i *)(c + j));
            __m256i eq = _mm256_cmpeq_epi64(c0, c1);                   /* not a new customer */
            __m256i next = _mm256_and_si256(eq, _mm256_cmpeq_epi64(q0, _mm256_add_epi64(q1, one)));
            __m256i on = _mm256_and_si256(eq, _mm256_cmpeq_epi64(q0, q1));     /* continues a run */
            __m256i on_prev = _mm256_and_si256(_mm256_cmpeq_epi64(c1, c2), _mm256_cmpeq_epi64(q1, q2));
            __m256i w = _mm256_or_si256(one, _mm256_andnot_si256(on, k_nr));
            w = _mm256_or_si256(w, _mm256_andnot_si256(eq, k_nc));
            w = _mm256_or_si256(w, _mm256_and_si256(next, k_ret));
            w = _mm256_or_si256(w, _mm256_and_si256(_mm256_andnot_si256(on_prev, on), k_rep));
            _mm256_storeu_si256((__m256i *)(packed + j), w);
            cont |= (uint64_t)_mm256_movemask_pd(_mm256_castsi256_pd(on)) << j;
        }
        return ~cont;
    }
    #define LM_MARKS(NAME, ...) (lm_cpu_avx2 ? NAME##_avx2(__VA_ARGS__) : NAME(__VA_ARGS__))
    #else
    #define LM_HAVE_AVX2 0
    static void lm_init_cpu(void) {}
    static int lm_use_avx2(int on) { (void)on; return 0; }
    #define lm_cpu_avx2 0           /* no AVX2 copy: the scalar one everywhere */
    #define LM_MARKS(NAME, ...) NAME(__VA_ARGS__)
    #endif

    /* Rows i..i+63 of one merchant (`merchant`, the previous row's too) as a block. Returns the
       rows done (> 0: rows [i, i + L), every run in them complete: row i + L starts a run), or
       -k: nothing done, the row loop takes the next k rows (row i does not start a run: 1; a bad
       row, an overflow, or one run over all 64 rows: LM_BLOCK).
       A block whose timestamps lie in at most five periods (`ends`: the zone's last timestamp of
       each period, NULL if not known) and whose amounts are < 2^57 is done as bitmasks
       (lm_marks): its counts are popcounts per period, its revenue five masked sums. Any other
       block adds its rows to `acc` as they come (revenue with its overflow check, the packed
       counts) and takes back the rows of the last run, perhaps incomplete; a bad row or an
       overflow takes back all. The earliest and latest order take in all 64 rows: the rows
       after L are the same merchant's, scanned next. */
    static inline __attribute__((always_inline)) Py_ssize_t lm_block_body(
            const void *merchants, int msize, const void *customers, int csize,
            const void *timestamps, int tsize, const int64_t *amounts,
            const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t i, int64_t merchant,
            const int64_t *table, const int64_t *ends, int shift, int64_t ts_max, int64_t *acc_base,
            lm_block_cursor *cur) {
        int64_t period_buf[LM_BLOCK + 2], cust[LM_BLOCK + 2];
        int64_t *period = period_buf + 2;
        uint64_t packed[LM_BLOCK];
        uint64_t runs = 0, any = 0, neg = 0, ts_or = 0, unsorted = 0, reward, nr = 0, w;
        uint64_t g0 = 0, g1 = 0, g2 = 0, g3 = 0;
        int64_t pc = cur->prev_customer, pt = cur->prev_ts, pp = cur->run_period;
        int64_t lo, hi, t, q, b, c, q_lo = 0, K = 0;
        int ts_bits = 63 - __builtin_clzll((uint64_t)ts_max + 1);     /* t < 2^ts_bits: valid */
        int few = 0;
        Py_ssize_t j, k, L, start, end;
        const void *cb = csize == 4 ? (const void *)((const int32_t *)customers + i)
                                    : (const void *)((const int64_t *)customers + i);
        const void *tb = tsize == 4 ? (const void *)((const int32_t *)timestamps + i)
                                    : (const void *)((const int64_t *)timestamps + i);
        /* Rows that are not the merchant's, negative amounts (loops the compiler vectorizes),
           rows out of order, timestamps out of range; the block's earliest and latest order. */
        if (msize == 4) {       /* four rows a 16-byte compare */
            uint32_t m32 = 0;
            for (j = 0; j < LM_BLOCK; j++) m32 |= (uint32_t)((const int32_t *)merchants)[i + j] ^ (uint32_t)merchant;
            any = m32;
        } else {
            for (j = 0; j < LM_BLOCK; j++) any |= (uint64_t)(((const int64_t *)merchants)[i + j] ^ merchant);
        }
        for (j = 0; j < LM_BLOCK; j++) neg |= (uint64_t)amounts[i + j];
        {
            lm_checks r;
            c = LM_LOAD(customers, csize, i);
            t = LM_LOAD(timestamps, tsize, i);
            if (csize == 4 && tsize == 4) r = LM_MARKS(lm_checks_44, (const int32_t *)cb, (const int32_t *)tb, t, t);
            else if (csize == 4) r = LM_MARKS(lm_checks_48, (const int32_t *)cb, (const int64_t *)tb, t, t);
            else if (tsize == 4) r = LM_MARKS(lm_checks_84, (const int64_t *)cb, (const int32_t *)tb, t, t);
            else r = LM_MARKS(lm_checks_88, (const int64_t *)cb, (const int64_t *)tb, t, t);
            /* Row 0 against the row before the block. */
            unsorted = r.bad | ((uint64_t)((c < pc) | ((c == pc) & (t < pt))) << 63);
            ts_or = r.ts_or | (uint64_t)t;
            lo = r.lo;
            hi = r.hi;
        }
        if (any | ((neg | unsorted) >> 63) | (ts_or >> ts_bits)) return -LM_BLOCK;
        if (ends && !(neg >> 57)) {
            b = (lo >> shift) * 2;
            q_lo = table[b] + (lo > table[b + 1]);
            b = (hi >> shift) * 2;
            K = table[b] + (hi > table[b + 1]) - q_lo;
            few = K <= 4;
        }
        if (few) {
            lm_marks m;
            uint64_t nc, up, upn, ret, rep, valid;
            int64_t q0, sum[5], rev[5];
            int64_t *acc;
            if (csize == 4 && tsize == 4)
                LM_MARKS(lm_marks_44, (const int32_t *)cb, (const int32_t *)tb, amounts + i, pc, ends + q_lo, &m);
            else if (csize == 4)
                LM_MARKS(lm_marks_48, (const int32_t *)cb, (const int64_t *)tb, amounts + i, pc, ends + q_lo, &m);
            else if (tsize == 4)
                LM_MARKS(lm_marks_84, (const int64_t *)cb, (const int32_t *)tb, amounts + i, pc, ends + q_lo, &m);
            else LM_MARKS(lm_marks_88, (const int64_t *)cb, (const int64_t *)tb, amounts + i, pc, ends + q_lo, &m);
            g0 = m.g[0]; g1 = m.g[1]; g2 = m.g[2]; g3 = m.g[3];
            nc = m.nc;
            /* Row i must start a run. */
            q0 = q_lo + (int64_t)((g0 & 1) + (g1 & 1) + (g2 & 1) + (g3 & 1));
            if (!(nc & 1) && q0 == pp) return -1;
            /* Rows 1..63 whose period is after the row before's by one or more (of the same
               customer a period never goes back: the rows are in order), by two or more. */
            {
                uint64_t u0 = g0 & ~(g0 << 1), u1 = g1 & ~(g1 << 1), u2 = g2 & ~(g2 << 1);
                uint64_t u3 = g3 & ~(g3 << 1);
                up = (u0 | u1 | u2 | u3) & ~1ULL;
                upn = ((u0 & (u1 | u2 | u3)) | (u1 & (u2 | u3)) | (u2 & u3)) & ~1ULL;
            }
            runs = nc | up | 1;
            ret = ~nc & up & ~upn;
            ret |= (uint64_t)(!(nc & 1) & (q0 == pp + 1));
            rep = ~runs & (runs << 1);
            /* The last run starts at row L; L == 0: one run, none done. */
            L = 63 - __builtin_clzll(runs);
            if (L == 0) return -LM_BLOCK;
            valid = (1ULL << L) - 1;
            for (k = 0; k < 5; k++) sum[k] = (int64_t)m.s[k];
            if (lm_cpu_avx2) {
                /* The last run's rows (L..63: row 63 and the set bits of ~valid below it), not
                   done, are in row L's period: taken back from the sums of its thresholds. */
                int64_t a = (int64_t)((uint64_t)amounts[i + 63]
                                      + (uint64_t)lm_bits_sum4(amounts + i, ~valid & ~(1ULL << 63)));
                sum[0] -= a;
                sum[1] -= a & -(int64_t)((g0 >> L) & 1);
                sum[2] -= a & -(int64_t)((g1 >> L) & 1);
                sum[3] -= a & -(int64_t)((g2 >> L) & 1);
                sum[4] -= a & -(int64_t)((g3 >> L) & 1);
            } else {
                for (j = L; j < LM_BLOCK; j++) {      /* the last run's rows: not done */
                    int64_t a = amounts[i + j];
                    sum[0] -= a;
                    sum[1] -= a & -(int64_t)((g0 >> j) & 1);
                    sum[2] -= a & -(int64_t)((g1 >> j) & 1);
                    sum[3] -= a & -(int64_t)((g2 >> j) & 1);
                    sum[4] -= a & -(int64_t)((g3 >> j) & 1);
                }
            }
            /* Period q_lo + k has the rows with t > e[k - 1] and not t > e[k] (K: q_hi - q_lo);
               every period's revenue is checked before any is added. */
            {
                uint64_t gk[6] = {~0ULL, g0, g1, g2, g3, 0};
                uint64_t member, fill, pro;
                for (k = 0; k <= K; k++)
                    if (__builtin_add_overflow(acc_base[(q_lo + k) * LM_STRIDE + LM_REVENUE],
                                               sum[k] - (k < 4 ? sum[k + 1] : 0), &rev[k]))
                        return -LM_BLOCK;
                /* Member rows: the rows of a run with a reward row, the reward rows filled up
                   and down to their run's ends (Kogge-Stone fills stopped at run starts). */
                reward = lm_reward_word(bits, bit0) & valid;
                fill = reward;
                pro = ~runs;                        /* row j continues row j - 1's run */
                fill |= pro & (fill << 1); pro &= pro << 1;
                fill |= pro & (fill << 2); pro &= pro << 2;
                fill |= pro & (fill << 4); pro &= pro << 4;
                fill |= pro & (fill << 8); pro &= pro << 8;
                fill |= pro & (fill << 16); pro &= pro << 16;
                fill |= pro & (fill << 32);
                member = fill;
                fill = reward;
                pro = ~runs >> 1;                   /* row j + 1 continues row j's run */
                fill |= pro & (fill >> 1); pro &= pro >> 1;
                fill |= pro & (fill >> 2); pro &= pro >> 2;
                fill |= pro & (fill >> 4); pro &= pro >> 4;
                fill |= pro & (fill >> 8); pro &= pro >> 8;
                fill |= pro & (fill >> 16); pro &= pro >> 16;
                fill |= pro & (fill >> 32);
                member = (member | fill) & valid;
                for (k = 0; k <= K; k++) {
                    uint64_t in = valid & gk[k] & ~gk[k + 1], x;
                    int64_t rr = 0, mr = 0;
                    acc = acc_base + (q_lo + k) * LM_STRIDE;
                    acc[LM_REVENUE] = rev[k];
                    acc[LM_ORDERS] += __builtin_popcountll(in);
                    acc[LM_CUSTOMERS] += __builtin_popcountll(in & runs);
                    acc[LM_NEW_CUSTOMERS] += __builtin_popcountll(in & nc);
                    acc[LM_RETAINED] += __builtin_popcountll(in & ret);
                    acc[LM_REPEAT_CUSTOMERS] += __builtin_popcountll(in & rep);
                    /* Reward orders; member runs (a run is in one period): their first rows,
                       rows, second rows (repeat customers); revenue of both, over set bits. */
                    x = in & member;
                    if (!x) continue;
                    acc[LM_REWARD_ORDERS] += __builtin_popcountll(in & reward);
                    acc[LM_REWARD_CUSTOMERS] += __builtin_popcountll(x & runs);
                    acc[LM_MEMBER_ORDERS] += __builtin_popcountll(x);
                    acc[LM_MEMBER_REPEAT] += __builtin_popcountll(x & rep);
                    if (lm_cpu_avx2) {      /* eight and four bits a step: fewer instructions (2e6
                                               "year" rows) than 8/8 for the same time, 4/4 slower */
                        mr = lm_bits_sum8(amounts + i, x);
                        rr = lm_bits_sum4(amounts + i, in & reward);
                    } else {                /* the scalar copy: a bit a step, for the tests */
                        for (; x; x &= x - 1) mr += amounts[i + __builtin_ctzll(x)];
                        for (x = in & reward; x; x &= x - 1) rr += amounts[i + __builtin_ctzll(x)];
                    }
                    acc[LM_MEMBER_REVENUE] += mr;
                    acc[LM_REWARD_REVENUE] += rr;
                }
            }
            goto done;
        } else {
            /* Row i must start a run. */
            t = LM_LOAD(timestamps, tsize, i);
            b = (t >> shift) * 2;
            q = table[b] + (t > table[b + 1]);
            if (LM_LOAD(customers, csize, i) == pc && q == pp) return -1;
    #if LM_HAVE_AVX2
            if (lm_cpu_avx2) {
                /* Each row's period and customer, then their packed words four rows a step. */
                period_buf[0] = period_buf[1] = pp;
                cust[0] = cust[1] = pc;
                for (j = 0; j < LM_BLOCK; j++) {
                    t = LM_LOAD(timestamps, tsize, i + j);
                    b = (t >> shift) * 2;
                    period[j] = table[b] + (t > table[b + 1]);
                    cust[j + 2] = LM_LOAD(customers, csize, i + j);
                }
                runs = lm_packed_avx2(period_buf, cust, packed);
                for (j = 0; j < LM_BLOCK; j++) {
                    int64_t a = amounts[i + j];
                    int64_t *acc = acc_base + period[j] * LM_STRIDE;
                    if (__builtin_add_overflow(acc[LM_REVENUE], a, &acc[LM_REVENUE])) {
                        acc[LM_REVENUE] = (int64_t)((uint64_t)acc[LM_REVENUE] - (uint64_t)a);
                        L = 0;
                        goto take_back;
                    }
                    acc[LM_PACKED] = (int64_t)((uint64_t)acc[LM_PACKED] + packed[j]);
                }
            } else
    #endif
            for (j = 0; j < LM_BLOCK; j++) {
                int64_t a = amounts[i + j];
                int64_t *acc;
                uint64_t nc;
                c = LM_LOAD(customers, csize, i + j);
                t = LM_LOAD(timestamps, tsize, i + j);
                b = (t >> shift) * 2;
                q = table[b] + (t > table[b + 1]);
                nc = c != pc;
                b = (uint64_t)(q - pp) < 2 ? q - pp : 2;
                w = lm_packed_by_code[nc + 2 * b + 8 * nr];
                nr = nc | (uint64_t)(q != pp);      /* not from w: the next row's load waits on no load */
                runs |= nr << j;                    /* row j at bit j */
                period[j] = q;
                packed[j] = w;
                acc = acc_base + q * LM_STRIDE;
                if (__builtin_add_overflow(acc[LM_REVENUE], a, &acc[LM_REVENUE])) {
                    acc[LM_REVENUE] = (int64_t)((uint64_t)acc[LM_REVENUE] - (uint64_t)a);
                    L = 0;
                    goto take_back;
                }
                acc[LM_PACKED] = (int64_t)((uint64_t)acc[LM_PACKED] + w);
                pc = c;
                pp = q;
            }
            /* The last run starts at row L (the highest bit of runs); L == 0: one run, none done. */
            L = 63 - __builtin_clzll(runs);
        take_back:
            for (k = L; k < j; k++) {
                int64_t *acc = acc_base + period[k] * LM_STRIDE;
                acc[LM_REVENUE] = (int64_t)((uint64_t)acc[LM_REVENUE] - (uint64_t)amounts[i + k]);
                acc[LM_PACKED] = (int64_t)((uint64_t)acc[LM_PACKED] - packed[k]);
            }
            if (L == 0) return -LM_BLOCK;
        }
        #define LM_PERIOD_OF(j) (few ? q_lo + (int64_t)(((g0 >> (j)) & 1) + ((g1 >> (j)) & 1) + ((g2 >> (j)) & 1) \
                                                      + ((g3 >> (j)) & 1)) : period[j])
        /* Reward rows (a minority), and once a run the member counts of their runs. */
        reward = lm_reward_word(bits, bit0) & ((1ULL << L) - 1);
        end = 0;
        while (reward) {
            int64_t *acc;
            uint64_t r;
            j = __builtin_ctzll(reward);
            reward &= reward - 1;
            acc = acc_base + LM_PERIOD_OF(j) * LM_STRIDE;
            acc[LM_REWARD_ORDERS] += 1;
            acc[LM_REWARD_REVENUE] += amounts[i + j];
            if (j < end) continue;               /* its run is a member run already */
            r = runs & ((2ULL << j) - 1);        /* runs starting at rows <= j (j < L <= 63) */
            start = 63 - __builtin_clzll(r);
            r = runs & ~((2ULL << j) - 1);       /* runs starting after row j (row L's at least) */
            end = __builtin_ctzll(r);
            acc[LM_REWARD_CUSTOMERS] += 1;
            acc[LM_MEMBER_ORDERS] += end - start;
            acc[LM_MEMBER_REPEAT] += end - start >= 2;
            for (k = start; k < end; k++) acc[LM_MEMBER_REVENUE] += amounts[i + k];
        }
    done:
        cur->prev_customer = LM_LOAD(customers, csize, i + L - 1);
        cur->prev_ts = LM_LOAD(timestamps, tsize, i + L - 1);
        cur->run_period = LM_PERIOD_OF(L - 1);
        #undef LM_PERIOD_OF
        cur->order_lo = lo < cur->order_lo ? lo : cur->order_lo;
        cur->order_hi = hi > cur->order_hi ? hi : cur->order_hi;
        return L;
    }

    /* One copy of the block function a key/timestamp type combination, each with an x86-64-v3
       clone (AVX2, BMI2: shifts by a register other than cl, fewer registers spilled) picked
       when the module loads; lm_block calls the one of its types (the sizes are constants). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(LM_NO_CLONES)
    #define LM_BLOCK_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), noinline))
    #else
    #define LM_BLOCK_CLONES __attribute__((noinline))
    #endif
    #define LM_BLOCK_ARGS const void *merchants, const void *customers, const void *timestamps, \
        const int64_t *amounts, const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t i, int64_t merchant, \
        const int64_t *table, const int64_t *ends, int shift, int64_t ts_max, int64_t *acc_base, \
        lm_block_cursor *cur
    #define LM_DEFINE_BLOCK(NAME, MS, CS, TS) \
        static LM_BLOCK_CLONES Py_ssize_t NAME(LM_BLOCK_ARGS) { \
            return lm_block_body(merchants, MS, customers, CS, timestamps, TS, amounts, bits, bit0, i, \
                                 merchant, table, ends, shift, ts_max, acc_base, cur); \
        }
    LM_DEFINE_BLOCK(lm_block_444, 4, 4, 4)
    LM_DEFINE_BLOCK(lm_block_448, 4, 4, 8)
    LM_DEFINE_BLOCK(lm_block_484, 4, 8, 4)
    LM_DEFINE_BLOCK(lm_block_488, 4, 8, 8)
    LM_DEFINE_BLOCK(lm_block_844, 8, 4, 4)
    LM_DEFINE_BLOCK(lm_block_848, 8, 4, 8)
    LM_DEFINE_BLOCK(lm_block_884, 8, 8, 4)
    LM_DEFINE_BLOCK(lm_block_888, 8, 8, 8)

    static inline Py_ssize_t lm_block(
            const void *merchants, int msize, const void *customers, int csize,
            const void *timestamps, int tsize, const int64_t *amounts,
            const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t i, int64_t merchant,
            const int64_t *table, const int64_t *ends, int shift, int64_t ts_max, int64_t *acc_base,
            lm_block_cursor *cur) {
        #define LM_CALL(NAME) NAME(merchants, customers, timestamps, amounts, bits, bit0, i, merchant, \
                                   table, ends, shift, ts_max, acc_base, cur)
        if (msize == 4) {
            if (csize == 4) return tsize == 4 ? LM_CALL(lm_block_444) : LM_CALL(lm_block_448);
            return tsize == 4 ? LM_CALL(lm_block_484) : LM_CALL(lm_block_488);
        }
        if (csize == 4) return tsize == 4 ? LM_CALL(lm_block_844) : LM_CALL(lm_block_848);
        return tsize == 4 ? LM_CALL(lm_block_884) : LM_CALL(lm_block_888);
        #undef LM_CALL
    }
    """
    bint lm_add_overflows(int64_t a, int64_t b, int64_t *out) noexcept nogil
    ctypedef struct lm_range:
        int64_t lo
        int64_t hi
    lm_range lm_touched_periods(const int64_t* table, int shift, int64_t lo, int64_t hi) noexcept nogil
    const int64_t* lm_zone_table(const int64_t* tables, Py_ssize_t stride, const int64_t* zone_merchant,
                                 const int32_t* zone_index, Py_ssize_t n_zoned, int64_t m) noexcept nogil
    void lm_fold_orders(int64_t* first_ts, int64_t* first_merchant, int64_t* last_ts, int64_t* last_merchant,
                        int64_t merchant, int64_t lo, int64_t hi) noexcept nogil
    enum:
        LM_BLOCK
        LM_FOLD_EVERY
        LM_PACKED
        LM_STRIDE
        LM_MEMBER_REPEAT
        LM_RETAINED
    ctypedef struct lm_block_cursor:
        int64_t prev_customer
        int64_t prev_ts
        int64_t run_period
        int64_t order_lo
        int64_t order_hi
    void lm_fold_packed(int64_t* acc_base, lm_range r) noexcept nogil
    void lm_init_cpu() noexcept nogil
    int lm_use_avx2(int on) noexcept nogil
    Py_ssize_t lm_block(const void* merchants, int msize, const void* customers, int csize,
                        const void* timestamps, int tsize, const int64_t* amounts,
                        const uint8_t* bits, Py_ssize_t bit0, Py_ssize_t i, int64_t merchant,
                        const int64_t* table, const int64_t* ends, int shift, int64_t ts_max,
                        int64_t* acc_base, lm_block_cursor* cur) noexcept nogil

lm_init_cpu()      # which copy of the block path's mask functions runs (AVX2 or not)


def _use_avx2(bint on):
    """For tests: the block path's AVX2 mask functions (if the CPU has AVX2) or the scalar ones.

    Returns whether AVX2 ones ran before. Not for use while another thread scans.
    """
    return bool(lm_use_avx2(on))

# Partial columns, SPEC §4 (returning_customers, repeat_orders, merchants and
# fees are derived from these in finalize).
cdef enum:
    ORDERS
    REVENUE
    CUSTOMERS
    NEW_CUSTOMERS
    REPEAT_CUSTOMERS
    ORDERS_FROM_REPEAT_CUSTOMERS
    RETAINED_CUSTOMERS
    REWARD_ORDERS
    REWARD_REVENUE
    REWARD_CUSTOMERS
    MEMBER_ORDERS
    MEMBER_REVENUE
    MEMBER_REPEAT_CUSTOMERS
    N_COUNTS
    ACC_STRIDE = 16         # a period's counts padded to two cache lines

PARTIAL_COLUMNS = (
    "orders", "revenue", "customers", "new_customers", "repeat_customers",
    "orders_from_repeat_customers", "retained_customers", "reward_orders",
    "reward_revenue", "reward_customers", "member_orders", "member_revenue",
    "member_repeat_customers",
)
assert len(PARTIAL_COLUMNS) == N_COUNTS
# The block path's C names the same columns (lm_block), and packs counts into the padding.
assert (LM_PACKED, LM_STRIDE, LM_MEMBER_REPEAT, LM_RETAINED) == (N_COUNTS, ACC_STRIDE, MEMBER_REPEAT_CUSTOMERS,
                                                                  RETAINED_CUSTOMERS)

# Why a scan call returned.
cpdef enum Status:
    OK = 0
    NEED_SPACE = 1          # output full: grow it and call again from `row`
    UNSORTED = 2            # row is before the previous row in key order
    NEGATIVE_AMOUNT = 3
    TIMESTAMP_RANGE = 4     # order_ts before 1970-01-01 or after 2262
    AMOUNT_OVERFLOW = 5     # row's amount makes a revenue sum overflow int64


cdef struct Cursor:
    bint started
    int64_t prev_merchant
    int64_t prev_customer
    int64_t prev_ts
    # The open run: the current store-customer's consecutive orders in one period.
    int64_t run_period
    int64_t run_orders
    int64_t run_reward_orders
    int64_t run_revenue
    # Refunds only: the last period with an order of the current store-customer
    # (-2: none yet), as refund rows open runs without making customers.
    int64_t last_order_period
    # Periods the current merchant has touched in `acc`.
    int64_t acc_lo
    int64_t acc_hi
    # The current merchant's earliest and latest order timestamps (INT64_MAX, -1: none yet).
    int64_t order_lo
    int64_t order_hi


cdef class ScanState:
    """Everything a scan carries between calls, and the partials it emitted.

    ``n_periods`` bounds the period index that the ``period_table`` passed
    to ``scan`` yields.
    """
    cdef Cursor cur
    cdef int64_t min_amount
    cdef Py_ssize_t n_periods
    cdef int64_t[:, ::1] acc            # [period, ACC_STRIDE] for the current merchant
    cdef Py_ssize_t out_rows
    cdef object _out_merchant, _out_period, _out_counts
    cdef int64_t[::1] out_merchant
    cdef int32_t[::1] out_period
    cdef int64_t[:, ::1] out_counts
    cdef object _checked_table
    cdef object _checked_zones
    # The checked merchant → zone arrays of the last scan (set by check_zones, here rather than
    # as typed arguments of the 8 fused `scan`s: less code around the row loop).
    cdef const int64_t[::1] zone_merchant
    cdef const int32_t[::1] zone_index
    # Each zone's last timestamp of every period (period_ends) for the block path, or none
    # (has_ends False) if the table is not one the ends reproduce; set by check_table.
    cdef const int64_t[:, ::1] ends
    cdef bint has_ends
    cdef object _checked_shift
    # The earliest and latest order of every merchant flushed so far, with its merchant
    # (ties between merchants: the smaller merchant_id first, the larger last).
    cdef int64_t first_ts, first_merchant, last_ts, last_merchant

    def __init__(self, Py_ssize_t n_periods, bint allow_negative=False, Py_ssize_t capacity=1024):
        if n_periods <= 0:
            raise ValueError("n_periods must be positive")
        self.n_periods = n_periods
        self.acc = np.zeros((n_periods, ACC_STRIDE), dtype=np.int64)
        self.min_amount = INT64_MIN if allow_negative else 0
        self.cur.started = False
        self.cur.run_period = -2        # never the period before a real one
        self.cur.run_orders = 0
        self.cur.run_reward_orders = 0
        self.cur.run_revenue = 0
        self.cur.last_order_period = -2
        self.cur.acc_lo = INT64_MAX
        self.cur.acc_hi = -1
        self.cur.order_lo = INT64_MAX
        self.cur.order_hi = -1
        self.first_ts = INT64_MAX
        self.first_merchant = 0
        self.last_ts = -1
        self.last_merchant = 0
        self.out_rows = 0
        self._allocate(max(capacity, 1))

    def _allocate(self, Py_ssize_t capacity):
        merchant = np.empty(capacity, dtype=np.int64)
        period = np.empty(capacity, dtype=np.int32)
        counts = np.empty((capacity, N_COUNTS), dtype=np.int64)
        if self.out_rows:
            merchant[:self.out_rows] = self._out_merchant[:self.out_rows]
            period[:self.out_rows] = self._out_period[:self.out_rows]
            counts[:self.out_rows] = self._out_counts[:self.out_rows]
        self._out_merchant, self._out_period, self._out_counts = merchant, period, counts
        self.out_merchant, self.out_period, self.out_counts = merchant, period, counts

    def check_table(self, table, int64_t ts_max, int shift):
        """Check once per table that every period it yields up to ``ts_max`` indexes ``acc``.

        And find its period ends for the block path (``period_ends``).
        """
        if table is not self._checked_table or self._checked_shift != (shift, ts_max):
            check_period_table(table, ts_max, self.n_periods)
            ends = _cached_period_ends(table, shift, ts_max, self.n_periods)
            self.has_ends = ends is not None
            if ends is not None:
                self.ends = ends
            self._checked_table = table
            self._checked_shift = (shift, ts_max)

    def check_zones(self, zone_merchant, zone_index, Py_ssize_t n_tables):
        """Check once per array that merchants are sorted and their zones index the stacked tables."""
        checked = self._checked_zones
        if checked is None or not (checked[0] is zone_merchant and checked[1] is zone_index and checked[2] == n_tables):
            check_merchant_zones(zone_merchant, zone_index, n_tables)
            self.zone_merchant = zone_merchant
            self.zone_index = zone_index
            self._checked_zones = (zone_merchant, zone_index, n_tables)

    @property
    def order_range(self):
        """``((first_ts, its merchant), (last_ts, its merchant))`` of the orders scanned, or None.

        Complete once ``finish`` has flushed the last merchant.
        """
        if self.last_ts < 0:
            return None
        return ((self.first_ts, self.first_merchant), (self.last_ts, self.last_merchant))

    def grow(self):
        """Double the output capacity (after a scan returned NEED_SPACE)."""
        self._allocate(2 * self.out_merchant.shape[0])

    @property
    def last_row_keys(self):
        """(merchant_id, customer_id, order_ts) of the last row scanned, or None."""
        if not self.cur.started:
            return None
        return (self.cur.prev_merchant, self.cur.prev_customer, self.cur.prev_ts)

    def finish(self):
        """Flush the last merchant; return the partials.

        Returns ``(merchant_id int64[n], period int32[n], counts int64[n, k])``
        with one row per (merchant, period) that has orders, in scan order.
        """
        while self.out_rows + self.cur.acc_hi - self.cur.acc_lo + 1 > self.out_merchant.shape[0]:
            self.grow()
        if self.cur.started:
            flush_merchant(self, self.cur.prev_merchant, self.cur.acc_lo, self.cur.acc_hi)
            self.cur.acc_lo = INT64_MAX
            self.cur.acc_hi = -1
            lm_fold_orders(&self.first_ts, &self.first_merchant, &self.last_ts, &self.last_merchant,
                           self.cur.prev_merchant, self.cur.order_lo, self.cur.order_hi)
            self.cur.order_lo = INT64_MAX
            self.cur.order_hi = -1
        n = self.out_rows
        return self._out_merchant[:n], self._out_period[:n], self._out_counts[:n]   # views: the scan is over


_ENDS_CACHE = {}


def _cached_period_ends(tables, shift, ts_max, n_periods):
    """``period_ends`` once per read-only table (``periods.period_tables`` caches its tables; a
    state a thread would otherwise find a many-zone table's ends again: ~0.5 ms a zone)."""
    if not (isinstance(tables, np.ndarray) and not tables.flags.writeable and tables.base is None):
        return period_ends(tables, shift, ts_max, n_periods)     # it may change: not cached
    key = (id(tables), shift, ts_max, n_periods)
    hit = _ENDS_CACHE.get(key)
    if hit is not None and hit[0] is tables:
        return hit[1]
    ends = period_ends(tables, shift, ts_max, n_periods)
    if len(_ENDS_CACHE) >= 16:
        _ENDS_CACHE.clear()
    _ENDS_CACHE[key] = (tables, ends)      # the table kept alive: its id is not reused
    return ends


def period_ends(tables, shift, ts_max, n_periods):
    """int64[z, n_periods + 3]: the last timestamp of each period in each of the stacked tables.

    -1 for a period before every valid timestamp, INT64_MAX for the last one and any after it
    (the 3 extra: the block path reads the ends of a block's first period and the three after it).
    Then ``period(t) = #{q : ends[z, q] < t}`` for every ``0 <= t <= ts_max``, checked here at
    every bucket's first and last timestamp and on both sides of its boundary, where the table's
    period steps (between them both are constant: at most one step in a bucket); a table the ends
    do not reproduce (not the shape ``periods.period_table`` makes) gives None: no block path.
    """
    tables = np.asarray(tables, dtype=np.int64)
    shift, ts_max, n_periods = int(shift), int(ts_max), int(n_periods)     # Python ints: no C shifts
    n = (ts_max >> shift) + 1
    if tables.ndim != 3 or tables.shape[1] < n or tables.shape[2] != 2:
        return None
    top = np.iinfo(np.int64).max
    starts = np.arange(n, dtype=np.int64) << shift
    lasts = np.minimum(starts + ((1 << shift) - 1), ts_max)
    out = np.full((tables.shape[0], n_periods + 3), top, dtype=np.int64)
    for z in range(tables.shape[0]):
        first, cut = tables[z, :n, 0], tables[z, :n, 1]
        if first.min() < 0 or first.max() >= n_periods:
            return None
        ends = out[z]
        ends[:first[0]] = -1
        inside = (cut >= starts) & (cut < lasts)
        ends[first[inside]] = cut[inside]
        # A period that ends with its bucket: the next bucket starts the next period.
        step = np.flatnonzero(first[1:] != first[:n - 1])
        step = step[~inside[step]]
        ends[first[step]] = starts[step + 1] - 1
        if np.any(ends[1:] < ends[:n_periods + 2]):
            return None
        for t in (starts, lasts, np.where(inside, cut, starts), np.where(inside, cut + 1, lasts)):
            if not np.array_equal(np.searchsorted(ends, t, "left"), first + (t > cut)):
                return None
    return out


cdef void flush_merchant(ScanState st, int64_t merchant, int64_t lo, int64_t hi) noexcept nogil:
    """Move a merchant's touched periods ``[lo, hi]`` to the output (capacity checked by caller)."""
    cdef Py_ssize_t p, k, row
    for p in range(lo, hi + 1):
        # A period of only refunds has no orders but revenue (never 0: every refund is < 0);
        # finalize adds it to its group's revenue sums and counts no merchant for it (SPEC §2).
        if st.acc[p, ORDERS] == 0 and st.acc[p, REVENUE] == 0:
            continue
        row = st.out_rows
        st.out_merchant[row] = merchant
        st.out_period[row] = <int32_t>p
        # A run's orders all come from a repeat customer unless the run has one order.
        st.acc[p, ORDERS_FROM_REPEAT_CUSTOMERS] = (
            st.acc[p, ORDERS] - st.acc[p, CUSTOMERS] + st.acc[p, REPEAT_CUSTOMERS])
        for k in range(N_COUNTS):
            st.out_counts[row, k] = st.acc[p, k]
            st.acc[p, k] = 0
        st.out_rows = row + 1


cdef inline bint refund_row(int64_t* acc, int64_t p, int64_t a, int64_t r, int64_t same_customer,
                            int64_t* run_period, int64_t* run_orders, int64_t* run_reward_orders,
                            int64_t* run_revenue, int64_t* last_order_period) noexcept nogil:
    """One row's contribution with refunds enabled (SPEC §2 "Refunds"); True if a sum overflowed.

    A row with a negative amount is a refund, not an order: it adds to the
    revenue sums (revenue, reward_revenue if its reward flag is set,
    member_revenue if its run turns out to be a participant's) and to no
    count, and it has no rank. A run is still a store-customer's rows in one
    period, refunds included, so a run that becomes a member run brings its
    earlier refunds along with its earlier orders; but only a run's first
    *order* makes a customer, and only the store-customer's first order a
    new customer.
    """
    cdef int64_t is_order = a >= 0
    cdef int64_t reward_order = r & is_order
    cdef int64_t lop = last_order_period[0] if same_customer else -2
    cdef int64_t new_run = (not same_customer) | (p != run_period[0])
    cdef int64_t keep = new_run - 1
    cdef int64_t was_member_repeat = (run_reward_orders[0] != 0) & (run_orders[0] >= 2) & keep
    cdef int64_t first_order = is_order & (lop != p)     # the run's first order: a customer
    cdef int64_t orders, reward_orders, revenue, first_reward, member
    cdef bint overflow
    acc[CUSTOMERS] += first_order
    acc[NEW_CUSTOMERS] += is_order & (lop == -2)
    acc[RETAINED_CUSTOMERS] += first_order & (lop + 1 == p)
    last_order_period[0] = p if is_order else lop
    run_period[0] = p
    orders = (run_orders[0] & keep) + is_order
    reward_orders = (run_reward_orders[0] & keep) + reward_order
    run_orders[0] = orders
    run_reward_orders[0] = reward_orders
    acc[ORDERS] += is_order
    overflow = lm_add_overflows(acc[REVENUE], a, &acc[REVENUE])
    overflow |= lm_add_overflows(run_revenue[0] & keep, a, &revenue)
    run_revenue[0] = revenue
    acc[REPEAT_CUSTOMERS] += is_order & (orders == 2)
    acc[REWARD_ORDERS] += reward_order
    overflow |= lm_add_overflows(acc[REWARD_REVENUE], a & -r, &acc[REWARD_REVENUE])
    first_reward = reward_order & (reward_orders == 1)
    member = reward_orders != 0
    acc[REWARD_CUSTOMERS] += first_reward
    acc[MEMBER_ORDERS] += (member & is_order) + ((orders - 1) & -first_reward)
    overflow |= lm_add_overflows(acc[MEMBER_REVENUE], (a & -member) + ((revenue - a) & -first_reward),
                                 &acc[MEMBER_REVENUE])
    acc[MEMBER_REPEAT_CUSTOMERS] += member & (orders >= 2) & (not was_member_repeat)
    return overflow


cdef inline Status scan_rows(
    ScanState st,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const uint8_t[::1] reward_bits,
    Py_ssize_t reward_offset,
    const int64_t[:, :, ::1] period_tables,
    int shift,
    int64_t ts_max,
    Py_ssize_t start,
    Py_ssize_t* stop,
    const bint refunds,
) noexcept nogil:
    # The cursor lives in locals whose address never escapes, so the compiler
    # can keep them in registers across the stores into `acc`; the loop keeps
    # as few of them as it can (the row loop is bound by instruction count).
    cdef bint started = st.cur.started
    cdef int64_t prev_merchant = st.cur.prev_merchant, prev_customer = st.cur.prev_customer
    cdef int64_t prev_ts = st.cur.prev_ts, run_period = st.cur.run_period
    cdef int64_t run_orders = st.cur.run_orders, run_reward_orders = st.cur.run_reward_orders
    cdef int64_t run_revenue = st.cur.run_revenue
    cdef int64_t last_order_period = st.cur.last_order_period
    cdef int64_t acc_lo = st.cur.acc_lo, acc_hi = st.cur.acc_hi
    cdef int64_t order_lo = st.cur.order_lo, order_hi = st.cur.order_hi
    cdef const merchant_key_t* merchants = &merchant_id[0] if merchant_id.shape[0] else NULL
    cdef const customer_key_t* customers = &customer_id[0] if customer_id.shape[0] else NULL
    cdef const order_ts_t* timestamps = &order_ts[0] if order_ts.shape[0] else NULL
    cdef const int64_t* amounts = &amount[0] if amount.shape[0] else NULL
    cdef const uint8_t* bits = &reward_bits[0] if reward_bits.shape[0] else NULL
    # One period table per zone; a merchant's rows use its zone's, switched on a new merchant.
    cdef const int64_t* tables = &period_tables[0, 0, 0]
    cdef Py_ssize_t stride = period_tables.shape[1] * 2
    cdef Py_ssize_t n_zoned = st.zone_merchant.shape[0]
    cdef const int64_t* zoned = &st.zone_merchant[0] if n_zoned else NULL
    cdef const int32_t* zones = &st.zone_index[0] if n_zoned else NULL
    cdef const int64_t* table = lm_zone_table(tables, stride, zoned, zones, n_zoned, prev_merchant) if started else tables
    # The zone's period ends (ScanState.ends) for the block path, NULL: none.
    cdef Py_ssize_t n_ends = st.ends.shape[1] if st.has_ends else 0
    cdef const int64_t* ends_base = &st.ends[0, 0] if st.has_ends else NULL
    cdef const int64_t* ends = ends_base + ((table - tables) // stride) * n_ends if st.has_ends else NULL
    cdef int64_t* acc_base = &st.acc[0, 0]
    cdef int64_t* acc
    cdef Py_ssize_t i, n = stop[0]
    cdef int64_t m, cust, t, a, p, r, bit, lo, hi
    cdef int64_t same_merchant, same_customer, new_run, keep, first_reward, member, was_member_repeat
    cdef bint overflow
    cdef Status status = OK
    # The block path (refunds off): rows from `block_from` on may start a block; the row loop
    # takes the rows a block gives back. Block rows add their counts packed (lm_fold_packed).
    cdef Py_ssize_t block_from = start, got, packed_rows = 0
    cdef lm_block_cursor bc
    i = start
    while i < n:
        if (not refunds and i >= block_from and n - i >= LM_BLOCK and started
                and merchants[i] == prev_merchant and merchants[i + LM_BLOCK - 1] == prev_merchant):
            bc.prev_customer, bc.prev_ts, bc.run_period = prev_customer, prev_ts, run_period
            bc.order_lo, bc.order_hi = order_lo, order_hi
            got = lm_block(merchants, sizeof(merchant_key_t), customers, sizeof(customer_key_t),
                           timestamps, sizeof(order_ts_t), amounts, bits, reward_offset + i, i,
                           prev_merchant, table, ends, shift, ts_max, acc_base, &bc)
            if got > 0:
                prev_customer, prev_ts, run_period = bc.prev_customer, bc.prev_ts, bc.run_period
                order_lo, order_hi = bc.order_lo, bc.order_hi
                i += got
                packed_rows += got
                if packed_rows >= LM_FOLD_EVERY:
                    lm_fold_packed(acc_base, lm_touched_periods(table, shift, order_lo, order_hi))
                    packed_rows = 0
                continue
            block_from = i - got
        m = merchants[i]
        cust = customers[i]
        t = timestamps[i]
        a = amounts[i]
        same_merchant = started & (m == prev_merchant)
        same_customer = same_merchant & (cust == prev_customer)
        # One predictable branch for every way a row can be bad.
        if (((not refunds) & (a < 0)) | (<uint64_t>t > <uint64_t>ts_max)
                | (started & ((m < prev_merchant) | (same_merchant & (cust < prev_customer))
                              | (same_customer & (t < prev_ts))))):
            if not refunds and a < 0:
                status = NEGATIVE_AMOUNT
            elif t < 0 or t > ts_max:
                status = TIMESTAMP_RANGE
            else:
                status = UNSORTED
            break
        if not same_merchant:                   # next merchant: emit the last one's partials
            if started:
                if not refunds:
                    touched = lm_touched_periods(table, shift, order_lo, order_hi)
                    acc_lo, acc_hi = touched.lo, touched.hi
                    if packed_rows:
                        lm_fold_packed(acc_base, touched)
                        packed_rows = 0
                if st.out_rows + (acc_hi - acc_lo + 1) > st.out_merchant.shape[0]:
                    status = NEED_SPACE
                    break
                flush_merchant(st, prev_merchant, acc_lo, acc_hi)
                acc_lo = INT64_MAX
                acc_hi = -1
                lm_fold_orders(&st.first_ts, &st.first_merchant, &st.last_ts, &st.last_merchant,
                               prev_merchant, order_lo, order_hi)
                order_lo = INT64_MAX
                order_hi = -1
            started = True
            table = lm_zone_table(tables, stride, zoned, zones, n_zoned, m)
            if ends_base != NULL:
                ends = ends_base + ((table - tables) // stride) * n_ends
        bit = (t >> shift) * 2
        p = table[bit] + (t > table[bit + 1])
        bit = reward_offset + i
        r = (bits[bit >> 3] >> (bit & 7)) & 1
        if refunds:
            overflow = refund_row(acc_base + p * ACC_STRIDE, p, a, r, same_customer, &run_period,
                                  &run_orders, &run_reward_orders, &run_revenue, &last_order_period)
        else:
            # The row's place in its store-customer's history, as 0/1 facts (SPEC §4).
            new_run = (not same_customer) | (p != run_period)
            keep = new_run - 1                      # all ones while the run goes on, else 0
            was_member_repeat = (run_reward_orders != 0) & (run_orders >= 2) & keep
            acc = acc_base + p * ACC_STRIDE
            acc[CUSTOMERS] += new_run
            acc[NEW_CUSTOMERS] += not same_customer
            acc[RETAINED_CUSTOMERS] += same_customer & new_run & (run_period + 1 == p)
            run_period = p
            run_orders = (run_orders & keep) + 1
            run_reward_orders = (run_reward_orders & keep) + r
            acc[ORDERS] += 1
            overflow = lm_add_overflows(acc[REVENUE], a, &acc[REVENUE])
            run_revenue = (run_revenue & keep) + a  # <= the period's revenue: cannot overflow
            # The second order of a run makes its store-customer a repeat customer
            # (orders_from_repeat_customers is derived when the merchant is flushed).
            acc[REPEAT_CUSTOMERS] += run_orders == 2
            acc[REWARD_ORDERS] += r
            acc[REWARD_REVENUE] += a & -r
            # A run's first reward order makes it a member run and brings its earlier
            # orders and revenue with it; later orders of a member run add themselves.
            first_reward = r & (run_reward_orders == 1)
            member = run_reward_orders != 0
            acc[REWARD_CUSTOMERS] += first_reward
            acc[MEMBER_ORDERS] += member + ((run_orders - 1) & -first_reward)
            acc[MEMBER_REVENUE] += (a & -member) + ((run_revenue - a) & -first_reward)
            acc[MEMBER_REPEAT_CUSTOMERS] += member & (run_orders >= 2) & (not was_member_repeat)
        if overflow:
            status = AMOUNT_OVERFLOW
            break
        # The merchant's earliest and latest order (a refund is no order), for the observation
        # window, and the periods it touched in `acc`. Without refunds every row is an order and
        # a merchant's periods grow with its timestamps (one zone's table), so its touched
        # periods are those of its earliest and latest order: found when it is flushed
        # (touched_periods), the row pays for the window and nothing more.
        if refunds:
            acc_lo = p if p < acc_lo else acc_lo
            acc_hi = p if p > acc_hi else acc_hi
            # A refund (a < 0) stands in as INT64_MAX for the earliest and -1 for the latest.
            bit = a >> 63
            lo = t | (bit & INT64_MAX)
            hi = t | bit
            order_lo = lo if lo < order_lo else order_lo
            order_hi = hi if hi > order_hi else order_hi
        else:
            order_lo = t if t < order_lo else order_lo
            order_hi = t if t > order_hi else order_hi
        prev_merchant = m
        prev_customer = cust
        prev_ts = t
        i += 1
    stop[0] = i
    if not refunds and started:
        touched = lm_touched_periods(table, shift, order_lo, order_hi)
        acc_lo, acc_hi = touched.lo, touched.hi
        if packed_rows:
            lm_fold_packed(acc_base, touched)
    st.cur.started = started
    st.cur.prev_merchant, st.cur.prev_customer, st.cur.prev_ts = prev_merchant, prev_customer, prev_ts
    st.cur.run_period, st.cur.run_orders, st.cur.run_reward_orders = run_period, run_orders, run_reward_orders
    st.cur.run_revenue = run_revenue
    st.cur.last_order_period = last_order_period
    st.cur.acc_lo, st.cur.acc_hi = acc_lo, acc_hi
    st.cur.order_lo, st.cur.order_hi = order_lo, order_hi
    return status


def scan(ScanState state not None,
         const merchant_key_t[::1] merchant_id not None,
         const customer_key_t[::1] customer_id not None,
         const order_ts_t[::1] order_ts not None,
         const int64_t[::1] amount not None,
         const uint8_t[::1] reward_bits not None,
         Py_ssize_t reward_offset,
         period_tables not None,
         int shift,
         int64_t ts_max,
         zone_merchant not None,
         zone_index not None,
         Py_ssize_t start=0,
         Py_ssize_t stop=-1):
    """Scan rows ``start:stop`` of one record batch; return ``(status, row)``.

    ``reward_bits`` is an Arrow-style LSB bitmap (bit ``reward_offset + i``
    is row ``i``'s reward flag, nulls already cleared). ``period_tables``
    (one ``periods.period_table`` per zone, stacked: ``periods.period_tables``)
    and ``shift`` map a timestamp to its period index; merchant
    ``zone_merchant[j]`` (int64, sorted) uses table ``zone_index[j]`` (int32),
    every other merchant table 0 (``periods.MerchantZones``). ``ts_max`` is the
    last valid timestamp. ``stop=-1`` scans to the end.
    ``row`` is where the scan stopped: ``stop`` on OK, else the row to report
    or to resume from.
    """
    cdef const int64_t[:, :, ::1] table = period_tables
    cdef Py_ssize_t n = merchant_id.shape[0]
    if customer_id.shape[0] != n or order_ts.shape[0] != n or amount.shape[0] != n:
        raise ValueError("columns of one batch must have the same length")
    if stop < 0:
        stop = n
    if not 0 <= start <= stop <= n:
        raise ValueError("rows out of range")
    if (reward_offset + n + 7) // 8 > reward_bits.shape[0]:
        raise ValueError("reward bitmap is shorter than the batch")
    # The row loop indexes the period table and the accumulator unchecked.
    if (table.shape[0] < 1 or table.shape[2] != 2 or not 0 <= shift < 63 or ts_max < 0
            or (ts_max >> shift) >= table.shape[1]):
        raise ValueError("ts_max is outside the period table")
    state.check_table(period_tables, ts_max, shift)
    state.check_zones(zone_merchant, zone_index, table.shape[0])
    cdef Status status
    # Two copies of the loop, the mode a constant in each (branch on modes
    # outside the row loop): without refunds every revenue sum is bounded by
    # the period's revenue, so one overflow check covers them all.
    with nogil:
        if state.min_amount == 0:
            status = scan_rows(state, merchant_id, customer_id, order_ts, amount,
                               reward_bits, reward_offset, table, shift, ts_max, start, &stop, False)
        else:
            status = scan_rows(state, merchant_id, customer_id, order_ts, amount,
                               reward_bits, reward_offset, table, shift, ts_max, start, &stop, True)
    return status, stop


cdef struct lm_parts:
    const int64_t **m
    const int32_t **p
    const int64_t **c
    Py_ssize_t *n
    Py_ssize_t *at


def merge_partials(list merchants, list periods, list counts, int64_t[::1] out_merchant not None,
                   int32_t[::1] out_period not None, int64_t[:, ::1] out_counts not None):
    """Merge the partials of several states into ``out_*``; rows of one (merchant, period) are added up.

    Each part (``merchants[i]`` int64, ``periods[i]`` int32, ``counts[i]`` int64 rows of N_COUNTS) is a
    state's output: sorted by (merchant, period), one row a pair. The outputs hold at least the rows of
    all parts. Returns the rows written, or -1 if a part is not sorted that way or a sum overflows
    int64: the caller then combines them the general way (``finalize.combine``), which says what is
    wrong. One pass in the parts' order, instead of concatenating, sorting and summing them.
    """
    cdef Py_ssize_t k = len(merchants), i, o, cols = out_counts.shape[1]
    if len(periods) != k or len(counts) != k or cols != N_COUNTS:
        raise ValueError("merge_partials: parts differ")
    cdef Py_ssize_t total = 0
    cdef list views = []
    cdef const int64_t[::1] vm
    cdef const int32_t[::1] vp
    cdef const int64_t[:, ::1] vc
    cdef lm_parts parts
    parts.m = <const int64_t **>PyMem_Malloc(k * sizeof(void *))
    parts.p = <const int32_t **>PyMem_Malloc(k * sizeof(void *))
    parts.c = <const int64_t **>PyMem_Malloc(k * sizeof(void *))
    parts.n = <Py_ssize_t *>PyMem_Malloc(k * sizeof(Py_ssize_t))
    parts.at = <Py_ssize_t *>PyMem_Malloc(k * sizeof(Py_ssize_t))
    try:
        if not (parts.m and parts.p and parts.c and parts.n and parts.at):
            raise MemoryError()
        for i in range(k):
            vm, vp, vc = merchants[i], periods[i], counts[i]
            if vp.shape[0] != vm.shape[0] or vc.shape[0] != vm.shape[0] or (vm.shape[0] and vc.shape[1] != cols):
                raise ValueError("merge_partials: a part's columns differ in length")
            views.append((vm, vp, vc))
            parts.n[i] = vm.shape[0]
            parts.at[i] = 0
            total += vm.shape[0]
            if vm.shape[0]:
                parts.m[i], parts.p[i], parts.c[i] = &vm[0], &vp[0], &vc[0, 0]
        if total > out_merchant.shape[0] or total > out_period.shape[0] or total > out_counts.shape[0]:
            raise ValueError("merge_partials: the outputs are too small")
        with nogil:
            o = _merge(parts, k, cols, &out_merchant[0] if total else NULL, &out_period[0] if total else NULL,
                       &out_counts[0, 0] if total else NULL)
        return o
    finally:
        PyMem_Free(parts.m)
        PyMem_Free(parts.p)
        PyMem_Free(parts.c)
        PyMem_Free(parts.n)
        PyMem_Free(parts.at)


cdef Py_ssize_t _merge(lm_parts parts, Py_ssize_t k, Py_ssize_t cols, int64_t *om, int32_t *op,
                       int64_t *oc) noexcept nogil:
    cdef Py_ssize_t i, best, o = 0, c, a
    cdef int64_t bm = 0, m
    cdef int32_t bp = 0, p
    cdef int64_t s
    cdef const int64_t *row
    while True:
        best = -1
        for i in range(k):
            a = parts.at[i]
            if a < parts.n[i]:
                m, p = parts.m[i][a], parts.p[i][a]
                if best < 0 or m < bm or (m == bm and p < bp):
                    best, bm, bp = i, m, p
        if best < 0:
            return o
        a = parts.at[best]
        parts.at[best] = a + 1
        if a + 1 < parts.n[best]:   # the part's next row must come after this one
            m, p = parts.m[best][a + 1], parts.p[best][a + 1]
            if m < bm or (m == bm and p <= bp):
                return -1       # not sorted with one row a pair
        row = parts.c[best] + a * cols
        if o and om[o - 1] == bm and op[o - 1] == bp:
            for c in range(cols):
                if lm_add_overflows(oc[(o - 1) * cols + c], row[c], &s):
                    return -1
                oc[(o - 1) * cols + c] = s
        else:
            om[o], op[o] = bm, bp
            for c in range(cols):
                oc[o * cols + c] = row[c]
            o += 1
