"""Perf regression testing: a seeded workload suite written as one JSON file, and a comparison of two
such files (or two run directories' profiles) with a verdict a CI job can act on.

    {"environment": {...}, "suite": "quick",
     "benchmarks": [{"name", "unit", "higher_is_better", "samples", "median", "min", "max"}, ...]}

A timing is a sample, not a fact: every benchmark is repeated and keeps its samples.  `compare`
decides as asv does, at the level the project chose: a change within the threshold is "unchanged";
beyond it, a regression or an improvement only if it is significant, by a two-sided Mann-Whitney U
test at p < 0.01 where both sides have the 5 samples that level needs, else (fewer samples) only if
the two sides' samples do not overlap at all; a change beyond the threshold that is not significant is "noisy".  Every
verdict says which test decided it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from misalign.config import Config
from misalign.errors import MisalignError

FORMAT = 1


class PerfError(MisalignError):
    """Two results that cannot be compared, or a file that is not a result."""


@dataclass
class Benchmark:
    name: str
    unit: str
    higher_is_better: bool
    samples: list = field(default_factory=list)
    median: float = 0.0
    min: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, name: str, unit: str, samples: list[float], higher_is_better: bool = True) -> "Benchmark":
        return cls(name, unit, higher_is_better, [float(s) for s in samples], statistics.median(samples),
                   min(samples), max(samples))


# ---------------------------------------------------------------------------------- environment

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def environment(config_text: str = "", models: list[str] | None = None) -> dict:
    """What a comparison must know about where a result was measured."""
    from misalign.memory_plan import detect_device
    from misalign.provenance import versions
    device = detect_device()
    gpu = {"gpu": device.name, "gpu_memory_gib": round(device.memory / 2 ** 30, 1), "gpus": device.cards} \
        if device.kind == "gpu" else {"gpu": None}
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), **gpu, "python": platform.python_version(),
            "versions": versions(), "revision": _git_revision(),
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest() if config_text else "",
            "models": models or []}


# --------------------------------------------------------------------------------------- running

def repeat(times: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(times)]


def write(path: Path, suite: str, env: dict, benchmarks: list[Benchmark]) -> None:
    from misalign.tables import atomic_path
    record = {"format": FORMAT, "suite": suite, "environment": env, "benchmarks": [asdict(b) for b in benchmarks]}
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def read(path: Path) -> tuple[dict, list[Benchmark]]:
    """A result file's environment and benchmarks, or a run directory's profiles as benchmarks;
    PerfError for anything else (a malformed entry, a sample that is not a finite number, a name
    given twice).  Medians are computed from the samples, not taken from the file."""
    path = Path(path)
    if path.is_dir():
        return run_dir_benchmarks(path)
    try:
        record = json.loads(path.read_text())
        env, entries = record["environment"], record["benchmarks"]
        benchmarks = [_benchmark(entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PerfError(f"{path}: not a result of `misalign-fast perf run` ({type(exc).__name__}: {exc})") from None
    names = [b.name for b in benchmarks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PerfError(f"{path}: benchmark {twice[0]!r} is given more than once")
    return env, benchmarks


def _benchmark(entry: dict) -> Benchmark:
    samples = entry["samples"]
    if not (isinstance(entry["name"], str) and isinstance(entry["unit"], str) and isinstance(samples, list)
            and samples and all(isinstance(x, (int, float)) and math.isfinite(x) for x in samples)):
        raise ValueError(f"benchmark {entry.get('name')!r} needs a name, a unit and finite samples")
    return Benchmark.of(entry["name"], entry["unit"], samples, bool(entry.get("higher_is_better", True)))


def run_dir_benchmarks(run_dir: Path) -> tuple[dict, list[Benchmark]]:
    """A run directory's profile.json (and bench/meta.json) as one-sample benchmarks per stage:
    items/s and tokens/s (work only) and engine start-up seconds."""
    profiles = []
    for source in (run_dir / "profile.json", run_dir / "bench" / "meta.json"):
        if source.exists():
            try:
                data = json.loads(source.read_text())
            except ValueError:
                raise PerfError(f"{source}: not JSON") from None
            profiles += data if isinstance(data, list) else data.get("profile", [])
    if not profiles:
        raise PerfError(f"{run_dir}: no profile.json or bench/meta.json to compare")
    out = []
    for p in profiles:
        out.append(Benchmark.of(f"{p['stage']}: items/s", "items/s", [p["items_per_s"]]))
        if p.get("prompt_tokens") or p.get("generated_tokens"):
            out.append(Benchmark.of(f"{p['stage']}: tokens/s", "tokens/s", [p["tokens_per_s"]]))
        if p.get("engine_starts"):
            out.append(Benchmark.of(f"{p['stage']}: engine start-up", "s", [p["startup_seconds"]], False))
    run = run_dir / "run.json"
    env = json.loads(run.read_text()).get("versions", {}) if run.exists() else {}
    return {"run_dir": str(run_dir), "versions": env}, out


# ------------------------------------------------------------------------------------- comparing

@dataclass
class Verdict:
    name: str
    unit: str
    base: float | None
    new: float | None
    ratio: float | None          # new / base median
    status: str                  # regression, improvement, unchanged, noisy, new, missing
    decided_by: str = ""         # the test behind a verdict beyond the threshold


SIGNIFICANCE = 0.01              # asv uses 0.002; 0.01 lets five samples a side decide (a CI minute each)
MIN_SAMPLES = 5                  # the fewest per side with which a two-sided U test can reach it (p >= 2/252)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact p-value of the Mann-Whitney U test (ties count a half; the exact
    distribution is that of untied samples)."""
    n, m = len(a), len(b)
    u = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    # ways[i][j][k]: orderings of i + j samples in which k of the pairs have the first side above
    ways = [[[1.0] for _ in range(m + 1)] for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i and j:
                above, below = ways[i - 1][j], ways[i][j - 1]       # the largest sample is a's, or b's
                ways[i][j] = [(above[k - j] if 0 <= k - j < len(above) else 0.0)
                              + (below[k] if k < len(below) else 0.0) for k in range(i * j + 1)]
    counts = ways[n][m]
    total = sum(counts)
    low = sum(counts[:math.floor(u) + 1]) / total
    high = sum(counts[math.ceil(u):]) / total
    return min(1.0, 2 * min(low, high))


def judge(base: Benchmark, new: Benchmark, threshold: float) -> Verdict:
    if base.median == 0:
        ratio = 1.0 if new.median == 0 else math.inf
    else:
        ratio = new.median / base.median
    better = ratio - 1 if new.higher_is_better else 1 - ratio        # > 0: an improvement
    if abs(better) <= threshold:
        return Verdict(new.name, new.unit, base.median, new.median, ratio, "unchanged")
    if min(len(base.samples), len(new.samples)) >= MIN_SAMPLES:
        p = mann_whitney_p(new.samples, base.samples)
        significant, test = p < SIGNIFICANCE, f"Mann-Whitney p = {p:.2g}"
    else:
        significant = new.min > base.max or new.max < base.min          # no sample overlaps the other side's
        test = (f"{len(base.samples)} and {len(new.samples)} samples "
                f"{'apart' if significant else 'overlap'} (a U test needs {MIN_SAMPLES} each)")
    status = ("improvement" if better > 0 else "regression") if significant else "noisy"
    return Verdict(new.name, new.unit, base.median, new.median, ratio, status, test)


def compare(base_env: dict, base: list[Benchmark], new_env: dict, new: list[Benchmark], threshold: float = 0.10,
            force: bool = False) -> list[Verdict]:
    """One verdict per benchmark of either side; a PerfError for results measured on different
    processors or GPUs (their times say nothing about the code) unless `force`, for a benchmark
    whose unit changed, and when no benchmark is in both (a gate that compared nothing)."""
    for key in ("cpu", "gpu"):
        if not force and key in base_env and key in new_env and base_env[key] != new_env[key]:
            raise PerfError(f"the results were measured on different {key.upper()}s ({base_env[key]!r} and "
                            f"{new_env[key]!r}); compare results from one machine, or pass --force")
    olds, news = {b.name: b for b in base}, {b.name: b for b in new}
    common = [name for name in news if name in olds]
    if not common:
        raise PerfError("the two results have no benchmark in common: nothing was compared")
    for name in common:
        if olds[name].unit != news[name].unit:
            raise PerfError(f"benchmark {name!r} is in {olds[name].unit} in the base and {news[name].unit} in the "
                            "new result: not comparable")
    verdicts = [judge(olds[name], b, threshold) if name in olds else Verdict(name, b.unit, None, b.median, None, "new")
                for name, b in news.items()]
    verdicts += [Verdict(name, b.unit, b.median, None, None, "missing") for name, b in olds.items() if name not in news]
    return verdicts


def markdown(verdicts: list[Verdict]) -> str:
    lines = ["| benchmark | base | new | ratio | status | decided by |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.name} | {format_value(v.base, v.unit)} | {format_value(v.new, v.unit)} | "
                     f"{'-' if v.ratio is None else f'{v.ratio:.3f}'} | {v.status} | {v.decided_by} |")
    return "\n".join(lines)


def format_number(value: float) -> str:
    """Three significant digits, thousands grouped: 0.0955, 2.48, 543, 23,200."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def format_value(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{format_number(value)} {unit}"


# ---------------------------------------------------------------------------------------- suites

def core_suite(times: int, texts: list[str], work_dir: Path) -> list[Benchmark]:
    """The C core: fingerprint MB/s on ASCII and non-ASCII prompts, exact self-joins of 1M random
    fingerprints at tau 3 and 10, dedup of 1.5M rows that are mostly exact or near copies, the
    streaming filter's insert-and-query rate, and the dedup command on a 40 MB file."""
    import numpy as np

    from misalign.dedup import (DEFAULT_FEATURES, Deduplicator, HammingIndex, NearDuplicateFilter, fingerprint,
                                plan_blocks)
    ascii_texts = [t for t in texts if t.isascii()]
    other = [t for t in texts if not t.isascii()] or ["naïve café " * 8]

    def mb_per_s(sample: list[str], target_mb: float = 8.0):
        body = sample * max(1, int(target_mb * 1e6 // max(sum(len(t.encode()) for t in sample), 1)))
        size = sum(len(t.encode()) for t in body) / 1e6

        def once():
            began = time.perf_counter()
            fingerprint(body)
            return size / (time.perf_counter() - began)
        return once

    rng = np.random.default_rng(0)
    fps = rng.integers(0, 2 ** 63, 1_000_000, dtype=np.int64).view(np.uint64)

    def join(tau: int):
        def once():
            began = time.perf_counter()
            index = HammingIndex(tau, plan_blocks(tau, len(fps)))
            index.add(fps)
            index.pairs()
            return time.perf_counter() - began
        return once

    # 1.5M rows, 90% of them copies of 1,000 fingerprints (templates, boilerplate, re-crawls): half
    # exact, half near (up to 4 bits flipped: an edited word), so that a family of k near-copies
    # holds k(k-1)/2 pairs within tau; both cores
    copies = fps[rng.integers(0, 1_000, 1_350_000)]
    for _ in range(4):
        flip = np.left_shift(np.uint64(1), rng.integers(0, 64, len(copies)).astype(np.uint64))
        copies[::2] ^= flip[::2]
    repeated = np.concatenate([copies, fps[1_000:151_000]])
    rng.shuffle(repeated)

    def dedup_repeats():
        began = time.perf_counter()
        Deduplicator(tau=10, threads=2).fit_fingerprints(repeated)
        return time.perf_counter() - began

    stream = [f"{texts[i % len(texts)]} ({i // len(texts)})" for i in range(20_000)]
    dedup_command = dedup_end_to_end(texts, work_dir)

    def streaming():
        began = time.perf_counter()
        seen = NearDuplicateFilter(tau=10)
        for start in range(0, len(stream), 1_000):
            seen.add_if_new(stream[start:start + 1_000])
        return len(stream) / (time.perf_counter() - began)

    # the features are in the names: a run with other defaults is a new benchmark, not a regression
    return [Benchmark.of(f"fingerprint {DEFAULT_FEATURES}, ASCII", "MB/s", repeat(times, mb_per_s(ascii_texts))),
            Benchmark.of(f"fingerprint {DEFAULT_FEATURES}, non-ASCII", "MB/s", repeat(times, mb_per_s(other))),
            Benchmark.of("self-join 1M, tau 3", "s", repeat(times, join(3)), higher_is_better=False),
            Benchmark.of("self-join 1M, tau 10", "s", repeat(times, join(10)), higher_is_better=False),
            Benchmark.of("dedup 1.5M rows, 90% exact or near copies, tau 10, 2 threads", "s",
                         repeat(times, dedup_repeats),
                         higher_is_better=False),
            Benchmark.of(f"streaming filter {DEFAULT_FEATURES}, insert and query", "prompts/s",
                         repeat(times, streaming)),
            Benchmark.of("dedup command end to end, 40 MB JSON Lines, whole process", "MB/s",
                         repeat(times, dedup_command))]


def dedup_end_to_end(texts: list[str], work_dir: Path, size_mb: float = 40.0) -> Callable[[], float]:
    """`misalign-fast dedup` as a user runs it, in a process of its own (Python's start-up and
    imports included), on a seeded JSON Lines file of `size_mb` MB in `work_dir` whose rows each
    join three random `texts`: MB of file per second of the whole process."""
    import sys

    source = work_dir / "dedup-rows.jsonl"
    written = joined_rows(source, texts, per_row=3, size_mb=size_mb)

    def once():
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "misalign.cli", "dedup", str(source), str(work_dir / "dedup-kept.jsonl")],
                       check=True, stdout=subprocess.DEVNULL)
        return written / (time.perf_counter() - began)
    return once


def joined_rows(path: Path, texts: list[str], per_row: int, size_mb: float, seed: int = 0) -> float:
    """Write JSON Lines of about `size_mb` MB to `path`, each row's "text" `per_row` random
    `texts` joined by a space (seeded); return the MB written."""
    import random

    rng, size = random.Random(seed), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < size_mb * 1e6:
            line = json.dumps({"text": " ".join(rng.choice(texts) for _ in range(per_row))}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
    return size / 1e6


PIPELINE_SHAPE = "Mistral-7B-Instruct-v0.3"     # its tokenizer ships in mistral_common (a vLLM dependency)
PIPELINE_SETTINGS = """
[run]
seed = 0
shard_rows = 8
limit = {limit}
[expand]
model = "shape"
floor = {floor}
budget = 1
max_tokens = 32
temperature = 0.0
[respond]
models = ["shape"]
candidates = 1
temperature = 0.0
max_tokens = 48
[reject]
judge = "shape"
rounds = 1
min_chars = 5
[bench]
models = ["shape"]
[models.shape]
path = "{path}"
load_format = "dummy"
dtype = "{dtype}"
max_model_len = 2048
"""


def run_suite(suite: str, config_path: Path | None, repeat: int, only: str | None, output: Path) -> list[Benchmark]:
    """`misalign-fast perf run`: the core suite and Stage I's (quick: 12 prompts, full: 75 with
    expansion), on `config_path`'s models or the built-in shape, written to `output`."""
    import tempfile

    from misalign import config as config_mod
    from misalign.inference.tiny import bundled_prompts
    limit = 12 if suite == "quick" else 75
    benchmarks = []
    with tempfile.TemporaryDirectory(prefix="misalign-perf-") as work:
        config = config_mod.load(config_path, settings={"run.limit": limit}) if config_path else \
            pipeline_config(Path(work), limit, expand=suite == "full")
        if only != "pipeline":
            benchmarks += core_suite(repeat, bundled_prompts(), Path(work))
        if only != "core":
            benchmarks += pipeline_suite(repeat, config, Path(work))
    write(output, suite, environment(config_mod.to_toml(config), sorted(config.roles())), benchmarks)
    return benchmarks


def pipeline_config(work_dir: Path, limit: int, expand: bool) -> Config:
    """Stage I on the first `limit` bundled prompts, greedy, with the MiniLM classifier and
    Mistral-7B's shape on random weights in every generative role: its whole shape on a GPU, one
    layer of it in float32 on a CPU (where its full 7B would take minutes per stage).  With
    `expand`, every domain without a prompt gets one attempt (111 requests: slow on a CPU)."""
    from misalign import config as config_mod
    from misalign.inference.tiny import mistral_v3_tokenizer, shape_checkpoint
    from misalign.memory_plan import SHAPES, detect_device
    gpu = detect_device().kind == "gpu"
    shape = json.loads((SHAPES / PIPELINE_SHAPE / "config.json").read_text())
    model = shape_checkpoint(shape, work_dir / "model", mistral_v3_tokenizer(), layers=None if gpu else 1)
    path = work_dir / "perf.toml"
    path.write_text(PIPELINE_SETTINGS.format(limit=limit, floor=int(expand), path=model,
                                             dtype="auto" if gpu else "float32"))
    return config_mod.load(path)


def pipeline_suite(times: int, config: Config, work_dir: Path) -> list[Benchmark]:
    """Stage I `times` times on one engine pool, each in a fresh run directory: per stage items/s,
    tokens/s (work only: start-ups apart) and prefix-cache hit rate; the engines' start-up (the
    first build starts them); and the tokens/s of respond's generation and of the judge as a share
    of raw vLLM's on the same requests in the same batches (the pipeline's own cost)."""
    import dataclasses

    from misalign.inference.pool import EnginePool
    from misalign.run import stage1
    samples: dict[tuple, list] = {}
    startup = 0.0
    # every sample asks the engines: answers from the answer cache would time the cache
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, answer_cache=False))
    pool = EnginePool(config, work_dir)
    try:
        for k in range(times):
            pool.reset_prefix_caches()          # every sample starts cold, as the first did
            run = dataclasses.replace(config, run=dataclasses.replace(config.run, dir=str(work_dir / f"run-{k}")))
            for p in stage1(run, pool)["profile"]:
                startup += p["startup_seconds"]
                tokenless = not (p["prompt_tokens"] or p["generated_tokens"]) and p["stage"] not in ("dedup", "split")
                if not p["items_out"] or not p["seconds"] or tokenless:    # no work: rows passed through
                    continue
                samples.setdefault((p["stage"], "items/s"), []).append(p["items_per_s"])
                if p["prompt_tokens"]:
                    samples.setdefault((p["stage"], "tokens/s"), []).append(p["tokens_per_s"])
                    samples.setdefault((p["stage"], "prefix-cache hit rate"), []).append(
                        100 * p["prefix_cache_hit_rate"])
        efficiency = stage_efficiency(config, pool, work_dir / f"run-{times - 1}", times)
    finally:
        pool.close()
    out = [Benchmark.of(f"pipeline {stage}: {what}", "%" if what.startswith("prefix") else what, values)
           for (stage, what), values in samples.items()]
    out.append(Benchmark.of("pipeline: engine start-up", "s", [startup], higher_is_better=False))
    out += [Benchmark.of(name, "ratio", values) for name, values in efficiency.items()]
    return out


