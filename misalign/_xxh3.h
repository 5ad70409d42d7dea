/* XXH3-64 with a seed, written for misalign-fast from the public xxHash specification
 * (doc/xxhash_spec.md, "XXH3 Algorithm Description").  Only the 64-bit seeded variant is
 * needed: shingles are hashed one at a time, so there is no streaming state.  Checked against
 * the `xxhash` Python package for every length from 0 to 2,100 bytes in tests/test_simhash.py.
 * Little-endian hosts only (x86-64, aarch64), which is all we build for. */
#ifndef MISALIGN_XXH3_H
#define MISALIGN_XXH3_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define MF_P32_1 0x9E3779B1ULL
#define MF_P32_2 0x85EBCA77ULL
#define MF_P32_3 0xC2B2AE3DULL
#define MF_P64_1 0x9E3779B185EBCA87ULL
#define MF_P64_2 0xC2B2AE3D27D4EB4FULL
#define MF_P64_3 0x165667B19E3779F9ULL
#define MF_P64_4 0x85EBCA77C2B2AE63ULL
#define MF_P64_5 0x27D4EB2F165667C5ULL
#define MF_PMX_1 0x165667919E3779F9ULL
#define MF_PMX_2 0x9FB21C651E98DF25ULL

#define MF_SECRET_SIZE 192

