"""Embedding classifier vs the paper's labels, on a held-out part of the paper's dev prompts.

    python benchmarks/bench_classify.py      # needs ../shared/data/paper_prompts_dev.csv

The reference labels are the paper's (Mistral-7B as classifier).  Rows are split 80/20 with a
seed; the probe trains on the 80% and everything is scored on the 20%.  Baseline in the same
run: always answering the most common label of the training part.  Prints a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np

from misalign.inference.embedding_model import embedding_engine
from misalign.classifiers import ZeroShotClassifier, agreement, train_probe
from misalign.taxonomy import UNKNOWN
from misalign.taxonomy import DIMENSIONS, Taxonomy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_prompts_dev.csv"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark runs on the paper's dev prompts in ../shared")
    with open(args.data, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    perm = np.random.default_rng(args.seed).permutation(len(rows))
    train, test = perm[: int(0.8 * len(rows))], perm[int(0.8 * len(rows)):]
    taxonomy = Taxonomy.load()

    engine = embedding_engine()
    start = time.perf_counter()
    embeddings = engine.embed([r["prompt"] for r in rows])
    embed_s = time.perf_counter() - start
    zero_shot = ZeroShotClassifier(engine, taxonomy).classify(embeddings[test])
    engine.close()
    start = time.perf_counter()
    probe = train_probe(embeddings[train], {d: [rows[i][d] or None for i in train] for d in DIMENSIONS},
                        taxonomy, "all-MiniLM-L6-v2", seed=args.seed)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    probed = probe.classify(embeddings[test])
    probe_s = time.perf_counter() - start

    print(f"{len(rows):,} prompts; probe trained on {len(train):,}, all scored on {len(test):,} held out "
          f"(seed {args.seed}).  Embedding: {len(rows) / embed_s:,.0f} prompts/s; probe training "
          f"{train_s:.0f} s; probe labelling {len(test) / probe_s:,.0f} prompts/s after embedding.\n")
    print("| dimension | labelled test rows | method | accuracy | macro-F1 |")
    print("|---|---|---|---|---|")
    for dim in DIMENSIONS:
        reference = [rows[i][dim] or None for i in test]
        majority = Counter(rows[i][dim] or None for i in train if rows[i][dim] != UNKNOWN).most_common(1)[0][0]
        for name, predicted in (("most common label (baseline)", [majority] * len(test)),
                                ("zero-shot similarity", zero_shot[dim].assigned),
                                ("linear probe", probed[dim].assigned)):
            score = agreement(predicted, reference)
            print(f"| {dim} | {score['n']:,} | {name} | {score['accuracy']:.3f} | {score['macro_f1']:.3f} |")


if __name__ == "__main__":
    main()
