/* Character n-gram SimHash (n = 1..8).
 *
 * The text is folded as Python's " ".join(text.split()) would fold it (every run of whitespace
 * becomes one space, none at either end) after NFKC + casefold, which the caller has done or
 * checked to be a no-op for every character that is not ASCII; ASCII letters are lower-cased
 * here.  Each run of n consecutive characters is a shingle (a text shorter than n is one
 * shingle).  A shingle of ASCII characters is hashed by simple tabulation, the XOR of one
 * random 64-bit word per (position, byte) drawn from the seed: four loads and three XORs for a
 * 4-gram instead of a general-purpose hash call per shingle, and tabulation is 3-independent,
 * which is all SimHash's bit votes need.  A shingle with any other character is hashed with
 * XXH3-64 of its UTF-8 bytes under the seed. */
#ifndef MISALIGN_CHARS_H
#define MISALIGN_CHARS_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "_bitcount.h"
#include "_xxh3.h"

#define MF_CHAR_MAX 8

typedef struct {
    uint64_t t[MF_CHAR_MAX][128];   /* t[k][c]: the word of ASCII byte c at position k */
    uint64_t seed;
    const uint8_t *long_secret;     /* XXH3's secret for the seed (shingles are <= 32 bytes) */
    int four_abreast;               /* count with mf_bitcount4 (the CPU has AVX2) */
} mf_char_hash;

static inline uint64_t mf_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* `vector`: count four hashes abreast where the CPU can (0: always the portable counter). */
static inline void mf_char_hash_init(mf_char_hash *h, uint64_t seed, const uint8_t *long_secret, int vector) {
    uint64_t state = seed;
    for (int k = 0; k < MF_CHAR_MAX; k++)
        for (int c = 0; c < 128; c++)
            h->t[k][c] = mf_splitmix64(&state);
    h->seed = seed;
    h->long_secret = long_secret;
    h->four_abreast = vector && mf_bitcount4_available();
}

/* ASCII byte -> folded byte: A-Z lower-cased, Python's ASCII whitespace (\t \n \v \f \r,
 * \x1c-\x1f, space) turned into a space, everything else itself. */
static const uint8_t mf_ascii_fold[128] = {
      0,   1,   2,   3,   4,   5,   6,   7,   8,  32,  32,  32,  32,  32,  14,  15,
     16,  17,  18,  19,  20,  21,  22,  23,  24,  25,  26,  27,  32,  32,  32,  32,
     32,  33,  34,  35,  36,  37,  38,  39,  40,  41,  42,  43,  44,  45,  46,  47,
     48,  49,  50,  51,  52,  53,  54,  55,  56,  57,  58,  59,  60,  61,  62,  63,
     64,  97,  98,  99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122,  91,  92,  93,  94,  95,
     96,  97,  98,  99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127,
};

/* Fold ASCII bytes s[from..n) into out[pos..), after `previous_space`; returns the new pos.
 * Branch-free: a space is written always and kept only when the previous byte was not one. */
static inline Py_ssize_t mf_fold_ascii_scalar(const uint8_t *s, Py_ssize_t from, Py_ssize_t n, uint8_t *out,
                                             Py_ssize_t pos, unsigned *previous_space) {
    unsigned previous = *previous_space;
    for (Py_ssize_t i = from; i < n; i++) {
        uint8_t c = mf_ascii_fold[s[i] & 0x7F];
        unsigned space = c == ' ';
        out[pos] = c;
        pos += !(space & previous);
        previous = space;
    }
    *previous_space = previous;
    return pos;
}

#if defined(__SSE2__)
/* Fold sixteen ASCII bytes at once: lower-cased and whitespace turned into spaces by compares,
 * stored at out + *pos unless a space follows a space (or starts the text), which is left to
 * the scalar loop (returns 0). */
static inline int mf_fold16(__m128i v, uint8_t *out, Py_ssize_t *pos, unsigned *previous_space) {
    __m128i upper = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('A' - 1)),
                                  _mm_cmplt_epi8(v, _mm_set1_epi8('Z' + 1)));
    __m128i white = _mm_or_si128(
        _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(8)), _mm_cmplt_epi8(v, _mm_set1_epi8(14))),
        _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(27)), _mm_cmplt_epi8(v, _mm_set1_epi8(33))));
    __m128i folded = _mm_or_si128(v, _mm_and_si128(upper, _mm_set1_epi8(0x20)));
    folded = _mm_or_si128(_mm_andnot_si128(white, folded), _mm_and_si128(white, _mm_set1_epi8(' ')));
    unsigned spaces = (unsigned)_mm_movemask_epi8(white);
    if (spaces & ((spaces << 1) | *previous_space))
        return 0;
    _mm_storeu_si128((__m128i *)(out + *pos), folded);
    *pos += 16;
    *previous_space = spaces >> 15;
    return 1;
}
#endif

