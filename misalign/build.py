"""Stage I end to end: read prompts, run the stages through the runner, write the run directory.

    run_dir/
      dataset/{train,validation,test}.parquet   the SaVaCu-style pairs
      stats.csv                                 per domain, in the paper's shape
      profile.json                              per stage: items, seconds, tokens, cache hits
      rejected_inputs.jsonl                     input rows set aside, with the reason
      config.resolved.toml, run.json            what produced it: config, versions, models, seeds
      README.md                                 the dataset card
      dataset.html, plots/funnel.png            the per-domain funnel, rejection reasons, profile
      leakage.csv                               prompts with a near-duplicate in another split
      stages/NN_name/                           checkpoints (shards + manifest), for resume
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from misalign import config as config_mod
from misalign.config import SPLITS, Config
from misalign.dataset_report import write_dataset_report
from misalign.inference.base import Pool
from misalign.leakage import CRITERION
from misalign.tables import atomic_path
from misalign.pipeline import Runner
from misalign.provenance import versions
from misalign.stages.base import Stage
from misalign.stages.ingest import Prompts, write_rejected
from misalign.stats import StageCounts
from misalign.taxonomy import DIMENSIONS, UNKNOWN, Taxonomy

DATASET_COLUMNS = ["id", "prompt", "origin", "safety_domain", "safety_prob", "value_domain", "value_prob",
                   "cultural_domain", "cultural_prob", "aligned_response", "misaligned_response", "generator",
                   "judge_aligned_prob", "judge_misaligned_prob", *(f"misaligned_in_{d}{part}" for d in DIMENSIONS
                                                                     for part in ("", "_prob")),
                   "resample_round", "cluster", "split", "leak_id", "leak_jaccard"]
STATS_COLUMNS = ["dimension", "domain", "classified", "unknown", "expanded", "expansion_near_duplicates",
                 "expansion_unusable", "removed_by_dedup", "sent_to_generation", "aligned_filtered",
                 "misaligned_filtered", "truncated", "resampled", "recovered_by_resampling", "final_pairs",
                 "verified_misaligned", "cross_split_leaks"]


def build(config: Config, pool: Pool, stages: list[Stage], inputs: Prompts, on_progress=None, executor=None,
          schedule: dict | None = None, fresh: bool = False, on_decisions=None) -> dict:
    """Run Stage I's `stages` (misalign.run.stage1_stages, or a list composed from it) on the
    run's input (misalign.stages.ingest.read_input) with the pool's engines (row-wise stages on `executor`'s workers if given, see misalign.distributed)
    and write the run directory; return a summary (counts, paths, per-stage profile, per-domain
    stats).  `schedule`: the memory plan the run follows, recorded in run.json.  Checkpoints
    are reused where their keys match (misalign.pipeline), none with `fresh`; `on_decisions`
    hears the stages' decisions before any stage runs."""
    table, rejected = inputs.table, inputs.rejected
    run_dir = Path(config.run.dir)          # written only once the input has been read
    run_dir.mkdir(parents=True, exist_ok=True)
    write_rejected(rejected, run_dir / "rejected_inputs.jsonl")

    taxonomy = config.protocol.read_taxonomy()
    runner = Runner(run_dir, config.run.shard_rows, on_progress, executor, on_pass=pool.at_pass,
                    batch_shards=config.run.batch_shards,
                    identify=pool.identity, fresh=fresh, on_decisions=on_decisions)
    final = runner.run(stages, table)
    sizes = write_dataset(final, run_dir / "dataset", dataset_columns(stages))
    # with the dataset, not before it: a run stopped midway leaves the configuration of what it holds
    _write_text(run_dir / "config.resolved.toml", config_mod.to_toml(config))
    counts = {p.stage: p.counts() for p in runner.profiles}
    stats = domain_stats(counts, taxonomy, stats_columns(stages))
    with atomic_path(run_dir / "stats.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=stats_columns(stages))
        writer.writeheader()
        writer.writerows(stats)
    profile = [p.as_dict() for p in runner.profiles]
    _write_text(run_dir / "profile.json", json.dumps(profile, indent=1))
    split, reject = counts.get("split", StageCounts()).totals, counts.get("reject", StageCounts())
    summary = {"run_dir": str(run_dir), "input": inputs.source, "input_rows": table.num_rows + len(rejected),
               "rejected_inputs": len(rejected), "pairs": final.num_rows, "splits": sizes,
               "dropped_pairs": reject.totals["pairs_dropped"],
               "cross_split_near_duplicate_rate": split.get("cross_split_leaks", 0) / split["pairs"]
               if split.get("pairs") else 0.0,
               "leakage": write_leaks(final, run_dir / "leakage.csv"),
               "rejection_reasons": reject.by_detail("rejected"),
               "expansion": expansion_outcomes(counts.get("expand", StageCounts())),
               **{key: reject.totals[key] for key in ("resampled_pairs", "recovered_pairs", "truncated_candidates")},
               "models": {**{"classifier": s.method for s in stages if s.name == "classify"},
                          **{name: pool.describe(name) for name in config.stage1_models()}},
               "dedup": {"features": config.dedup.features, "tau": config.dedup.tau},
               "protocol": config.protocol.record(),
               "role_warnings": config.role_warnings(), "seed": config.run.seed, "schedule": schedule,
               "versions": versions(), "checkpoints": runner.checkpoints(), "profile": profile, "stats": stats}
    _write_text(run_dir / "run.json", json.dumps({k: v for k, v in summary.items() if k != "stats"}, indent=1))
    _write_text(run_dir / "README.md", dataset_card(summary))
    write_dataset_report(run_dir)
    return summary


def dataset_columns(stages: list[Stage]) -> list[str]:
    """The dataset's columns: Stage I's own, then those any other stage declares it adds."""
    return [*DATASET_COLUMNS, *(c for s in stages for c in s.columns if c not in DATASET_COLUMNS)]


def stats_columns(stages: list[Stage]) -> list[str]:
    """stats.csv's columns: the paper's table, then the per-domain counts other stages declare."""
    return [*STATS_COLUMNS, *(c for s in stages for c in s.domain_counts if c not in STATS_COLUMNS)]


def write_dataset(final: pa.Table, dataset_dir: Path, columns: list[str] = DATASET_COLUMNS) -> dict[str, int]:
    """dataset/{train,validation,test}.parquet, with `columns` where the rows have them; the rows
    of each split."""
    dataset_dir.mkdir(exist_ok=True)
    columns = [c for c in columns if c in final.column_names]
    sizes = {}
    for split in SPLITS:
        part = final.filter(pc.equal(final.column("split"), split)).select(columns)
        sizes[split] = part.num_rows
        with atomic_path(dataset_dir / f"{split}.parquet") as tmp:
            pq.write_table(part, tmp)
    return sizes


def write_leaks(final: pa.Table, path: Path) -> dict:
    """leakage.csv: each row whose prompt has a near-duplicate in another split, beside it; the
    rate, the rows and the distinct prompt pairs, for run.json and the dataset card."""
    rows = final.select(["id", "split", "prompt", "leak_id", "leak_jaccard"]).to_pylist()
    by_id = {r["id"]: r for r in rows}
    leaks = [r for r in rows if r["leak_id"] is not None]
    pairs = {tuple(sorted((r["id"], r["leak_id"]))) for r in leaks}
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "split", "prompt", "neighbour_id", "neighbour_split", "neighbour_prompt", "jaccard"])
        for a, b in sorted(pairs):
            writer.writerow([a, by_id[a]["split"], by_id[a]["prompt"], b, by_id[b]["split"], by_id[b]["prompt"],
                             by_id[a]["leak_jaccard"] if by_id[a]["leak_id"] == b else by_id[b]["leak_jaccard"]])
    return {"rate": len(leaks) / len(rows) if rows else 0.0, "rows": len(leaks), "pairs": len(pairs),
            "criterion": CRITERION, "file": path.name}


