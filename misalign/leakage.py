"""Near-duplicates across splits, found by a criterion independent of the one that formed the
clusters.

The split keeps each SimHash cluster ([dedup] features and tau) in one split, so checking the
splits with that same SimHash finds nothing by construction.  This measure uses another method
on other shingles: the Jaccard similarity of character 5-gram shingle sets (case and whitespace
folded), candidates from datasketch's MinHash-LSH and every reported pair confirmed by its
exact Jaccard, so pairs that SimHash's 64-bit vote put more than tau apart are still found.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHINGLE = 5
THRESHOLD = 0.5
# LSH candidates are looked up well below THRESHOLD: at 0.5 itself MinHash-LSH finds only about
# half of the pairs exactly at 0.5 (and 87% at 0.6); every candidate is then checked exactly.
LSH_THRESHOLD = 0.3
NUM_PERM = 128
SEED = 1                # fixed: the measure must not change with the run's seed (nor need it fit 32 bits)
CRITERION = (f"Jaccard >= {THRESHOLD} on character {SHINGLE}-gram shingles (MinHash-LSH candidates, exact "
             "Jaccard confirmed), independent of the SimHash clusters the split keeps together")


def shingles(text: str, k: int = SHINGLE) -> set[bytes]:
    folded = " ".join(text.casefold().split())
    return {folded[i:i + k].encode() for i in range(max(len(folded) - k + 1, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Leak:
    """The most similar prompt of another split, per row (None: none above the threshold)."""
    neighbour: list          # row index of the neighbour, or None
    similarity: list         # its Jaccard, or None


def cross_split_leaks(prompts: list[str], splits: list[str]) -> Leak:
    """For each row, its most similar prompt (by Jaccard >= THRESHOLD) in another split."""
    from datasketch import MinHash, MinHashLSH

    texts = sorted(set(prompts))
    split_of = {}
    for text, split in zip(prompts, splits):
        split_of.setdefault(text, set()).add(split)
    sets = [shingles(t) for t in texts]
    hashes = MinHash.bulk(sets, num_perm=NUM_PERM, seed=SEED)
    index = MinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM)
    for k, h in enumerate(hashes):
        index.insert(k, h)
    best: dict[str, tuple[float, str]] = {}
    for k, h in enumerate(hashes):
        for other in index.query(h):
            if other <= k or split_of[texts[k]] == split_of[texts[other]]:
                continue                        # each pair once; same split
            similarity = jaccard(sets[k], sets[other])
            if similarity < THRESHOLD:
                continue                        # an LSH candidate that is not near enough
            for a, b in ((k, other), (other, k)):
                if similarity > best.get(texts[a], (0.0, ""))[0]:
                    best[texts[a]] = (similarity, texts[b])
    first_row = {}
    for row, (text, split) in enumerate(zip(prompts, splits)):
        first_row.setdefault((text, split), row)

    def row_elsewhere(text: str, split: str) -> int:
        """The first row holding `text` in a split other than `split`."""
        return first_row[(text, min(split_of[text] - {split}))]

    neighbour, similarity = [], []
    for text, split in zip(prompts, splits):
        if split_of[text] - {split}:                 # the very same prompt in another split
            neighbour.append(row_elsewhere(text, split))
            similarity.append(1.0)
        elif text in best and split_of[best[text][1]] - {split}:
            neighbour.append(row_elsewhere(best[text][1], split))
            similarity.append(float(np.round(best[text][0], 4)))
        else:
            neighbour.append(None)
            similarity.append(None)
    return Leak(neighbour, similarity)
