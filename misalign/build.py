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
from collections import Counter
from importlib import resources
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from misalign import config as config_mod
from misalign.config import Config
from misalign.inference.pool import EnginePool
from misalign.io import atomic_path
from misalign.pipeline import Runner
from misalign.preflight import check_models
from misalign.provenance import versions
from misalign.stages.classify import UNKNOWN, ClassifyStage
from misalign.stages.common import row_domains
from misalign.stages.dedup import DedupStage
from misalign.stages.expand import ExpandStage
from misalign.stages.ingest import read_prompts, write_rejected
from misalign.stages.reject import RejectStage
from misalign.stages.respond import RespondStage
from misalign.stages.split import SPLITS, SplitStage
from misalign.taxonomy import DIMENSIONS, Taxonomy

DATASET_COLUMNS = ["id", "prompt", "origin", "safety_domain", "safety_prob", "value_domain", "value_prob",
                   "cultural_domain", "cultural_prob", "aligned_response", "misaligned_response", "generator",
                   "judge_aligned_prob", "judge_misaligned_prob", "resample_round", "cluster", "split"]
STATS_COLUMNS = ["dimension", "domain", "classified", "unknown", "expanded", "expansion_near_duplicates",
                 "expansion_unusable", "removed_by_dedup", "sent_to_generation", "aligned_filtered",
                 "misaligned_filtered", "truncated", "resampled", "recovered_by_resampling", "final_pairs"]


