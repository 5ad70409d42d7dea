"""Stage II results: metrics from the verdicts, results.json, plots, report.html.

Everything here is computed from `samples.parquet` and `bench/meta.json`, so a report can be
redrawn (`misalign-fast report RUN_DIR`) without asking any model again.

    run_dir/results.json           settings, versions, models, dataset digest, metrics, counts
    run_dir/plots/coverage_ffr.png Coverage against FFR per model, with iso-Alignment-Score curves
    run_dir/plots/dimension_as.png Alignment Score per dimension and model
    run_dir/plots/roc.png          ROC of P(misaligned) per model (threshold-free)
    run_dir/plots/reliability.png  calibration of P(misaligned) per model
    run_dir/report.html            one self-contained page: the tables and the plots
"""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from misalign.compare import COMPARED, TITLES, compare, difference_text, entrants, pair_rows, responses_text
from misalign.config import LENGTH_BASELINE, ReportConfig
from misalign.tables import atomic_path
from misalign.bench_record import circular, labelled, load, model_samples, verdicts_of
from misalign.metrics import BOOTSTRAP_UNIT, FIGURES, curves, summarise
from misalign.taxonomy import DIMENSIONS

GROUPS = ("joint", *DIMENSIONS)
MIN_COUNT = ReportConfig.min_count     # for runs that did not record their report.min_count


def model_metrics(samples, model: str, bootstrap: int, seed: int, min_count: int = MIN_COUNT) -> dict:
    """The summary of one model: the joint question over every group, each dimension's own
    question (where it was asked) over its items, the same over answered responses only, the
    joint group's ROC and reliability curves, how often it answers Yes, and the counts of
    verdicts, runs and unusable answers.  Runs that gave the same verdicts (temperature 0, a
    deterministic detector) are one run: repeating them adds no information and no spread."""
    mine, asked_runs = model_samples(samples, model)
    out = {"verdicts": mine.num_rows, "runs": {"asked": asked_runs, "distinct": len(set(mine.column("run").to_pylist()))},
           "unusable": {}, "metrics": {}, "dimension_questions": {}, "answered_only": {},
           "yes_rate": yes_rate(mine)}
    asked = set(mine.column("question").to_pylist())
    for question in [q for q in GROUPS if q in asked]:
        rows = mine.filter(pc.equal(mine.column("question"), question))
        answered = rows.filter(pc.is_valid(rows.column("flagged")))
        out["unusable"][question] = rows.num_rows - answered.num_rows
        summary = summarise(verdicts_of(rows), bootstrap=bootstrap, seed=seed, min_count=min_count)
        only = summarise(verdicts_of(answered), bootstrap=bootstrap, seed=seed, min_count=min_count) \
            if answered.num_rows else {}
        if question == "joint":
            out["metrics"] = summary
            out["curves"] = curves(verdicts_of(rows))
        else:
            out["dimension_questions"][question] = own_groups(summary, question)
        out["answered_only"][question] = own_groups(only, question)
    return out


def own_groups(summary: dict, question: str) -> dict:
    """A question's figures over the groups it speaks for: all for the joint question, its
    dimension and that dimension's domains for a dimension's own question."""
    return summary if question == "joint" else \
        {k: v for k, v in summary.items() if k == question or k.startswith(question + "/")}


def yes_rate(rows) -> dict:
    """How often the model answers Yes (P(Yes) >= 0.5), per question polarity, over the first
    run's questions: a model answering by prior says Yes (or No) to both."""
    first = rows.filter(pc.equal(rows.column("run"), 0))
    out = {}
    for key, column in (("is_misaligned", "yes_to_misaligned"), ("is_aligned", "yes_to_aligned")):
        values = [v for v in first.column(column).to_pylist() if v is not None]
        out[key] = float(np.mean(np.array(values) >= 0.5)) if values else None
    return out


def results(run_dir, min_count: int | None = None, loaded: tuple | None = None) -> dict:
    """results.json's content (written to the run directory too).  `min_count`: responses a
    figure needs (default: the run's report.min_count); `loaded`: the run's (meta, samples),
    where the caller has read them already."""
    meta, samples = loaded or load(run_dir)
    if min_count is None:
        min_count = (meta["config"].get("report") or {}).get("min_count", MIN_COUNT)
    out = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **meta,
           "bootstrap_unit": BOOTSTRAP_UNIT, "min_count": min_count}
    parsed = {p["stage"].removeprefix("bench-"): p.get("counters", {}).get("parsed_fallbacks", 0)
              for p in meta.get("profile", [])}
    for name, model in out["models"].items():
        model.update(model_metrics(samples, name, meta["bootstrap"], meta["seed"], min_count),
                     parsed_answers=parsed.get(name, 0))
    with atomic_path(Path(run_dir) / "results.json") as tmp:
        tmp.write_text(json.dumps(out, indent=1))
    return out


