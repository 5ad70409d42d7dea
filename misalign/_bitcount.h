/* Per-bit majority of a stream of 64-bit hashes: the last step of SimHash with unit weights.
 *
 * Counting each of the 64 bits separately costs 64 additions per hash.  Instead the counts are
 * kept bit-sliced: plane `ones` holds bit 0 of all 64 counts, `twos` bit 1, and so on, and a
 * carry-save adder (CSA: three words in, a sum word and a carry word out, five instructions)
 * adds sixteen hashes into the planes with fifteen CSAs (Harley and Seal's popcount, applied to
 * positions).  Only the carry out of the 8s plane, one word per sixteen hashes, goes on into
 * byte-lane counters (byte L of lanes[j] counts bit 8L + j), which spill to 32-bit counters
 * every 127 words.  The majority is then read off with eight byte-lane compares and a bit-sliced
 * compare of the planes, with no loop over the 64 bits. */
#ifndef MISALIGN_BITCOUNT_H
#define MISALIGN_BITCOUNT_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define MF_LOW_BITS 0x0101010101010101ULL
#define MF_LANE_LIMIT 127   /* keeps a lane plus (128 - q) below 256 in mf_bitcount_majority */

typedef struct {
    uint64_t ones, twos, fours, eights;   /* each bit's count modulo 16, bit-sliced */
    uint64_t lanes[8];                    /* sixteens, per bit, in byte lanes */
    uint32_t wide[64];                    /* sixteens spilled from the lanes */
    int pending;                          /* words added to the lanes since the last spill */
    int spilled;
    uint64_t total;                       /* hashes added */
} mf_bitcount;

#define MF_CSA(high, low, a, b, c) do {                          \
        __typeof__(a) u_ = (a) ^ (b);                            \
        (high) = ((a) & (b)) | (u_ & (c));                       \
        (low) = u_ ^ (c);                                        \
    } while (0)

static inline void mf_bitcount_init(mf_bitcount *c) {
    c->ones = c->twos = c->fours = c->eights = 0;
    memset(c->lanes, 0, sizeof(c->lanes));
    c->pending = 0;
    c->spilled = 0;
    c->total = 0;
}

static void mf_bitcount_spill(mf_bitcount *c) {
    if (!c->spilled) {
        memset(c->wide, 0, sizeof(c->wide));
        c->spilled = 1;
    }
    for (int j = 0; j < 8; j++) {
        for (int lane = 0; lane < 8; lane++)
            c->wide[8 * lane + j] += (uint32_t)((c->lanes[j] >> (8 * lane)) & 0xFF);
        c->lanes[j] = 0;
    }
    c->pending = 0;
}

/* One more sixteen for every bit set in `sixteens`. */
static inline __attribute__((always_inline)) void mf_bitcount_lanes_add(mf_bitcount *c, uint64_t sixteens) {
    for (int j = 0; j < 8; j++)
        c->lanes[j] += (sixteens >> j) & MF_LOW_BITS;
    if (++c->pending == MF_LANE_LIMIT)
        mf_bitcount_spill(c);
}

/* Eight hashes into the 1s, 2s and 4s planes; returns their carry of weight 8. */
static inline __attribute__((always_inline)) uint64_t mf_bitcount_csa8(mf_bitcount *c, const uint64_t *h) {
    uint64_t twos_a, twos_b, fours_a, fours_b, eights;
    MF_CSA(twos_a, c->ones, c->ones, h[0], h[1]);
    MF_CSA(twos_b, c->ones, c->ones, h[2], h[3]);
    MF_CSA(fours_a, c->twos, c->twos, twos_a, twos_b);
    MF_CSA(twos_a, c->ones, c->ones, h[4], h[5]);
    MF_CSA(twos_b, c->ones, c->ones, h[6], h[7]);
    MF_CSA(fours_b, c->twos, c->twos, twos_a, twos_b);
    MF_CSA(eights, c->fours, c->fours, fours_a, fours_b);
    return eights;
}

static inline __attribute__((always_inline)) void mf_bitcount_add16(mf_bitcount *c, const uint64_t *h) {
    uint64_t eights_a = mf_bitcount_csa8(c, h), eights_b = mf_bitcount_csa8(c, h + 8), sixteens;
    MF_CSA(sixteens, c->eights, c->eights, eights_a, eights_b);
    mf_bitcount_lanes_add(c, sixteens);
    c->total += 16;
}

/* The last m < 16 hashes of a text: h must hold 16 entries; the rest are set to zero, which
 * adds nothing to any count. */
static inline __attribute__((always_inline)) void mf_bitcount_add_last(mf_bitcount *c, uint64_t *h, int m) {
    if (m == 0)
        return;
    for (int k = m; k < 16; k++)
        h[k] = 0;
    mf_bitcount_add16(c, h);
    c->total -= (uint64_t)(16 - m);
}

