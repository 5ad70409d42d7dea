"""The GPU check of the memory plan and model-major scheduling: configs/paper-gpu.toml's seven
models, at their real shapes but with random weights (vLLM load_format = "dummy" needs only a
config.json and a tokenizer), through `misalign-fast run` on the bundled prompts; then a table
of tokens/s per stage, engine starts (planned and made), start-up seconds and the GPU's peak
memory.  Every figure is a stand-in's: random weights write noise, so only speed and memory
mean anything.

On a machine with an NVIDIA GPU, in one go of about 10 minutes (H100/H200):

    pip install --no-index --find-links WHEELS 'misalign-fast[gpu]'    # or from PyPI
    python benchmarks/gpu/gpu_check.py --out runs/gpu-check

Anywhere, `--dry-run` writes the model folders and the config and prints the plan for an
80 GB card (79.6 GiB) without starting an engine.

What differs from the real models: every model uses Mistral-7B-v0.3's tokenizer (shipped in
mistral_common), so each vocabulary is cut to its 32,768 tokens (random weights could otherwise
pick ids the tokenizer cannot write); weights are 0.1-1.6 GiB smaller than the real ones.
Engines run eager (no CUDA graphs) so that the starts fit the 10 minutes; pass --graphs to
measure with them.
"""
import argparse
import json
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

from misalign.memory_plan import SHAPES

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "paper-gpu.toml"
# small enough for 10 minutes with ~15 engine starts, large enough to batch: 40 prompts, the
# paper's 3 candidates and 2 resampling rounds, answers cut at 128 tokens
SETTINGS = ['input.path=""', "run.limit=40", "expand.floor=2", "expand.budget=2", "respond.max_tokens=128", "run.shard_rows=64"]


def model_dirs(out: Path) -> dict[str, Path]:
    """One folder per model of the config: its shape with Mistral's tokenizer (see
    misalign.inference.tiny.shape_checkpoint)."""
    from misalign.inference.tiny import mistral_v3_tokenizer, shape_checkpoint
    tokenizer = mistral_v3_tokenizer()
    config = tomllib.loads(CONFIG.read_text())
    return {name: shape_checkpoint(json.loads((SHAPES / Path(model["path"]).name / "config.json").read_text()),
                                   out / "models" / name, tokenizer)
            for name, model in config["models"].items()}


def overrides(dirs: dict[str, Path], graphs: bool) -> list[str]:
    sets = list(SETTINGS)
    for name, path in dirs.items():
        sets += [f'models.{name}.path="{path}"', f'models.{name}.load_format="dummy"',
                 f"models.{name}.compile=\"{'always' if graphs else 'never'}\""]
    return [arg for item in sets for arg in ("--set", item)]


class PeakMemory(threading.Thread):
    """The most GPU memory in use (MiB, all processes), sampled every half second by nvidia-smi."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0, True

    def run(self):
        while self.running:
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
                self.peak = max(self.peak, *(int(u) for u in used))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)


def table(run_dir: Path, peak_mib: int, seconds: float) -> str:
    run = json.loads((run_dir / "run.json").read_text())
    profile = run["profile"] + json.loads((run_dir / "bench" / "meta.json").read_text())["profile"]
    planned = run["schedule"]["engine_starts"]
    lines = ["| stage | items in | seconds (work) | start-up s | engine starts | tokens/s |", "|---|---|---|---|---|---|"]
    made = {}
    for p in profile:
        for model, n in p["engine_starts"].items():
            made[model] = made.get(model, 0) + n
        starts = ", ".join(f"{m} {n}" for m, n in p["engine_starts"].items()) or "-"
        lines.append(f"| {p['stage']} | {p['items_in']:,} | {p['seconds']:.1f} | {p['startup_seconds']:.1f} | "
                     f"{starts} | {p['tokens_per_s']:,.0f} |")
    lines += ["", f"engine starts planned (at most): {planned}", f"engine starts made: {made}",
              f"GPU peak memory: {peak_mib / 1024:.1f} GiB; whole run {seconds:.0f} s"]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="write models and config, print the plan, stop")
    parser.add_argument("--graphs", action="store_true", help="CUDA graphs on (slower starts)")
    args = parser.parse_args()
    dirs = model_dirs(args.out)
    cli = [sys.executable, "-m", "misalign.cli"]
    sets = overrides(dirs, args.graphs)
    if args.dry_run:
        subprocess.run([*cli, "plan", str(CONFIG), *sets, "--gpu-memory", "79.6"], check=True)
        return
    peak = PeakMemory()
    peak.start()
    began = time.perf_counter()
    subprocess.run([*cli, "run", str(CONFIG), "--run-dir", str(args.out / "run"), *sets], check=True)
    peak.running = False
    print(table(args.out / "run", peak.peak, time.perf_counter() - began))


if __name__ == "__main__":
    main()