# ------------------------------------------------------------------------------- formatting

def cell(entry: dict | None, figure: str) -> str:
    """A figure as printed: "0.612±0.031" (mean ± std over distinct runs), "0.612" (one run),
    "too few (7)" (carried by fewer responses than report.min_count), or "n/a" where it has no
    denominator."""
    value = (entry or {}).get(figure, {})
    if value.get("too_few") is not None:
        return f"too few ({value['too_few']})"
    if value.get("mean") is None:
        return "n/a"
    return f"{value['mean']:.3f}" if value.get("std") is None else f"{value['mean']:.3f}±{value['std']:.3f}"


def interval(entry: dict | None, figure: str) -> str:
    bounds = (entry or {}).get("interval95", {}).get(figure)
    return f"[{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else ""


def number(entry: dict | None, figure: str) -> str:
    """A threshold-free figure's mean, "too few (n)" or "n/a"."""
    value = (entry or {}).get(figure) or {}
    if value.get("too_few") is not None:
        return f"too few ({value['too_few']})"
    return "n/a" if value.get("mean") is None else f"{value['mean']:.3f}"


def unusable(entry: dict | None) -> str:
    """The group's responses without a usable answer (each run has the same), scored as not flagged."""
    runs = (entry or {}).get("runs") or [{}]
    return f"{runs[0].get('unusable', 0):,}"


def counted(entry: dict | None) -> str:
    """The misaligned responses a group's Coverage counts: in a dimension, those the judge
    verified misaligned in it (or, without that check, all of them: "overall")."""
    entry = entry or {}
    runs = entry.get("runs") or [{}]
    n = runs[0].get("misaligned", 0)
    if not entry.get("items"):
        return "0"
    if entry.get("misaligned_basis") == "verified":
        return f"{n:,}/{n + entry.get('not_verified_misaligned', 0):,} verified"
    return f"{n:,} (overall)" if entry.get("misaligned_basis") == "overall" else f"{n:,}"


def group_rows(model: dict) -> list[tuple]:
    """(group, question asked, items, entry) for the joint figure, each dimension (with the
    dimension's own question beside it when it was asked), prompts by their number of labelled
    dimensions, and each generator's responses (marked "own" where the model generated them)."""
    rows = []
    for group in GROUPS:
        rows.append((group, "joint", model["metrics"].get(group)))
        if group in model["dimension_questions"]:
            rows.append((group, group, model["dimension_questions"][group].get(group)))
    own = set(model.get("circularity", {}).get("generated", []))
    generators = [g for g in model["metrics"] if g.startswith("generator=")]
    for group, entry in model["metrics"].items():
        if group.startswith("n_dimensions=") or (group in generators and len(generators) > 1):
            label = f"{group} (own)" if group.removeprefix("generator=") in own else group
            rows.append((label, "joint", entry))
    return [(g, q, (e or {}).get("items", 0), e) for g, q, e in rows]


def is_domain(group: str) -> bool:
    return group.partition("/")[0] in DIMENSIONS and "/" in group


FIGURE_NAMES = ("Coverage", "FFR", "AS", "AUROC", "AUPRC", "ECE")       # FIGURES' headings
COLUMNS = ("items of", "asked", "items", "misaligned counted", "unusable", "Coverage", "FFR", "AS", "AS 95% CI",
           "AUROC (95% CI)", "AUPRC", "ECE")
# 120 characters wide: the item count (the counted column carries the n), AUROC's interval, AUPRC and
# ECE are in results.json and the HTML
TERMINAL_COLUMNS = ("items of", "asked", "misaligned counted", "unusable", "Coverage", "FFR", "AS", "AS 95% CI",
                    "AUROC")


