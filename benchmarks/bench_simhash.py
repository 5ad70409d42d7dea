"""SimHash benchmark: fingerprint throughput, exact self-join, and which features to hash, in one run.

    python benchmarks/bench_simhash.py            # needs ../shared/data/paper_prompts_dev.csv

Baselines, measured in the same run: the PyPI `simhash` package (Simhash objects) and
`datasketch` MinHash (128 permutations) for fingerprinting; numpy brute force for the join;
datasketch MinHash-LSH for dedup quality (bench_features.py, printed here too).  Throughput is
best of --repeat runs on one thread, baselines included (on a subset, reported as rates).
Ends with the goals, met or not.  Prints markdown tables (paste them into benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench_features import SHARED, best_of, feature_study, table
from bench_features import load_prompts as load_distinct_prompts
from misalign import _simhash
from misalign.dedup import DEFAULT_FEATURES, HammingIndex, fingerprint, parse_features, plan_blocks


def load_prompts(path: Path) -> list[str]:
    if not path.exists():
        raise SystemExit(f"{path} is absent: this benchmark runs on the paper's dev prompts in ../shared")
    with open(path, newline="", encoding="utf-8") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


# --------------------------------------------------------------------------- fingerprinting

def bench_fingerprint(prompts, target_mb, repeat, baseline_docs):
    """Print the throughput table; return (MB/s of the default features from str, ratio to the
    simhash package)."""
    reps = int(target_mb * 1e6 / sum(len(p.encode()) for p in prompts)) + 1
    texts = prompts * reps
    mb = sum(len(p.encode()) for p in texts) / 1e6
    arrow = pa.array(texts)
    non_ascii = [t for t in texts if not t.isascii()]
    non_ascii_mb = sum(len(p.encode()) for p in non_ascii) / 1e6
    rows = []

    def add(name, seconds, docs, megabytes, baseline_rate=None):
        rate = megabytes / seconds
        ratio = f"{rate / baseline_rate:,.0f}x" if baseline_rate else "1x"
        rows.append([name, f"{docs:,}", f"{rate:,.1f}", f"{docs / seconds:,.0f}", ratio])
        return rate

    sub = prompts[:baseline_docs]
    sub_mb = sum(len(p.encode()) for p in sub) / 1e6
    from simhash import Simhash
    simhash_rate = add("simhash package: Simhash(text)", best_of(repeat, lambda: [Simhash(t) for t in sub]),
                       len(sub), sub_mb)
    from datasketch import MinHash

    def minhash_all():
        for t in sub:
            m = MinHash(num_perm=128)
            words = t.lower().split()
            m.update_batch([" ".join(words[i:i + 2]).encode() for i in range(max(len(words) - 1, 1))])
    add("datasketch MinHash(128), word bigrams", best_of(repeat, minhash_all), len(sub), sub_mb, simhash_rate)
    default = DEFAULT_FEATURES
    rate = add(f"misalign {default} (default), list of str",
               best_of(repeat, lambda: fingerprint(texts, default)), len(texts), mb, simhash_rate)
    add(f"misalign {default}, Arrow array", best_of(repeat, lambda: fingerprint(arrow, default)),
        len(texts), mb, simhash_rate)
    n = parse_features(default)[0]
    add(f"misalign {default}, list of str, portable bit counter (no AVX2)",
        best_of(repeat, lambda: _simhash.fingerprint(texts, n=n, chars=True, vector=False)), len(texts), mb,
        simhash_rate)
    add(f"misalign {default}, list of str, 2 threads",
        best_of(repeat, lambda: fingerprint(texts, default, threads=2)), len(texts), mb, simhash_rate)
    add(f"misalign {default}, the non-ASCII rows alone",
        best_of(repeat, lambda: fingerprint(non_ascii, default)), len(non_ascii), non_ascii_mb, simhash_rate)
    add("misalign word2 (the earlier default), list of str",
        best_of(repeat, lambda: fingerprint(texts, "word2")), len(texts), mb, simhash_rate)
    table(f"Fingerprinting ({mb:,.0f} MB of real prompts, {non_ascii_mb / mb:.0%} of it in non-ASCII rows; "
          "one thread unless noted)", ["method", "docs", "MB/s", "docs/s", "vs simhash package"], rows)
    return rate, rate / simhash_rate


# --------------------------------------------------------------------------- self-join

def _join_child(fps, tau, queue):
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    index = HammingIndex(tau, plan_blocks(tau, len(fps)))
    index.add(fps)
    i, j, d = index.pairs()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    queue.put((seconds, len(i), peak / 1024, index.plan))


def timed_join(fps, tau):
    """Join in a fresh process so that its peak memory can be read off alone."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_join_child, args=(fps, tau, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def brute_force(fps, tau):
    pairs = []
    for start in range(0, len(fps), 256):
        block = fps[start:start + 256]
        d = np.bitwise_count(block[:, None] ^ fps[None, :])
        a, b = np.nonzero(d <= tau)
        keep = b > a + start
        pairs.append(np.stack([a[keep] + start, b[keep]], axis=1))
    return np.concatenate(pairs)


