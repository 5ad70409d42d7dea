"""What the commands print: every terminal table of Stage I, Stage II and the tools, in one place.

Each function takes a rich Console and a record the run layer (or a tool) returned, and prints it;
none computes anything the files of a run do not already hold.  Names, paths and prompts are data:
they go into `Text`, never through rich's markup.
"""
from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text


# the widest tables (a figure per column) drop the vertical rules to keep 120 columns whole
WIDE = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True}


def _table(title, columns, left=(), **kwargs) -> Table:
    table = Table(title=(title if isinstance(title, Text) else Text(title)) or None, title_justify="left", **kwargs)
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right")
    return table


# ------------------------------------------------------------------------------- before a run

def checked(console, checks) -> None:
    """The preflight's one line when every model is ready."""
    names = ", ".join(r.name for r in checks)
    console.print(Text(f"check: {len(checks)} model{'s' if len(checks) != 1 else ''} ready ({names}); "
                       "`misalign-fast check` shows the details"))


def check_table(console, checks) -> None:
    """`misalign-fast check`: one row per model and what was found."""
    table = Table(title="check", title_justify="left")
    for name in ("model", "roles", "source", "tokenizer", "chat template", "answer tokens", "longest request",
                 "memory", "status"):
        table.add_column(name, overflow="fold")
    for r in checks:
        table.add_row(Text(r.name), ", ".join(r.roles), Text(r.source), r.tokenizer, r.chat_template,
                      Text(r.answers), r.context, r.memory, Text(r.problems[0] if r.problems else "ok",
                                                         style="red" if r.problems else "green"))
    console.print(table)
    for r in checks:
        for note in r.notes:
            console.print(Text(f"{r.name}: {note}"))


def schedule(console, planned, passes: bool = True) -> None:
    """The memory plan: what each model needs, how many engines share the device, and (with
    `passes`) which pass starts or releases which engine."""
    from misalign.inference.base import EMBEDDER
    from misalign.memory_plan import GIB
    plan = planned.plan
    engines = len([n for n in plan.models if n != EMBEDDER])
    if plan.slots >= engines:
        residency = f"all {engines} model engines fit at once" if engines > 1 else "its one model stays resident"
    elif plan.slots == 1:
        residency = "one model engine at a time" + (f" (run.resident_models = {plan.resident_models})"
                                                     if plan.resident_models else "")
    elif plan.resident_models and plan.slots == plan.resident_models:
        residency = f"at most {plan.slots} engine{'s' if plan.slots != 1 else ''} at once (run.resident_models = " \
                    f"{plan.resident_models})"
    else:
        residency = f"the {plan.slots} largest engine{'s fit' if plan.slots != 1 else ' fits'} at once, smaller ones more"
    table = _table(f"memory plan: {plan.device.describe()}; {residency}",
                   ("model", "weights", "KV / sequence", "needs", "share", "from"), left=("model", "from"))
    for m in plan.models.values():
        table.add_row(Text(m.name), f"{m.weights / GIB:.1f} GiB", f"{m.kv_per_token * m.max_model_len / GIB:.2f} GiB",
                      f"{m.need / GIB:.1f} GiB", f"{m.share:.0%}", m.source)
    console.print(table)
    if not passes:
        return
    steps = _table("schedule (passes in order; a pass with nothing to do starts nothing)",
                   ("stage", "pass", "model", "engine"), left=("stage", "pass", "model", "engine"))
    for step in planned.steps:
        if step.action != "none":
            released = f", releases {', '.join(step.releases)}" if step.releases else ""
            steps.add_row(step.stage, step.pass_name, Text(step.model), step.action + released)
    console.print(steps)
    starts = ", ".join(f"{name} {n}" for name, n in planned.engine_starts().items())
    console.print(Text(f"engine starts at most: {starts or 'none'}"))