/* Fold ASCII text into `out` (n + 16 bytes); returns the folded length. */
static inline Py_ssize_t mf_fold_ascii(const uint8_t *s, Py_ssize_t n, uint8_t *out) {
    Py_ssize_t pos = 0, i = 0;
    unsigned previous_space = 1;           /* drops leading whitespace */
#if defined(__SSE2__)
    for (; i + 16 <= n; i += 16)
        if (!mf_fold16(_mm_loadu_si128((const __m128i *)(s + i)), out, &pos, &previous_space))
            pos = mf_fold_ascii_scalar(s, i, i + 16, out, pos, &previous_space);
#endif
    pos = mf_fold_ascii_scalar(s, i, n, out, pos, &previous_space);
    if (pos && out[pos - 1] == ' ')
        pos--;
    return pos;
}

static inline __attribute__((always_inline)) uint64_t
mf_tabulate(const mf_char_hash *h, const uint8_t *w, int n) {
    uint64_t x = 0;
    for (int k = 0; k < n; k++)
        x ^= h->t[k][w[k]];
    return x;
}

static inline int mf_utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { out[0] = (uint8_t)(0xC0 | (cp >> 6)); out[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12)); out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F)); return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18)); out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (uint8_t)(0x80 | (cp & 0x3F)); return 4;
}

/* XXH3-64 of a shingle's UTF-8: `bytes` holds its ASCII characters and 0x80 where `cps` holds
 * the others. */
static inline uint64_t mf_utf8_shingle_hash(const mf_char_hash *h, const uint8_t *bytes, const uint32_t *cps,
                                            int n) {
    uint8_t utf8[4 * MF_CHAR_MAX];
    size_t len = 0;
    for (int k = 0; k < n; k++)
        len += (size_t)mf_utf8_encode(bytes[k] & 0x80 ? cps[k] : bytes[k], utf8 + len);
    if (len > sizeof(utf8))       /* never: tells the compiler XXH3's long-input paths are dead here */
        __builtin_unreachable();
    return mf_xxh3_64(utf8, len, h->seed, h->long_secret);
}

/* The hash of window w: by tabulation of `bytes`, unless a character of it is not ASCII
 * (0x80 in `bytes`, its code point in `cps`; cps is NULL for ASCII text).  `last_high`: where
 * the latest such character is, updated here as the windows advance one by one. */
static inline __attribute__((always_inline)) uint64_t
mf_window_hash(const mf_char_hash *h, const uint8_t *bytes, const uint32_t *cps, Py_ssize_t w, int n,
               Py_ssize_t *last_high) {
    if (cps) {
        if (bytes[w + n - 1] & 0x80)
            *last_high = w + n - 1;
        if (*last_high >= w)
            return mf_utf8_shingle_hash(h, bytes + w, cps + w, n);
    }
    return mf_tabulate(h, bytes + w, n);
}

/* Where the last character that is not ASCII before window 0's last character is (-1: none). */
static inline Py_ssize_t mf_initial_last_high(const uint8_t *bytes, const uint32_t *cps, int n) {
    Py_ssize_t last_high = -1;
    if (cps)
        for (Py_ssize_t k = 0; k < n - 1; k++)
            if (bytes[k] & 0x80)
                last_high = k;
    return last_high;
}

/* Hashes of windows [from, from + count) into out[0..count), in runs of sixteen so that, n
 * being a constant, each byte is loaded once for the n windows that read it. */
static inline __attribute__((always_inline)) void
mf_hash_windows(const mf_char_hash *h, const uint8_t *bytes, const uint32_t *cps, Py_ssize_t from,
                Py_ssize_t count, int n, Py_ssize_t *last_high, uint64_t *out) {
    Py_ssize_t k = 0;
    for (; k + 16 <= count; k += 16)
        for (int j = 0; j < 16; j++)
            out[k + j] = mf_window_hash(h, bytes, cps, from + k + j, n, last_high);
    for (; k < count; k++)
        out[k] = mf_window_hash(h, bytes, cps, from + k, n, last_high);
}

#define MF_CHUNK 512       /* windows hashed before they are counted (4 KiB of hashes) */
_Static_assert(MF_CHUNK % 32 == 0, "a chunk rounded up to 32 must fit in the chunk's buffer");

