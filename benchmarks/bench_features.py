"""Which features should SimHash fingerprint?  A study on the paper's prompts.

    python benchmarks/bench_features.py            # needs ../shared/data/paper_prompts_dev.csv

(bench_simhash.py prints it too, after the throughput.)

For each feature set (word n-grams, character n-grams, mixed; plain or down-weighting shingles
that many prompts share, by inverse document frequency) and each tau, on the distinct prompts of
at least 12 words:

    recall       share of planted near-duplicates (one or two edits of one kind: drop a word,
                 swap two, insert one, change case, add or drop punctuation) within tau
    affected     share of distinct prompts that gain a neighbour within tau among the others:
                 the prompts dedup would wrongly merge (the dev set has few true duplicates)

Plain (count-weighted) feature sets are fingerprinted by the package's C fingerprinter, with its
one-thread MB/s; the IDF-weighted and mixed ones, which it does not offer, in Python (xxh64 per
shingle, numpy bit sums: quality only).  The search is the package's exact HammingIndex.  The
anchor is datasketch's MinHash-LSH (128 permutations) on the same shingles at Jaccard
thresholds, which is what published comparisons favour.  Prints markdown tables.
"""
from __future__ import annotations

import argparse
import csv
import math
import random
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import xxhash

from misalign.dedup import HammingIndex, fingerprint, plan_blocks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_prompts_dev.csv"

FILLERS = ["really", "please", "the", "very", "now", "also", "just", "so"]
PUNCT = [",", ".", "!", "?", ";", ":"]
KINDS = ("drop", "swap", "insert", "case", "punct")


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def best_of(repeat, fn):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def load_prompts(path: Path, min_words: int) -> list[str]:
    if not path.exists():
        raise SystemExit(f"{path} is absent: this study runs on the paper's dev prompts in ../shared")
    with open(path, newline="", encoding="utf-8") as f:
        prompts = sorted({row["prompt"] for row in csv.DictReader(f)})
    return [p for p in prompts if len(p.split()) >= min_words]


def edit(text: str, kind: str, times: int, rng: random.Random) -> str:
    """`times` edits of one kind, each touching one word."""
    words = text.split()
    for _ in range(times):
        k = rng.randrange(len(words))
        if kind == "drop" and len(words) > 2:
            words.pop(k)
        elif kind == "swap" and len(words) > 1:
            k = min(k, len(words) - 2)
            words[k], words[k + 1] = words[k + 1], words[k]
        elif kind == "insert":
            words.insert(k, rng.choice(FILLERS))
        elif kind == "case":
            words[k] = words[k].upper() if words[k] != words[k].upper() else words[k].lower()
        elif kind == "punct":
            stripped = words[k].rstrip("".join(PUNCT))
            words[k] = stripped if stripped != words[k] else words[k] + rng.choice(PUNCT)
    return " ".join(words)


# ----------------------------------------------------------------------------- features

def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def word_tokens(text: str) -> list[str]:
    """Words as the C fingerprinter sees them: runs of letters and digits."""
    out, word = [], []
    for ch in normalise(text):
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


