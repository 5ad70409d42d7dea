"""KV block size on a CPU: vLLM's default there (128 tokens) against ours (CPU_BLOCK_SIZE, 32).

    make demo                                                  # writes runs/demo
    .venv/bin/python benchmarks/bench_block_size.py             # replays runs/demo's pairs
    .venv/bin/python benchmarks/bench_block_size.py --run-dir DIR

vLLM serves a prompt's prefix from its cache only in whole blocks.  The workload is a finished
run's pairs, as its judges see them: Stage I's judge prompt for every response (one polarity, as
the demo asks) and Stage II's detector prompts (joint, both polarities), each a label_probs call
from a cold prefix cache; then 64 greedy answers of up to 200 tokens to the bundled prompts (the
decode side, where block size changes only the attention kernel's loop).  Each block size gets
its own engine on the bundled SmolLM2-135M-Instruct, in this process, alternating, twice; the
best time of each is kept, and the outputs are compared with the baseline's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from misalign.inference import EngineConfig, SamplingConfig, VLLMEngine
from misalign.inference.smollm2 import prepare
from misalign.inference.tiny import bundled_prompts
from misalign.inference.vllm_engine import CPU_BLOCK_SIZE
from misalign.prompting import PromptTemplates
from misalign.tables import read_table

SIZES = {128: "vLLM's CPU default: the baseline", CPU_BLOCK_SIZE: "misalign-fast's"}


def workloads(run_dir: Path) -> dict[str, list[str]]:
    rows = [row for split in sorted((run_dir / "dataset").glob("*.parquet")) for row in read_table(split).to_pylist()]
    if not rows:
        sys.exit(f"no pairs under {run_dir}/dataset: run `make demo` first, or pass --run-dir")
    templates = PromptTemplates.bundled()
    responses = [(row, row[f"{side}_response"]) for row in rows for side in ("aligned", "misaligned")]
    return {"Stage I judge": [templates.judge_prompt(row, text, "aligned") for row, text in responses],
            "Stage II detector": [templates.detector_prompt("joint", row["prompt"], text, quality)
                                  for row, text in responses for quality in ("misaligned", "aligned")]}


def measure(block_size: int, prompts: dict[str, list[str]]) -> tuple[dict, dict]:
    """{column: figure} and {workload: outputs} for one engine with `block_size`."""
    engine = VLLMEngine(EngineConfig(model=str(prepare()), max_model_len=4096, block_size=block_size))
    engine.label_probs(prompts["Stage I judge"][:2], ["Yes", "No"])      # first-request warm-up
    figures, outputs = {}, {}
    for name, texts in prompts.items():
        engine.reset_prefix_cache()
        cached, tokens, started = engine.stats().cached_tokens, engine.stats().prompt_tokens, time.perf_counter()
        outputs[name] = np.asarray(engine.label_probs(texts, ["Yes", "No"]))
        figures[f"{name} s"] = time.perf_counter() - started
        figures[f"{name} from cache"] = ((engine.stats().cached_tokens - cached) /
                                         (engine.stats().prompt_tokens - tokens))
    before, started = engine.stats().generated_tokens, time.perf_counter()
    answers = engine.generate(bundled_prompts()[:64], SamplingConfig(max_tokens=200, temperature=0.0))
    figures["decode tok/s"] = (engine.stats().generated_tokens - before) / (time.perf_counter() - started)
    outputs["greedy answers"] = [answer.text for answer in answers]
    engine.close()
    return figures, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="a finished run (default: the demo's)")
    args = parser.parse_args()
    prompts = workloads(args.run_dir)
    best, outputs = {}, {}
    for _ in range(2):
        for size in SIZES:
            figures, outputs[size] = measure(size, prompts)
            row = best.setdefault(size, {})
            for column, value in figures.items():
                keep = max if column.endswith("tok/s") else min
                row[column] = keep(row.get(column, value), value)
    print(f"SmolLM2-135M-Instruct; {len(prompts['Stage I judge'])} judge and {len(prompts['Stage II detector'])} "
          f"detector prompts from {args.run_dir}; best of 2\n")
    columns = list(best[128])
    print("| block size | " + " | ".join(columns) + " | same outputs as the baseline |")
    print("|---" * (len(columns) + 2) + "|")
    for size, name in SIZES.items():
        cells = [f"{best[size][c]:.0%}" if c.endswith("cache") else f"{best[size][c]:,.1f}" for c in columns]
        same = all(np.array_equal(outputs[size][k], outputs[128][k]) for k in outputs[128])
        print(f"| {size} ({name}) | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
