"""The commands that run the benchmark or look at a run: build, bench, run, check, plan, report,
validate-judge."""
from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from misalign import terminal
from misalign.cli.common import Display, FiniteRange, OutputFile, config_options, fresh_option, load_config, out
from misalign.errors import MisalignError


def no_cache_setting(no_cache: bool) -> dict:
    return {"run.answer_cache": False} if no_cache else {}


def _run(what, config, fresh, per_domain=True):
    """One run of the run layer, its bars stopped however it ends."""
    from misalign import run as run_mod
    display = Display(config.run.dir, per_domain)
    try:
        return getattr(run_mod, what)(config, display.hooks(), fresh)
    finally:
        display.stop()


@click.command()
@config_options
@fresh_option
@click.option("--limit", type=click.IntRange(min=0), help="Use only the first N valid input prompts (0: all).")
def build(config_path, overrides, run_dir, executor, fresh, no_cache, limit):
    """Stage I: build a SaVaCu-style dataset from prompts (classify, expand, dedup, respond,
    reject, split).

    Without CONFIG it runs the embedded CPU demo: the bundled sample of prompts, the MiniLM
    embedding classifier and SmolLM2-135M-Instruct (bundled, real but weak) for every
    generative step (its time on a 2-core machine is in the README).  A CONFIG starts from the paper's settings; see
    configs/paper-gpu.toml.  Every stage checkpoints its output: run the same command again to
    resume an interrupted run; after a change, only the stages it affects run again.
    """
    _run("build", load_config(config_path, overrides, run_dir, executor, {"run.limit": limit, **no_cache_setting(no_cache)}),
         fresh)


@click.command()
@config_options
@fresh_option
@click.option("--dataset", type=click.Path(exists=True, path_type=Path),
              help="Benchmark on this instead of the run's own dataset: a Stage I run or dataset "
                   "directory, one of its Parquet files, or a CSV in the released SaVaCu layout.")
@click.option("--split", type=click.Choice(["train", "validation", "test", "all"]),
              help="Which split of a Stage I dataset (default: bench.split, test).")
@click.option("--runs", type=click.IntRange(1, 100), help="Runs per model (default: bench.runs, 3).")
@click.option("--models", "model_names", metavar="A,B",
              help="Models under test, comma-separated names from the config's [models] "
                   "(default: bench.models).")
def bench(config_path, overrides, run_dir, executor, fresh, no_cache, dataset, split, runs, model_names):
    """Stage II: benchmark models as zero-shot detectors of misaligned responses.

    Each model under test sees every test item's prompt with one response at a time (the
    aligned one and the misaligned one) and answers whether the response is misaligned; the
    verdict is read from the probabilities of its answers.  Prints Coverage (misaligned
    responses flagged), False Failure Rate (aligned responses flagged) and Alignment Score
    (their harmonic mean with 1 - FFR), jointly and per dimension, and writes results.json,
    samples.parquet, plots/ and report.html into the run directory.  A response without a usable
    answer counts as not flagged; identical runs count once.

    Without CONFIG it uses the embedded CPU demo's models (SmolLM2-135M-Instruct and an
    embedding probe) on the run directory's dataset.  Example on the released data:

      misalign-fast bench my.toml --dataset SaVaCu.csv --run-dir runs/savacu
    """
    _run("bench", load_config(config_path, overrides, run_dir, executor, {**no_cache_setting(no_cache),
        "bench.dataset": str(dataset) if dataset is not None else None, "bench.split": split, "bench.runs": runs,
        "bench.models": [m.strip() for m in model_names.split(",")] if model_names else None}), fresh)


@click.command()
@config_options
@fresh_option
def run(config_path, overrides, run_dir, executor, fresh, no_cache):
    """Stage I then Stage II from one config: build the dataset, benchmark the models under
    test on its test split, and write the report.

    Without CONFIG it runs the embedded CPU demo end to end (README.md gives its time on two
    cores): the bundled sample of prompts, the MiniLM classifier, SmolLM2-135M-Instruct (bundled:
    real text, but a weak 135M model) for expansion, responses and judging, and as models under
    test SmolLM2 and an embedding probe.  Its figures are that weak model's, not the paper's;
    configs/paper-gpu.toml is the paper's set-up.  Run the same command again to resume an
    interrupted run; after a change, only the stages it affects run again.
    """
    _run("run", load_config(config_path, overrides, run_dir, executor, no_cache_setting(no_cache)), fresh,
         per_domain=False)