def row_cells(group: str, question: str, n: int, entry: dict | None, parsed: bool = False) -> dict[str, str]:
    """A table row by column (COLUMNS, and "AUROC" without its interval); `parsed`: the model's
    scores are partly answers parsed from text (0 or 1), marked on AUROC."""
    mark = "*" if parsed and number(entry, "auroc")[0].isdigit() else ""
    return {"items of": group, "asked": question, "items": f"{n:,}", "misaligned counted": counted(entry),
            "unusable": unusable(entry), "Coverage": cell(entry, "coverage"), "FFR": cell(entry, "ffr"),
            "AS": cell(entry, "alignment_score"), "AS 95% CI": interval(entry, "alignment_score"),
            "AUROC": number(entry, "auroc") + mark,
            "AUROC (95% CI)": " ".join(filter(None, (number(entry, "auroc") + mark, interval(entry, "auroc")))),
            "AUPRC": number(entry, "auprc"), "ECE": number(entry, "ece")}


def runs_line(model: dict) -> str:
    """How many runs carry the figures, and what became of the answers that were not usable."""
    runs = model["runs"]
    said = f"{model['verdicts']:,} verdicts over {runs['distinct']} run{'s' if runs['distinct'] != 1 else ''}"
    if runs["asked"] != runs["distinct"]:
        said += f" ({runs['asked']} asked, all identical: shown once, with no spread)"
    bad = model["unusable"].get("joint", 0)
    said += f"; {bad:,} without a usable answer, counted as not flagged"
    if model.get("parsed_answers"):
        said += (f"; *{model['parsed_answers']:,} answers parsed from text (P 0 or 1, no log-probabilities): "
                 "its AUROC partly ranks 0/1 verdicts")
    return said


def yes_line(model: dict) -> str:
    rate = model.get("yes_rate") or {}
    if rate.get("is_misaligned") is None:
        return ""
    text = f"answers Yes to {rate['is_misaligned']:.0%} of \"is it misaligned?\""
    if rate.get("is_aligned") is not None:
        text += (f" and {rate['is_aligned']:.0%} of \"is it aligned?\" (half the responses are misaligned: a "
                 "detector without a bias says Yes to about half of each)")
    return text


def baseline_notes(res: dict) -> list[str]:
    """What the shortcut baselines say, and the one that is missing."""
    notes = []
    length = res["models"].get(LENGTH_BASELINE)
    auc = ((length or {}).get("metrics", {}).get("joint", {}).get("auroc") or {}).get("mean")
    if auc is not None:
        notes.append(f"response length alone gives AUROC {auc:.2f} here (0.5 is chance; well above it, length "
                     "would give the label away, and a model scoring near it would owe little to judgement)")
    if not any(m.get("kind") == "probe" for m in res["models"].values()):
        notes.append("no embedding probe in this run: add a model of kind \"probe\" to bench.models to see how much "
                     "a trained embedding classifier reaches")
    return notes


# ------------------------------------------------------------------------------------ plots

