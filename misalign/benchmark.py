"""Stage II end to end: load the items, run every model under test, write the verdicts.

    run_dir/
      samples.parquet          every verdict: model, run, item, response, question, P, flagged (and
                               the length-only shortcut baseline's, beside the models under test)
      bench/meta.json          what produced them: items (source, split, sha256), models, settings
      bench/rejected_items.jsonl   input rows set aside, with their location and reason
      bench/stages/bench-MODEL/ checkpoints (shards + manifest), for resume

`misalign.report` turns these into results.json, tables and plots.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from misalign import config as config_mod
from misalign import savacu
from misalign.config import LENGTH_BASELINE, SPLITS, Config, redact_url
from misalign.errors import ConfigError
from misalign.identity import file_digest
from misalign.inference.base import EMBEDDER, Pool
from misalign.tables import atomic_path
from misalign.pipeline import Runner
from misalign.preflight import check_bench, rejected_items_path
from misalign.provenance import versions
from misalign.items import SAMPLE_SCHEMA, Items, load_items
from misalign.stages.bench import DetectStage, LengthBaseline, ProbeStage, questions


def probe_training(config: Config, name: str, source, tested: Items) -> tuple[Items, dict]:
    """The probe's training items and what meta.json records of them: its own path, else the
    train split of the benchmarked dataset (for one Parquet file of a Stage I dataset, the
    train.parquet beside it; check_bench has refused a SaVaCu CSV, which has none).  Training
    items whose prompt is also a benchmarked one are refused (a ConfigError before any engine)
    or, with bench.probe_overlap = "drop", left out and counted."""
    where = Path(config.model(name).path or source)
    if not config.model(name).path and where.is_file():
        where = where.with_name("train.parquet")
        if not where.is_file():
            raise ConfigError(f"probe {name!r} has no training data beside {source} (no {where.name} there): set "
                              f"[models.{name}] path to a dataset disjoint from the benchmarked items")
    train = load_items(where, "train")
    seen = {normalised(p) for p in tested.table.column("prompt").to_pylist()}
    overlap = [normalised(p) in seen for p in train.table.column("prompt").to_pylist()]
    if any(overlap) and config.bench.probe_overlap != "drop":
        raise ConfigError(f"probe {name!r} would be scored on items it is trained on: {sum(overlap):,} of the "
                          f"{train.table.num_rows:,} training items in {train.source} have a benchmarked prompt; "
                          f"train it on other data ([models.{name}] path), or set bench.probe_overlap = \"drop\" to "
                          "leave those out of its training")
    if any(overlap):
        train = Items(train.table.filter(pa.array([not o for o in overlap])), train.source, train.problems, train.notes,
                      train.files)
    return train, {"source": train.source, "items": train.table.num_rows, "sha256": train.sha256,
                   "dropped_overlap": sum(overlap)}


def split_of(source: str, split: str) -> str:
    """Which split the items are: all rows of a SaVaCu CSV, the split a single Stage I file is
    named after (its whole content: bench.split does not apply), else bench.split."""
    path = Path(source)
    if savacu.is_savacu(path):
        return "all"
    if path.is_file():
        return path.stem if path.stem in SPLITS else f"the whole file {path.name}"
    return split


def normalised(prompt: str) -> str:
    """A prompt as the overlap check compares it: case and runs of white space folded.  (Ids are
    not compared: generated ids, p000001..., repeat across datasets built from other files.)"""
    return " ".join(prompt.casefold().split())


def bench_passes(config: Config) -> list[tuple[str, str, str | None]]:
    """(stage, pass, model) for Stage II's passes, one per model under test (a probe uses the
    embedder), for the memory plan."""
    return [*((f"bench-{name}", f"bench-{name}", EMBEDDER if config.model(name).kind == "probe" else name)
              for name in config.bench.models), (LengthBaseline.name, LengthBaseline.name, None)]


def identity(models: dict, name: str) -> str:
    """What a model is, across configs: its path, else its server URL, else its name."""
    model = models.get(name) or {}
    return model.get("path") or model.get("base_url") or name


def dataset_files(files: list[Path], run_dir: Path) -> dict[str, str]:
    """sha256 of each file the items were read from, by path (relative to the run directory where
    inside it, so that a run directory moved whole still checks): a report refuses to redraw
    verdicts whose dataset has been rebuilt since (misalign.bench_record.load)."""
    root = run_dir.resolve()

    def named(path: Path) -> str:
        resolved = Path(path).resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
    return {named(f): file_digest(f) for f in files}


def dataset_makers(config: Config) -> dict | None:
    """The judge and generators that made the benchmarked Stage I dataset, by identity, from
    the config.resolved.toml of the run that built it (the run directory holding the dataset,
    whether given as the run, its dataset/ or one Parquet file); this config's own for a run
    whose dataset is not built yet; None where nothing says (a SaVaCu CSV: only its generator
    column is known)."""
    where = Path(config.bench.dataset or config.run.dir)
    run_dir = where.parent if where.is_file() else where
    run_dir = run_dir.parent if run_dir.name == "dataset" else run_dir
    resolved = run_dir / "config.resolved.toml"
    if resolved.is_file():
        try:
            made_by = tomllib.loads(resolved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
    elif not config.bench.dataset:
        made_by = tomllib.loads(config_mod.to_toml(config))
    else:
        return None
    models = made_by.get("models", {})
    judge = made_by.get("reject", {}).get("judge")
    return {"judge": identity(models, judge) if judge else None,
            "generators": {name: identity(models, name) for name in made_by.get("respond", {}).get("models", [])}}


def circularity(config: Config, name: str, makers: dict | None, generators: list[str] | None = None) -> dict:
    """Whether a model under test judged the dataset or generated responses it is scored on
    (among `generators`, the items' generator names; None: all the makers'); then its figures
    are biased by construction: the judge kept the pairs it agrees with."""
    me = identity(tomllib.loads(config_mod.to_toml(config)).get("models", {}), name)
    if makers is None:              # known only by name: the generator column
        return {"judge": None, "generated": [g for g in generators or [] if g == name]}
    return {"judge": makers["judge"] == me,
            "generated": sorted(g for g, who in makers["generators"].items()
                                if who == me and (generators is None or g in generators))}


def circularity_warnings(config: Config, generators: list[str] | None = None, makers: dict | None = None
                         ) -> list[str]:
    """One line per model under test that judged or generated the dataset it is scored on
    (`makers`: dataset_makers(config), when the caller has read them already)."""
    makers, notes = makers or dataset_makers(config), []
    for name in config.bench.models:
        found = circularity(config, name, makers, generators)
        roles = (["the judge"] if found["judge"] else []) + (["a generator"] if found["generated"] else [])
        if roles:
            notes.append(f"{name} is {' and '.join(roles)} of the dataset it is scored on: the paper keeps the models "
                         "that make the dataset apart from those it evaluates; its Stage II figures here are biased by "
                         "construction (the judge kept the pairs it agrees with)")
    return notes


def benchmark(config: Config, pool: Pool, on_progress=None, executor=None, schedule: dict | None = None,
              fresh: bool = False, on_decisions=None) -> dict:
    """Run Stage II with the pool's engines (or on `executor`'s workers, see
    misalign.distributed); return the meta record (also bench/meta.json).  `schedule`: the
    memory plan the run follows, recorded there."""
    check_bench(config)
    bench = config.bench
    run_dir = Path(config.run.dir)
    source = bench.dataset or run_dir
    items = load_items(source, bench.split, config.protocol.read_taxonomy())
    read_files = dataset_files(items.files, run_dir)      # as the items were read, not as they are after the bench
    templates = config.protocol.read_templates()
    items.require_some(bench.split, rejected_items_path(config))
    bench_dir = run_dir / "bench"

    training = {name: probe_training(config, name, source, items) for name in bench.models
                if config.model(name).kind == "probe"}        # refused here, before any Stage II engine
    stages = [ProbeStage(bench, pool, name, training[name][0], seed=config.run.seed) if name in training
              else DetectStage(bench, pool, name, seed=config.run.seed, prompt_templates=templates)
              for name in bench.models]
    items.write_problems(rejected_items_path(config))
    stages.append(LengthBaseline(bench, seed=config.run.seed))
    runner = Runner(bench_dir, config.run.shard_rows, on_progress, executor, on_pass=pool.at_pass,
                    batch_shards=config.run.batch_shards,
                    identify=pool.identity, fresh=fresh, on_decisions=on_decisions)
    with atomic_path(run_dir / "samples.parquet") as tmp, pq.ParquetWriter(tmp, SAMPLE_SCHEMA) as samples:
        for verdicts in runner.run_each(stages, items.table):      # one model's at a time
            samples.write_table(verdicts)

    makers, generators = dataset_makers(config), sorted(set(items.table.column("generator").to_pylist()))
    meta = {"dataset": {"source": items.source, "split": split_of(items.source, bench.split),
                        "items": items.table.num_rows, "sha256": items.sha256, "set_aside": len(items.problems),
                        "notes": items.notes, "files": read_files},
            "models": {name: {"description": pool.describe(name), "kind": config.models[name].kind,
                              "path": config.models[name].path, "base_url": redact_url(config.models[name].base_url),
                              "stand_in": pool.is_stand_in(name), "weak": pool.is_bundled(name),
                              "circularity": circularity(config, name, makers, generators),
                              **({"training": training[name][1]} if name in training else {})}
                       for name in bench.models},
            "role_warnings": circularity_warnings(config, generators, makers),
            "runs": bench.runs, "threshold": bench.threshold, "temperature": bench.temperature,
            "questions": questions(bench.per_dimension), "seed": config.run.seed, "bootstrap": bench.bootstrap,
            "config": tomllib.loads(config_mod.to_toml(config)), "versions": versions(),
            "checkpoints": runner.checkpoints(), "profile": [p.as_dict() for p in runner.profiles],
            "schedule": schedule, "protocol": config.protocol.record(),
            "balanced": bench.balanced}
    meta["models"][LENGTH_BASELINE] = {
        "description": "shortcut baseline: logistic regression on response length and its ratio to the prompt's, "
                       "2-fold cross-fit over prompts", "kind": "baseline", "path": "", "base_url": "",
        "stand_in": False, "weak": False, "baseline": True, "circularity": {"judge": False, "generated": []}}
    with atomic_path(bench_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return meta
