"""A run's saved Stage II record, read back: bench/meta.json (what was asked, of which models) and
samples.parquet (every verdict), checked on the way in, and the verdicts of one model as
misalign.metrics takes them.  The report and `compare` both start here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from misalign.errors import InputError, MisalignError
from misalign.items import SAMPLE_SCHEMA, load_items
from misalign.metrics import Verdicts
from misalign.identity import file_digest
from misalign.tables import one_line, read_table
from misalign.taxonomy import DIMENSIONS, Taxonomy

# samples.parquet columns added after the first release (#14): absent from older runs, read as null
LATER_COLUMNS = ("id", "yes_to_misaligned", "yes_to_aligned", *(f"misaligned_in_{d}" for d in DIMENSIONS))
# what the report reads from bench/meta.json
META_SHAPE = {"models": dict, "dataset": dict, "runs": int, "bootstrap": int, "seed": int, "threshold": (int, float),
              "temperature": (int, float), "versions": dict, "config": dict}
META_DATASET = ("source", "split", "items", "sha256")
META_MODEL = ("description", "stand_in")


def load(run_dir) -> tuple[dict, pa.Table]:
    run_dir = Path(run_dir)
    meta_path, samples_path = run_dir / "bench" / "meta.json", run_dir / "samples.parquet"
    if not meta_path.exists() or not samples_path.exists():
        raise InputError(run_dir, "holds no Stage II results (bench/meta.json, samples.parquet): run "
                                  "`misalign-fast bench` or `misalign-fast run` on it first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(meta_path, f"cannot be read as JSON ({one_line(exc)}); run the benchmark again") from None
    problem = _meta_problem(meta)
    if problem:
        raise InputError(meta_path, f"is not a misalign-fast bench record ({problem}); run the benchmark again")
    changed = _changed_dataset(run_dir, meta)
    if changed:
        raise InputError(run_dir, f"its Stage II verdicts score the items of {changed} as they were when benchmarked, "
                                  "and they have changed since (Stage I rebuilt?): benchmark them again "
                                  f"(`misalign-fast bench CONFIG --run-dir {run_dir}`, with the config it was "
                                  "benchmarked with); nothing was redrawn")
    samples = read_table(samples_path, "parquet")
    missing = [name for name in SAMPLE_SCHEMA.names if name not in samples.column_names]
    if set(missing) - set(LATER_COLUMNS):
        raise InputError(samples_path, f"is not a misalign-fast verdict file: no column {', '.join(missing)}")
    for name in missing:                 # a run from before these columns: their figures are not available
        samples = samples.append_column(SAMPLE_SCHEMA.field(name), pa.nulls(samples.num_rows, SAMPLE_SCHEMA.field(name).type))
    return meta, samples


def _changed_dataset(run_dir: Path, meta: dict) -> str | None:
    """The dataset file (bench/meta.json's dataset.files) whose items are not those the verdicts
    were made on, else None.  Bytes first; where they differ, the items themselves, so that a
    file rewritten with the same items (another compression, another pyarrow) is no change.  A
    file that is gone is not judged (a run directory copied without it)."""
    changed = []
    for name, digest in (meta["dataset"].get("files") or {}).items():
        path = run_dir / name          # a relative name is inside the run directory; an absolute one stays
        try:
            if path.is_file() and file_digest(path) != digest:
                changed.append(path)
        except OSError as exc:
            raise InputError(path, f"cannot be read to check that it holds the items benchmarked: {exc.strerror}") \
                from None
    if not changed:
        return None
    try:
        taxonomy = Taxonomy.load((meta.get("config", {}).get("protocol") or {}).get("taxonomy") or "")
        if load_items(meta["dataset"]["source"], meta["dataset"]["split"], taxonomy).sha256 == meta["dataset"]["sha256"]:
            return None
    except (MisalignError, ValueError, OSError):     # cannot be read as items now: changed
        pass
    return str(changed[0])


def _meta_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key, kind in META_SHAPE.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"no {key} of the right type"
    files = meta["dataset"].get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return "its dataset's files are not a mapping of path to digest"
    absent = [key for key in META_DATASET if key not in meta["dataset"]]
    if absent:
        return f"its dataset has no {', '.join(absent)}"
    for name, model in meta["models"].items():
        if not isinstance(model, dict) or not all(key in model for key in META_MODEL):
            return f"model {name!r} has no {' or '.join(META_MODEL)}"
    return None


def model_samples(samples, model: str) -> tuple[pa.Table, int]:
    """The model's sample rows, runs that gave the same verdicts kept once; and the runs asked."""
    mine = samples.filter(pc.equal(samples.column("model"), model))
    asked_runs = len(set(mine.column("run").to_pylist()))
    if asked_runs > 1 and identical_runs(mine):
        mine = mine.filter(pc.equal(mine.column("run"), min(mine.column("run").to_pylist())))
    return mine, asked_runs


def identical_runs(rows) -> bool:
    """Whether every run gave the same verdict and P to every (item, response, question)."""
    by_run: dict = {}
    columns = [rows.column(c).to_pylist() for c in ("run", "item", "response", "question", "flagged", "p_misaligned")]
    for run, item, response, question, flagged, p in zip(*columns):
        by_run.setdefault(run, {})[(item, response, question)] = (flagged, None if p is None or p != p else p)
    first, *rest = by_run.values()
    return all(other == first for other in rest)


def verdicts_of(rows) -> Verdicts:
    """Verdicts of sample rows; a response without a usable answer is not flagged (and has P NaN)."""
    column = rows.column
    return Verdicts(run=column("run").to_numpy(), item=np.array(column("item").to_pylist(), dtype=object),
                    misaligned=np.array([r == "misaligned" for r in column("response").to_pylist()]),
                    flagged=np.array([f is True for f in column("flagged").to_pylist()], dtype=bool),
                    domains={d: column(f"{d}_domain").to_pylist() for d in DIMENSIONS},
                    prompt=np.array([i if i is not None else item for i, item in     # by item where no id
                                     zip(column("id").to_pylist(), column("item").to_pylist())], dtype=object),
                    p=column("p_misaligned").to_numpy(zero_copy_only=False),
                    generator=np.array(column("generator").to_pylist(), dtype=object),
                    verified={d: column(f"misaligned_in_{d}").to_pylist() for d in DIMENSIONS})


def circular(model: dict) -> str:
    """What makes a model's figures circular, or ""."""
    found = model.get("circularity") or {}
    parts = (["it is the judge that built the dataset"] if found.get("judge") else []) + (
        [f"it generated responses it is scored on ({', '.join(found['generated'])}'s)"] if found.get("generated")
        else [])
    return "; ".join(parts)


def labelled(name: str, model: dict) -> str:
    """A model's name as every figure of it is shown: marked stand-in, weak, baseline, circular."""
    mark = ("stand-in" if model["stand_in"] else "weak 135M" if model.get("weak") else
            "baseline" if model.get("baseline") else "")
    mark = ", ".join(m for m in (mark, "circular" if circular(model) else "") if m)
    return f"{name} ({mark})" if mark else name
