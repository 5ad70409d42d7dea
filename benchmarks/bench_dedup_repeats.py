"""Dedup when rows repeat: clusters through distinct fingerprints vs the join over every row.

    python benchmarks/bench_dedup_repeats.py

Rows of which 90% repeat one of 1,000 fingerprints (templates, boilerplate, re-crawled copies)
and 10% are distinct, tau 10.  Baseline: the join before this change, which listed every pair
of rows within tau (a fingerprint repeated k times alone gives k(k-1)/2 pairs) before
union-find; it is run only where those pairs fit in memory.  Ours (Deduplicator.fit_fingerprints)
joins the distinct fingerprints and links each repeat to its first row.  Both give the same
clusters (checked here wherever the baseline runs).
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

from misalign.dedup import Deduplicator, HammingIndex, components, plan_blocks

TAU = 10


def rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**63, n // 10 + 1_000, dtype=np.int64).view(np.uint64)
    fps = np.concatenate([pool[rng.integers(0, 1_000, n - n // 10)], pool[1_000:1_000 + n // 10]])
    rng.shuffle(fps)
    return fps


def every_pair(fps: np.ndarray) -> np.ndarray:
    index = HammingIndex(TAU, plan_blocks(TAU, len(fps)))
    index.add(fps)
    i, j, _ = index.pairs()
    return components(len(fps), i, j)


def timed(fn, *args):
    tracemalloc.start()
    began = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main():
    print("peak MB: the largest traced allocation (Python and numpy) during each call")
    print("| rows | pairs of repeats | every pair (baseline) s | peak MB | ours s | peak MB | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for n in (50_000, 100_000, 200_000, 1_500_000):
        fps = rows(n)
        counts = np.unique(fps, return_counts=True)[1]
        pairs = int((counts * (counts - 1) // 2).sum())
        ours, seconds, peak = timed(lambda f: Deduplicator(tau=TAU).fit_fingerprints(f).representative, fps)
        if pairs <= 100_000_000:
            base, base_s, base_peak = timed(every_pair, fps)
            assert (base == ours).all(), "the clusters differ"
            baseline = f"{base_s:.2f} | {base_peak / 1e6:,.0f} | "
            ratio = f"{base_s / seconds:.0f}x"
        else:
            baseline, ratio = "not run: too many pairs | - | ", "-"
        print(f"| {n:,} | {pairs:,} | {baseline}{seconds:.2f} | {peak / 1e6:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
