"""Models side by side, with paired statistics: `misalign-fast compare RUN_DIR...`.

The models under test of one run, or of several runs benchmarked on the same items (matched by
item and response; runs whose items differ are refused).  For each model: Coverage, FFR,
Alignment Score and AUROC on the joint question, over every response, each dimension and each
`n_dimensions` group, with 95% intervals from a bootstrap over prompts.  For each pair of models
(A, B): the difference A - B of the figures (means over each model's runs) and its 95% interval
from a *paired* bootstrap: both models' figures are computed on the same resamples of prompts,
since both answered the same items, so what the two share cancels and the interval is that of
the difference itself.  A difference whose interval holds 0 is not significant.  No correction
for the number of comparisons is made: with many pairs and groups, some intervals miss 0 by
chance (about 1 in 20 where there is no difference).

A figure carried by fewer than `min_count` responses is "too few", as in the report; so is a
difference where either side is.  Every model keeps its marks (stand-in, weak, baseline,
circular) wherever it is named.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from misalign.bench_record import labelled, load, model_samples, verdicts_of
from misalign.config import ReportConfig
from misalign.errors import InputError
from misalign.metrics import Verdicts, counted, groups, percentile_interval, resampled, summarise
from misalign.tables import atomic_path
from misalign.taxonomy import DIMENSIONS

COMPARED = ("coverage", "ffr", "alignment_score", "auroc")
DIMENSION_GROUPS = ("joint", *DIMENSIONS)
GROUPS = (*DIMENSION_GROUPS, *(f"n_dimensions={k}" for k in range(1, len(DIMENSIONS) + 1)))


@dataclass
class Entrant:
    """One model of one run, on the joint question."""
    name: str           # as shown: the model's name, "RUN:model" where runs share a name
    run_dir: str
    model: str
    label: str          # the name with its marks (stand-in, weak, baseline, circular)
    verdicts: Verdicts
    runs: int           # distinct runs (identical runs count once)
    settings: dict      # what decided its run's verdicts besides the model (verdict_settings)


def entrants(run_dirs: list, models: list[str] | None = None, loaded: list[tuple] | None = None) -> list[Entrant]:
    """Every model under test of the runs (or those named in `models`), on the same items;
    `loaded`: each run's (meta, samples), where the caller has read them already."""
    found, keys = [], {}
    loaded = [(str(run_dir), *record) for run_dir, record in zip(run_dirs, loaded or map(load, run_dirs))]
    first_dir, first_meta, _ = loaded[0]
    for run_dir, meta, _ in loaded[1:]:       # the same ids on other content would pair unrelated items
        if meta["dataset"]["sha256"] != first_meta["dataset"]["sha256"]:
            raise InputError(run_dir, f"was benchmarked on other items than {first_dir} (dataset sha256 "
                                      f"{meta['dataset']['sha256'][:12]}… against {first_meta['dataset']['sha256'][:12]}…): "
                                      "compare runs of the same dataset and split")
    repeated = _repeated([m for _, meta, _ in loaded for m in meta["models"]])
    for run_dir, meta, samples in loaded:
        for model, record in meta["models"].items():
            name = f"{Path(run_dir).name}:{model}" if model in repeated else model
            if models and model not in models and name not in models:
                continue
            rows, _ = model_samples(samples, model)
            rows = rows.filter(pc.equal(rows.column("question"), "joint"))
            if not rows.num_rows:
                continue
            keys[name] = {(i, r) for i, r in zip(rows.column("item").to_pylist(), rows.column("response").to_pylist())}
            found.append(Entrant(name, run_dir, model, labelled(name, record), verdicts_of(rows),
                                 len(set(rows.column("run").to_pylist())), verdict_settings(meta)))
    if models:
        missing = [m for m in models if not any(m in (e.model, e.name) for e in found)]
        if missing:
            raise InputError(run_dirs[0], f"has no model {', '.join(map(repr, missing))} with joint verdicts "
                                          f"(models: {', '.join(e.name for e in found) or 'none'})")
    if len(found) < 2:
        raise InputError(run_dirs[0], f"holds {len(found)} model(s) with verdicts: a comparison needs two or more "
                                      "(name more runs, or bench more models)")
    first = found[0]
    for other in found[1:]:
        if keys[other.name] != keys[first.name]:
            only_a, only_b = len(keys[first.name] - keys[other.name]), len(keys[other.name] - keys[first.name])
            raise InputError(other.run_dir, f"model {other.name!r} was benchmarked on other items than "
                                            f"{first.name!r} ({only_a:,} responses only in {first.run_dir}, "
                                            f"{only_b:,} only in {other.run_dir}): compare runs of the same "
                                            "dataset and split")
    return found


