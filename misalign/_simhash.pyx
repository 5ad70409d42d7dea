# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""SimHash fingerprints and an exact multi-index Hamming search, in C with the GIL released.

Fingerprint of one text: NFKC + casefold, then shingles, each hashed under a seed, and bit b of
the fingerprint set when more than half of the shingle occurrences have bit b set.  Character
shingles (_chars.h): whitespace runs folded to one space, n consecutive characters, ASCII ones
hashed by tabulation and others by XXH3-64 of their UTF-8.  Word shingles: words = maximal runs
of alphanumeric code points, n consecutive words joined by one space, XXH3-64.  Every occurrence
weighs 1, so a repeated shingle counts as often as it occurs; unit weights let the 64 counts
live bit-sliced in carry-save planes (_bitcount.h), four hashes abreast where the CPU has AVX2.

Hamming search: the 64 bits are cut into m blocks with radii r_i such that sum(r_i + 1) > tau.
Two fingerprints within tau then differ by at most r_i bits in some block i (pigeonhole), so
probing every bucket within r_i of each block key finds every pair; each candidate is verified
with a popcount, and a pair is reported only by the first block that can see it.  Exact: the
same pairs as brute force.
"""
import unicodedata
from functools import cache

import numpy as np

cimport cython

from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_Check
from cython.parallel cimport prange, parallel, threadid

cdef extern from "_xxh3.h" nogil:
    uint64_t mf_xxh3_64(const uint8_t *data, size_t n, uint64_t seed, const uint8_t *long_secret)
    void mf_xxh3_derive_secret(uint64_t seed, uint8_t *out)
    int MF_SECRET_SIZE

cdef extern from "_bitcount.h" nogil:
    ctypedef struct mf_bitcount:
        pass
    void mf_bitcount_init(mf_bitcount *c)
    void mf_bitcount_add16(mf_bitcount *c, const uint64_t *h)
    void mf_bitcount_add_last(mf_bitcount *c, uint64_t *h, int m)
    uint64_t mf_bitcount_majority(mf_bitcount *c)
    int mf_bitcount4_available()

cdef extern from "_chars.h" nogil:
    ctypedef struct mf_char_hash:
        pass
    int MF_CHAR_MAX
    void mf_char_hash_init(mf_char_hash *h, uint64_t seed, const uint8_t *long_secret, int vector)
    uint64_t mf_char_simhash_ascii(const mf_char_hash *h, const uint8_t *s, Py_ssize_t length, int n,
                                   uint8_t *fold, int64_t *shingles)
    Py_ssize_t mf_find_inert(const void *data, int width, Py_ssize_t start, Py_ssize_t length,
                             const uint8_t *inert, int wanted)
    uint64_t mf_char_simhash_codepoints(const mf_char_hash *h, const void *data, int width, Py_ssize_t length,
                                        int n, uint32_t *fold, uint8_t *bytes, int64_t *shingles)

cdef extern from "_within.h" nogil:
    enum: MF_WITHIN_COLUMNS
    int mf_within_lanes()
    uint32_t mf_within_masks(int lanes, const uint64_t *a, int64_t na, const uint64_t *b, int nb, int tau,
                             uint32_t *masks)

cdef extern from "_words.h" nogil:
    Py_ssize_t mf_ascii_words(const uint8_t *s, Py_ssize_t n, uint8_t *low, Py_ssize_t *starts,
                              Py_ssize_t *ends)

cdef extern from *:
    int __builtin_popcountll(unsigned long long) nogil
    int __builtin_ctz(unsigned int) nogil

cdef extern from "Python.h":
    bint Py_UNICODE_ISALNUM(Py_UCS4 ch) nogil
    bint PyUnicode_IS_ASCII(object s)
    int PyUnicode_KIND(object s)
    Py_UCS4 PyUnicode_READ(int kind, void *data, Py_ssize_t index) nogil
    void *PyUnicode_DATA(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    str PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    # The same on borrowed references, for the loop over a list's items (no reference counting)
    PyObject *_list_item "PyList_GET_ITEM"(object items, Py_ssize_t i)
    bint _is_exact_str "PyUnicode_CheckExact"(PyObject *o)
    bint _ascii_only "PyUnicode_IS_ASCII"(PyObject *o)
    void *_str_data "PyUnicode_DATA"(PyObject *o)
    Py_ssize_t _str_length "PyUnicode_GET_LENGTH"(PyObject *o)


# ----------------------------------------------------------------------------------------------
# fingerprinting

cdef uint8_t[256] _ASCII_WORD    # 0: separator, else the lower-cased byte
cdef int _c
for _c in range(256):
    if 48 <= _c <= 57 or 97 <= _c <= 122:
        _ASCII_WORD[_c] = _c
    elif 65 <= _c <= 90:
        _ASCII_WORD[_c] = _c + 32
    else:
        _ASCII_WORD[_c] = 0


cdef inline Py_ssize_t _utf8_decode(const uint8_t *s, Py_ssize_t i, Py_ssize_t n, Py_UCS4 *out) noexcept nogil:
    """Decode the code point starting at s[i] (s[i] >= 0x80); return its byte length."""
    cdef uint8_t b = s[i]
    if b >= 0xF0 and i + 3 < n:
        out[0] = ((b & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F)
        return 4
    if b >= 0xE0 and i + 2 < n:
        out[0] = ((b & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
        return 3
    if b >= 0xC0 and i + 1 < n:
        out[0] = ((b & 0x1F) << 6) | (s[i + 1] & 0x3F)
        return 2
    out[0] = 0xFFFD   # a stray continuation byte: treated as a separator
    return 1


cdef Py_ssize_t _words_utf8(const uint8_t *s, Py_ssize_t n, uint8_t *norm,
                            Py_ssize_t *starts, Py_ssize_t *ends) noexcept nogil:
    """Words of normalised UTF-8 text into `norm`, lower-cased and one space apart, so that any
    run of words is a plain substring; a word is a run of alphanumeric code points."""
    cdef Py_ssize_t i = 0, out = 0, words = 0, step, w
    cdef uint8_t b
    cdef Py_UCS4 cp
    cdef bint in_word = False, alnum
    while i < n:
        b = s[i]
        if b < 0x80:
            alnum = _ASCII_WORD[b] != 0
            step = 1
        else:
            step = _utf8_decode(s, i, n, &cp)
            alnum = Py_UNICODE_ISALNUM(cp)
        if alnum:
            if not in_word:
                if words:
                    norm[out] = 32
                    out += 1
                starts[words] = out
                in_word = True
            if b < 0x80:
                norm[out] = _ASCII_WORD[b]
                out += 1
            else:
                for w in range(step):
                    norm[out + w] = s[i + w]
                out += step
        elif in_word:
            ends[words] = out
            words += 1
            in_word = False
        i += step
    if in_word:
        ends[words] = out
        words += 1
    return words


cdef uint64_t _word_simhash(const uint8_t *s, Py_ssize_t n, bint ascii, int ngram, uint64_t seed,
                               const uint8_t *long_secret, uint8_t *low, uint8_t *norm,
                               Py_ssize_t *starts, Py_ssize_t *ends, int64_t *shingle_count) noexcept nogil:
    """Scratch owned by the caller: `low` and `norm` n + 64 bytes, `starts`/`ends` n + 1 entries.

    A shingle's bytes are its words joined by single spaces.  The UTF-8 path builds that text in
    `norm` for the whole document.  The ASCII path leaves separators where they were (as spaces
    in `low`): a shingle whose gaps are all one byte long is already a plain substring, and only
    the others (after a comma, a full stop, a line break) are assembled in `norm`.
    """
    cdef Py_ssize_t words, total, w, k, pos, length, filled = 0
    cdef const uint8_t *text
    cdef mf_bitcount counter
    cdef uint64_t hashes[16]      # hashed, then counted sixteen at a time
    if ascii:
        words = mf_ascii_words(s, n, low, starts, ends)
        text = low
    else:
        words = _words_utf8(s, n, norm, starts, ends)
        text = norm
    if words == 0:
        shingle_count[0] = 0
        return 0
    if words < ngram:    # fewer words than n: the words it has make one shingle
        ngram = <int> words
    total = words - ngram + 1
    mf_bitcount_init(&counter)
    for w in range(total):
        length = ends[w + ngram - 1] - starts[w]
        if not ascii or _single_spaced(starts, ends, w, ngram):
            hashes[filled] = mf_xxh3_64(text + starts[w], length, seed, long_secret)
        else:
            pos = 0
            for k in range(w, w + ngram):
                if k > w:
                    norm[pos] = 32
                    pos += 1
                memcpy(norm + pos, low + starts[k], ends[k] - starts[k])
                pos += ends[k] - starts[k]
            hashes[filled] = mf_xxh3_64(norm, pos, seed, long_secret)
        filled += 1
        if filled == 16:
            mf_bitcount_add16(&counter, hashes)
            filled = 0
    mf_bitcount_add_last(&counter, hashes, filled)
    shingle_count[0] = total
    return mf_bitcount_majority(&counter)


cdef inline bint _single_spaced(const Py_ssize_t *starts, const Py_ssize_t *ends, Py_ssize_t w,
                                int ngram) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(w, w + ngram - 1):
        if starts[k + 1] - ends[k] != 1:
            return False
    return True


cdef enum:
    LAYOUT_ASCII = 0   # bytes below 0x80
    LAYOUT_UTF8 = 1    # NFKC + casefolded UTF-8 (word shingles)
    LAYOUT_UCS1 = 2    # a str's own code points, 1, 2 or 4 bytes each (character shingles)
    LAYOUT_UCS2 = 3
    LAYOUT_UCS4 = 4


cdef struct Scratch:             # one per thread, for the longest text of the batch
    uint8_t *low                 # the folded ASCII text (both kinds)
    uint8_t *norm                # words: normalised UTF-8, assembled shingles
    Py_ssize_t *starts           # words: word bounds
    Py_ssize_t *ends
    uint32_t *cps                # characters: the code points that are not ASCII


cdef int _scratch_alloc(Scratch *s, Py_ssize_t longest, bint chars) noexcept nogil:
    s.low = <uint8_t *> malloc(longest + 64)
    if chars:
        s.cps = <uint32_t *> malloc((longest + 1) * sizeof(uint32_t))
        return 0 if s.low != NULL and s.cps != NULL else -1
    s.norm = <uint8_t *> malloc(longest + 64)
    s.starts = <Py_ssize_t *> malloc((longest + 1) * sizeof(Py_ssize_t))
    s.ends = <Py_ssize_t *> malloc((longest + 1) * sizeof(Py_ssize_t))
    return 0 if s.low != NULL and s.norm != NULL and s.starts != NULL and s.ends != NULL else -1


cdef void _scratch_free(Scratch *s) noexcept nogil:
    free(s.low)
    free(s.norm)
    free(s.starts)
    free(s.ends)
    free(s.cps)


cdef int _fingerprint_many(const uint8_t **ptrs, const Py_ssize_t *lens, const uint8_t *layouts,
                           Py_ssize_t count, int n, bint chars, uint64_t seed, int threads, bint vector,
                           uint64_t *out, int64_t *shingles) noexcept nogil:
    """Fingerprint every text; -1 when memory for the scratch buffers ran out."""
    cdef uint8_t long_secret[192]
    cdef mf_char_hash *char_hash = NULL
    cdef Scratch *scratch = <Scratch *> calloc(threads, sizeof(Scratch))
    cdef Scratch *mine
    cdef Py_ssize_t i, longest = 1
    cdef int t, status = 0 if scratch != NULL else -1
    mf_xxh3_derive_secret(seed, long_secret)
    for i in range(count):
        if lens[i] > longest:
            longest = lens[i]
    if chars and status == 0:
        char_hash = <mf_char_hash *> malloc(sizeof(mf_char_hash))
        if char_hash == NULL:
            status = -1
        else:
            mf_char_hash_init(char_hash, seed, long_secret, vector)
    for t in range(threads if status == 0 else 0):
        if _scratch_alloc(&scratch[t], longest, chars) < 0:
            status = -1
    if status == 0:
        with parallel(num_threads=threads):
            for i in prange(count, schedule="dynamic", chunksize=512):
                mine = &scratch[threadid()]
                if not chars:
                    out[i] = _word_simhash(ptrs[i], lens[i], layouts[i] == LAYOUT_ASCII, n, seed, long_secret,
                                           mine.low, mine.norm, mine.starts, mine.ends, &shingles[i])
                elif layouts[i] == LAYOUT_ASCII:
                    out[i] = mf_char_simhash_ascii(char_hash, ptrs[i], lens[i], n, mine.low, &shingles[i])
                else:
                    out[i] = mf_char_simhash_codepoints(char_hash, ptrs[i], 1 << (layouts[i] - LAYOUT_UCS1),
                                                        lens[i], n, mine.cps, mine.low, &shingles[i])
    if scratch != NULL:
        for t in range(threads):
            _scratch_free(&scratch[t])
    free(scratch)
    free(char_hash)
    return status


cdef object _normalise(str text):
    return unicodedata.normalize("NFKC", text).casefold()


@cache
def _inert_bitmap():
    """Bit c set for the non-ASCII characters of the BMP before which normalisation splits: each
    is its own NFKC form and casefold, has canonical combining class 0 and is not the second half
    of any canonical composition (the quick-check "Maybe" characters: combining marks, Hangul
    vowel and trailing jamo), so nothing before it can change it or be changed through it.  A
    text of such characters and ASCII is already normalised but for ASCII case.  Built from the
    running Python's unicodedata, so it matches its normalisation (about 40 ms, once, on the
    first non-ASCII text fingerprinted by characters)."""
    seconds = set(range(0x1100, 0x1200))                     # Hangul jamo compose algorithmically
    for c in range(0x10000):
        parts = unicodedata.decomposition(chr(c)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(int(parts[1], 16))
    inert = np.zeros(0x10000, dtype=bool)
    for c in range(0x80, 0x10000):
        ch = chr(c)
        inert[c] = (not 0xD800 <= c < 0xE000 and c not in seconds and unicodedata.combining(ch) == 0
                    and unicodedata.normalize("NFKC", ch) == ch and ch.casefold() == ch)
    return np.packbits(inert, bitorder="little")


cdef str _fold_for_chars(str text, const uint8_t *inert_bits):
    """`text` as NFKC + casefold would leave it, but for the case of ASCII letters, which the
    character fingerprinter folds itself.  Only the stretches of characters that are not inert
    are normalised, each with the character before it (which they may combine with): an inert
    or ASCII character never combines with what precedes it, so normalisation splits before it.
    Most non-ASCII prompts (curly quotes, dashes, accented letters) have no such stretch and are
    used as they are."""
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), done = 0, start, end, i
    cdef uint32_t cp
    start = mf_find_inert(data, kind, 0, n, inert_bits, 0)
    if start == n:
        return text
    for i in range(start, n):
        cp = PyUnicode_READ(kind, data, i)
        if 0xD800 <= cp < 0xE000:           # not inert either: say so as UTF-8 would
            raise UnicodeEncodeError("utf-8", text, i, i + 1, "surrogates not allowed")
    pieces = []
    while start < n:
        start = max(start - 1, done)          # with the inert character before the stretch
        end = mf_find_inert(data, kind, start + 1, n, inert_bits, 1)
        pieces.append(text[done:start])
        pieces.append(_normalise(text[start:end]))
        done = end
        start = mf_find_inert(data, kind, end, n, inert_bits, 0)
    pieces.append(text[done:])
    return "".join(pieces)


@cython.final        # its cdef methods are then called directly, not through a table
cdef class _TextBatch:
    """Where each text's data is, how long it is and how it is laid out (see LAYOUT_*); holds
    the normalised copies of non-ASCII texts until their fingerprints are computed."""
    cdef const uint8_t **ptrs
    cdef Py_ssize_t *lens
    cdef uint8_t *layouts
    cdef Py_ssize_t n
    cdef list keep_alive
    cdef object inert
    cdef const uint8_t *inert_bits     # inert's data, once fetched

    def __cinit__(self, Py_ssize_t n):
        self.n = n
        self.ptrs = <const uint8_t **> malloc(max(n, 1) * sizeof(void *))
        self.lens = <Py_ssize_t *> malloc(max(n, 1) * sizeof(Py_ssize_t))
        self.layouts = <uint8_t *> malloc(max(n, 1))
        self.keep_alive = []
        self.inert = None
        self.inert_bits = NULL
        if self.ptrs == NULL or self.lens == NULL or self.layouts == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.ptrs)
        free(self.lens)
        free(self.layouts)

    cdef inline void set_ascii(self, Py_ssize_t i, const uint8_t *data, Py_ssize_t length) noexcept nogil:
        self.ptrs[i] = data
        self.lens[i] = length
        self.layouts[i] = LAYOUT_ASCII

    cdef int set_text(self, Py_ssize_t i, str text, bint chars) except -1:
        """A non-ASCII text.  Words: its normalised UTF-8 (Unicode tables live in Python).
        Characters: its own code points when normalising would not change them, else the
        normalised text's."""
        cdef Py_ssize_t size
        cdef int kind
        if chars:
            if self.inert_bits == NULL:
                self.inert = _inert_bitmap()
                self.inert_bits = _bitmap_pointer(self.inert)
            text = _fold_for_chars(text, self.inert_bits)
            self.keep_alive.append(text)
            kind = PyUnicode_KIND(text)
            self.ptrs[i] = <const uint8_t *> PyUnicode_DATA(text)
            self.lens[i] = PyUnicode_GET_LENGTH(text)
            self.layouts[i] = LAYOUT_UCS1 if kind == 1 else LAYOUT_UCS2 if kind == 2 else LAYOUT_UCS4
            return 0
        text = _normalise(text)
        self.keep_alive.append(text)
        self.ptrs[i] = <const uint8_t *> PyUnicode_AsUTF8AndSize(text, &size)
        self.lens[i] = size
        self.layouts[i] = LAYOUT_UTF8
        return 0

    cdef tuple fingerprints(self, int n, bint chars, uint64_t seed, int threads, bint vector):
        fps = np.empty(self.n, dtype=np.uint64)
        counts = np.empty(self.n, dtype=np.int64)
        cdef uint64_t[::1] fps_v = fps
        cdef int64_t[::1] counts_v = counts
        cdef int status = 0
        if self.n:
            with nogil:
                status = _fingerprint_many(self.ptrs, self.lens, self.layouts, self.n, n, chars, seed, threads,
                                           vector, &fps_v[0], &counts_v[0])
        if status < 0:
            raise MemoryError(f"no memory for {threads} thread(s) of scratch buffers for a text of "
                              f"{max(self.lens[i] for i in range(self.n)):,} bytes")
        return fps, counts