def bench_join(n, brute_n, taus):
    """Print the join table; return {tau: (seconds, same pairs as brute force)}."""
    rng = np.random.default_rng(0)
    fps = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    sub = fps[:brute_n]
    rows, results = [], {}
    for tau in taus:
        seconds, npairs, peak_mb, plan = timed_join(fps, tau)
        t = time.perf_counter()
        expected = brute_force(sub, tau)
        brute_s = time.perf_counter() - t
        index = HammingIndex(tau, plan_blocks(tau, brute_n))
        index.add(sub)
        i, j, _ = index.pairs()
        same = np.array_equal(np.stack([i, j], axis=1), expected[np.lexsort((expected[:, 1], expected[:, 0]))])
        brute_full = brute_s * (n / brute_n) ** 2
        results[tau] = (seconds, same)
        rows.append([tau, f"{n:,}", f"{npairs:,}", f"{seconds:.3f}", f"{peak_mb:,.0f}",
                     f"{brute_s:.1f} s on {brute_n:,}", f"{brute_full:,.0f}", f"{brute_full / seconds:,.0f}x",
                     "yes" if same else "NO", " ".join(f"{w}/{r}" for _, w, r in plan)])
    table("Exact self-join of random 64-bit fingerprints (one thread)",
          ["tau", "n", "pairs", "seconds", "peak MB", "numpy brute force", "brute force on n, s (extrapolated)",
           "speed-up", "same pairs as brute force", "plan (bits/radius per block)"], rows)
    return results


# --------------------------------------------------------------------------- goals

def goals(rate, ratio, found, joins):
    recall, affected = found[DEFAULT_FEATURES][10]
    rows = [
        ["fingerprinting >= 500 MB/s per core from Python str", f"{rate:,.0f} MB/s", rate >= 500],
        ["fingerprinting >= 600x the simhash package (same run)", f"{ratio:,.0f}x", ratio >= 600],
        [f"{DEFAULT_FEATURES} at tau 10: recall >= 0.90 on 1-2 edit near-duplicates", f"{recall:.3f}", recall >= 0.90],
        [f"{DEFAULT_FEATURES} at tau 10: <= 2% of distinct prompts affected", f"{affected:.1%}", affected <= 0.02],
        ["exact self-join of 1M fingerprints, tau 3, <= 0.2 s on one core", f"{joins[3][0]:.3f} s", joins[3][0] <= 0.2],
        ["exact self-join of 1M fingerprints, tau 10, <= 3 s on one core", f"{joins[10][0]:.2f} s", joins[10][0] <= 3],
        ["same pairs as brute force", "both tau", joins[3][1] and joins[10][1]],
    ]
    table("Goals", ["goal", "result", "met"], [[g, r, "yes" if ok else "**no**"] for g, r, ok in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--mb", type=float, default=50, help="size of the replicated text corpus")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-docs", type=int, default=3000)
    parser.add_argument("--join-n", type=int, default=1_000_000)
    parser.add_argument("--brute-n", type=int, default=100_000)
    parser.add_argument("--edits", type=int, default=2000, help="planted near-duplicates for the feature study")
    args = parser.parse_args()
    prompts = load_prompts(args.data)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"bit counter: {'four abreast (AVX2)' if _simhash.counts_four_abreast() else 'portable'}")
    rate, ratio = bench_fingerprint(prompts, args.mb, args.repeat, args.baseline_docs)
    joins = bench_join(args.join_n, args.brute_n, (3, 10))
    print()
    found = feature_study(load_distinct_prompts(args.data, 12), args.edits, [6, 8, 10, 12])
    goals(rate, ratio, found, joins)


if __name__ == "__main__":
    main()