/* Where a bit-sliced count (planes[k]: bit k of the 64 counts) is at least `value` (< 2^bits):
 * compared from the top plane down, as two numbers are compared digit by digit (without a
 * branch on value's digits, which differ from text to text). */
static inline uint64_t mf_sliced_at_least(const uint64_t *planes, int bits, uint64_t value) {
    uint64_t greater = 0, same = ~(uint64_t)0;
    for (int k = bits - 1; k >= 0; k--) {
        uint64_t digit = (uint64_t)0 - ((value >> k) & 1);      /* all ones where value has a 1 */
        greater |= same & planes[k] & ~digit;
        same &= ~(planes[k] ^ digit);
    }
    return greater | same;
}

/* Bits set in more than half of the hashes added (0 when none were). */
static uint64_t mf_bitcount_majority(mf_bitcount *c) {
    const uint64_t need = (c->total >> 1) + 1;         /* count >= need: a strict majority */
    const uint64_t q = need >> 4, s = need & 15;       /* need = 16 q + s */
    const uint64_t planes[4] = {c->ones, c->twos, c->fours, c->eights};
    uint64_t out = 0;
    if (c->total == 0)
        return 0;
    if (c->spilled || q >= MF_LANE_LIMIT) {            /* long texts: count bit by bit */
        mf_bitcount_spill(c);
        for (int b = 0; b < 64; b++) {
            uint64_t count = 16 * (uint64_t)c->wide[b];
            for (int k = 0; k < 4; k++)
                count += ((planes[k] >> b) & 1) << k;
            if (count >= need)
                out |= (uint64_t)1 << b;
        }
        return out;
    }
    /* sixteens > q: a majority whatever the rest; sixteens == q: a majority when rest >= s */
    uint64_t more = 0, equal = 0;
    for (int j = 0; j < 8; j++) {
        uint64_t above = ((c->lanes[j] + MF_LOW_BITS * (127 - q)) >> 7) & MF_LOW_BITS;
        uint64_t at_least = ((c->lanes[j] + MF_LOW_BITS * (128 - q)) >> 7) & MF_LOW_BITS;
        more |= above << j;
        equal |= (at_least & ~above) << j;
    }
    return more | (equal & mf_sliced_at_least(planes, 4, s));
}

/* ------------------------------------------------------------------------------------------
 * The same count four hashes abreast, on 256-bit words (AVX2).  Plane k holds bit k of four
 * lanes' counts, lane l counting the hashes at positions 4i + l, so a step of 32 hashes costs
 * seven vector CSAs where the scalar counter spends thirty.  A lane's count lives whole in
 * MF_PLANES4 planes (the 8s carry ripples up through the rest, two operations a plane); a lane
 * gains at most 8 a step, so every MF_STEPS4 steps the four lanes are summed with bit-sliced
 * ripple-carry adders into `wide`, itself a bit-sliced count.  The majority is a bit-sliced
 * compare of that sum with the need.  Used when the CPU has AVX2 (mf_bitcount4_available, asked
 * at run time): mf_bitcount4_add is compiled for AVX2 whatever the build's baseline, and only called
 * then. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_MSC_VER)
#define MF_HAVE_BITCOUNT4 1
#define MF_PLANES4 8
#define MF_STEPS4 31                       /* 31 steps * 8 < 2^MF_PLANES4 */
#define MF_WIDE_PLANES 48

typedef uint64_t mf_u64x4 __attribute__((vector_size(32)));
typedef uint64_t mf_u64x4_unaligned __attribute__((vector_size(32), aligned(8)));

typedef struct {                           /* 32-byte aligned, as a local variable is */
    mf_u64x4 planes[MF_PLANES4];
    uint64_t wide[MF_WIDE_PLANES];         /* the lanes' sum at the last spill, bit-sliced */
    int steps;                             /* since the last spill */
    int spilled;
    uint64_t total;
} mf_bitcount4;

static inline int mf_bitcount4_available(void) {
    return __builtin_cpu_supports("avx2");
}

static inline void mf_bitcount4_init(mf_bitcount4 *c) {
    for (int k = 0; k < MF_PLANES4; k++)   /* not memset: gcc made that a rep stos */
        c->planes[k] = (mf_u64x4){0, 0, 0, 0};
    c->steps = 0;
    c->spilled = 0;
    c->total = 0;
}

/* The four lanes' counts added, into `planes` + 2 planes of sum (the lanes use `planes`):
 * lanes 0 and 1 plus lanes 2 and 3 on 128-bit halves, then the two halves. */
