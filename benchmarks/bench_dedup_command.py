"""`misalign-fast dedup` end to end, as a user runs it: the whole process (Python's start-up and
imports included) on 40 MB of JSON Lines built from the paper's dev prompts (each row two random
prompts joined, seeded: rows mostly distinct), and on a 3-row file (start-up alone); then the
phases of the command inside this process (best of 3 each): read, fingerprint (two threads),
join, write; and the join's search alone at each scan width this CPU runs (8, 4, 1 lanes).

    python benchmarks/bench_dedup_command.py                       # this checkout, 11 runs
    python benchmarks/bench_dedup_command.py --baseline DIR        # alternating with the code in DIR

Baseline: another checkout of misalign-fast (DIR, its compiled modules built or copied in), put
first on PYTHONPATH, each of its runs alternating with one of this checkout so that the machine's
drift falls on both; the two outputs are compared byte for byte.  Every run starts in a scratch
directory, so that the current directory's code cannot shadow DIR's.
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_features import SHARED as DEV    # the dev prompts, in ../shared
from misalign.perf import joined_rows


def timed(code: Path | None, source: Path, output: Path, work: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code)} if code else {k: v for k, v in os.environ.items()
                                                               if k != "PYTHONPATH"}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "misalign.cli", "dedup", str(source), str(output)], cwd=work, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def phases(source: Path, output: Path) -> dict[str, float]:
    """Seconds of each phase of misalign.dedup_file on `source`, best of 3, in this process."""
    from misalign import tables
    from misalign.dedup import Deduplicator
    best: dict[str, float] = {}
    for _ in range(3):
        clock = {"began": time.perf_counter()}
        raw = tables.read_bytes(source)
        table = tables.table_from_bytes(source, raw, "jsonl")
        texts = tables.text_column(table, "text", source, "jsonl", raw)
        clock["read"] = time.perf_counter()
        deduper = Deduplicator(tau=10, threads=2)
        fps, shingles = deduper.fingerprints(texts)
        clock["fingerprint"] = time.perf_counter()
        result = deduper.fit_fingerprints(fps, shingles == 0)
        clock["join"] = time.perf_counter()
        tables.write_rows_like(raw, table, result.keep, output, "jsonl")
        clock["write"] = time.perf_counter()
        marks = list(clock.items())
        for (_, before), (name, after) in zip(marks, marks[1:]):
            best[name] = min(best.get(name, float("inf")), after - before)
    return best


def join_by_lanes(source: Path) -> dict[int, float]:
    """Seconds of the join's search (HammingIndex.components on the file's distinct fingerprints,
    two threads) at each scan width this CPU runs, best of 3: the widest is what the command uses."""
    from misalign import tables
    from misalign.dedup import Deduplicator, HammingIndex, plan_blocks
    from misalign._simhash import scan_lanes
    raw = tables.read_bytes(source)
    fps = np.unique(Deduplicator(tau=10, threads=2).fingerprints(tables.table_from_bytes(source, raw, "jsonl").column("text"))[0])
    best = {}
    for lanes in (w for w in (8, 4, 1) if w <= scan_lanes()):
        for _ in range(3):
            index = HammingIndex(10, plan_blocks(10, len(fps)), lanes=lanes)
            index.add(fps)
            began = time.perf_counter()
            index.components(2)
            best[lanes] = min(best.get(lanes, float("inf")), time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare against")
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    if not DEV.exists():
        raise SystemExit(f"{DEV} is absent: this benchmark runs on the paper's dev prompts in ../shared")
    with open(DEV, newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    with tempfile.TemporaryDirectory(prefix="bench-dedup-command-") as scratch:
        work = Path(scratch)
        big, small = work / "q40.jsonl", work / "q3.jsonl"
        mb = joined_rows(big, prompts, per_row=2, size_mb=40)
        small.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts[:3]))
        ways = {"baseline": args.baseline.resolve(), "this checkout": None} if args.baseline else {"this checkout": None}
        times = {(way, f): [] for way in ways for f in ("big", "small")}
        for _ in range(args.runs):
            for way, code in ways.items():
                times[way, "big"].append(timed(code, big, work / f"{way}.jsonl", work))
                times[way, "small"].append(timed(code, small, work / f"{way}-3.jsonl", work))
        if args.baseline:
            same = filecmp.cmp(work / "baseline.jsonl", work / "this checkout.jsonl", shallow=False)
            print(f"outputs {'identical' if same else 'DIFFER'}")
        inside = phases(big, work / "phases.jsonl")
        lanes = join_by_lanes(big)
    print(f"{mb:.1f} MB of JSON Lines, {args.runs} runs each{', alternating' if args.baseline else ''}\n")
    print("| code | whole process s, median (best) | MB/s, median (best) | 3-row file s, median |")
    print("|---|---|---|---|")
    for way in ways:
        big_s, small_s = times[way, "big"], times[way, "small"]
        print(f"| {way} | {statistics.median(big_s):.3f} ({min(big_s):.3f}) | {mb / statistics.median(big_s):.1f} "
              f"({mb / min(big_s):.1f}) | {statistics.median(small_s):.3f} |")
    print("\nthis checkout, inside the command (best of 3): " + ", ".join(f"{k} {v:.3f} s" for k, v in inside.items()))
    print("the join's search by scan width (components, 2 threads, best of 3): "
          + ", ".join(f"{w} lanes {v:.3f} s" for w, v in lanes.items()))


if __name__ == "__main__":
    main()