/* Hash every n-character window and return the SimHash of the hashes.  The portable counter
 * takes them sixteen at a time as they are made.  The four-abreast one (AVX2) takes a chunk at
 * a time, after all of the chunk is hashed: its 32-byte loads would otherwise wait on the
 * 8-byte stores that just wrote them, and it would gain little. */
static inline __attribute__((always_inline)) uint64_t
mf_count_ngrams(const mf_char_hash *h, const uint8_t *bytes, const uint32_t *cps, Py_ssize_t windows, int n) {
    Py_ssize_t last_high = mf_initial_last_high(bytes, cps, n), w = 0;
#ifdef MF_HAVE_BITCOUNT4
    if (h->four_abreast) {
        uint64_t hashes[MF_CHUNK];      /* room for any chunk rounded up to 32 */
        mf_bitcount4 c4;
        mf_bitcount4_init(&c4);
        for (; w < windows; w += MF_CHUNK) {
            Py_ssize_t m = windows - w < MF_CHUNK ? windows - w : MF_CHUNK;
            mf_hash_windows(h, bytes, cps, w, m, n, &last_high, hashes);
            mf_bitcount4_add(&c4, hashes, (size_t)m);
        }
        return mf_bitcount4_majority(&c4);
    }
#endif
    uint64_t hashes[16];
    mf_bitcount c;
    mf_bitcount_init(&c);
    for (; w + 16 <= windows; w += 16) {
        mf_hash_windows(h, bytes, cps, w, 16, n, &last_high, hashes);
        mf_bitcount_add16(&c, hashes);
    }
    mf_hash_windows(h, bytes, cps, w, windows - w, n, &last_high, hashes);
    mf_bitcount_add_last(&c, hashes, (int)(windows - w));
    return mf_bitcount_majority(&c);
}

static inline int mf_any_high(const uint8_t *bytes, Py_ssize_t len) {
    for (Py_ssize_t k = 0; k < len; k++)
        if (bytes[k] & 0x80)
            return 1;
    return 0;
}

/* The SimHash of a folded text of `len` characters (len > 0). */
static inline __attribute__((always_inline)) uint64_t
mf_char_simhash_folded(const mf_char_hash *h, const uint8_t *bytes, const uint32_t *cps,
                                       Py_ssize_t len, int n, int64_t *shingles) {
    if (len < n) {
        *shingles = 1;
        return cps && mf_any_high(bytes, len) ? mf_utf8_shingle_hash(h, bytes, cps, (int)len)
                                                : mf_tabulate(h, bytes, (int)len);
    }
    Py_ssize_t windows = len - n + 1;
    *shingles = windows;
    switch (n) {     /* a constant n per case, so that each tabulation loop is unrolled */
        case 1: return mf_count_ngrams(h, bytes, cps, windows, 1);
        case 2: return mf_count_ngrams(h, bytes, cps, windows, 2);
        case 3: return mf_count_ngrams(h, bytes, cps, windows, 3);
        case 4: return mf_count_ngrams(h, bytes, cps, windows, 4);
        case 5: return mf_count_ngrams(h, bytes, cps, windows, 5);
        case 6: return mf_count_ngrams(h, bytes, cps, windows, 6);
        case 7: return mf_count_ngrams(h, bytes, cps, windows, 7);
        default: return mf_count_ngrams(h, bytes, cps, windows, 8);
    }
}

/* SimHash of ASCII text; `fold` holds len + 16 bytes.  *shingles gets the shingle count. */
static uint64_t mf_char_simhash_ascii(const mf_char_hash *h, const uint8_t *s, Py_ssize_t len, int n,
                                      uint8_t *fold, int64_t *shingles) {
    Py_ssize_t folded = mf_fold_ascii(s, len, fold);
    *shingles = 0;
    return folded ? mf_char_simhash_folded(h, fold, NULL, folded, n, shingles) : 0;
}

static inline uint32_t mf_read_codepoint(const void *data, int width, Py_ssize_t i) {
    return width == 1 ? ((const uint8_t *)data)[i]
         : width == 2 ? ((const uint16_t *)data)[i] : ((const uint32_t *)data)[i];
}

static inline int mf_is_inert(uint32_t cp, const uint8_t *inert) {
    return cp < 0x80 || (cp < 0x10000 && ((inert[cp >> 3] >> (cp & 7)) & 1));
}