def decisions(console, decided) -> None:
    """What a run does with each stage's checkpoint, before it runs any (nothing on a fresh run)."""
    if any(d.action != "compute" for d in decided):
        console.print("checkpoints:")
        for d in decided:
            console.print(Text(f"  {d.stage}: {d.text}"))


# ------------------------------------------------------------------------------------ Stage I

def profile(console, stages, title: str = "per stage") -> None:
    table = _table(title, ("stage", "in", "out", "seconds", "items/s", "prompt tok", "gen tok", "tok/s", "cache hits",
                           "engine starts", "shards reused"), left=("stage",), **WIDE)
    for p in stages:
        starts = sum(p["engine_starts"].values())
        table.add_row(p["stage"], f"{p['items_in']:,}", f"{p['items_out']:,}", f"{p['seconds']:.1f}",
                      f"{p['items_per_s']:,.1f}", f"{p['prompt_tokens']:,}", f"{p['generated_tokens']:,}",
                      f"{p['tokens_per_s']:,.0f}", f"{p['prefix_cache_hit_rate']:.0%}",
                      f"{starts} ({p['startup_seconds']:.0f} s)" if starts else "-",
                      f"{p['shards_reused']}/{p['shards_reused'] + p['shards_run']}")
    console.print(table)
    if any(p["shards_reused"] for p in stages):
        console.print("(a reused shard's seconds, tokens and engine starts are those of the run that computed it)")


def built(console, summary: dict, per_domain: bool = True) -> None:
    """Stage I's summary: the profile, the per-domain funnel (or where to find it), the counts."""
    profile(console, summary["profile"])
    if per_domain:
        domain_stats(console, summary["stats"])
    else:
        console.print("per-domain counts (the paper's table) in stats.csv and dataset.html")
    splits = ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items())
    console.print(f"{summary['pairs']:,} pairs ({splits}); {summary['dropped_pairs']:,} dropped; "
                  f"{summary['rejected_inputs']:,} input rows set aside; near-duplicates across splits "
                  f"{summary['cross_split_near_duplicate_rate']:.2%}")
    expansion = summary["expansion"]
    if expansion:
        console.print(f"expansion: {expansion.get('ok', 0):,} prompts kept of {sum(expansion.values()):,} generated "
                      f"({expansion.get('near_duplicate', 0):,} near-duplicates, "
                      f"{sum(expansion.get(k, 0) for k in ('no_prompt', 'empty', 'cut_off')):,} "
                      f"without a usable prompt, {expansion.get('refused', 0):,} refusals, "
                      f"{expansion.get('surplus', 0):,} beyond the floor)")
    console.print(f"resampling: {summary['resampled_pairs']:,} pairs resampled, {summary['recovered_pairs']:,} "
                  f"recovered; {summary['truncated_candidates']:,} candidates cut off at the token limit")
    for role, model in summary["models"].items():
        console.print(Text(f"  {role}: {model}"))
    for note in summary["role_warnings"]:
        console.print(Text(f"note: {note}"))
    console.print(Text(f"written to {summary['run_dir']}"))


def domain_stats(console, rows) -> None:
    console.print("per domain (domains with prompts)")
    stats = _table("", ("dimension", "domain", "classified", "expanded", "exp. dup", "dedup", "generated",
                        "filt. a/m", "cut off", "resampled", "recovered", "pairs"), left=("dimension", "domain"),
                   **{**WIDE, "padding": (0, 0)})
    domain = stats.columns[1]               # one line per domain: a long name is cut (whole in stats.csv)
    domain.no_wrap, domain.overflow, domain.max_width = True, "ellipsis", 18
    for s in rows:
        if s["classified"] or s["expanded"] or s["unknown"]:
            stats.add_row(s["dimension"], Text(s["domain"]), str(s["classified"] or s["unknown"]), str(s["expanded"]),
                          str(s["expansion_near_duplicates"]), str(s["removed_by_dedup"]),
                          str(s["sent_to_generation"]), f"{s['aligned_filtered']}/{s['misaligned_filtered']}",
                          str(s["truncated"]), str(s["resampled"]), str(s["recovered_by_resampling"]),
                          str(s["final_pairs"]))
    console.print(stats)