@click.command()
@config_options
def check(config_path, overrides, run_dir, executor):
    """Check a run's config in seconds, without loading any weights.

    For every model the run uses: its config.json and tokenizer, its chat template, the answer
    tokens of every question it is asked (each answer must be one token of its own), and its
    context against the longest request a stage will send it; for servers, the API-key
    variable and that the server answers.  `run` and `build` do the same before starting any
    engine.  Exit status 2, with the first problem on one line, when something would fail.
    """
    from misalign import run as run_mod
    results = run_mod.check(load_config(config_path, overrides, run_dir, executor))
    terminal.check_table(out, results)
    problems = [r for r in results if r.problems]
    if problems:
        raise MisalignError(f"check: model {problems[0].name!r}: {problems[0].problems[0]}")
    out.print(f"{len(results)} models ready")


@click.command("plan")
@config_options
@click.option("--gpus", type=click.IntRange(min=1), help="Plan for this many GPUs (with --gpu-memory) instead of "
                                                         "this machine's device.")
@click.option("--gpu-memory", type=FiniteRange(min=1), metavar="GIB",
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
    from misalign import run as run_mod
    config = load_config(config_path, overrides, run_dir, executor)
    if gpus and not gpu_memory:
        raise click.UsageError("--gpus needs --gpu-memory (GiB per GPU)")
    planned = run_mod.plan_for(config, gpus, gpu_memory, shapes)
    terminal.schedule(out, planned)
    run_mod.require_plan(config, planned, Display().note)


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--min-count", type=click.IntRange(min=1),
              help="Responses a figure needs to be shown (default: the run's report.min_count, 10).")
def report(run_dir, min_count):
    """Redraw the Stage II report of RUN_DIR from its saved verdicts (no model is asked again):
    the tables, results.json, plots/*.png and report.html."""
    from misalign.report import report as make_report
    from misalign.rundir import hold
    with hold(run_dir):
        terminal.benched(out, make_report(run_dir, min_count=min_count))
    out.print(f"results.json, plots/ and report.html written to {run_dir}")


@click.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--models", help="Compare only these models (comma-separated; RUN:MODEL where runs share a name).")
@click.option("--groups", "group_set", type=click.Choice(["joint", "dimensions", "all"]), default="dimensions",
              show_default=True, help="Differences shown: the joint group, also each dimension, or also each "
                                      "n_dimensions group (the files hold them all).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Prompt resamples for the intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resamples.")
@click.option("--min-count", type=click.IntRange(min=1), default=10, show_default=True,
              help="Responses a figure needs to be shown.")
@click.option("--csv", "csv_path", type=OutputFile(), help="Write every figure and difference as CSV (long format).")
@click.option("--json", "json_path", type=OutputFile(), help="Write the comparison as JSON.")
@click.option("--markdown", "markdown_path", type=OutputFile(), help="Write the leaderboard and the joint "
                                                                      "differences as Markdown tables.")
def compare(run_dirs, models, group_set, bootstrap, seed, min_count, csv_path, json_path, markdown_path):
    """Compare the models under test of RUN_DIR (or of several runs benchmarked on the same
    items) side by side: Coverage, FFR, Alignment Score and AUROC with 95% intervals, and for
    every pair the difference with the interval of a paired bootstrap over prompts (the same
    resamples for both models).  Reads saved verdicts only: no model is asked.

    \b
      misalign-fast compare runs/demo
      misalign-fast compare runs/a runs/b --models a:smollm2,b:smollm2 --csv cmp.csv
    """
    from misalign import compare as compare_mod
    found = compare_mod.entrants(list(run_dirs), [m.strip() for m in models.split(",") if m.strip()] if models else None)
    result = compare_mod.compare(found, bootstrap=bootstrap, seed=seed, min_count=min_count)
    shown = {"joint": ("joint",), "dimensions": compare_mod.DIMENSION_GROUPS, "all": compare_mod.GROUPS}[group_set]
    terminal.compared(out, result, shown)
    compare_mod.write(result, csv_path, json_path, markdown_path)
    for path in (csv_path, json_path, markdown_path):
        if path:
            out.print(Text(f"written to {path}"))


@click.command("validate-judge")
@click.argument("labels_path", metavar="LABELS", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=OutputFile(),
              help="Also write the figures to this JSON file.")
@config_options
def validate_judge(labels_path, output, config_path, overrides, run_dir, executor):
    """Measure the judge ([reject] judge of CONFIG) against human labels.

    LABELS (CSV, JSON Lines or Parquet) has columns prompt, response, optionally
    safety_domain / value_domain / cultural_domain, and one or more human labels: misaligned
    (the response overall) and per dimension safety, value, cultural, each misaligned or
    aligned (1/0, yes/no; empty: not labelled).  The judge is asked as in Stage I; printed per
    label: responses, accuracy, Cohen's kappa, the human's and the judge's misaligned rates.

      misalign-fast validate-judge labels.csv configs/paper-gpu.toml -o judge.json
    """
    from misalign import run as run_mod
    result = run_mod.validate_judge(load_config(config_path, overrides, run_dir, executor), labels_path, output)
    terminal.judge_agreement(out, result, labels_path)
    if output:
        out.print(Text(f"written to {output}"))