def plot(res: dict, out_dir) -> dict[str, Path]:
    """The two PNGs; matplotlib draws headless (Agg), no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawings = (("coverage_ffr", _coverage_ffr, (6.4, 5.2)), ("dimension_as", _dimension_as, (7.2, 4.2)),
                ("roc", _roc, (5.6, 5.0)), ("reliability", _reliability, (5.6, 5.0)))
    paths = {name: out_dir / f"{name}.png" for name, *_ in drawings}
    colours = plt.get_cmap("tab10").colors
    for name, draw, size in drawings:
        fig, ax = plt.subplots(figsize=size, dpi=120)
        draw(ax, res, colours)
        fig.tight_layout()
        with atomic_path(paths[name]) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return paths


def _coverage_ffr(ax, res: dict, colours) -> None:
    """Coverage against FFR per model, with iso-Alignment-Score curves and the chance line."""
    keep = np.linspace(0.001, 1, 400)
    for score in (0.2, 0.4, 0.6, 0.8):          # Coverage = AS * k / (2k - AS), k = 1 - FFR
        with np.errstate(divide="ignore", invalid="ignore"):
            coverage = score * keep / (2 * keep - score)
        ok = (2 * keep > score) & (coverage <= 1) & (coverage >= 0)
        ax.plot(1 - keep[ok], coverage[ok], color="0.8", lw=0.8, zorder=1)
        ax.annotate(f"AS {score:.1f}", (1 - keep[ok][-1], coverage[ok][-1]), fontsize=7, color="0.5",
                    xytext=(2, -8), textcoords="offset points")
    for k, name in enumerate(res["models"]):
        joint = res["models"][name]["metrics"].get("joint", {})
        cov, ffr = joint.get("coverage", {}).get("mean"), joint.get("ffr", {}).get("mean")
        if cov is None or ffr is None:
            ax.plot([], [], "o", color=colours[k % 10], label=f"{_label(res, name)}  {cell(joint, 'alignment_score')}")
            continue
        ci = joint.get("interval95", {})
        ax.errorbar(ffr, cov, xerr=_err(ffr, ci.get("ffr")), yerr=_err(cov, ci.get("coverage")), fmt="o", ms=7,
                    capsize=3, color=colours[k % 10], zorder=3,
                    label=f"{_label(res, name)}  AS {joint['alignment_score']['mean']:.2f}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"False Failure Rate (of {_carried(res, 'joint', 'ffr')} "
           "aligned responses flagged)", ylabel=f"Coverage (of {_carried(res, 'joint', 'coverage')} misaligned "
           "responses flagged)", title=f"Coverage vs FFR, joint question, {res['dataset']['items']:,} items")
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=0.8, label="chance (flags at random)")
    ax.legend(loc="lower right", fontsize=8, title="model (95% bootstrap CI)", title_fontsize=8)


def _dimension_as(ax, res: dict, colours) -> None:
    """Alignment Score per dimension and model, with the items of each and n/a where none."""
    names = list(res["models"])
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        metrics = res["models"][name]["metrics"]
        means, lows, highs = [], [], []
        for group in GROUPS:
            entry = metrics.get(group) or {}
            mean = (entry.get("alignment_score") or {}).get("mean")
            means.append(np.nan if mean is None else mean)
            ci = (entry.get("interval95") or {}).get("alignment_score")
            # the interval is of the runs pooled, the bar the mean of per-run figures: it may sit outside
            lows.append(max(mean - ci[0], 0) if ci and mean is not None else 0)
            highs.append(max(ci[1] - mean, 0) if ci and mean is not None else 0)
        x = np.arange(len(GROUPS)) + (k - (len(names) - 1) / 2) * width
        ax.bar(x, means, width, yerr=[lows, highs], capsize=3, color=colours[k % 10], label=_label(res, name))
        for xi, m, high, group in zip(x, means, highs, GROUPS):
            top = 0.0 if np.isnan(m) else m + high          # above the error bar, not on it
            said = f"{m:.2f}" if not np.isnan(m) else \
                "too few" if (metrics.get(group) or {}).get("alignment_score", {}).get("too_few") is not None else "n/a"
            ax.text(xi, top + 0.01, said, ha="center", va="bottom", fontsize=7, rotation=90 if len(said) > 4 else 0)
    ax.set_xticks(np.arange(len(GROUPS)), [f"{g}\n({_carried(res, g, 'coverage'):,} mis. / "
                                           f"{_carried(res, g, 'ffr'):,} al.)" for g in GROUPS])
    ax.set(ylim=(0, 1.05), ylabel="Alignment Score (bars: 95% bootstrap CI)",
           title=f"Alignment Score per dimension, joint question\n(responses counted per group; "
                 f"too few under {res.get('min_count', MIN_COUNT)})")
    ax.legend(fontsize=8)


def _roc(ax, res: dict, colours) -> None:
    """ROC of P(misaligned) per model, joint question, all runs pooled."""
    for k, (name, model) in enumerate(res["models"].items()):
        roc = (model.get("curves") or {}).get("roc")
        if not roc:
            continue
        joint = model["metrics"].get("joint")
        auc = number(joint, "auroc") + (f" {interval(joint, 'auroc')}" if interval(joint, "auroc") else "")
        ax.plot(roc["fpr"], roc["tpr"], color=colours[k % 10], lw=1.6, drawstyle="default",
                ls="--" if model.get("baseline") else "-", label=f"{_label(res, name)}  AUROC {auc}")
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=0.8, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="aligned responses flagged (FFR) at each threshold",
           ylabel="misaligned responses flagged (Coverage)",
           title=f"ROC of P(misaligned), joint, all thresholds\n(AUROC [95% CI]; {_carried(res, 'joint', 'coverage'):,} "
                 f"misaligned / {_carried(res, 'joint', 'ffr'):,} aligned responses)")
    ax.legend(loc="lower right", fontsize=8)


def _reliability(ax, res: dict, colours) -> None:
    """Observed share of misaligned responses against mean P(misaligned) per bin, marker area by
    the bin's responses: on the diagonal, P means what it says."""
    for k, (name, model) in enumerate(res["models"].items()):
        bins = [b for b in (model.get("curves") or {}).get("reliability", []) if b["n"]]
        if not bins:
            continue
        total = sum(b["n"] for b in bins)
        ece = number(model["metrics"].get("joint"), "ece")
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], "-o", color=colours[k % 10], lw=1.2,
                ms=3, label=f"{_label(res, name)}  ECE {ece} ({total:,} responses)")
        ax.scatter([b["mean_p"] for b in bins], [b["observed"] for b in bins], s=[400 * b["n"] / total for b in bins],
                   color=colours[k % 10], alpha=0.3)
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=0.8, label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean P(misaligned) in the bin (10 bins)",
           ylabel="share of the bin's responses that are misaligned",
           title="Reliability of P(misaligned), joint question\n(marker area: the bin's responses)")
    ax.legend(loc="best", fontsize=8)


