"""Stage I at a glance: one self-contained page, dataset.html, drawn from a finished run directory.

It reads only what the run already wrote (stats.csv, run.json, profile.json), so it can be
redrawn at any time without asking any model again.

    run_dir/plots/funnel.png   per dimension: classified -> ... -> final pairs (the paper's table as a figure)
    run_dir/dataset.html       header, warnings, the funnel, per-domain table, rejection reasons, profile
"""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from misalign.errors import InputError
from misalign.tables import atomic_path, one_line
from misalign.taxonomy import DIMENSIONS

# stats.csv's count columns this page knows, in the order the pipeline fills them; a run may lack
# some (older runs) or carry others (a stage of the user's own): those follow, in the file's order.
KNOWN_COLUMNS = ("classified", "unknown", "expanded", "expansion_near_duplicates", "expansion_unusable",
                 "removed_by_dedup", "sent_to_generation", "aligned_filtered", "misaligned_filtered", "truncated",
                 "resampled", "recovered_by_resampling", "final_pairs", "verified_misaligned", "cross_split_leaks")
# the funnel's steps: (label, the columns summed into it, colour).  Candidates filtered is two
# columns, drawn stacked so that the aligned/misaligned split stays visible.
FUNNEL = (("classified", ("classified",), "#4c72b0"),
          ("expanded", ("expanded",), "#4c72b0"),
          ("removed by dedup", ("removed_by_dedup",), "#c44e52"),
          ("sent to generation", ("sent_to_generation",), "#55a868"),
          ("candidates filtered", ("aligned_filtered", "misaligned_filtered"), ("#dd8452", "#c44e52")),
          ("recovered by resampling", ("recovered_by_resampling",), "#8172b3"),
          ("final pairs", ("final_pairs",), "#2d7d46"),
          ("verified in its dimension", ("verified_misaligned",), "#937860"))


# ------------------------------------------------------------------------------------ reading

def _read_stats(path: Path) -> tuple[list[dict], list[str], list[str]]:
    """(rows with counts as ints, known count columns present, unknown columns present)."""
    if not path.exists():
        raise InputError(path, "does not exist: this is not a finished Stage I run directory "
                               "(run `misalign-fast build` on it, or point at the right directory)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as CSV ({one_line(exc)}); build the dataset again") from None
    if "dimension" not in header or "domain" not in header:
        raise InputError(path, "has no dimension or domain column: it is not a misalign-fast stats.csv")
    known = [c for c in KNOWN_COLUMNS if c in header]
    extra = [c for c in header if c not in KNOWN_COLUMNS and c not in ("dimension", "domain")]
    counted = known + extra
    rows = []
    for number, record in enumerate(raw, 1):
        row = {"dimension": record["dimension"] or "", "domain": record["domain"] or ""}
        for column in counted:
            value = (record.get(column) or "0").strip()
            try:
                row[column] = int(value)
            except ValueError:
                raise InputError(path, f"column {column} holds {value!r}, not a count", row=number) from None
        rows.append(row)
    return rows, known, extra


def _read_json(path: Path, kind: type, what: str):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot be read as JSON ({one_line(exc)}); build the dataset again") from None
    if not isinstance(data, kind):
        raise InputError(path, f"is not {what}; build the dataset again")
    return data


# ------------------------------------------------------------------------------------ the funnel

def dimension_totals(rows: list[dict], known: list[str]) -> dict[str, dict[str, int]]:
    """{dimension: {column: sum over its domains}}, the paper's dimensions first."""
    order = list(DIMENSIONS) + sorted({r["dimension"] for r in rows} - set(DIMENSIONS))
    return {d: {c: sum(r[c] for r in rows if r["dimension"] == d) for c in known} for d in order}


def funnel_steps(known: list[str]) -> list[tuple]:
    """The funnel's steps that this run's stats.csv has columns for."""
    return [s for s in FUNNEL if any(c in known for c in s[1])]


def _step_count(sums: dict[str, int], columns: tuple, known: list[str]) -> str:
    """"24" or, for a step of several columns, "24 (19 + 5)"."""
    parts = [sums[c] for c in columns if c in known]
    total = f"{sum(parts):,}"
    return total if len(parts) == 1 else f"{total} ({' + '.join(f'{p:,}' for p in parts)})"