# what decides a verdict besides the model: a difference here is not the models' alone
VERDICT_SETTINGS = ("verdict", "threshold", "temperature", "top_p", "max_tokens", "balanced", "no_opinion")


PROTOCOL_PARTS = {"replaced_templates": "the prompt templates", "taxonomy_sha256": "the taxonomy"}


def verdict_settings(meta: dict) -> dict:
    """A run's VERDICT_SETTINGS (as bench.NAME) and PROTOCOL_PARTS, from its bench/meta.json."""
    bench, protocol = meta.get("config", {}).get("bench", {}), meta.get("protocol", {})
    return {**{f"bench.{key}": bench.get(key) for key in VERDICT_SETTINGS},
            **{what: protocol.get(key) for key, what in PROTOCOL_PARTS.items()}}


def differing_settings(found: list[Entrant]) -> list[str]:
    """The settings that decide verdicts and differ between the runs of the models compared, one
    phrase each: "bench.threshold 0.9 (runs/a), 0.3 (runs/b)"; the prompt templates and the taxonomy by
    whether they are the same."""
    by_run = {e.run_dir: e.settings for e in found}
    phrases = []
    for name in found[0].settings:
        seen = {run: settings[name] for run, settings in by_run.items()}
        if len({json.dumps(v, sort_keys=True) for v in seen.values()}) > 1:
            phrases.append(f"{name} differ" if name in PROTOCOL_PARTS.values() else
                           f"{name} " + ", ".join(f"{v} ({run})" for run, v in seen.items()))
    return phrases


def _repeated(names: list[str]) -> set[str]:
    return {n for n in names if names.count(n) > 1}


def compare(found: list[Entrant], bootstrap: int = 1000, seed: int = 0, min_count: int = ReportConfig.min_count) -> dict:
    """Each model's figures per group, and every pair's paired difference (see the module's text)."""
    prompts = np.unique(np.concatenate([e.verdicts.prompt for e in found]).astype(str))
    draws = np.random.default_rng(seed).integers(0, len(prompts), size=(bootstrap, len(prompts))) \
        if bootstrap else None
    figures, samples = {}, {}
    for e in found:                 # each model's intervals from the same resamples as the differences
        summary = summarise(e.verdicts, bootstrap=0, min_count=min_count)
        index = np.searchsorted(prompts, e.verdicts.prompt.astype(str))
        samples[e.name] = {g: resampled(e.verdicts, counted(e.verdicts, group)[0], index, len(prompts), draws)
                           for g, group in groups(e.verdicts).items() if g in GROUPS} if draws is not None else {}
        figures[e.name] = {g: {fig: {"mean": summary[g][fig]["mean"], "carried_by": summary[g]["carried_by"][fig],
                                     "interval95": percentile_interval(samples[e.name][g][fig])
                                     if draws is not None and summary[g][fig]["mean"] is not None else None}
                               for fig in COMPARED} for g in GROUPS if g in summary}
    pairs = []
    for a, b in combinations(found, 2):
        for g in GROUPS:
            if g not in figures[a.name] or g not in figures[b.name]:
                continue
            for fig in COMPARED:
                fa, fb = figures[a.name][g][fig], figures[b.name][g][fig]
                carried = min(fa["carried_by"], fb["carried_by"])
                if fa["mean"] is None or fb["mean"] is None:
                    pairs.append({"a": a.name, "b": b.name, "group": g, "figure": fig, "difference": None,
                                  "interval95": None, "significant": None, "carried_by": carried})
                    continue
                bounds = None
                if draws is not None:
                    sa, sb = samples[a.name][g][fig], samples[b.name][g][fig]
                    bounds = percentile_interval(sa - sb) if sa is not None and sb is not None else None
                pairs.append({"a": a.name, "b": b.name, "group": g, "figure": fig,
                              "difference": fa["mean"] - fb["mean"], "interval95": bounds,
                              "significant": None if bounds is None else not (bounds[0] <= 0 <= bounds[1]),
                              "carried_by": carried})
    return {"models": [{"name": e.name, "label": e.label, "run_dir": e.run_dir, "model": e.model, "runs": e.runs,
                        "responses": int(len(np.unique(e.verdicts.item)))} for e in found],
            "bootstrap": bootstrap, "bootstrap_unit": "prompt", "paired": True, "seed": seed, "min_count": min_count,
            "settings_differ": differing_settings(found), "figures": figures, "pairs": pairs}