def fingerprint(texts, int n=2, bint chars=False, uint64_t seed=0, int threads=1, bint vector=True):
    """Fingerprint texts by their shingles of n words (or, with chars=True, of n characters);
    return (uint64 fingerprints, int64 shingle counts).

    Character shingles are counted four abreast with AVX2 where the CPU has it
    (`counts_four_abreast()`); vector=False forces the portable counter, which gives the same
    fingerprints (for tests and benchmarks).

    `texts` is a sequence of str, or a pyarrow StringArray / LargeStringArray / ChunkedArray
    (read from its buffers: ASCII rows create no Python object at all).  A text with no word
    characters (characters: with nothing but whitespace) has 0 shingles and the fingerprint 0.
    Raises TypeError / ValueError naming the position of a non-string, null or non-UTF-8 item.
    """
    if n < 1 or (chars and n > MF_CHAR_MAX):
        raise ValueError(f"n must be at least 1{f' and at most {MF_CHAR_MAX}' if chars else ''}, got {n}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if hasattr(texts, "buffers") or hasattr(texts, "chunks"):
        return _fingerprint_arrow(texts, n, chars, seed, threads, vector)
    return _fingerprint_str(texts, n, chars, seed, threads, vector)


cdef _fingerprint_str(texts, int n, bint chars, uint64_t seed, int threads, bint vector):
    cdef list items = list(texts)    # our own references: the strings outlive any change to `texts`
    cdef Py_ssize_t i, count = len(items)
    cdef _TextBatch batch = _TextBatch(count)
    cdef PyObject *item
    for i in range(count):
        item = _list_item(items, i)
        if _is_exact_str(item) and _ascii_only(item):    # most prompts: no Python-level work
            batch.set_ascii(i, <const uint8_t *> _str_data(item), _str_length(item))
            continue
        text = <object> item
        if not PyUnicode_Check(text):
            raise TypeError(f"item {i} is {type(text).__name__}, expected str")
        if PyUnicode_IS_ASCII(text):
            batch.set_ascii(i, <const uint8_t *> PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text))
            continue
        try:
            batch.set_text(i, text, chars)
        except UnicodeEncodeError as exc:
            raise ValueError(f"item {i} is not valid Unicode ({exc.reason})") from None
    return batch.fingerprints(n, chars, seed, threads, vector)