static inline void mf_bitcount4_lane_sum(const mf_bitcount4 *c, int planes, uint64_t *sum) {
    typedef uint64_t mf_u64x2 __attribute__((vector_size(16)));
    mf_u64x2 halves[MF_PLANES4 + 1], carry2 = {0, 0};
    uint64_t carry = 0;
    for (int k = 0; k < planes; k++) {
        mf_u64x2 a, b, u;
        memcpy(&a, &c->planes[k], sizeof(a));
        memcpy(&b, (const char *)&c->planes[k] + sizeof(a), sizeof(b));
        u = a ^ b;
        halves[k] = u ^ carry2;
        carry2 = (a & b) | (u & carry2);
    }
    halves[planes] = carry2;
    for (int k = 0; k <= planes; k++) {
        uint64_t a = halves[k][0], b = halves[k][1], u = a ^ b;
        sum[k] = u ^ carry;
        carry = (a & b) | (u & carry);
    }
    sum[planes + 1] = carry;
}

/* Planes that can be non-zero: a lane gains at most 8 a step, so after s steps its count
 * has at most 3 + bit_length(s) bits. */
static inline int mf_bitcount4_planes_used(const mf_bitcount4 *c) {
    return c->steps ? 3 + (32 - __builtin_clz((unsigned)c->steps)) : 0;
}

static void mf_bitcount4_spill(mf_bitcount4 *c) {
    uint64_t sum[MF_PLANES4 + 2], carry = 0;
    mf_bitcount4_lane_sum(c, MF_PLANES4, sum);
    if (!c->spilled) {
        memset(c->wide, 0, sizeof(c->wide));
        c->spilled = 1;
    }
    for (int k = 0; k < MF_WIDE_PLANES; k++) {
        uint64_t add = k < MF_PLANES4 + 2 ? sum[k] : 0, u = c->wide[k] ^ add;
        uint64_t next = (c->wide[k] & add) | (u & carry);
        c->wide[k] = u ^ carry;
        carry = next;
    }
    for (int k = 0; k < MF_PLANES4; k++)
        c->planes[k] = (mf_u64x4){0, 0, 0, 0};
    c->steps = 0;
}

/* Count hashes[0..m); the array must have room for m rounded up to 32 (the rest is set to
 * zero here).  Not inlined: it is the only code compiled for AVX2, and the hashing around it is
 * better off not vectorised (AVX2's 2-lane inserts cost more than the scalar table lookups they
 * replace).  The planes and the step count are worked on in locals: through `c`, the compiler
 * would have to assume that the loads of hashes and the spill call change them. */
static __attribute__((target("avx2"))) void mf_bitcount4_add(mf_bitcount4 *c, uint64_t *hashes, size_t m) {
    mf_u64x4 p[MF_PLANES4];
    int steps = c->steps;
    for (size_t i = m; i % 32; i++)
        hashes[i] = 0;
    c->total += m;
    for (int k = 0; k < MF_PLANES4; k++)
        p[k] = c->planes[k];
    for (size_t i = 0; i < m; i += 32) {
        mf_u64x4 v[8], twos_a, twos_b, fours_a, fours_b, carry;
        for (int j = 0; j < 8; j++)
            v[j] = *(const mf_u64x4_unaligned *)(hashes + i + 4 * j);
        MF_CSA(twos_a, p[0], p[0], v[0], v[1]);
        MF_CSA(twos_b, p[0], p[0], v[2], v[3]);
        MF_CSA(fours_a, p[1], p[1], twos_a, twos_b);
        MF_CSA(twos_a, p[0], p[0], v[4], v[5]);
        MF_CSA(twos_b, p[0], p[0], v[6], v[7]);
        MF_CSA(fours_b, p[1], p[1], twos_a, twos_b);
        MF_CSA(carry, p[2], p[2], fours_a, fours_b);
        for (int k = 3; k < MF_PLANES4; k++) {
            mf_u64x4 next = p[k] & carry;
            p[k] ^= carry;
            carry = next;
        }
        if (++steps == MF_STEPS4) {
            for (int k = 0; k < MF_PLANES4; k++)
                c->planes[k] = p[k];
            mf_bitcount4_spill(c);
            for (int k = 0; k < MF_PLANES4; k++)
                p[k] = (mf_u64x4){0, 0, 0, 0};
            steps = 0;
        }
    }
    for (int k = 0; k < MF_PLANES4; k++)
        c->planes[k] = p[k];
    c->steps = steps;
}

static uint64_t mf_bitcount4_majority(mf_bitcount4 *c) {
    const uint64_t need = (c->total >> 1) + 1;
    uint64_t sum[MF_PLANES4 + 2];
    if (c->total == 0)
        return 0;
    if (c->spilled) {
        mf_bitcount4_spill(c);
        return mf_sliced_at_least(c->wide, MF_WIDE_PLANES, need);   /* need < 2^48: total < 2^49 */
    }
    int planes = mf_bitcount4_planes_used(c);      /* the sum (< 32 steps) needs two more */
    mf_bitcount4_lane_sum(c, planes, sum);
    return mf_sliced_at_least(sum, planes + 2, need);
}
#else
static inline int mf_bitcount4_available(void) {
    return 0;
}
#endif

#endif