# ----------------------------------------------------------------------------------- Stage II

def benched(console, res: dict) -> None:
    """Stage II's tables: per model, the joint figure, each dimension, each group; then the notes."""
    from misalign.bench_record import circular
    from misalign.report import TERMINAL_COLUMNS, baseline_notes, group_rows, row_cells, runs_line, yes_line
    for name, model in res["models"].items():
        # the title on a line of its own: as a table title, a long one would stretch the columns
        console.print(Text(f"{name}: {model['description']}"))
        table = _table("", TERMINAL_COLUMNS, left=("items of", "asked"), **WIDE)
        for row in group_rows(model):
            cells = row_cells(*row, parsed=bool(model.get("parsed_answers")))
            table.add_row(*(cells[c] for c in TERMINAL_COLUMNS))
        console.print(table)
        console.print(Text(f"  {runs_line(model)}"
                           + (" (stand-in model: its figures are noise)" if model["stand_in"] else "")
                           + (" (a weak 135M model: its figures are that model's, not the paper's)"
                              if model.get("weak") else "") + (f"; {yes_line(model)}" if yes_line(model) else "")))
        if circular(model):
            console.print(Text(f"  circular: {circular(model)} (see the note below)"))
    dataset = res["dataset"]
    if dataset.get("set_aside"):
        console.print(Text(f"note: {dataset['set_aside']:,} rows of {dataset['source']} set aside, each with its "
                           "reason, in bench/rejected_items.jsonl"))
    for note in [*dataset.get("notes", []), *res.get("role_warnings", []), *baseline_notes(res)]:
        console.print(Text(f"note: {note}"))


def compared(console, result: dict, groups_shown: tuple[str, ...]) -> None:
    """`compare`: the leaderboard on the joint question, then each pair's paired differences."""
    from misalign.compare import COMPARED, TITLES, difference_text, figure_text, pair_rows, responses_text
    labels = {m["name"]: m["label"] for m in result["models"]}
    board = _table("models, joint question: 95% intervals over prompts; n: the responses that carry Coverage "
                   "(misaligned) / FFR (aligned)", ["model", *(TITLES[f] for f in COMPARED), "n", "runs"],
                   left=("model",), **WIDE)
    for model in result["models"]:
        joint = result["figures"][model["name"]]["joint"]
        board.add_row(Text(model["label"]), *(figure_text(joint[f]) for f in COMPARED), responses_text(joint),
                      str(model["runs"]))
    console.print(board)
    if result["settings_differ"]:
        console.print(Text(f"note: the runs asked under other settings ({'; '.join(result['settings_differ'])}): "
                           "a difference between their models may be the settings', not the models'"))
    rows = pair_rows(result, groups_shown)
    for a, b in dict.fromkeys((a, b) for a, b, _ in rows):
        console.print(Text(f"{labels[a]} - {labels[b]}: paired bootstrap over prompts ({result['bootstrap']:,} "
                           "resamples); * its 95% interval excludes 0"))
        table = _table("", ["group", *(TITLES[f] for f in COMPARED), "n"], left=("group",), **WIDE)
        for (pa_, pb, group), row in rows.items():
            if (pa_, pb) == (a, b):
                table.add_row(group, *(difference_text(row[f]) for f in COMPARED),
                              responses_text({f: {"carried_by": row[f]["carried_by"]} for f in COMPARED}))
        console.print(table)


# -------------------------------------------------------------------------------------- tools