def plot_funnel(totals: dict[str, dict[str, int]], known: list[str], path: Path) -> Path:
    """One horizontal-bar panel per dimension, one bar per funnel step, its count written on it.
    Panels share the step labels (left) but not the scale: value has far more domains than
    safety, and a shared scale would squash the smaller dimensions into slivers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = funnel_steps(known)
    fig, axes = plt.subplots(1, len(totals), figsize=(10, 0.42 * max(len(steps), 1) + 1.3), dpi=120,
                             sharey=True, squeeze=False)
    for ax, (dimension, sums) in zip(axes[0], totals.items()):
        top = max([sum(sums.get(c, 0) for c in cols) for _, cols, _ in steps] + [1])
        for y, (label, cols, colour) in enumerate(steps):
            left = 0
            for k, column in enumerate(cols):
                if column in known:
                    ax.barh(y, sums[column], left=left, height=0.7,
                            color=colour[k] if isinstance(colour, tuple) else colour)
                    left += sums[column]
            ax.text(left + top * 0.02, y, _step_count(sums, cols, known), va="center", ha="left", fontsize=9.5)
        ax.set_xlim(0, top * 1.45)          # room for the count to the right of the longest bar
        ax.set_title(f"{dimension}: {sums.get('final_pairs', 0):,} final pairs", fontsize=11)
        ax.tick_params(axis="x", labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_yticks(range(len(steps)), [s[0] for s in steps], fontsize=10)
    axes[0][0].invert_yaxis()               # the funnel reads top to bottom
    if any(s[0] == "candidates filtered" for s in steps):
        fig.text(0.01, 0.01, "candidates filtered: aligned (orange) + misaligned (red) candidates the rejection "
                             "sampler turned down; counts are summed over each dimension's domains",
                 fontsize=8.5, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ HTML

def _table(head: list[str], body: list[list], text: int = 1) -> str:
    """An HTML table; its first `text` columns are words (left-aligned), the rest numbers (right)."""
    esc = html.escape
    cells = "".join("<tr>" + "".join(f"<td class=t>{esc(str(v))}</td>" if k < text else f"<td>{esc(str(v))}</td>"
                                     for k, v in enumerate(row)) + "</tr>" for row in body)
    return "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _header(run: dict) -> list[str]:
    esc = html.escape
    splits = ", ".join(f"{esc(str(k))} {v:,}" for k, v in (run.get("splits") or {}).items())
    lines = [f"input: {esc(str(run.get('input', '?')))} ({run.get('input_rows', 0):,} rows, "
             f"{run.get('rejected_inputs', 0):,} set aside in rejected_inputs.jsonl)",
             f"pairs: <b>{run.get('pairs', 0):,}</b> ({splits or 'no splits recorded'}); "
             f"{run.get('dropped_pairs', 0):,} dropped after resampling",
             f"resampled pairs {run.get('resampled_pairs', 0):,}, recovered {run.get('recovered_pairs', 0):,}; "
             f"truncated candidates {run.get('truncated_candidates', 0):,}"]
    leakage = run.get("leakage")
    if isinstance(leakage, dict):
        lines.append(f"near-duplicates across splits: {leakage.get('rate', 0.0):.2%} of rows ({leakage.get('rows', 0):,} "
                     f"rows, {leakage.get('pairs', 0):,} prompt pairs in leakage.csv; "
                     f"{esc(str(leakage.get('criterion', '?')))})")
    else:                                # a run from before the independent measure
        lines.append(f"near-duplicates across splits: {run.get('cross_split_near_duplicate_rate', 0.0):.2%} of rows")
    if isinstance(run.get("dedup"), dict):
        lines.append(f"near-duplicates within the pool: SimHash on {esc(str(run['dedup'].get('features')))} shingles, "
                     f"Hamming distance &lt;= {esc(str(run['dedup'].get('tau')))}")
    if run.get("expansion"):
        lines.append("expansion outcomes: " + ", ".join(f"{esc(str(k))} {v:,}" for k, v in run["expansion"].items()))
    lines.append(f"seed: {esc(str(run.get('seed', '?')))}")
    models = "".join(f"<li>{esc(str(role))}: {esc(str(desc))}</li>" for role, desc in (run.get("models") or {}).items())
    return ["<ul class=meta>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>",
            f"<h2>Models</h2><ul>{models}</ul>" if models else ""]


def _warnings(run: dict) -> list[str]:
    """The dataset card's warnings (misalign.build.dataset_card), worded the same way."""
    esc, models = html.escape, [str(m) for m in (run.get("models") or {}).values()]
    out = []
    if any("stand-in" in m for m in models):
        out.append("<p class=warn><b>Stand-in models.</b> Responses and judge verdicts come from a random-weight "
                   "stand-in model: they are noise and exist to exercise the pipeline, not to measure anything.</p>")
    if any("weak 135M model" in m for m in models):
        out.append("<p class=warn><b>A weak model.</b> Expansions, responses and judge verdicts come from "
                   "SmolLM2-135M-Instruct (dequantized from 4 bits): real text, but far below the paper's models.</p>")
    out += [f"<p class=warn><b>Roles.</b> {esc(str(note))}.</p>" for note in run.get("role_warnings") or []]
    return out


def _domain_table(rows: list[dict], known: list[str], extra: list[str]) -> str:
    """Every count column per domain: the pipeline's, then those of the user's own stages."""
    order = {d: k for k, d in enumerate(DIMENSIONS)}
    columns = known + extra
    shown = [r for r in rows if any(r[c] for c in columns)]
    shown.sort(key=lambda r: (order.get(r["dimension"], len(order)), r["dimension"], -r.get("final_pairs", 0),
                              r["domain"]))
    body = [[r["dimension"], r["domain"], *(f"{r[c]:,}" for c in columns)] for r in shown]
    note = f"{len(rows) - len(shown):,} domains with nothing counted left out"
    return (f"<details><summary>per domain ({len(shown):,} domains; {html.escape(note)})</summary>"
            # some fifteen columns: a smaller font, and a scroll bar of its own rather than the page's
            + "<div class=wide>" + _table(["dimension", "domain", *(c.replace("_", " ") for c in columns)], body,
                                          text=2) + "</div></details>")