def _label(res: dict, name: str) -> str:
    return labelled(name, res["models"][name])


def _err(mean, bounds):
    return None if not bounds else [[max(mean - bounds[0], 0)], [max(bounds[1] - mean, 0)]]


def _carried(res: dict, group: str, figure: str) -> int:
    """The responses that carry a figure of a group (the same items for every model)."""
    first = next(iter(res["models"].values()))
    return ((first["metrics"].get(group) or {}).get("carried_by") or {}).get(figure, 0)


# ------------------------------------------------------------------------------------- HTML

def write_html(res: dict, plots: dict[str, Path], path, comparison: dict | None = None) -> None:
    esc = html.escape
    parts = [f"<h1>misalign-fast: Stage II report</h1><p class=meta>{esc(res['created'])} · "
             f"{res['dataset']['items']:,} items from {esc(res['dataset']['source'])} (split {esc(res['dataset']['split'])}, "
             f"sha256 {res['dataset']['sha256'][:16]}…) · {res['runs']} runs asked · threshold {res['threshold']} · "
             f"temperature {res['temperature']} · seed {res['seed']}</p>"]
    for note in res.get("role_warnings", []):
        parts.append(f"<p class=warn><b>Roles.</b> {esc(note)}.</p>")
    if any(m.get("weak") for m in res["models"].values()):
        parts.append("<p class=warn><b>Weak model.</b> Rows marked weak come from SmolLM2-135M-Instruct, a 135M "
                     "model dequantized from 4 bits: its figures are that model's, not the paper's.</p>")
    if any(m["stand_in"] for m in res["models"].values()):
        parts.append("<p class=warn><b>Stand-in models.</b> Rows marked stand-in come from a random-weight model: "
                     "their figures are noise and show that the pipeline runs, not how any model behaves.</p>")
    for note in baseline_notes(res):
        parts.append(f"<p class=meta>{esc(note)}.</p>")
    if (Path(path).parent / "dataset.html").is_file():         # this run built its dataset too
        parts.append('<p>Stage I: <a href="dataset.html">dataset.html</a> (per-domain funnel, rejection reasons, '
                     "profile).</p>")
    for key in ("coverage_ffr", "dimension_as", "roc", "reliability"):
        data = base64.b64encode(Path(plots[key]).read_bytes()).decode()
        parts.append(f'<img alt="{key}" class={"half" if key in ("roc", "reliability") else "full"} '
                     f'src="data:image/png;base64,{data}">')
    parts.append(f"<p class=meta>Intervals: 95% bootstrap over {esc(res['bootstrap_unit'])}s (a prompt's items, one "
                 "per generator, move together). In a dimension's rows Coverage counts the misaligned responses "
                 "the judge verified misaligned in that dimension (\"n/N verified\"), or, for data without that "
                 "check, all of them (\"overall\"). A response the model gave no usable answer for counts as not "
                 "flagged, as the paper scores raw outputs (the answered-only figures are below each table); a "
                 f"figure carried by fewer than {res.get('min_count', MIN_COUNT)} responses shows \"too few (n)\" "
                 "with no interval; runs that gave identical verdicts are shown once, with no spread.</p>")
    for name, model in res["models"].items():
        parts.append(f"<h2>{esc(name)}</h2><p>{esc(model['description'])}"
                     f"{' — <b>stand-in</b>' if model['stand_in'] else ''}"
                     f"{' — <b>weak model</b>' if model.get('weak') else ''}"
                     f"{' — <b>circular</b>: ' + esc(circular(model)) if circular(model) else ''}; "
                     f"{esc(runs_line(model))}{'; ' + esc(yes_line(model)) if yes_line(model) else ''}</p>")
        head = "".join(f"<th>{h}</th>" for h in COLUMNS)
        parsed = bool(model.get("parsed_answers"))
        body = "".join("<tr>" + "".join(f"<td>{esc(row_cells(*row, parsed=parsed)[c])}</td>" for c in COLUMNS)
                       + "</tr>" for row in group_rows(model))
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
        if any(model["unusable"].values()):
            only = {"metrics": model["answered_only"].get("joint", {}),
                    "dimension_questions": {q: v for q, v in model["answered_only"].items() if q != "joint"},
                    "circularity": model.get("circularity", {})}
            body = "".join("<tr>" + "".join(f"<td>{esc(row_cells(*row, parsed=parsed)[c])}</td>" for c in COLUMNS)
                           + "</tr>" for row in group_rows(only))
            parts.append("<details><summary>answered responses only (the headline above counts a response without "
                         f"a usable answer as not flagged)</summary><table><tr>{head}</tr>{body}</table></details>")
        domains = [(k, v) for k, v in model["metrics"].items() if is_domain(k)]
        if domains:
            rows = "".join(f"<tr><td>{esc(k)}</td><td>{v['items']:,}</td><td>{esc(counted(v))}</td>"
                           + "".join(f"<td>{cell(v, f)}</td>" for f in FIGURES) + "</tr>"
                           for k, v in sorted(domains, key=lambda kv: -kv[1]["items"]))
            head = "".join(f"<th>{h}</th>" for h in ("domain", "items", "misaligned counted", *FIGURE_NAMES))
            parts.append(f"<details><summary>per domain ({len(domains)})</summary><table><tr>{head}</tr>{rows}"
                         "</table></details>")
    if comparison:
        parts.append(comparison_html(comparison))
    parts.append("<h2>Reproduce</h2><details><summary>versions and resolved config</summary><pre>"
                 + esc(json.dumps({"versions": res["versions"], "config": res["config"]}, indent=1))
                 + "</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:76rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;"
             "text-align:right}td:first-child,td:nth-child(2),th{text-align:left}img{margin:.5rem 0}img.full{max-width:100%}"
             "img.half{max-width:49%}"
             ".warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.5rem .8rem}.meta{color:#555}")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>misalign-fast report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def comparison_html(comparison: dict) -> str:
    """Every pair of models' paired differences on the joint question and each dimension."""
    esc = html.escape
    labels = {m["name"]: m["label"] for m in comparison["models"]}
    head = "".join(f"<th>{h}</th>" for h in ("A − B", "group", *(TITLES[f] for f in COMPARED),
                                             "responses (misaligned/aligned)"))
    body = "".join(f"<tr><td>{esc(labels[a])} − {esc(labels[b])}</td><td>{esc(group)}</td>"
                   + "".join(f"<td>{esc(difference_text(row[f]))}</td>" for f in COMPARED)
                   + f"<td>{responses_text(row)}</td></tr>"
                   for (a, b, group), row in pair_rows(comparison, GROUPS).items())
    return (f"<h2>Models compared</h2><p class=meta>Differences A − B with 95% intervals from a paired bootstrap "
            f"over prompts ({comparison['bootstrap']:,} resamples: both models' figures on the same resamples, as "
            "they answered the same items); * marks an interval that excludes 0. No correction for the number "
            "of comparisons. Every group and CSV/JSON/Markdown: <code>misalign-fast compare RUN_DIR</code>.</p>"
            f"<table><tr>{head}</tr>{body}</table>")


def report(run_dir, min_count: int | None = None) -> dict:
    """results.json, plots and report.html for a run directory (misalign.terminal prints its
    tables); `min_count`: responses a figure needs (default: the run's report.min_count).  With
    two or more models, report.html also compares them pair by pair (misalign.compare)."""
    loaded = load(run_dir)                    # read once, for the figures and the comparison
    res = results(run_dir, min_count, loaded)
    plots = plot(res, Path(run_dir) / "plots")
    comparison = None
    if len(res["models"]) > 1:
        comparison = compare(entrants([run_dir], loaded=[loaded]), bootstrap=res["bootstrap"], seed=res["seed"],
                             min_count=res["min_count"])
    write_html(res, plots, Path(run_dir) / "report.html", comparison)
    return res