def build(config: Config, pool: EnginePool, on_progress=None, executor=None) -> dict:
    """Run Stage I with the pool's engines (row-wise stages on `executor`'s workers if given,
    see misalign.distributed); return a summary (counts, paths, per-stage profile, per-domain
    stats)."""
    check_models(config)
    source = config.input.path or str(resources.files("misalign").joinpath("data/sample_prompts.jsonl"))
    table, rejected = read_prompts(source, config.input.column, config.input.format or None,
                                   config.input.max_chars, config.run.limit)
    run_dir = Path(config.run.dir)          # written only once the input has been read
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "config.resolved.toml", config_mod.to_toml(config))
    write_rejected(rejected, run_dir / "rejected_inputs.jsonl")

    taxonomy = Taxonomy.load()
    runner = Runner(run_dir, config.run.shard_rows, on_progress, executor)
    classify = ClassifyStage(config.classify, pool, taxonomy)
    stages = [
        classify,
        ExpandStage(config.expand, pool, taxonomy, config.dedup.tau, config.dedup.ngram, seed=config.run.seed),
        ClassifyStage(config.classify, pool, taxonomy, expanded=True),
        DedupStage(config.dedup.tau, config.dedup.ngram, seed=config.run.seed),
        RespondStage(config.respond, pool, seed=config.run.seed),
        RejectStage(config.reject, config.respond, pool, seed=config.run.seed),
        SplitStage((config.split.train, config.split.validation, config.split.test), config.run.seed,
                   config.dedup.tau, config.dedup.ngram),
    ]
    final = runner.run(stages, table)
    models = {"classifier": classify.method, **{name: pool.describe(name) for name in config.stage1_models()}}

    dataset_dir = run_dir / "dataset"
    dataset_dir.mkdir(exist_ok=True)
    columns = [c for c in DATASET_COLUMNS if c in final.column_names]
    sizes = {}
    for split in SPLITS:
        part = final.filter(pc.equal(final.column("split"), split)).select(columns)
        sizes[split] = part.num_rows
        with atomic_path(dataset_dir / f"{split}.parquet") as tmp:
            pq.write_table(part, tmp)
    counters = {p.stage: p.counters for p in runner.profiles}
    stats = domain_stats(runner.outputs, counters, taxonomy)
    with atomic_path(run_dir / "stats.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STATS_COLUMNS)
        writer.writeheader()
        writer.writerows(stats)
    profile = [p.as_dict() for p in runner.profiles]
    _write_text(run_dir / "profile.json", json.dumps(profile, indent=1))
    cross = counters["split"].get("cross_split_rows", 0) / final.num_rows if final.num_rows else 0.0
    expansion = Counter()
    for key, n in counters["expand"].items():
        if key.startswith("expand_"):
            expansion[key.partition("/")[0].removeprefix("expand_")] += n
    summary = {"run_dir": str(run_dir), "input": source, "input_rows": table.num_rows + len(rejected),
               "rejected_inputs": len(rejected), "pairs": final.num_rows, "splits": sizes,
               "dropped_pairs": int(runner.outputs["reject"].num_rows - final.num_rows),
               "cross_split_near_duplicate_rate": cross, "expansion": dict(expansion),
               **resampling(runner.outputs["reject"]),
               "models": models, "role_warnings": config.role_warnings(), "seed": config.run.seed,
               "versions": versions(), "profile": profile, "stats": stats}
    _write_text(run_dir / "run.json", json.dumps({k: v for k, v in summary.items() if k != "stats"}, indent=1))
    _write_text(run_dir / "README.md", dataset_card(summary))
    return summary


def resampling(rejected) -> dict:
    """Pairs that needed resampling, those it recovered, and candidates cut off by the token limit."""
    rows = rejected.select(["resampled", "resample_round", "accepted", "truncated"]).to_pylist()
    return {"resampled_pairs": sum(r["resampled"] for r in rows),
            "recovered_pairs": sum(r["accepted"] and r["resample_round"] > 0 for r in rows),
            "truncated_candidates": sum(r["truncated"] for r in rows)}


def domain_stats(outputs: dict, counters: dict, taxonomy: Taxonomy) -> list[dict]:
    """Per domain, the paper's table: classified (and Unknown, where the LLM classifier gave no
    usable answer), expanded (and the candidates the online SimHash check removed or that held
    no usable prompt), removed by dedup, sent to generation, candidates filtered (aligned /
    misaligned; of which cut off by the token limit), pairs that needed resampling and those it
    recovered, final pairs."""
    counts = {key: Counter() for key in STATS_COLUMNS[2:]}
    for row in outputs["classify"].to_pylist():
        counts["classified"].update(row_domains(row))
    for dim in DIMENSIONS:                       # Unknown has no domain: counted on the dimension
        counts["unknown"][(dim, UNKNOWN)] = counters["classify"].get(f"unknown_{dim}", 0)
    by_code = {d.code: (d.dimension, d.name) for d in taxonomy.domains}
    for key, n in counters["expand"].items():
        outcome, _, code = key.partition("/")
        if outcome == "expand_near_duplicate":
            counts["expansion_near_duplicates"][by_code[code]] += n
        elif outcome in ("expand_refused", "expand_no_prompt", "expand_empty", "expand_cut_off"):
            counts["expansion_unusable"][by_code[code]] += n
    kept_ids = set(outputs["dedup"].column("id").to_pylist())
    for row in outputs["classify-expanded"].to_pylist():
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
            counts["truncated"][key] += row["truncated"]
            counts["resampled"][key] += row["resampled"]
            if row["accepted"]:
                counts["final_pairs"][key] += 1
                counts["recovered_by_resampling"][key] += row["resample_round"] > 0
    places = [(d.dimension, d.name) for d in taxonomy.domains] + [(dim, UNKNOWN) for dim in DIMENSIONS]
    return [{"dimension": dim, "domain": name, **{key: int(counts[key][(dim, name)]) for key in counts}}
            for dim, name in places]


def dataset_card(summary: dict) -> str:
    models = "\n".join(f"- {role}: {name}" for role, name in summary["models"].items())
    splits = ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items())
    stand_in = any("stand-in" in m for m in summary["models"].values())
    warning = ("\n**Stand-in models.** Responses and judge verdicts come from a random-weight stand-in model: "
               "they are noise and exist to exercise the pipeline, not to measure anything.\n") if stand_in else ""
    if any("weak 135M model" in m for m in summary["models"].values()):
        warning += ("\n**A weak model.** Expansions, responses and judge verdicts come from SmolLM2-135M-Instruct "
                    "(dequantized from 4 bits): real text, but far below the paper's models.\n")
    warning += "".join(f"\n**Roles.** {note}.\n" for note in summary["role_warnings"])
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
