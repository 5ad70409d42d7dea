/* The Hamming search's innermost loop: which fingerprints of one bucket lie within tau of which
 * fingerprints of another.
 *
 * The join compares every fingerprint of a bucket with every fingerprint of a neighbouring
 * bucket, and almost none of them is a match: the loop is a scan for rare hits over small runs
 * (a dozen or so fingerprints a bucket).  So a call takes a whole run A against up to 32
 * fingerprints of B and answers with one 32-bit mask per row of A: the loops' trip counts are
 * then fixed per pair of buckets, not per row, and the branch predictor keeps up.  B sits in
 * registers, and the differences are counted in vectors: eight per instruction with AVX-512's
 * VPOPCNTQ (Ice Lake, Zen 4 and later), four at a time with AVX2 (Mula's nibble lookup: two
 * byte shuffles and a sum of bytes), else one at a time with POPCNT.  All three give the same
 * masks; the caller picks the lanes once (`mf_within_lanes()`) and passes them down. */
#ifndef MISALIGN_WITHIN_H
#define MISALIGN_WITHIN_H

#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_MSC_VER)
#define MF_WITHIN_VECTORS 1       /* compiled for AVX2 and AVX-512 whatever the build's baseline */
#include <immintrin.h>
#endif

#define MF_WITHIN_COLUMNS 32     /* fingerprints of B per call: the bits of one mask */

/* The widest scan this CPU runs: 8, 4 or 1 fingerprints at a time. */
static inline int mf_within_lanes(void) {
#ifdef MF_WITHIN_VECTORS
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq"))
        return 8;
    return __builtin_cpu_supports("avx2") ? 4 : 1;
#else
    return 1;
#endif
}

static inline uint32_t mf_within_masks1(const uint64_t *a, int64_t na, const uint64_t *b, int nb, int tau,
                                        uint32_t *masks) {
    uint32_t any = 0;
    for (int64_t i = 0; i < na; i++) {
        uint32_t m = 0;
        for (int j = 0; j < nb; j++)
            if (__builtin_popcountll(a[i] ^ b[j]) <= tau)     /* rarely: a branch beats building the mask */
                m |= 1u << j;
        masks[i] = m;
        any |= m;
    }
    return any;
}

#ifdef MF_WITHIN_VECTORS
__attribute__((target("avx512f,avx512vpopcntdq")))
static uint32_t mf_within_masks8(const uint64_t *a, int64_t na, const uint64_t *b, int nb, int tau,
                                 uint32_t *masks) {
    const __m512i limit = _mm512_set1_epi64(tau);
    __m512i cols[4];
    __mmask8 live[4];
    int groups = (nb + 7) / 8;
    for (int g = 0; g < groups; g++) {
        live[g] = nb - 8 * g >= 8 ? 0xFF : (__mmask8)((1u << (nb - 8 * g)) - 1);
        cols[g] = _mm512_maskz_loadu_epi64(live[g], b + 8 * g);
    }
    uint32_t any = 0;
    for (int64_t i = 0; i < na; i++) {
        const __m512i x = _mm512_set1_epi64((long long)a[i]);
        uint32_t m = 0;
        for (int g = 0; g < groups; g++) {
            __m512i count = _mm512_popcnt_epi64(_mm512_xor_si512(cols[g], x));
            m |= (uint32_t)_mm512_mask_cmple_epu64_mask(live[g], count, limit) << (8 * g);
        }
        masks[i] = m;
        any |= m;
    }
    return any;
}

__attribute__((target("avx2")))
static uint32_t mf_within_masks4(const uint64_t *a, int64_t na, const uint64_t *b, int nb, int tau,
                                 uint32_t *masks) {
    const __m256i nibble_bits = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                                 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F), limit = _mm256_set1_epi64x(tau), zero = _mm256_setzero_si256();
    __m256i cols[8];
    uint32_t live[8];
    int groups = (nb + 3) / 4;
    for (int g = 0; g < groups; g++) {
        int left = nb - 4 * g;
        live[g] = left >= 4 ? 0xF : (1u << left) - 1;
        __m256i lanes = _mm256_setr_epi64x(left > 0 ? -1 : 0, left > 1 ? -1 : 0, left > 2 ? -1 : 0, left > 3 ? -1 : 0);
        cols[g] = _mm256_maskload_epi64((const long long *)(b + 4 * g), lanes);
    }
    uint32_t any = 0;
    for (int64_t i = 0; i < na; i++) {
        const __m256i x = _mm256_set1_epi64x((long long)a[i]);
        uint32_t m = 0;
        for (int g = 0; g < groups; g++) {
            __m256i diff = _mm256_xor_si256(cols[g], x);
            __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(nibble_bits, _mm256_and_si256(diff, low)),
                                            _mm256_shuffle_epi8(nibble_bits,
                                                                _mm256_and_si256(_mm256_srli_epi16(diff, 4), low)));
            __m256i over = _mm256_cmpgt_epi64(_mm256_sad_epu8(bytes, zero), limit);
            m |= (~(uint32_t)_mm256_movemask_pd(_mm256_castsi256_pd(over)) & live[g]) << (4 * g);
        }
        masks[i] = m;
        any |= m;
    }
    return any;
}

#endif

/* masks[i] bit j: popcount(a[i] ^ b[j]) <= tau, for i < na and j < nb <= 32, counted `lanes`
 * at a time (one of mf_within_lanes()'s answers); returns the OR of the masks (0: no pair within
 * tau at all). */
static inline uint32_t mf_within_masks(int lanes, const uint64_t *a, int64_t na, const uint64_t *b, int nb,
                                       int tau, uint32_t *masks) {
#ifdef MF_WITHIN_VECTORS
    if (lanes == 8)
        return mf_within_masks8(a, na, b, nb, tau, masks);
    if (lanes == 4)
        return mf_within_masks4(a, na, b, nb, tau, masks);
#else
    (void)lanes;
#endif
    return mf_within_masks1(a, na, b, nb, tau, masks);
}

#endif
