"""Shards per engine call: one (the baseline) against run.batch_shards, on the quick perf suite.

    python benchmarks/bench_batch_shards.py [--prompts 24] [--repeat 3] [--batch-shards 4]

Stage I on the first bundled prompts (perf's quick pipeline: Mistral-7B's shape, one layer in
float32 on a CPU, random weights, greedy, 8 rows a shard), then respond's generation pass and
reject's judge pass timed in the calls the runner makes, as a share of raw vLLM's speed given
every request of the pass in one call (the limit: the engine never drains).  Both settings run
in this process on the same engines, one after the other, prefix caches emptied before each.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from misalign.inference.pool import EnginePool
from misalign.perf import pipeline_config, stage_efficiency
from misalign.run import stage1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-shards", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        config = pipeline_config(work, args.prompts, expand=False)
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, answer_cache=False,
                                                                     dir=str(work / "run")))
        pool = EnginePool(config, work)
        try:
            stage1(config, pool)
            rows = {}
            for together in (1, args.batch_shards):
                run = dataclasses.replace(config, run=dataclasses.replace(config.run, batch_shards=together))
                rows[together] = stage_efficiency(run, pool, work / "run", args.repeat)
        finally:
            pool.close()
    print(f"{args.prompts} prompts, {config.run.shard_rows} rows a shard, {args.repeat} samples; "
          "tokens/s of the pass over raw vLLM's (median [min, max])\n")
    print("| pass | shards per call | vs raw, same calls | vs raw, every request at once |")
    print("|---|---|---|---|")
    for name in ("respond", "judge"):
        for together, found in rows.items():
            same = found[f"{name} efficiency vs raw vLLM"]
            whole = found[f"{name} efficiency vs raw vLLM given all requests at once"]
            label = f"{together} (baseline)" if together == 1 else str(together)
            print(f"| {name} | {label} | {statistics.median(same):.3f} [{min(same):.3f}, {max(same):.3f}] | "
                  f"{statistics.median(whole):.3f} [{min(whole):.3f}, {max(whole):.3f}] |")


if __name__ == "__main__":
    main()