cdef _fingerprint_arrow(array, int n, bint chars, uint64_t seed, int threads, bint vector):
    chunks = array.chunks if hasattr(array, "chunks") else [array]
    results = []
    cdef Py_ssize_t base = 0
    for chunk in chunks:
        results.append(_fingerprint_arrow_chunk(chunk, n, chars, seed, threads, vector, base))
        base += len(chunk)
    if not results:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


cdef inline bint _is_ascii(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    """No byte of s[:n] has its high bit set (eight bytes per test)."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word, high = 0
    while i + 8 <= n:
        memcpy(&word, s + i, 8)
        high |= word
        i += 8
    while i < n:
        high |= s[i]
        i += 1
    return (high & 0x8080808080808080ULL) == 0


cdef _fingerprint_arrow_chunk(chunk, int ngram, bint chars, uint64_t seed, int threads, bint vector,
                              Py_ssize_t base):
    type_name = str(chunk.type)
    if type_name not in ("string", "large_string", "utf8", "large_utf8"):
        raise TypeError(f"arrow array has type {type_name}, expected string")
    cdef Py_ssize_t n = len(chunk), i
    if chunk.null_count:
        first = next(k for k, v in enumerate(chunk.is_null().to_pylist()) if v)
        raise ValueError(f"item {base + first} is null, expected str")
    cdef _TextBatch batch = _TextBatch(n)
    if n == 0:
        return batch.fingerprints(ngram, chars, seed, threads, vector)
    _, offsets_buf, data_buf = chunk.buffers()
    offset_type = np.int64 if type_name.startswith("large") else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[chunk.offset:chunk.offset + n + 1]
    cdef int64_t[::1] off = np.ascontiguousarray(offsets, dtype=np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    cdef const uint8_t[::1] raw = data
    cdef bint any_non_ascii = False
    with nogil:
        for i in range(n):
            batch.set_ascii(i, &raw[0] + off[i], off[i + 1] - off[i])
            if not _is_ascii(&raw[0] + off[i], off[i + 1] - off[i]):
                batch.layouts[i] = LAYOUT_UTF8
                any_non_ascii = True
    if any_non_ascii:
        for i in range(n):
            if batch.layouts[i] == LAYOUT_ASCII:
                continue
            try:
                text = PyUnicode_DecodeUTF8(<const char *> &raw[0] + off[i], off[i + 1] - off[i], NULL)
            except UnicodeDecodeError as exc:
                raise ValueError(f"item {base + i} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            batch.set_text(i, text, chars)
    return batch.fingerprints(ngram, chars, seed, threads, vector)


def counts_four_abreast():
    """Whether character shingles are counted four abreast here (an x86-64 CPU with AVX2)."""
    return bool(mf_bitcount4_available())


def scan_lanes():
    """How many fingerprints the Hamming search compares at a time on this CPU: 8 (AVX-512
    VPOPCNTQ), 4 (AVX2) or 1."""
    return mf_within_lanes()


def xxh3_64(bytes data, uint64_t seed=0):
    """XXH3-64 of `data` (exposed so tests can check our C hash against the reference)."""
    cdef uint8_t long_secret[192]
    mf_xxh3_derive_secret(seed, long_secret)
    return mf_xxh3_64(<const uint8_t *> <char *> data, len(data), seed, long_secret)


# ----------------------------------------------------------------------------------------------
# Hamming search

cdef inline int _popcount(uint64_t x) noexcept nogil:
    return __builtin_popcountll(x)


cdef inline int64_t _root(int64_t *p, int64_t a) noexcept nogil:
    """The root of a's tree, halving the path on the way."""
    while p[a] != a:
        p[a] = p[p[a]]
        a = p[a]
    return a


cdef inline uint32_t _after(int64_t k) noexcept nogil:
    """The mask of columns j > k: a bucket joined with itself sees each pair once, and no row
    with itself."""
    if k < 0:
        return 0xFFFFFFFF
    return <uint32_t> ~((<uint64_t> 2 << min(k, 62)) - 1)


cdef inline Py_ssize_t _largest_bucket(const int64_t *start, Py_ssize_t nb) noexcept nogil:
    cdef Py_ssize_t v, largest = 1
    for v in range(nb):
        largest = max(largest, start[v + 1] - start[v])
    return largest


cdef struct SortedBlock:         # the fingerprints counting-sorted by one block's bits
    int64_t *start               # bucket v holds sfp[start[v]:start[v + 1]]
    uint64_t *sfp
    int32_t *sid                 # their ids, ascending inside a bucket
    uint32_t *hits               # a scan's hit masks: room for the largest bucket


cdef void _free_block(SortedBlock *s) noexcept nogil:
    free(s.start)
    free(s.sfp)
    free(s.sid)
    free(s.hits)


cdef struct PairBuffer:
    int64_t *i
    int64_t *j
    uint8_t *d
    Py_ssize_t size
    Py_ssize_t cap


cdef int _push_pair(PairBuffer *buf, int64_t a, int64_t b, uint8_t d) noexcept nogil:
    cdef Py_ssize_t cap
    cdef void *grown
    if buf.size == buf.cap:     # each array grown in turn, kept (to be freed) if the next fails
        cap = buf.cap * 2 if buf.cap else 1024
        grown = realloc(buf.i, cap * sizeof(int64_t))
        if grown == NULL:
            return -1
        buf.i = <int64_t *> grown
        grown = realloc(buf.j, cap * sizeof(int64_t))
        if grown == NULL:
            return -1
        buf.j = <int64_t *> grown
        grown = realloc(buf.d, cap)
        if grown == NULL:
            return -1
        buf.d = <uint8_t *> grown
        buf.cap = cap
    buf.i[buf.size] = a
    buf.j[buf.size] = b
    buf.d[buf.size] = d
    buf.size += 1
    return 0


def _masks(int width, int radius):
    """Every `width`-bit mask with at most `radius` bits set, lightest first."""
    from itertools import combinations
    out = [0]
    for r in range(1, min(radius, width) + 1):
        for bits in combinations(range(width), r):
            m = 0
            for b in bits:
                m |= 1 << b
            out.append(m)
    return np.array(out, dtype=np.uint32)


cdef class HammingIndex:
    """Exact Hamming search within `tau` (inclusive) over 64-bit fingerprints.

    One index serves both modes: `add` / `query` / `add_unique` for streaming insert-and-query,
    and `pairs` / `components` for the batch self-join of everything added.  `plan` is a list of
    (shift, width, radius) blocks; build one with `misalign.dedup.plan_blocks`.  Candidates are
    compared `lanes` at a time: by default the most this CPU can (`scan_lanes()`: 8 with
    AVX-512 VPOPCNTQ, 4 with AVX2, else 1); any of them gives the same answers.
    """
    cdef readonly int tau
    cdef readonly int lanes
    cdef readonly object plan
    cdef int nblocks
    cdef int shifts[16]
    cdef int widths[16]
    cdef int radii[16]
    cdef uint32_t *masks[16]
    cdef Py_ssize_t nmasks[16]
    cdef int32_t *heads[16]
    cdef int32_t *nexts[16]
    cdef uint64_t *fps
    cdef Py_ssize_t size
    cdef Py_ssize_t cap
    cdef object _mask_arrays

    def __cinit__(self, int tau, plan, int lanes=0):
        cdef int b
        if not 0 <= tau <= 63:
            raise ValueError(f"tau must be between 0 and 63, got {tau}")
        plan = [tuple(int(x) for x in block) for block in plan]
        if not 1 <= len(plan) <= 16:
            raise ValueError("a plan has 1 to 16 blocks")
        if sum(r + 1 for _, _, r in plan) <= tau:
            raise ValueError(f"plan {plan} cannot see every pair within tau={tau}: "
                             "the radii plus one per block must add up to more than tau")
        if sorted((s, w) for s, w, _ in plan) != _tiling(plan):
            raise ValueError(f"plan {plan} must tile the 64 bits with blocks of 1 to 24 bits")
        self.tau = tau
        if lanes not in (0, 1, 4, 8) or lanes > mf_within_lanes():
            raise ValueError(f"lanes must be 0 (the most this CPU can), 1, 4 or 8, at most {mf_within_lanes()} "
                             f"here; got {lanes}")
        self.lanes = lanes or mf_within_lanes()
        self.plan = plan
        self.nblocks = len(plan)
        self._mask_arrays = []
        for b, (shift, width, radius) in enumerate(plan):
            self.shifts[b] = shift
            self.widths[b] = width
            self.radii[b] = radius
            masks = _masks(width, radius)
            self._mask_arrays.append(masks)
            self.masks[b] = _mask_pointer(masks)
            self.nmasks[b] = len(masks)
            self.heads[b] = <int32_t *> malloc((<Py_ssize_t>1 << width) * sizeof(int32_t))
            if self.heads[b] == NULL:
                raise MemoryError()
            memset(self.heads[b], 0xFF, (<Py_ssize_t>1 << width) * sizeof(int32_t))
            self.nexts[b] = NULL
        self.fps = NULL
        self.size = 0
        self.cap = 0

    def __dealloc__(self):
        cdef int b
        for b in range(self.nblocks):
            free(self.heads[b])
            free(self.nexts[b])
        free(self.fps)

    def __len__(self):
        return self.size

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap = self.cap
        cdef int b
        if self.size + extra <= cap:
            return 0
        if self.size + extra > 2147483647:
            raise OverflowError("a HammingIndex holds at most 2**31 - 1 fingerprints")
        while cap < self.size + extra:
            cap = cap * 2 if cap else 1024
        self.fps = <uint64_t *> realloc(self.fps, cap * sizeof(uint64_t))
        if self.fps == NULL:
            raise MemoryError()
        for b in range(self.nblocks):
            self.nexts[b] = <int32_t *> realloc(self.nexts[b], cap * sizeof(int32_t))
            if self.nexts[b] == NULL:
                raise MemoryError()
        self.cap = cap
        return 0

    cdef inline void _insert(self, uint64_t fp) noexcept nogil:
        cdef int b
        cdef uint32_t key
        cdef int32_t id = <int32_t> self.size
        self.fps[id] = fp
        for b in range(self.nblocks):
            key = <uint32_t> ((fp >> self.shifts[b]) & ((<uint64_t>1 << self.widths[b]) - 1))
            self.nexts[b][id] = self.heads[b][key]
            self.heads[b][key] = id
        self.size += 1

    cdef inline int64_t _find(self, uint64_t fp, int *dist) noexcept nogil:
        """Nearest stored fingerprint within tau (ties: the earliest added), or -1."""
        cdef int b, d, best_d = 65
        cdef Py_ssize_t m
        cdef uint32_t key
        cdef int32_t id
        cdef int64_t best = -1
        for b in range(self.nblocks):
            key = <uint32_t> ((fp >> self.shifts[b]) & ((<uint64_t>1 << self.widths[b]) - 1))
            for m in range(self.nmasks[b]):
                id = self.heads[b][key ^ self.masks[b][m]]
                while id >= 0:
                    d = _popcount(self.fps[id] ^ fp)
                    if d <= self.tau and (d < best_d or (d == best_d and id < best)):
                        best_d = d
                        best = id
                    id = self.nexts[b][id]
        dist[0] = best_d
        return best

    def add(self, fingerprints):
        """Add fingerprints; they get ids len(self), len(self) + 1, ..."""
        cdef const uint64_t[::1] fp = np.ascontiguousarray(fingerprints, dtype=np.uint64)
        cdef Py_ssize_t i, n = fp.shape[0]
        self._reserve(n)
        with nogil:
            for i in range(n):
                self._insert(fp[i])

    def query(self, fingerprints):
        """For each fingerprint, the id of the nearest stored one within tau (-1 if none) and
        its distance (-1 if none)."""
        cdef const uint64_t[::1] fp = np.ascontiguousarray(fingerprints, dtype=np.uint64)
        cdef Py_ssize_t i, n = fp.shape[0]
        ids = np.empty(n, dtype=np.int64)
        dists = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] ids_v = ids
        cdef int64_t[::1] dists_v = dists
        cdef int d
        with nogil:
            for i in range(n):
                ids_v[i] = self._find(fp[i], &d)
                dists_v[i] = d if ids_v[i] >= 0 else -1
        return ids, dists

    def add_unique(self, fingerprints):
        """Stream insert-and-query: add each fingerprint, in order, only if nothing stored
        (including earlier ones of this call) lies within tau.  Returns (added mask, id of the
        nearest match or -1)."""
        cdef const uint64_t[::1] fp = np.ascontiguousarray(fingerprints, dtype=np.uint64)
        cdef Py_ssize_t i, n = fp.shape[0]
        added = np.zeros(n, dtype=bool)
        match = np.empty(n, dtype=np.int64)
        cdef uint8_t[::1] added_v = added.view(np.uint8)
        cdef int64_t[::1] match_v = match
        cdef int d
        self._reserve(n)
        with nogil:
            for i in range(n):
                match_v[i] = self._find(fp[i], &d)
                if match_v[i] < 0:
                    self._insert(fp[i])
                    added_v[i] = 1
        return added, match

    def fingerprints(self):
        """The stored fingerprints, in id order (a copy)."""
        if self.size == 0:
            return np.empty(0, dtype=np.uint64)
        return np.asarray(<uint64_t[:self.size]> self.fps).copy()

    def pairs(self):
        """All pairs (i < j) of stored fingerprints within tau, as int64 arrays i, j and uint8
        distances, sorted by (i, j)."""
        cdef PairBuffer buf
        buf.i = NULL
        buf.j = NULL
        buf.d = NULL
        buf.size = 0
        buf.cap = 0
        cdef int b, status = 0
        try:
            with nogil:
                for b in range(self.nblocks):
                    status = self._join_block(b, &buf)
                    if status:
                        break
            if status:
                raise MemoryError()
            if buf.size == 0:
                return (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
                        np.empty(0, dtype=np.uint8))
            i = np.asarray(<int64_t[:buf.size]> buf.i)
            j = np.asarray(<int64_t[:buf.size]> buf.j)
            d = np.asarray(<uint8_t[:buf.size]> buf.d)
            order = np.argsort(i * self.size + j)     # one key per pair (i < j < size): no lexsort
            return i[order], j[order], d[order]       # copies, made before the buffers are freed
        finally:
            free(buf.i)
            free(buf.j)
            free(buf.d)

    def components(self, int threads=1):
        """Connected components of the within-tau graph over the stored fingerprints, each id
        labelled by the smallest id of its component: what `components(len(self), i, j)` gives
        on the pairs of `pairs()`, without listing them.  Each pair a block finds within tau is a
        union at once, so memory grows with the fingerprints, never with the pairs (near-copies
        of one prompt, k of them, would list k(k-1)/2).  The blocks run on `threads` threads,
        each into a union-find of its own; the partitions are then merged (the components of
        the union of the blocks' pairs)."""
        cdef Py_ssize_t n = self.size, k
        # a forest per block, not per thread: one forest shared by a thread's blocks saves 8 bytes
        # per fingerprint per block but grows deeper trees (tried: 1.1-1.4x slower on 1.5M near-copies)
        parents = np.empty((self.nblocks, max(n, 1)), dtype=np.int64)
        parents[:] = np.arange(max(n, 1), dtype=np.int64)
        cdef int64_t[:, ::1] pb = parents
        failed = np.zeros(self.nblocks, dtype=np.int32)       # per block: its pass ran out of memory
        cdef int32_t[::1] failed_v = failed
        cdef int b
        threads = max(1, min(threads, self.nblocks))
        with nogil:
            for b in prange(self.nblocks, num_threads=threads, schedule="dynamic"):
                failed_v[b] = self._union_block(b, &pb[b, 0])
        if failed.any():
            raise MemoryError()
        labels = parents[0][:n].copy()
        cdef int64_t[::1] p = labels
        cdef int64_t ra, rb
        with nogil:
            for b in range(1, self.nblocks):
                for k in range(n):
                    if pb[b, k] != k:            # a union this block made: k joined its parent
                        ra = _root(&p[0], k)
                        rb = _root(&p[0], pb[b, k])
                        if ra < rb:
                            p[rb] = ra
                        elif rb < ra:
                            p[ra] = rb
            for k in range(n):
                p[k] = p[p[k]]     # parents point lower and roots are smallest: one pass resolves all
        return labels

    cdef int _sorted_block(self, int b, SortedBlock *s) noexcept nogil:
        """Counting-sort the fingerprints by block b into `s` (see SortedBlock); the caller frees
        it with _free_block, whatever this returns."""
        cdef Py_ssize_t nb = <Py_ssize_t>1 << self.widths[b], n = self.size, k
        cdef uint64_t keymask = (<uint64_t>1 << self.widths[b]) - 1
        cdef int shift = self.shifts[b]
        cdef uint32_t key
        cdef int64_t pos
        s.start = <int64_t *> calloc(nb + 1, sizeof(int64_t))
        s.sfp = <uint64_t *> malloc(max(n, 1) * sizeof(uint64_t))
        s.sid = <int32_t *> malloc(max(n, 1) * sizeof(int32_t))
        s.hits = NULL
        if s.start == NULL or s.sfp == NULL or s.sid == NULL:
            return -1
        cdef int64_t *st = s.start
        for k in range(n):
            st[((self.fps[k] >> shift) & keymask) + 1] += 1
        for k in range(nb):
            st[k + 1] += st[k]
        for k in range(n):     # stable: ids stay ascending inside a bucket
            key = <uint32_t> ((self.fps[k] >> shift) & keymask)
            pos = st[key]
            s.sfp[pos] = self.fps[k]
            s.sid[pos] = <int32_t> k
            st[key] = pos + 1
        for k in range(nb, 0, -1):
            st[k] = st[k - 1]
        st[0] = 0
        s.hits = <uint32_t *> malloc(_largest_bucket(st, nb) * sizeof(uint32_t))
        return -1 if s.hits == NULL else 0

    cdef int _join_block(self, int b, PairBuffer *buf) noexcept nogil:
        """Compare each bucket of block b with every bucket within radius: contiguous runs, so
        the verification loop streams through cache; each pair is listed by the first block
        that sees it."""
        cdef SortedBlock block
        cdef Py_ssize_t nb = <Py_ssize_t>1 << self.widths[b], m
        cdef uint32_t v, u, left
        cdef int64_t a0, na, rows, c0, c1, i, a, c
        cdef int status = self._sorted_block(b, &block)
        cdef const int64_t *start = block.start
        cdef const uint64_t *sfp = block.sfp
        cdef const int32_t *sid = block.sid
        cdef uint32_t *hits = block.hits
        if status == 0:
            for v in range(<uint32_t> nb):
                a0, na = start[v], start[v + 1] - start[v]
                if na == 0:
                    continue
                for m in range(self.nmasks[b]):
                    u = v ^ self.masks[b][m]
                    if u < v:
                        continue
                    c0 = start[u]
                    while c0 < start[u + 1] and status == 0:
                        c1 = min(c0 + MF_WITHIN_COLUMNS, start[u + 1])
                        rows = na if u != v else min(na, c1 - 1 - a0)     # with itself: rows before a column
                        if rows > 0 and mf_within_masks(self.lanes, sfp + a0, rows, sfp + c0, c1 - c0, self.tau, hits):
                            for i in range(rows):
                                left = hits[i] if u != v else hits[i] & _after(a0 + i - c0)
                                while left and status == 0:
                                    a, c = a0 + i, c0 + __builtin_ctz(left)
                                    left &= left - 1
                                    if self._first_block_seeing(b, sfp[a] ^ sfp[c]):
                                        status = _push_pair(buf, min(sid[a], sid[c]), max(sid[a], sid[c]),
                                                            <uint8_t> _popcount(sfp[a] ^ sfp[c]))
                        c0 = c1
                    if status:
                        break
                if status:
                    break
        _free_block(&block)
        return status

    cdef int _union_block(self, int b, int64_t *p) noexcept nogil:
        """The join of block b with every pair within tau made a union in `p` (union-find with
        path halving, the smaller root the parent); the same candidates as `_join_block`, which
        lists the pairs instead (kept apart: a branch on the mode inside the loop cost both)."""
        cdef SortedBlock block
        cdef Py_ssize_t nb = <Py_ssize_t>1 << self.widths[b], m
        cdef uint32_t v, u, left
        cdef int64_t a0, na, rows, c0, c1, i, ra, rc
        cdef int status = self._sorted_block(b, &block)
        cdef const int64_t *start = block.start
        cdef const uint64_t *sfp = block.sfp
        cdef const int32_t *sid = block.sid
        cdef uint32_t *hits = block.hits
        if status == 0:
            for v in range(<uint32_t> nb):
                a0, na = start[v], start[v + 1] - start[v]
                if na == 0:
                    continue
                for m in range(self.nmasks[b]):
                    u = v ^ self.masks[b][m]
                    if u < v:
                        continue
                    c0 = start[u]
                    while c0 < start[u + 1]:
                        c1 = min(c0 + MF_WITHIN_COLUMNS, start[u + 1])
                        rows = na if u != v else min(na, c1 - 1 - a0)     # with itself: rows before a column
                        if rows > 0 and mf_within_masks(self.lanes, sfp + a0, rows, sfp + c0, c1 - c0, self.tau, hits):
                            for i in range(rows):
                                left = hits[i] if u != v else hits[i] & _after(a0 + i - c0)
                                if left == 0:
                                    continue
                                ra = _root(p, sid[a0 + i])
                                while left:
                                    rc = _root(p, sid[c0 + __builtin_ctz(left)])
                                    left &= left - 1
                                    if rc < ra:
                                        p[ra] = rc
                                        ra = rc
                                    elif ra < rc:
                                        p[rc] = ra
                        c0 = c1
        _free_block(&block)
        return status

    cdef inline bint _first_block_seeing(self, int b, uint64_t diff) noexcept nogil:
        cdef int e
        for e in range(b):
            if _popcount((diff >> self.shifts[e]) & ((<uint64_t>1 << self.widths[e]) - 1)) <= self.radii[e]:
                return False
        return True