def expansion_outcomes(expand: StageCounts) -> dict[str, int]:
    """Expansion's outcomes over all domains (ok, near_duplicate, refused, ...)."""
    totals = Counter()
    for (kind, _code), n in expand.reasons.items():
        totals[kind.removeprefix("expand_")] += n
    return dict(totals)


def domain_stats(counts: dict[str, StageCounts], taxonomy: Taxonomy, columns: list[str] = STATS_COLUMNS
                 ) -> list[dict]:
    """Per domain, the paper's table, from the stages' counters: classified (and Unknown, where
    the LLM classifier gave no usable answer), expanded (and the candidates the online SimHash
    check removed or that held no usable prompt), removed by dedup, sent to generation,
    candidates filtered (aligned / misaligned; of which cut off by the token limit), pairs that
    needed resampling and those it recovered, final pairs."""
    table = {key: Counter() for key in columns[2:]}
    for stage in counts.values():
        for (what, dim, name), n in stage.per_domain.items():
            if what in table:
                table[what][(dim, name)] += n
    classify = counts.get("classify", StageCounts())
    for dim in DIMENSIONS:                       # Unknown has no domain: counted on the dimension
        table["unknown"][(dim, UNKNOWN)] = classify.totals[f"unknown_{dim}"]
    by_code = {d.code: (d.dimension, d.name) for d in taxonomy.domains}
    for (outcome, code), n in counts.get("expand", StageCounts()).reasons.items():
        if outcome == "expand_near_duplicate":
            table["expansion_near_duplicates"][by_code[code]] += n
        elif outcome in ("expand_refused", "expand_no_prompt", "expand_empty", "expand_cut_off"):
            table["expansion_unusable"][by_code[code]] += n
    places = [(d.dimension, d.name) for d in taxonomy.domains] + [(dim, UNKNOWN) for dim in DIMENSIONS]
    return [{"dimension": dim, "domain": name, **{key: int(table[key][(dim, name)]) for key in table}}
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
    leaks = summary["leakage"]
    return f"""# SaVaCu-style dataset (misalign-fast Stage I)
{warning}
- input: {summary['input']} ({summary['input_rows']:,} rows, {summary['rejected_inputs']:,} set aside in rejected_inputs.jsonl)
- pairs: {summary['pairs']:,} ({splits}); {summary['dropped_pairs']:,} dropped after resampling
- near-duplicates across splits: {leaks['rate']:.2%} of rows ({leaks['rows']:,} rows, {leaks['pairs']:,} prompt
  pairs listed in `{leaks['file']}`), by {leaks['criterion']}
- near-duplicates within the pool: SimHash on {summary['dedup']['features']} shingles, Hamming distance <= {summary['dedup']['tau']}
  (one prompt kept per cluster; a cluster stays in one split)
- seed: {summary['seed']}

## Models
{models}

## Files
- `dataset/*.parquet`: id, prompt, origin, per-dimension domain and probability, aligned and misaligned
  response, generator, judge probabilities, whether the judge found the misaligned response misaligned in
  each dimension of the prompt (`misaligned_in_<dimension>`, its probability), resample round, cluster,
  split, the nearest prompt of another split (`leak_id`, `leak_jaccard`; null where none is near)
- `stats.csv`: per domain, classified / expanded / removed by dedup / sent to generation / candidates
  filtered / recovered by resampling / final pairs / misaligned responses verified in the domain's
  dimension / rows with a near-duplicate in another split
- `leakage.csv`: the cross-split near-duplicate pairs, with both prompts and their Jaccard
- `dataset.html`: the per-domain funnel, rejection reasons and per-stage profile, with a figure
- `profile.json`: per stage items, seconds, tokens, prefix-cache hit rate
- `config.resolved.toml`, `run.json`: the exact configuration, package versions and models
"""


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