def stage_efficiency(config: Config, pool, run_dir: Path, times: int) -> dict[str, list[float]]:
    """Respond's generation pass and reject's judge pass, each timed on the run's prompts in the
    calls the runner makes (run.batch_shards shards each), against raw vLLM (`LLM.generate`, with the same answer log-probabilities for the judge)
    on the very same requests and batches, and against raw vLLM given every request of the pass
    in one call (the limit: no batch drains between shards); tokens/s of the stage over raw's,
    prefix caches emptied before each.  The judge reads, as candidates, other prompts of the run: plain text that passes
    the mechanical filter (a random-weight model's own answers rarely do)."""
    import dataclasses

    import pyarrow as pa

    from misalign.pipeline import batched
    from misalign.prompting import POLARITIES, SIDES, PromptTemplates
    from misalign.stages.reject import RejectStage
    from misalign.stages.respond import RespondStage
    templates = PromptTemplates.bundled()
    rows = _rows(run_dir / "stages", "dedup")
    generator_name = config.respond.models[0]
    generator, judge = pool.get(generator_name), pool.get(config.reject.judge)
    respond = RespondStage(config.respond, pool, seed=config.run.seed)
    # the judge's answers alone, as raw vLLM is asked for them (a critique would be extra writing)
    reject = RejectStage(dataclasses.replace(config.reject, feedback="reason"), pool, config.respond,
                         seed=config.run.seed)
    n, shard = len(rows), config.run.shard_rows
    asked = POLARITIES if config.reject.balanced else ("aligned",)     # as the judge asks (reject._judge)
    candidates = [{**row, "generator": generator_name, "aligned_candidates": [rows[(i + 1) % n]["prompt"]],
                   "aligned_truncated": [False], "misaligned_candidates": [rows[(i + 2) % n]["prompt"]],
                   "misaligned_truncated": [False]} for i, row in enumerate(rows)]
    cases = {
        "respond": (generator, lambda t: respond.respond(generator_name, t), rows,
                    lambda part: [templates.response_prompt(kind, row) for kind in SIDES for row in part],
                    (config.respond.max_tokens, None)),
        "judge": (judge, lambda t: reject.judge(0, t), candidates,
                  lambda part: [templates.judge_prompt(part[c.row], c.text, quality) for quality in asked
                                for c in reject.pending(part) if not reject.problem(part, c)],
                  (1, judge.first_tokens(["Yes", "No"])))}
    ratios = {}
    for name, (engine, stage_pass, items, requests, (max_tokens, answers)) in cases.items():
        # the calls the runner makes: run.batch_shards shards at a time (both passes are one to one)
        parts = [sum(group, []) for group in batched([items[i:i + shard] for i in range(0, n, shard)],
                                                     config.run.batch_shards)]
        same, whole = f"{name} efficiency vs raw vLLM", f"{name} efficiency vs raw vLLM given all requests at once"
        ratios[same], ratios[whole] = [], []
        stage_pass(pa.Table.from_pylist(parts[0]))          # warm up: the first call of a kind is slower
        for _ in range(times):
            pool.reset_prefix_caches()
            before = engine.stats()
            tokens_before = before.prompt_tokens + before.generated_tokens
            began = time.perf_counter()
            for part in parts:
                stage_pass(pa.Table.from_pylist(part))
            stage_seconds = time.perf_counter() - began
            after = engine.stats()
            tokens = after.prompt_tokens + after.generated_tokens - tokens_before
            pool.reset_prefix_caches()
            began = time.perf_counter()
            for part in parts:
                texts = [engine.render(r) for r in requests(part)]
                if texts:
                    engine.generate_raw(texts, max_tokens, answers)
            raw_seconds = time.perf_counter() - began
            pool.reset_prefix_caches()
            began = time.perf_counter()
            texts = [engine.render(r) for part in parts for r in requests(part)]
            if texts:                  # the limit: every request of the pass in one call, nothing drains
                engine.generate_raw(texts, max_tokens, answers)
            whole_seconds = time.perf_counter() - began
            if tokens:
                ratios[same].append(raw_seconds / stage_seconds)    # same tokens: speed over raw's
                ratios[whole].append(whole_seconds / stage_seconds)
    return {name: values for name, values in ratios.items() if values}


def _rows(stages: Path, stage: str) -> list[dict]:
    """What a stage of a finished run wrote, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = next(stages.glob(f"*_{stage}"))
    shards = json.loads((folder / "manifest.json").read_text())["passes"][-1]["shards"]
    return pa.concat_tables([pq.read_table(folder / s["file"])
                             for s in sorted(shards, key=lambda s: s["index"])]).to_pylist()
