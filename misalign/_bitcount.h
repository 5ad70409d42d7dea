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
        uint64_t u_ = (a) ^ (b);                                 \
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
    uint64_t rest_greater = 0, rest_same = ~(uint64_t)0;   /* rest compared with s, bit-sliced */
    for (int k = 3; k >= 0; k--) {
        if ((s >> k) & 1) {
            rest_same &= planes[k];
        } else {
            rest_greater |= rest_same & planes[k];
            rest_same &= ~planes[k];
        }
    }
    return more | (equal & (rest_greater | rest_same));
}

#endif
