"""Engine starts of the paper's set-ups under the memory plan: model-major passes (what the runner
does) against the baseline of the order before it, shard-major (every model of a stage on one
shard, then the next shard), both planned by the same pool policy in this process from the
models' shapes.  Counts, not seconds: an engine start of a 7-9B model costs tens of seconds on
a GPU, so the starts are the cost that matters.

    .venv/bin/python benchmarks/bench_schedule.py [--prompts 6000]
"""
import argparse
from pathlib import Path

from misalign.config import load
from misalign.memory_plan import GIB, SHAPES, Device, schedule
from misalign.run import passes as run_passes
from misalign.run import plan as plan_run

ROOT = Path(__file__).resolve().parents[1]
BOXES = {"paper-gpu.toml": [("1 x H100 80GB", 1, 79.6), ("1 x H200", 1, 140.4)],
         "paper-exact.toml": [("8 x H100 80GB", 8, 79.6), ("8 x H200", 8, 140.4)]}


def shard_major(passes, shards: int):
    """The passes in the order of the old runner: per stage, each shard through all its passes."""
    order, k = [], 0
    while k < len(passes):
        stage = passes[k][0]
        block = [p for p in passes[k:] if p[0] == stage]
        order += [(stage, f"{name}@{s}", model) for s in range(shards) for _, name, model in block]
        k += len(block)
    return order


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6000, help="prompts after dedup (shards of run.shard_rows)")
    args = parser.parse_args()
    print("| config | box | shards | engine starts, model-major | engine starts, shard-major (baseline) | fewer |")
    print("|---|---|---|---|---|---|")
    for name, boxes in BOXES.items():
        config = load(ROOT / "configs" / name)
        shards = -(-args.prompts // config.run.shard_rows)
        directories = {m: SHAPES / Path(c.path).name for m, c in config.models.items()}
        for box, cards, memory in boxes:
            device = Device("gpu", int(memory * GIB), cards, "GPU")
            planned = plan_run(config, device=device, directories=directories)
            ours = sum(planned.engine_starts().values())
            baseline = sum(schedule(planned.plan, shard_major(run_passes(config), shards)).engine_starts().values())
            print(f"| {name} | {box} | {shards} | {ours} | {baseline} | {baseline / ours:.0f}x |")


if __name__ == "__main__":
    main()
