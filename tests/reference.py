"""Slow, obviously-correct Python versions of the C code, for the tests to compare against."""
import itertools
import unicodedata

import numpy as np
import xxhash


def words(text):
    text = unicodedata.normalize("NFKC", text).casefold()
    return ["".join(g) for alnum, g in itertools.groupby(text, key=str.isalnum) if alnum]


def simhash(text, ngram=2, seed=0):
    ws = words(text)
    if not ws:
        return 0
    shingles = [" ".join(ws[i:i + ngram]) for i in range(max(len(ws) - ngram + 1, 1))]
    counts = np.zeros(64, dtype=np.int64)
    for shingle in shingles:
        h = xxhash.xxh3_64_intdigest(shingle.encode("utf-8"), seed)
        counts += [(h >> b) & 1 for b in range(64)]
    return sum(1 << b for b in range(64) if 2 * counts[b] > len(shingles))


def brute_pairs(fps, tau):
    fps = np.asarray(fps, dtype=np.uint64)
    out = []
    for i in range(len(fps)):
        d = np.bitwise_count(fps[i] ^ fps[i + 1:])
        for k in np.flatnonzero(d <= tau):
            out.append((i, i + 1 + int(k), int(d[k])))
    return out
