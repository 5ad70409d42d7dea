"""Near-duplicate detection with 64-bit SimHash: the Python face of misalign._simhash.

    >>> from misalign.dedup import Deduplicator
    >>> result = Deduplicator(tau=10).fit(["How do I pick a lock?", "how do i pick a lock??", "Hi"])
    >>> result.keep.tolist()
    [True, False, True]

Defaults: character 4-grams (features="char4") and tau=10, the paper's tau.  Prompts are short
(median ~20 words): one edited word changes two of ~20 word bigrams, a tenth of the votes, but
about eight of ~120 character 4-grams, a fifteenth.  So at tau=10 4-grams keep 94% of one- or
two-edit copies within reach against 81% for bigrams, while 1.1% of distinct prompts gain a
neighbour (benchmarks/RESULTS.md, "Which features, and why character 4-grams").  Word n-grams stay selectable
("word2" was the default before), so older runs can be reproduced.  `tau` is inclusive:
distance <= tau is a near-duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from misalign import _simhash
from misalign._simhash import HammingIndex, components
from misalign.features import DEFAULT_FEATURES, FEATURES_HELP, canonical_features, parse_features

__all__ = ["fingerprint", "parse_features", "plan_blocks", "HammingIndex", "components", "DedupResult", "Deduplicator",
           "NearDuplicateFilter", "DEFAULT_FEATURES", "DEFAULT_TAU", "FEATURES_HELP"]

DEFAULT_TAU = 10


def fingerprint(texts, features: str = DEFAULT_FEATURES, seed: int = 0, threads: int = 1) -> np.ndarray:
    """64-bit SimHash of each text (list of str or a pyarrow string array), as uint64.

    A text with no shingle (empty or only whitespace; with word features, only punctuation too)
    gets the fingerprint 0.
    """
    n, chars = parse_features(features)
    return _simhash.fingerprint(texts, n=n, chars=chars, seed=seed, threads=threads)[0]


def plan_blocks(tau: int, expected_size: int = 1_000_000) -> list[tuple[int, int, int]]:
    """Choose the multi-index layout (shift, width, radius) for a Hamming search within tau.

    Candidates: m = 3..16 near-equal blocks, radii spread so that sum(radius + 1) = tau + 1
    (the least that keeps the search exact).  The cost model counts, per block, the bucket
    probes (2**width * probes) and the candidate checks (n**2 / 2**width * probes / 2) for a
    self-join of `expected_size` fingerprints, and the cheapest plan wins.
    """
    if not 0 <= tau <= 63:
        raise ValueError(f"tau must be between 0 and 63, got {tau}")
    n = max(int(expected_size), 2)
    best, best_cost = None, float("inf")
    for m in range(3, 17):
        widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
        if max(widths) > 24:
            continue
        spare = max(tau + 1 - m, 0)
        radii = [spare // m + (1 if b < spare % m else 0) for b in range(m)]
        cost = 0.0
        for width, radius in zip(widths, radii):
            probes = sum(comb(width, r) for r in range(min(radius, width) + 1))
            cost += probes * (4.0 * 2 ** width + n * n / 2 ** (width + 1)) + n
        if cost < best_cost:
            best_cost = cost
            shifts = np.cumsum([0] + widths[:-1]).tolist()
            best = [(s, w, r) for s, w, r in zip(shifts, widths, radii)]
    return best


@dataclass
class DedupResult:
    """Per-row outcome of a dedup run (arrays of the input's length).

    keep:           True for the first row of each cluster (input order is kept).
    cluster:        dense cluster id, numbered in order of first appearance.
    representative: row index of the cluster's kept row (a kept row is its own).
    distance:       Hamming distance to the representative (can exceed tau: clusters are the
                    connected components of the within-tau graph, so they chain).
    fingerprints:   the SimHash of each row.
    """

    keep: np.ndarray
    cluster: np.ndarray
    representative: np.ndarray
    distance: np.ndarray
    fingerprints: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.keep.sum())


class Deduplicator:
    """Batch near-duplicate removal: fingerprint, then the self-join within tau, each pair it
    finds a union at once (clusters are the connected components).  `threads` spread the
    fingerprinting and the join's blocks; the result is the same on any number.

    Texts with no shingles never merge with each other unless `merge_empty=True`; they are
    never merged with texts that have some.
    """

    def __init__(self, tau: int = DEFAULT_TAU, features: str = DEFAULT_FEATURES, seed: int = 0,
                 threads: int = 1, merge_empty: bool = False):
        if not 0 <= tau <= 63:
            raise ValueError(f"tau must be between 0 and 63, got {tau}")
        self.n, self.chars = parse_features(features)
        self.tau, self.features, self.seed = tau, canonical_features(features), seed
        self.threads, self.merge_empty = threads, merge_empty

    def settings(self) -> dict:
        """What decides the fingerprints and the clusters, for the outputs to record."""
        return {"features": self.features, "tau": self.tau, "seed": self.seed, "merge_empty": self.merge_empty}

    def fingerprints(self, texts):
        """(fingerprints, shingle counts) for texts, with this deduplicator's settings."""
        return _simhash.fingerprint(texts, n=self.n, chars=self.chars, seed=self.seed, threads=self.threads)

    def fit(self, texts) -> DedupResult:
        fps, shingles = self.fingerprints(texts)
        return self.fit_fingerprints(fps, empty=shingles == 0)

    def fit_fingerprints(self, fps: np.ndarray, empty: np.ndarray | None = None) -> DedupResult:
        """Cluster precomputed fingerprints; `empty` marks rows that had no shingles."""
        fps = np.ascontiguousarray(fps, dtype=np.uint64)
        n = len(fps)
        empty = np.zeros(n, dtype=bool) if empty is None else np.asarray(empty, dtype=bool)
        worded = np.flatnonzero(~empty)
        # Identical fingerprints join once: each distinct one is searched for its neighbours, and
        # every row that repeats it joins its component.  Near-copies are unioned as the join
        # finds them (HammingIndex.components), never listed as pairs: memory grows with the
        # rows, not with the pairs; time with the candidates the blocks bring together.
        distinct, inverse = np.unique(fps[worded], return_inverse=True)
        index = HammingIndex(self.tau, plan_blocks(self.tau, len(distinct)))
        index.add(distinct)
        component = np.full(n, -1, dtype=np.int64)
        component[worded] = index.components(self.threads)[inverse]
        if self.merge_empty:
            component[empty] = len(distinct)           # one more component: every text without shingles
        alone = np.flatnonzero(component < 0)
        component[alone] = len(distinct) + 1 + np.arange(len(alone))
        # each row's representative is the first row of its component (rows are in input order):
        # a scatter-min, linear, where sorting the labels cost ~10% of the whole fit
        first = np.full(len(distinct) + 1 + len(alone), n, dtype=np.int64)
        np.minimum.at(first, component, np.arange(n))
        representative = first[component]
        keep = representative == np.arange(n)
        cluster = np.cumsum(keep) - 1
        cluster = cluster[representative]
        distance = np.bitwise_count(fps ^ fps[representative]).astype(np.int64)
        return DedupResult(keep=keep, cluster=cluster, representative=representative,
                           distance=distance, fingerprints=fps)


class NearDuplicateFilter:
    """Streaming insert-and-query: keep a text only if nothing kept so far is within tau.

    This is what expansion calls for every generated prompt: `add_if_new` answers, in order,
    whether each text was kept (and so indexed), and `seen` asks without inserting.
    """

    def __init__(self, tau: int = DEFAULT_TAU, features: str = DEFAULT_FEATURES, seed: int = 0,
                 expected_size: int = 100_000):
        self.n, self.chars = parse_features(features)
        self.seed = seed
        self.index = HammingIndex(tau, plan_blocks(tau, expected_size))

    def __len__(self) -> int:
        return len(self.index)

    def _fingerprints(self, texts):
        fps, shingles = _simhash.fingerprint(texts, n=self.n, chars=self.chars, seed=self.seed)
        return fps, shingles == 0

    def add(self, texts) -> None:
        """Index texts unconditionally (e.g. the prompts a run starts from)."""
        fps, empty = self._fingerprints(texts)
        self.index.add(fps[~empty])

    def seen(self, texts) -> np.ndarray:
        """True where a kept text lies within tau (texts with no shingles are never seen)."""
        fps, empty = self._fingerprints(texts)
        ids, _ = self.index.query(fps)
        return (ids >= 0) & ~empty

    def add_if_new(self, texts) -> np.ndarray:
        """Insert each text that is not within tau of anything kept (earlier texts of the same
        call included); return the mask of inserted texts.  Texts with no shingles are refused."""
        fps, empty = self._fingerprints(texts)
        added = np.zeros(len(fps), dtype=bool)
        worded = np.flatnonzero(~empty)
        added[worded] = self.index.add_unique(fps[worded])[0]
        return added

