/* Word bounds of an ASCII text, 64 bytes at a time: SSE2 classifies and lower-cases 16 bytes per
 * instruction, and the word starts and ends fall out of a 64-bit mask by bit tricks, so there
 * is no branch per byte.  `low` receives the lower-cased text with every byte that is not a
 * letter or digit replaced by a space; it must hold n + 64 bytes.  Returns the word count.
 * Other targets use the scalar loop, which gives the same result. */
#ifndef MISALIGN_WORDS_H
#define MISALIGN_WORDS_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static inline uint64_t mf_word_mask64(const uint8_t *block, uint8_t *low) {
#if defined(__SSE2__)
    uint64_t mask = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(block + 16 * k));
        /* ASCII bytes are below 0x80, so signed byte compares order them correctly. */
        __m128i upper = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('A' - 1)),
                                      _mm_cmplt_epi8(v, _mm_set1_epi8('Z' + 1)));
        __m128i lower = _mm_or_si128(v, _mm_and_si128(upper, _mm_set1_epi8(0x20)));
        __m128i letter = _mm_and_si128(_mm_cmpgt_epi8(lower, _mm_set1_epi8('a' - 1)),
                                       _mm_cmplt_epi8(lower, _mm_set1_epi8('z' + 1)));
        __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                                      _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
        __m128i word = _mm_or_si128(letter, digit);
        __m128i out = _mm_or_si128(_mm_and_si128(word, lower), _mm_andnot_si128(word, _mm_set1_epi8(' ')));
        _mm_storeu_si128((__m128i *)(low + 16 * k), out);
        mask |= (uint64_t)(uint16_t)_mm_movemask_epi8(word) << (16 * k);
    }
    return mask;
#else
    uint64_t mask = 0;
    for (int k = 0; k < 64; k++) {
        uint8_t c = block[k];
        uint8_t l = (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
        int word = (l >= 'a' && l <= 'z') || (c >= '0' && c <= '9');
        low[k] = word ? l : ' ';
        mask |= (uint64_t)word << k;
    }
    return mask;
#endif
}

static inline Py_ssize_t mf_ascii_words(const uint8_t *s, Py_ssize_t n, uint8_t *low,
                                        Py_ssize_t *starts, Py_ssize_t *ends) {
    Py_ssize_t nstart = 0, nend = 0;
    uint64_t carry = 0;   /* 1 when the previous block ended inside a word */
    uint8_t tail[64];
    for (Py_ssize_t base = 0; base < n; base += 64) {
        const uint8_t *block = s + base;
        if (n - base < 64) {  /* pad the last block with zeros, which are separators */
            memset(tail, 0, 64);
            memcpy(tail, s + base, (size_t)(n - base));
            block = tail;
        }
        uint64_t m = mf_word_mask64(block, low + base);
        uint64_t before = (m << 1) | carry;
        uint64_t begin = m & ~before, end = ~m & before;
        while (begin) { starts[nstart++] = base + __builtin_ctzll(begin); begin &= begin - 1; }
        while (end) { ends[nend++] = base + __builtin_ctzll(end); end &= end - 1; }
        carry = m >> 63;
    }
    if (carry) ends[nend++] = n;   /* the text ends inside a word, exactly on a block edge */
    return nstart;
}

#endif
