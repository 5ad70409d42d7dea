"""The tau-10 self-join at scale: 1M, 4M and 16M fingerprints measured, 100M extrapolated.

    python benchmarks/bench_join_scale.py [--threads 2] [--sizes 1000000,4000000,16000000]

Random 64-bit fingerprints (what distinct prompts give: almost no pair within tau, so the time
is the candidates the blocks bring together, not the clusters); Deduplicator.fit_fingerprints
with the plan plan_blocks picks for the size; each size in a process of its own, so that its
peak resident memory is its own.  The 100M row is extrapolated from the largest measured size
with plan_blocks' cost model (bucket probes and candidate checks), which is what decides the
plan, and the memory from the bytes per fingerprint measured there.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from math import comb

import numpy as np

from misalign.dedup import Deduplicator, plan_blocks

TAU = 10


def cost(n: int) -> float:
    """plan_blocks' cost of a self-join of n fingerprints under the plan it picks."""
    total = 0.0
    for _, width, radius in plan_blocks(TAU, n):
        probes = sum(comb(width, r) for r in range(min(radius, width) + 1))
        total += probes * (4.0 * 2 ** width + n * n / 2 ** (width + 1)) + n
    return total


def measure(n: int, threads: int) -> dict:
    fps = np.random.default_rng(n).integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    result = Deduplicator(tau=TAU, threads=threads).fit_fingerprints(fps)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
            "clusters": result.n_clusters}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="1000000,4000000,16000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads)))
        return
    print(f"tau {TAU}, {args.threads} threads; peak MB: the resident set's growth during the call\n")
    print("| fingerprints | blocks (shift, width, radius) | seconds | peak MB | bytes per fingerprint |")
    print("|---|---|---|---|---|")
    last = None
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        found = json.loads(out.stdout)
        print(f"| {n:,} | {plan_blocks(TAU, n)} | {found['seconds']:.1f} | {found['peak_mb']:,.0f} | "
              f"{found['peak_mb'] * 1e6 / n:.0f} |", flush=True)
        last = (n, found)
    n, found = last
    big = 100_000_000
    seconds = found["seconds"] * cost(big) / cost(n)
    print(f"| {big:,} (extrapolated from {n:,}) | {plan_blocks(TAU, big)} | ~{seconds:,.0f} | "
          f"~{found['peak_mb'] * big / n:,.0f} | {found['peak_mb'] * 1e6 / n:.0f} |")


if __name__ == "__main__":
    main()