def word_ngrams(text: str, n: int) -> list[str]:
    words = word_tokens(text)
    return [" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))] if words else []


def char_ngrams(text: str, n: int) -> list[str]:
    folded = normalise(text)
    return [folded[i:i + n] for i in range(max(len(folded) - n + 1, 1))]


FEATURES = {
    "word1": lambda t: word_ngrams(t, 1),
    "word2": lambda t: word_ngrams(t, 2),
    "word1+2": lambda t: word_ngrams(t, 1) + word_ngrams(t, 2),
    "char3": lambda t: char_ngrams(t, 3),
    "char4": lambda t: char_ngrams(t, 4),
    "char5": lambda t: char_ngrams(t, 5),
    "char6": lambda t: char_ngrams(t, 6),
    "word1+char4": lambda t: word_ngrams(t, 1) + char_ngrams(t, 4),
}


def simhash(shingle_lists: list[list[str]], idf: dict | None) -> np.ndarray:
    """64-bit SimHash per text: each shingle's xxh64 votes on every bit with its weight (its
    count, times its IDF when given)."""
    out = np.empty(len(shingle_lists), dtype=np.uint64)
    for k, shingles in enumerate(shingle_lists):
        counts = Counter(shingles)
        hashes = np.array([xxhash.xxh64_intdigest(s.encode()) for s in counts], dtype=np.uint64)
        weights = np.array([c * (idf.get(s, 1.0) if idf else 1.0) for s, c in counts.items()])
        bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        votes = weights @ (2.0 * bits - 1.0)
        out[k] = np.packbits(votes > 0, bitorder="little").view(np.uint64)[0]
    return out


def inverse_document_frequency(shingle_lists: list[list[str]]) -> dict:
    df = Counter(s for shingles in shingle_lists for s in set(shingles))
    n = len(shingle_lists)
    return {s: math.log((1 + n) / (1 + d)) + 1.0 for s, d in df.items()}


def affected_share(fps: np.ndarray, tau: int) -> float:
    """Share of fingerprints with another within tau (exact search)."""
    index = HammingIndex(tau, plan_blocks(tau, len(fps)))
    index.add(fps)
    i, j, _ = index.pairs()
    return len(set(i.tolist()) | set(j.tolist())) / len(fps)


# ----------------------------------------------------------------------------- MinHash-LSH

def minhash_anchor(originals, edited, shingler, thresholds):
    """(threshold, recall on the planted pairs, share of distinct prompts with a candidate)."""
    from datasketch import MinHash, MinHashLSH
    sets = [{s.encode() for s in shingler(t)} or {b""} for t in originals]
    edited_sets = [{s.encode() for s in shingler(t)} or {b""} for _, t in edited]
    hashes = MinHash.bulk(sets, num_perm=128, seed=1)
    edited_hashes = MinHash.bulk(edited_sets, num_perm=128, seed=1)
    rows = []
    for threshold in thresholds:
        index = MinHashLSH(threshold=threshold, num_perm=128)
        for k, h in enumerate(hashes):
            index.insert(k, h)
        found = [source in index.query(h) for (source, _), h in zip(edited, edited_hashes)]
        neighbours = sum(any(o != k for o in index.query(h)) for k, h in enumerate(hashes))
        rows.append((threshold, float(np.mean(found)), neighbours / len(originals)))
    return rows


C_FEATURES = ("word1", "word2", "word3", "char3", "char4", "char5", "char6")
PYTHON_ROWS = (("word1", "idf"), ("word2", "idf"), ("char3", "idf"), ("char4", "idf"),
               ("word1+char4", "count"), ("word1+char4", "idf"))


def planted_edits(originals: list[str], count: int) -> tuple[list[tuple[int, str]], list[str]]:
    """(source index, edited text) pairs and the kind of each edit."""
    rng = random.Random(0)
    edited, kinds = [], []
    for _ in range(count):
        source = rng.randrange(len(originals))
        kind, times = rng.choice(KINDS), rng.choice((1, 2))
        edited.append((source, edit(originals[source], kind, times, rng)))
        kinds.append(kind)
    return edited, kinds


def feature_study(originals: list[str], edits: int, taus: list[int]) -> dict:
    """Print the study's two tables; return {features: {tau: (recall, affected)}} of the C rows."""
    edited, kinds = planted_edits(originals, edits)
    kinds = np.array(kinds)
    sources = [s for s, _ in edited]
    print(f"{len(originals):,} distinct prompts of >= 12 words; {len(edited):,} planted edits "
          f"({', '.join(KINDS)}; one or two each)")
    corpus = originals * 6                      # ~5 MB, for a steadier rate
    megabytes = sum(len(t.encode()) for t in corpus) / 1e6
    rows, found, by_kind = [], {}, []
    for features in C_FEATURES:
        fps, efps = fingerprint(originals, features), fingerprint([t for _, t in edited], features)
        d = np.bitwise_count(fps[sources] ^ efps)
        found[features] = {t: ((d <= t).mean(), affected_share(fps, t)) for t in taus}
        by_kind.append([features, *(f"{(d[kinds == k] <= 10).mean():.3f}" for k in KINDS),
                        f"{(d[(kinds != 'case') & (kinds != 'punct')] <= 10).mean():.3f}"])
        rate = megabytes / best_of(3, lambda: fingerprint(corpus, features))
        rows.append([features, "count (C)", *(f"{found[features][t][0]:.3f} / {found[features][t][1]:.1%}"
                                             for t in taus), f"{rate:,.0f}"])
    for name, weighting in PYTHON_ROWS:
        shingler = FEATURES[name]
        lists, edited_lists = [shingler(t) for t in originals], [shingler(t) for _, t in edited]
        idf = inverse_document_frequency(lists) if weighting == "idf" else None
        fps, efps = simhash(lists, idf), simhash(edited_lists, idf)
        d = np.bitwise_count(fps[sources] ^ efps)
        rows.append([name, f"{weighting} (Python)",
                     *(f"{(d <= t).mean():.3f} / {affected_share(fps, t):.1%}" for t in taus), "-"])
    table("SimHash: recall on planted 1-2 edit near-duplicates / share of distinct prompts affected, per tau",
          ["features", "weights", *(f"tau {t}" for t in taus), "fingerprint MB/s (one thread)"], rows)
    table("Recall at tau 10 by kind of edit (case edits vanish in casefolding, and punctuation in word "
          "features: both are free; the last column leaves them out)",
          ["features", *KINDS, "word edits only (drop, swap, insert)"], by_kind)

    rows = []
    for name in ("word2", "char4", "char5"):
        for threshold, recall, affected in minhash_anchor(originals, edited, FEATURES[name], (0.5, 0.7, 0.8)):
            rows.append([name, threshold, f"{recall:.3f}", f"{affected:.1%}"])
    table("Anchor: datasketch MinHash-LSH (128 permutations), same shingles",
          ["features", "Jaccard threshold", "recall on planted edits", "distinct prompts affected"], rows)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--min-words", type=int, default=12)
    parser.add_argument("--edits", type=int, default=2000, help="planted near-duplicates")
    parser.add_argument("--taus", default="6,8,10,12")
    args = parser.parse_args()
    feature_study(load_prompts(args.data, args.min_words), args.edits, [int(t) for t in args.taus.split(",")])


if __name__ == "__main__":
    main()