static inline __attribute__((always_inline)) Py_ssize_t
mf_find_inert_w(const void *data, int width, Py_ssize_t from, Py_ssize_t len, const uint8_t *inert, int wanted) {
    Py_ssize_t i = from;
#if defined(__SSE2__)
    if (width == 2 && !wanted)      /* skip runs of ASCII eight characters at a time */
        for (; i + 8 <= len; i += 8) {
            __m128i v = _mm_loadu_si128((const __m128i *)((const uint16_t *)data + i));
            __m128i high = _mm_and_si128(v, _mm_set1_epi16((short)0xFF80));
            if (_mm_movemask_epi8(_mm_cmpeq_epi16(high, _mm_setzero_si128())) != 0xFFFF)
                break;
        }
#endif
    for (; i < len; i++)
        if (mf_is_inert(mf_read_codepoint(data, width, i), inert) == wanted)
            return i;
    return len;
}

/* The first position at or after `from` of a str's data whose character is (wanted = 1) or is
 * not (wanted = 0) ASCII or set in the `inert` bitmap (a bit per BMP code point); len if none. */
static inline Py_ssize_t mf_find_inert(const void *data, int width, Py_ssize_t from, Py_ssize_t len,
                                       const uint8_t *inert, int wanted) {
    return width == 1 ? mf_find_inert_w(data, 1, from, len, inert, wanted)
         : width == 2 ? mf_find_inert_w(data, 2, from, len, inert, wanted)
                      : mf_find_inert_w(data, 4, from, len, inert, wanted);
}

/* Fold code points data[from..to) into bytes (ASCII folded as in mf_fold_ascii_scalar; 0x80
 * for any other character, whose code point goes to the same place in cps). */
static inline __attribute__((always_inline)) Py_ssize_t
mf_fold_codepoints_scalar(const void *data, int width, Py_ssize_t from, Py_ssize_t to, uint8_t *bytes,
                          uint32_t *cps, Py_ssize_t pos, unsigned *previous_space) {
    unsigned previous = *previous_space;
    for (Py_ssize_t i = from; i < to; i++) {
        uint32_t cp = mf_read_codepoint(data, width, i);
        unsigned space;
        if (cp < 0x80) {
            bytes[pos] = mf_ascii_fold[cp];
            space = bytes[pos] == ' ';
        } else {
            space = Py_UNICODE_ISSPACE(cp) != 0;
            bytes[pos] = space ? ' ' : 0x80;
            cps[pos] = cp;
        }
        pos += !(space & previous);
        previous = space;
    }
    *previous_space = previous;
    return pos;
}

/* Fold code points of `width` bytes each (a constant in each caller): with SSE2, sixteen at a
 * time while they are ASCII (most characters of most non-ASCII prompts), packed into bytes. */
static inline __attribute__((always_inline)) Py_ssize_t
mf_fold_codepoints(const void *data, int width, Py_ssize_t len, uint8_t *bytes, uint32_t *cps) {
    Py_ssize_t pos = 0, i = 0;
    unsigned previous_space = 1;
#if defined(__SSE2__)
    if (width <= 2) {
        for (; i + 16 <= len; i += 16) {
            __m128i v;
            if (width == 1) {
                v = _mm_loadu_si128((const __m128i *)((const uint8_t *)data + i));
            } else {
                __m128i a = _mm_loadu_si128((const __m128i *)((const uint16_t *)data + i));
                __m128i b = _mm_loadu_si128((const __m128i *)((const uint16_t *)data + i + 8));
                __m128i high = _mm_and_si128(_mm_or_si128(a, b), _mm_set1_epi16((short)0xFF80));
                v = _mm_movemask_epi8(_mm_cmpeq_epi16(high, _mm_setzero_si128())) == 0xFFFF
                    ? _mm_packus_epi16(a, b) : _mm_set1_epi8((char)0x80);
            }
            if (_mm_movemask_epi8(v) || !mf_fold16(v, bytes, &pos, &previous_space))
                pos = mf_fold_codepoints_scalar(data, width, i, i + 16, bytes, cps, pos, &previous_space);
        }
    }
#endif
    pos = mf_fold_codepoints_scalar(data, width, i, len, bytes, cps, pos, &previous_space);
    if (pos && bytes[pos - 1] == ' ')
        pos--;
    return pos;
}

/* SimHash of code points (a Python str's data: `width` bytes each); `bytes` holds len + 16
 * entries and `cps` len. */
static uint64_t mf_char_simhash_codepoints(const mf_char_hash *h, const void *data, int width, Py_ssize_t len,
                                           int n, uint32_t *cps, uint8_t *bytes, int64_t *shingles) {
    Py_ssize_t folded = width == 1 ? mf_fold_codepoints(data, 1, len, bytes, cps)
                      : width == 2 ? mf_fold_codepoints(data, 2, len, bytes, cps)
                                   : mf_fold_codepoints(data, 4, len, bytes, cps);
    *shingles = 0;
    return folded ? mf_char_simhash_folded(h, bytes, cps, folded, n, shingles) : 0;
}

#endif
