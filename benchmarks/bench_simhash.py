"""SimHash benchmark: fingerprint throughput, exact self-join, and dedup quality, in one run.

    python benchmarks/bench_simhash.py            # needs ../shared/data/paper_prompts_dev.csv

Baselines, measured in the same run: the PyPI `simhash` package (Simhash objects) and
`datasketch` MinHash (128 permutations) for fingerprinting; numpy brute force for the join.
Throughput is best of --repeat runs on one thread; baselines run on a subset and are reported
as rates.  Prints markdown tables (paste them into benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import platform
import random
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from misalign import _simhash
from misalign.dedup import Deduplicator, HammingIndex, plan_blocks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_prompts_dev.csv"


def load_prompts(path: Path) -> list[str]:
    if not path.exists():
        raise SystemExit(f"{path} is absent: this benchmark runs on the paper's dev prompts in ../shared")
    with open(path, newline="", encoding="utf-8") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


def best_of(repeat, fn):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


# --------------------------------------------------------------------------- fingerprinting

def bench_fingerprint(prompts, target_mb, repeat, baseline_docs):
    reps = int(target_mb * 1e6 / sum(len(p.encode()) for p in prompts)) + 1
    texts = prompts * reps
    mb = sum(len(p.encode()) for p in texts) / 1e6
    arrow = pa.array(texts)
    rows = []

    def add(name, seconds, docs, megabytes, baseline_rate=None):
        rate = megabytes / seconds
        ratio = f"{rate / baseline_rate:,.0f}x" if baseline_rate else "1x"
        rows.append([name, f"{docs:,}", f"{rate:,.1f}", f"{docs / seconds:,.0f}", ratio])
        return rate

    sub = prompts[:baseline_docs]
    sub_mb = sum(len(p.encode()) for p in sub) / 1e6
    from simhash import Simhash
    simhash_rate = add("simhash package: Simhash(text)", best_of(1, lambda: [Simhash(t) for t in sub]),
                       len(sub), sub_mb)
    from datasketch import MinHash

    def minhash_all():
        for t in sub:
            m = MinHash(num_perm=128)
            words = t.lower().split()
            m.update_batch([" ".join(words[i:i + 2]).encode() for i in range(max(len(words) - 1, 1))])
    add("datasketch MinHash(128), word bigrams", best_of(1, minhash_all), len(sub), sub_mb, simhash_rate)
    add("misalign fingerprint, list of str", best_of(repeat, lambda: _simhash.fingerprint(texts)),
        len(texts), mb, simhash_rate)
    add("misalign fingerprint, Arrow array", best_of(repeat, lambda: _simhash.fingerprint(arrow)),
        len(texts), mb, simhash_rate)
    add("misalign fingerprint, list of str, 2 threads",
        best_of(repeat, lambda: _simhash.fingerprint(texts, threads=2)), len(texts), mb, simhash_rate)
    table(f"Fingerprinting ({mb:,.0f} MB of real prompts; one thread unless noted)",
          ["method", "docs", "MB/s", "docs/s", "vs simhash package"], rows)


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
    rng = np.random.default_rng(0)
    fps = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    sub = fps[:brute_n]
    rows = []
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
        rows.append([tau, f"{n:,}", f"{npairs:,}", f"{seconds:.3f}", f"{peak_mb:,.0f}",
                     f"{brute_s:.1f} s on {brute_n:,}", f"{brute_full:,.0f}", f"{brute_full / seconds:,.0f}x",
                     "yes" if same else "NO", " ".join(f"{w}/{r}" for _, w, r in plan)])
    table("Exact self-join of random 64-bit fingerprints (one thread)",
          ["tau", "n", "pairs", "seconds", "peak MB", "numpy brute force", "brute force on n, s (extrapolated)",
           "speed-up", "same pairs as brute force", "plan (bits/radius per block)"], rows)


# --------------------------------------------------------------------------- quality

PUNCT = [",", ".", "!", "?", ";", ":"]


def edit(text, rng):
    words = text.split()
    kind = rng.choice(["drop1", "drop2", "swap", "insert1", "insert2", "case+punct"])
    if kind.startswith("drop") and len(words) > 2:
        for _ in range(int(kind[-1])):
            words.pop(rng.randrange(len(words)))
    elif kind == "swap" and len(words) > 1:
        k = rng.randrange(len(words) - 1)
        words[k], words[k + 1] = words[k + 1], words[k]
    elif kind.startswith("insert"):
        for _ in range(int(kind[-1])):
            words.insert(rng.randrange(len(words) + 1), rng.choice(["really", "please", "the", "very", "now", "also"]))
    else:
        words = [w.upper() if rng.random() < 0.3 else w for w in words]
        words = [w + rng.choice(PUNCT) if rng.random() < 0.2 else w.strip(",.!?") for w in words]
    return kind, " ".join(words)


def bench_quality(prompts, taus, ngrams, pairs, distinct_pairs):
    rng = random.Random(0)
    originals = [p for p in prompts if len(p.split()) >= 4]
    edited = [(p, *edit(p, rng)) for p in rng.sample(originals, min(pairs, len(originals)))]
    pick = np.random.default_rng(0).integers(0, len(prompts), size=(distinct_pairs, 2))
    pick = pick[pick[:, 0] != pick[:, 1]]
    words = np.array([len(p.split()) for p in prompts])
    rows = []
    for ngram in ngrams:
        fa = _simhash.fingerprint([e[0] for e in edited], ngram=ngram)[0]
        fb = _simhash.fingerprint([e[2] for e in edited], ngram=ngram)[0]
        d_near = np.bitwise_count(fa ^ fb)
        fps = _simhash.fingerprint(prompts, ngram=ngram)[0]
        d_far = np.bitwise_count(fps[pick[:, 0]] ^ fps[pick[:, 1]])
        for tau in taus:
            removed = int((~Deduplicator(tau=tau, ngram=ngram).fit_fingerprints(fps).keep).sum())
            rows.append([ngram, tau, f"{(d_near <= tau).mean():.3f}", f"{(d_far <= tau).mean():.2e}",
                         f"{removed:,}"])
    table(f"Dedup quality on the real prompts ({len(edited):,} edited pairs, {len(pick):,} random distinct "
          f"pairs; median prompt {int(np.median(words))} words)",
          ["ngram", "tau", "recall on edited pairs", "false-positive rate on random pairs",
           f"rows removed from the {len(prompts):,} prompts"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--mb", type=float, default=50, help="size of the replicated text corpus")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-docs", type=int, default=3000)
    parser.add_argument("--join-n", type=int, default=1_000_000)
    parser.add_argument("--brute-n", type=int, default=100_000)
    parser.add_argument("--quality-pairs", type=int, default=3000, help="edited near-duplicate pairs")
    parser.add_argument("--distinct-pairs", type=int, default=300_000, help="random pairs of prompts")
    args = parser.parse_args()
    prompts = load_prompts(args.data)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    bench_fingerprint(prompts, args.mb, args.repeat, args.baseline_docs)
    bench_join(args.join_n, args.brute_n, (3, 10))
    bench_quality(prompts, (3, 6, 10), (1, 2, 3), args.quality_pairs, args.distinct_pairs)


if __name__ == "__main__":
    main()