def deduplicated(console, report, features: str, tau: int, output) -> None:
    table = Table(title="dedup", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in (("features, tau", f"{features}, {tau}"),
                        ("rows in", f"{report.rows:,}"), ("rows kept", f"{report.kept:,}"),
                        ("rows removed", f"{report.rows - report.kept:,}"),
                        ("clusters with duplicates", f"{report.clusters_with_duplicates:,}"),
                        ("seconds", f"{report.seconds:.2f}"),
                        ("text MB/s", f"{report.text_mb / report.seconds:.1f}" if report.seconds > 0 else "-"),
                        ("written", Text(str(output)))):
        table.add_row(name, value)
    console.print(table)


def taxonomy(console, tax, dims) -> None:
    for dim in dims:
        table = _table(f"{dim} — {tax.sources[dim]} ({len(tax.of(dim))} domains)", ("code", "domain", "description"),
                       left=("code", "domain", "description"))
        for d in tax.of(dim):
            table.add_row(d.code, d.name, d.description)
        console.print(table)


def labelled(console, report, delta: float, output) -> None:
    """`misalign-fast classify`: per dimension, prompts assigned and agreement with the reference."""
    from misalign.taxonomy import DIMENSIONS      # here: every command prints through this module, few classify
    table = _table(f"classify ({report.method} on {report.model} embeddings, delta={delta})",
                   ("dimension", "prompts", "assigned", "agreement n", "accuracy", "macro-F1"), left=("dimension",))
    for dim in DIMENSIONS:
        score = report.agreement.get(dim)
        table.add_row(dim, f"{report.prompts:,}", f"{report.assigned[dim]:,}",
                      *([f"{score['n']:,}", f"{score['accuracy']:.3f}", f"{score['macro_f1']:.3f}"] if score
                        else ["-", "-", "-"]))
    console.print(table)
    console.print(Text(f"{report.prompts:,} prompts in {report.seconds:.1f} s; written to {output}"))


def judge_agreement(console, result: dict, labels) -> None:
    """`misalign-fast validate-judge`: per label, agreement of the judge with the humans."""
    table = _table(Text(f"judge {result['judge']}: {result['description']} against {labels}"),
                   ("label", "n", "accuracy", "Cohen's kappa", "human: misaligned", "judge: misaligned", "unusable"),
                   left=("label",))
    for label, found in result["agreement"].items():
        table.add_row(label, f"{found['n']:,}", *(("n/a" if found.get(k) is None else f"{found[k]:.3f}")
                                                   for k in ("accuracy", "kappa", "human_misaligned",
                                                             "judge_misaligned")), f"{found['unusable']:,}")
    console.print(table)
    console.print(f"the judge asked {'both ways' if result['balanced'] else 'one way'} (reject.balanced), a response "
                  f"misaligned when P(misaligned) >= {result['threshold']} (reject.threshold); kappa 0: chance agreement")
    if result["stand_in"]:
        console.print("note: the judge is a random-weight stand-in: its agreement is chance")


def perf_results(console, suite: str, repeat: int, benchmarks) -> None:
    from misalign.perf import format_number
    table = _table(f"perf {suite}: {repeat} sample{'s' if repeat != 1 else ''} each",
                   ("benchmark", "median", "min", "max", "unit"), left=("benchmark", "unit"))
    for b in benchmarks:
        table.add_row(b.name, *(format_number(x) for x in (b.median, b.min, b.max)), b.unit)
    console.print(table)


def perf_verdicts(console, verdicts, threshold: float) -> None:
    from misalign.perf import format_value
    table = _table(f"perf compare (threshold {threshold:.0%})",
                   ("benchmark", "base", "new", "ratio", "status", "decided by"), left=("benchmark", "status", "decided by"))
    colours = {"regression": "red", "improvement": "green", "noisy": "yellow"}
    for v in verdicts:
        table.add_row(Text(v.name), format_value(v.base, v.unit), format_value(v.new, v.unit),
                      "-" if v.ratio is None else f"{v.ratio:.3f}", Text(v.status, style=colours.get(v.status, "")),
                      Text(v.decided_by))
    console.print(table)