cdef const uint8_t *_bitmap_pointer(object bitmap):
    cdef const uint8_t[::1] view = bitmap
    return &view[0]


cdef uint32_t *_mask_pointer(object masks):
    cdef uint32_t[::1] view = masks
    return &view[0]


def _tiling(plan):
    out, shift = [], 0
    for _, width, _ in sorted(plan):
        if not 1 <= width <= 24:
            return None
        out.append((shift, width))
        shift += width
    return out if shift == 64 else None


# ----------------------------------------------------------------------------------------------
# clusters

def components(Py_ssize_t n, i, j):
    """Connected components of the graph on n nodes with edges (i[k], j[k]); each node's label is
    the smallest node of its component (union-find with path halving, union by smaller root)."""
    cdef const int64_t[::1] iv = np.ascontiguousarray(i, dtype=np.int64)
    cdef const int64_t[::1] jv = np.ascontiguousarray(j, dtype=np.int64)
    parent = np.arange(n, dtype=np.int64)
    cdef int64_t[::1] p = parent
    cdef Py_ssize_t k, e = iv.shape[0]
    cdef int64_t a, b
    if jv.shape[0] != e:
        raise ValueError("i and j must have the same length")
    for k in range(e):
        if not (0 <= iv[k] < n and 0 <= jv[k] < n):
            raise ValueError(f"edge {k} ({iv[k]}, {jv[k]}) is outside 0..{n - 1}")
    with nogil:
        for k in range(e):
            a = iv[k]
            while p[a] != a:
                p[a] = p[p[a]]
                a = p[a]
            b = jv[k]
            while p[b] != b:
                p[b] = p[p[b]]
                b = p[b]
            if a < b:
                p[b] = a
            elif b < a:
                p[a] = b
        for k in range(n):
            p[k] = p[p[k]]   # roots are the smallest nodes, and parents always point lower
    return parent