def _rejections(run: dict) -> str:
    reasons = run.get("rejection_reasons")
    if not isinstance(reasons, dict):
        return ("<p>This run predates the record of rejection reasons (run.json has no rejection_reasons): "
                "build the dataset again to see why candidates were turned down.</p>")
    total = sum(reasons.values())
    if not total:
        return "<p>The rejection sampler turned down no candidate.</p>"
    body = []
    for key, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        side, _, reason = key.partition(": ") if ": " in key else ("", "", key)
        body.append([side, reason, f"{n:,}", f"{n / total:.1%}"])
    return (f"<p>{total:,} candidates turned down, by side and reason.</p>"
            + _table(["side", "reason", "candidates", "share"], body, text=2))


def _profile(stages: list) -> str:
    if not stages:
        return "<p>No per-stage profile recorded (no profile.json).</p>"
    body = []
    for s in stages:
        tokens = s.get("prompt_tokens", 0) + s.get("generated_tokens", 0)
        starts = s.get("engine_starts") or {}
        body.append([s.get("stage", "?"), f"{s.get('items_in', 0):,}", f"{s.get('items_out', 0):,}",
                     f"{s.get('seconds', 0.0):,.1f}",
                     f"{s['tokens_per_s']:,.0f}" if tokens and s.get("tokens_per_s") is not None else "–",
                     # a hit rate means nothing where the stage sent no prompt to a model
                     f"{s['prefix_cache_hit_rate']:.1%}" if s.get("prompt_tokens") and
                     s.get("prefix_cache_hit_rate") is not None else "–",
                     ", ".join(f"{name} ×{n}" for name, n in starts.items()) or "–",
                     f"{s.get('startup_seconds', 0.0):,.1f}"])
    seconds = sum(s.get("seconds", 0.0) + s.get("startup_seconds", 0.0) for s in stages)
    return (f"<p>{seconds:,.0f} s in all, engine start-ups included.</p>"
            + _table(["stage", "items in", "items out", "seconds", "tokens/s", "prefix-cache hits",
                      "engine starts", "start-up s"], body))


def write_dataset_report(run_dir) -> Path:
    """Write run_dir/dataset.html (and run_dir/plots/funnel.png); return the page's path."""
    run_dir = Path(run_dir)
    rows, known, extra = _read_stats(run_dir / "stats.csv")
    run_path = run_dir / "run.json"
    if not run_path.exists():
        raise InputError(run_path, "does not exist: this is not a finished Stage I run directory "
                                   "(run `misalign-fast build` on it, or point at the right directory)")
    run = _read_json(run_path, dict, "a JSON object (a misalign-fast run record)")
    profile_path = run_dir / "profile.json"
    stages = (_read_json(profile_path, list, "a JSON list of stages") if profile_path.exists()
              else run.get("profile") or [])             # run.json carries a copy of it too

    totals = dimension_totals(rows, known)
    funnel = plot_funnel(totals, known, run_dir / "plots" / "funnel.png")
    data = base64.b64encode(funnel.read_bytes()).decode()
    parts = ["<h1>misalign-fast: Stage I dataset</h1>", *_header(run), *_warnings(run),
             "<h2>Funnel</h2>", f'<img alt="funnel per dimension" src="data:image/png;base64,{data}">',
             # a prompt counts under each dimension it got a domain in, and under none if it got no
             # domain, so the panels need not add up to the run's totals; say so before anyone asks
             f"<p class=meta>Each prompt counts under every dimension it was given a domain in, and under "
             f"none if it got no domain: the panels need not add up to the run's {run.get('pairs', 0):,} pairs.</p>",
             # the figure's numbers as text too: exact, searchable, and there for a screen reader
             _table(["dimension", *(label for label, _, _ in funnel_steps(known))],
                    [[d, *(_step_count(sums, cols, known) for _, cols, _ in funnel_steps(known))]
                     for d, sums in totals.items()]),
             _domain_table(rows, known, extra),
             "<h2>Rejection reasons</h2>", _rejections(run),
             "<h2>Per-stage profile</h2>", _profile(stages)]
    style = ("body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;"
             "text-align:right}td.t,th{text-align:left}img{max-width:100%;margin:.5rem 0}"
             ".warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.5rem .8rem}.meta{color:#555}"
             "summary{cursor:pointer;margin:.5rem 0}.wide{overflow-x:auto}.wide table{font-size:.8rem}"
             ".wide td,.wide th{padding:.15rem .35rem}")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>misalign-fast dataset</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = run_dir / "dataset.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