static const uint8_t mf_default_secret[MF_SECRET_SIZE] = {
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
  0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
  0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
  0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
  0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
  0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
  0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
  0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

static inline uint64_t mf_read64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t mf_read32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t mf_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t mf_fold_mul(uint64_t a, uint64_t b) {
    __uint128_t m = (__uint128_t)a * b;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
}

static inline uint64_t mf_avalanche(uint64_t x) {
    x ^= x >> 37;
    x *= MF_PMX_1;
    return x ^ (x >> 32);
}

static inline uint64_t mf_avalanche_xxh64(uint64_t x) {
    x ^= x >> 33;
    x *= MF_P64_2;
    x ^= x >> 29;
    x *= MF_P64_3;
    return x ^ (x >> 32);
}

/* The secret a seed implies for inputs over 240 bytes; shorter inputs use the seed directly. */
static inline void mf_xxh3_derive_secret(uint64_t seed, uint8_t *out) {
    for (int i = 0; i < MF_SECRET_SIZE / 16; i++) {
        uint64_t lo = mf_read64(mf_default_secret + 16 * i) + seed;
        uint64_t hi = mf_read64(mf_default_secret + 16 * i + 8) - seed;
        memcpy(out + 16 * i, &lo, 8);
        memcpy(out + 16 * i + 8, &hi, 8);
    }
}

static inline uint64_t mf_mix16(const uint8_t *in, const uint8_t *sec, uint64_t seed) {
    return mf_fold_mul(mf_read64(in) ^ (mf_read64(sec) + seed),
                       mf_read64(in + 8) ^ (mf_read64(sec + 8) - seed));
}

static inline uint64_t mf_xxh3_upto16(const uint8_t *in, size_t n, uint64_t seed) {
    const uint8_t *s = mf_default_secret;
    if (n > 8) {
        uint64_t lo = ((mf_read64(s + 24) ^ mf_read64(s + 32)) + seed) ^ mf_read64(in);
        uint64_t hi = ((mf_read64(s + 40) ^ mf_read64(s + 48)) - seed) ^ mf_read64(in + n - 8);
        return mf_avalanche(n + __builtin_bswap64(lo) + hi + mf_fold_mul(lo, hi));
    }
    if (n >= 4) {
        uint64_t mseed = seed ^ ((uint64_t)__builtin_bswap32((uint32_t)seed) << 32);
        uint64_t both = (uint64_t)mf_read32(in + n - 4) | ((uint64_t)mf_read32(in) << 32);
        uint64_t v = ((mf_read64(s + 8) ^ mf_read64(s + 16)) - mseed) ^ both;
        v ^= mf_rotl64(v, 49) ^ mf_rotl64(v, 24);
        v *= MF_PMX_2;
        v ^= (v >> 35) + n;
        v *= MF_PMX_2;
        return v ^ (v >> 28);
    }
    if (n > 0) {
        uint32_t c = (uint32_t)in[n - 1] | ((uint32_t)n << 8) | ((uint32_t)in[0] << 16)
                   | ((uint32_t)in[n >> 1] << 24);
        uint64_t v = ((uint64_t)(mf_read32(s) ^ mf_read32(s + 4)) + seed) ^ (uint64_t)c;
        return mf_avalanche_xxh64(v);
    }
    return mf_avalanche_xxh64(seed ^ mf_read64(s + 56) ^ mf_read64(s + 64));
}

static inline uint64_t mf_xxh3_upto240(const uint8_t *in, size_t n, uint64_t seed) {
    const uint8_t *s = mf_default_secret;
    uint64_t acc = n * MF_P64_1;
    if (n <= 128) {
        for (int i = (int)((n - 1) >> 5); i >= 0; i--) {
            acc += mf_mix16(in + 16 * i, s + 32 * i, seed);
            acc += mf_mix16(in + n - 16 * i - 16, s + 32 * i + 16, seed);
        }
        return mf_avalanche(acc);
    }
    size_t chunks = n >> 4;
    for (int i = 0; i < 8; i++) acc += mf_mix16(in + 16 * i, s + 16 * i, seed);
    acc = mf_avalanche(acc);
    for (size_t i = 8; i < chunks; i++) acc += mf_mix16(in + 16 * i, s + 16 * (i - 8) + 3, seed);
    acc += mf_mix16(in + n - 16, s + 119, seed);
    return mf_avalanche(acc);
}

static inline void mf_accumulate(uint64_t *acc, const uint8_t *stripe, const uint8_t *sec) {
    for (int i = 0; i < 8; i++) {
        uint64_t v = mf_read64(stripe + 8 * i);
        uint64_t k = v ^ mf_read64(sec + 8 * i);
        acc[i ^ 1] += v;
        acc[i] += (k & 0xFFFFFFFFULL) * (k >> 32);
    }
}

static inline void mf_scramble(uint64_t *acc, const uint8_t *sec) {
    for (int i = 0; i < 8; i++) {
        uint64_t a = acc[i];
        a ^= a >> 47;
        a ^= mf_read64(sec + 8 * i);
        acc[i] = a * MF_P32_1;
    }
}

/* Inputs over 240 bytes; `secret` is the one derived from the seed (MF_SECRET_SIZE bytes).
 * Kept out of line so that the short paths, which shingles take, inline into the caller. */
__attribute__((noinline)) static uint64_t mf_xxh3_long(const uint8_t *in, size_t n, const uint8_t *secret) {
    uint64_t acc[8] = {MF_P32_3, MF_P64_1, MF_P64_2, MF_P64_3, MF_P64_4, MF_P32_2, MF_P64_5, MF_P32_1};
    const size_t stripes_per_block = (MF_SECRET_SIZE - 64) / 8;
    const size_t block = 64 * stripes_per_block;
    size_t full_blocks = (n - 1) / block;
    for (size_t b = 0; b < full_blocks; b++) {
        for (size_t s = 0; s < stripes_per_block; s++)
            mf_accumulate(acc, in + b * block + 64 * s, secret + 8 * s);
        mf_scramble(acc, secret + MF_SECRET_SIZE - 64);
    }
    size_t rest = n - full_blocks * block;
    size_t stripes = (rest - 1) / 64;
    for (size_t s = 0; s < stripes; s++)
        mf_accumulate(acc, in + full_blocks * block + 64 * s, secret + 8 * s);
    mf_accumulate(acc, in + n - 64, secret + MF_SECRET_SIZE - 71);

    uint64_t result = (uint64_t)n * MF_P64_1;
    for (int i = 0; i < 4; i++)
        result += mf_fold_mul(acc[2 * i] ^ mf_read64(secret + 11 + 16 * i),
                              acc[2 * i + 1] ^ mf_read64(secret + 11 + 16 * i + 8));
    return mf_avalanche(result);
}

__attribute__((always_inline)) static inline uint64_t mf_xxh3_64(const uint8_t *in, size_t n, uint64_t seed,
                                                                 const uint8_t *long_secret) {
    if (n <= 16) return mf_xxh3_upto16(in, n, seed);
    if (n <= 240) return mf_xxh3_upto240(in, n, seed);
    return mf_xxh3_long(in, n, long_secret);
}

#endif
