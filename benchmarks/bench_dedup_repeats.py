"""Dedup when rows repeat: the union as the join finds pairs vs listing every pair first.

    python benchmarks/bench_dedup_repeats.py

Rows of which 90% copy one of 1,000 prompts and 10% are distinct, tau 10, in two kinds:
identical copies (templates, boilerplate, re-crawled pages: the same fingerprint) and
near-copies (an edited word or two: each copy's fingerprint is its prompt's with up to 4 bits
flipped, so any two copies of one prompt are within 8 bits, and a family of k copies holds
k(k-1)/2 pairs within tau).  Baseline: the join as it was, listing every pair of distinct
fingerprints within tau (HammingIndex.pairs) and then union-find over them, run only where its
pairs fit in memory.  Ours (Deduplicator.fit_fingerprints): identical fingerprints join once,
and each pair within tau is a union the moment the join finds it (HammingIndex.components).
Both give the same clusters, checked here wherever the baseline runs (and ours on one thread
against ours on two, everywhere).
"""
from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time

import numpy as np

from misalign.dedup import Deduplicator, HammingIndex, components, plan_blocks

TAU = 10
PROMPTS = 1_000


def rows(n: int, flips: int, seed: int = 0) -> np.ndarray:
    """n fingerprints: 90% copies of PROMPTS random ones (each with up to `flips` random bits
    flipped), 10% distinct, shuffled."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**63, n // 10 + PROMPTS, dtype=np.int64).view(np.uint64)
    copies = pool[rng.integers(0, PROMPTS, n - n // 10)]
    for _ in range(flips):       # a flip that lands on a flipped bit undoes it: "up to"
        copies ^= np.left_shift(np.uint64(1), rng.integers(0, 64, len(copies)).astype(np.uint64))
    fps = np.concatenate([copies, pool[PROMPTS:PROMPTS + n // 10]])
    rng.shuffle(fps)
    return fps


def every_pair(fps: np.ndarray) -> np.ndarray:
    """The baseline: every pair of distinct fingerprints within tau listed, then union-find."""
    distinct, inverse = np.unique(fps, return_inverse=True)
    index = HammingIndex(TAU, plan_blocks(TAU, len(distinct)))
    index.add(distinct)
    i, j, _ = index.pairs()
    label = components(len(distinct), i, j)[inverse]
    first = np.unique(label, return_index=True)
    return first[1][np.searchsorted(first[0], label)]


def measure(way: str, n: int, flips: int) -> dict:
    """One call, in a process of its own so that its peak memory is its own: seconds, the
    peak resident set above the process's start (MB), and a digest of the clusters."""
    fps = rows(n, flips)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    labels = every_pair(fps) if way == "baseline" else \
        Deduplicator(tau=TAU, threads=int(way[-1])).fit_fingerprints(fps).representative
    seconds = time.perf_counter() - began
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    return {"seconds": seconds, "peak_mb": peak, "clusters": hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest(),
            "distinct": len(np.unique(fps)), "pairs": int((sizes * (sizes - 1) // 2).sum())}


def in_child(way: str, n: int, flips: int) -> dict:
    out = subprocess.run([sys.executable, __file__, way, str(n), str(flips)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main():
    print("peak MB: the resident set's growth during the call, each call in a process of its own")
    for kind, flips in (("identical copies", 0), ("near-copies (up to 4 bits flipped)", 4)):
        print(f"\n{kind}\n")
        print("| rows | distinct fingerprints | pairs in clusters | every pair (baseline) s | peak MB | ours s | peak MB "
              "| speed-up | ours, 2 threads s | peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n in (50_000, 200_000, 1_500_000):
            ours, both = in_child("ours1", n, flips), in_child("ours2", n, flips)
            assert both["clusters"] == ours["clusters"], "the clusters differ between 1 and 2 threads"
            if ours["pairs"] <= 60_000_000:
                base = in_child("baseline", n, flips)
                assert base["clusters"] == ours["clusters"], "the clusters differ"
                baseline = f"{base['seconds']:.2f} | {base['peak_mb']:,.0f} | "
                ratio = f"{base['seconds'] / ours['seconds']:.1f}x"
            else:
                baseline, ratio = "not run: too many pairs | - | ", "-"
            print(f"| {n:,} | {ours['distinct']:,} | {ours['pairs']:,} | {baseline}{ours['seconds']:.2f} | "
                  f"{ours['peak_mb']:,.0f} | {ratio} | {both['seconds']:.2f} | {both['peak_mb']:,.0f} |")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