# ------------------------------------------------------------------------------------ files

def csv_text(result: dict) -> str:
    """One row per model figure and per pair difference (long format: a leaderboard's rows)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["kind", "a", "b", "group", "figure", "value", "low95", "high95", "significant", "carried_by"])
    for name, by_group in result["figures"].items():
        for group, figs in by_group.items():
            for fig, entry in figs.items():
                low, high = entry["interval95"] or (None, None)
                writer.writerow(["model", name, "", group, fig, _num(entry["mean"]), _num(low), _num(high), "",
                                 entry["carried_by"]])
    for p in result["pairs"]:
        low, high = p["interval95"] or (None, None)
        writer.writerow(["difference", p["a"], p["b"], p["group"], p["figure"], _num(p["difference"]), _num(low),
                         _num(high), "" if p["significant"] is None else str(p["significant"]).lower(),
                         p["carried_by"]])
    return out.getvalue()


def markdown_text(result: dict) -> str:
    """The leaderboard (joint figures) and every pair's joint differences, as Markdown tables."""
    labels = {m["name"]: m["label"] for m in result["models"]}
    lines = ["| model | " + " | ".join(TITLES[f] for f in COMPARED) + " | responses (misaligned/aligned) |",
             "|---|" + "---:|" * (len(COMPARED) + 1)]
    for name, by_group in result["figures"].items():
        joint = by_group["joint"]
        lines.append(f"| {labels[name]} | " + " | ".join(figure_text(joint[f]) for f in COMPARED) +
                     f" | {responses_text(joint)} |")
    lines += ["", "| A − B | group | " + " | ".join(TITLES[f] for f in COMPARED) + " | responses (misaligned/aligned) |",
              "|---|---|" + "---:|" * (len(COMPARED) + 1)]
    for (a, b, group), row in pair_rows(result).items():
        lines.append(f"| {labels[a]} − {labels[b]} | {group} | " + " | ".join(difference_text(row[f]) for f in COMPARED)
                     + f" | {responses_text(row)} |")
    lines += ["", f"Paired bootstrap over prompts ({result['bootstrap']:,} resamples, seed {result['seed']}); "
                  "\\* the 95% interval excludes 0 (significant).  Figures carried by fewer than "
                  f"{result['min_count']} responses: too few."]
    if result["settings_differ"]:
        lines += ["", f"The runs asked under other settings ({'; '.join(result['settings_differ'])}): a difference "
                      "between their models may be the settings', not the models'."]
    return "\n".join(lines) + "\n"


def write(result: dict, csv_path=None, json_path=None, markdown_path=None) -> None:
    for path, text in ((csv_path, csv_text), (json_path, lambda r: json.dumps(r, indent=1)),
                       (markdown_path, markdown_text)):
        if path:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(text(result), encoding="utf-8")


# ------------------------------------------------------------------------------- formatting

TITLES = {"coverage": "Coverage", "ffr": "FFR", "alignment_score": "AS", "auroc": "AUROC"}


def pair_rows(result: dict, groups_shown: tuple[str, ...] = GROUPS) -> dict:
    """(a, b, group) -> figure -> its pair entry, in the order of the pairs and GROUPS."""
    rows: dict = {}
    for p in result["pairs"]:
        if p["group"] in groups_shown:
            rows.setdefault((p["a"], p["b"], p["group"]), {})[p["figure"]] = p
    return rows


def responses_text(figures: dict) -> str:
    """The responses that carry Coverage (misaligned) and FFR (aligned): "40/40"."""
    return f"{figures['coverage']['carried_by']:,}/{figures['ffr']['carried_by']:,}"


def figure_text(entry: dict) -> str:
    """0.62 [0.55, 0.70]; too few (n) where a figure has too few responses; n/a where none."""
    if entry["mean"] is None:
        return f"too few ({entry['carried_by']})" if entry["carried_by"] else "n/a"
    bounds = entry["interval95"]
    return f"{entry['mean']:.2f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")


def difference_text(entry: dict) -> str:
    """+0.12 [0.05, 0.20]*: the difference, its interval, * where the interval excludes 0."""
    if entry["difference"] is None:
        return f"too few ({entry['carried_by']})" if entry["carried_by"] else "n/a"
    bounds = entry["interval95"]
    text = f"{entry['difference']:+.2f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")
    return text + ("*" if entry["significant"] else " " if entry["significant"] is False else "")


def _num(value) -> str:
    return "" if value is None else f"{value:.6g}"
