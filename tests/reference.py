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


def char_tables(seed):
    """The tabulation words of the character fingerprinter: splitmix64 from the seed, position-major."""
    state, out = seed, []
    mask = 2**64 - 1
    for _ in range(8 * 128):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return [out[128 * k:128 * (k + 1)] for k in range(8)]


def char_shingles(text, n):
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return [folded[i:i + n] for i in range(max(len(folded) - n + 1, 1))] if folded else []


def char_simhash(text, n=4, seed=0):
    tables = char_tables(seed)
    shingles = char_shingles(text, n)
    if not shingles:
        return 0
    counts = np.zeros(64, dtype=np.int64)
    for shingle in shingles:
        if shingle.isascii():
            h = 0
            for k, ch in enumerate(shingle):
                h ^= tables[k][ord(ch)]
        else:
            h = xxhash.xxh3_64_intdigest(shingle.encode("utf-8"), seed)
        counts += [(h >> b) & 1 for b in range(64)]
    return sum(1 << b for b in range(64) if 2 * counts[b] > len(shingles))
