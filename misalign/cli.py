"""The `misalign-fast` command line."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from misalign import io
from misalign.dedup import DEFAULT_NGRAM, DEFAULT_TAU, Deduplicator
from misalign.errors import MisalignError

console = Console(stderr=True)
out = Console()

PROGRESS_ROWS = 200_000   # below this a run takes well under a second: no bar
CHUNK_ROWS = 100_000


class _Group(click.Group):
    """Turn our own errors into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MisalignError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="misalign-fast")
def main():
    """misalign-fast: build and run a misalignment benchmark for language models.

    Stage I builds a dataset of prompts paired with aligned and misaligned responses across
    safety, value and cultural domains; Stage II measures how well models detect the
    misaligned ones.  Start with `misalign-fast dedup --help`.
    """


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--column", default="text", show_default=True, help="Column holding the text to compare.")
@click.option("--tau", default=DEFAULT_TAU, show_default=True, type=click.IntRange(0, 63),
              help="Largest Hamming distance (of 64 bits) still counted as a near-duplicate.")
@click.option("--ngram", default=DEFAULT_NGRAM, show_default=True, type=click.IntRange(1, 16),
              help="Words per shingle.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1),
              help="Seed of the shingle hash (XXH3-64).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Threads for fingerprinting.")
@click.option("--format", "fmt", type=click.Choice(io.FORMATS),
              help="Input and output format; by default taken from each file's extension.")
@click.option("--clusters", "clusters_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every row's cluster: row, cluster, representative, distance.")
@click.option("--merge-empty", is_flag=True,
              help="Treat all texts without words as one cluster (by default each stands alone).")
def dedup(input_path, output_path, column, tau, ngram, seed, threads, fmt, clusters_path, merge_empty):
    """Remove near-duplicate rows from INPUT and write the rest to OUTPUT.

    Each text gets a 64-bit SimHash of its word n-grams; rows within --tau bits of each other
    are linked, and of each linked cluster only the first row is kept, in input order.
    INPUT and OUTPUT are JSON Lines, CSV or Parquet.

    Example: misalign-fast dedup prompts.jsonl unique.jsonl --column prompt --tau 10
    """
    started = time.perf_counter()
    in_fmt = io.detect_format(input_path, fmt)
    out_fmt = io.detect_format(output_path, fmt)
    if out_fmt != in_fmt:
        raise MisalignError(f"{output_path}: output is written in the input's format "
                            f"({in_fmt}); give it a .{in_fmt} name")
    if clusters_path is not None:
        io.detect_format(clusters_path)
    table = io.read_table(input_path, in_fmt)
    texts = io.text_column(table, column, input_path, in_fmt)
    deduper = Deduplicator(tau=tau, ngram=ngram, seed=seed, threads=threads, merge_empty=merge_empty)

    fps, empty = _fingerprint_with_progress(deduper, texts)
    result = deduper.fit_fingerprints(fps, empty)
    io.write_rows_like(input_path, table, result.keep, output_path, in_fmt)
    if clusters_path is not None:
        io.write_table(pa.table({"row": np.arange(len(fps)), "cluster": result.cluster,
                                 "representative": result.representative,
                                 "distance": result.distance}), clusters_path)
    seconds = time.perf_counter() - started
    text_mb = sum(c.buffers()[2].size if c.buffers()[2] is not None else 0 for c in texts.chunks) / 1e6
    _print_dedup_summary(len(fps), result, seconds, text_mb, output_path)


def _fingerprint_with_progress(deduper, texts):
    n = len(texts)
    if n < PROGRESS_ROWS:
        fps, shingles = deduper.fingerprints(texts)
        return fps, shingles == 0
    fps, shingles = np.empty(n, np.uint64), np.empty(n, np.int64)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} rows"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("fingerprinting", total=n)
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            fps[start:stop], shingles[start:stop] = deduper.fingerprints(texts[start:stop])
            progress.update(task, completed=stop)
    return fps, shingles == 0


def _print_dedup_summary(rows, result, seconds, text_mb, output_path):
    sizes = np.bincount(result.cluster)
    table = Table(title="dedup", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("rows in", f"{rows:,}")
    table.add_row("rows kept", f"{int(result.keep.sum()):,}")
    table.add_row("rows removed", f"{rows - int(result.keep.sum()):,}")
    table.add_row("clusters with duplicates", f"{int((sizes > 1).sum()):,}")
    table.add_row("seconds", f"{seconds:.2f}")
    table.add_row("text MB/s", f"{text_mb / seconds:.1f}" if seconds > 0 else "-")
    table.add_row("written", str(output_path))
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
    from misalign.stages import classify as cls
    from misalign.taxonomy import DIMENSIONS, Taxonomy

    if probe_path and train_path:
        raise MisalignError("give --probe or --train, not both")
    fmt = io.detect_format(input_path)
    out_fmt = io.detect_format(output_path)
    table = io.read_table(input_path, fmt)
    prompts = io.text_column(table, column, input_path, fmt).to_pylist()
    train = None
    if train_path:
        train_fmt = io.detect_format(train_path)
        train = io.read_table(train_path, train_fmt)
        train_prompts = io.text_column(train, column, train_path, train_fmt).to_pylist()
        missing = [d for d in DIMENSIONS if d not in train.column_names]
        if missing:
            raise MisalignError(f"{train_path}: no label column {', '.join(missing)}")
    taxonomy = Taxonomy.load()
    started = time.perf_counter()
    engine = cls.embedding_engine()
    try:
        embeddings = engine.embed(prompts)
        if train is not None:
            labels = {d: [v or None for v in train.column(d).to_pylist()] for d in DIMENSIONS}
            probe = cls.train_probe(engine.embed(train_prompts), labels, taxonomy, engine.model)
            save_probe = save_probe or output_path.with_suffix(".probe.npz")
            probe.save(save_probe)
            console.print(f"probe trained on {len(train_prompts):,} prompts, saved to {save_probe}")
        elif probe_path:
            probe = cls.LinearProbe.load(probe_path)
        else:
            probe = None
        method = "probe" if probe else "zero-shot"
        labels = probe.classify(embeddings, delta) if probe else \
            cls.ZeroShotClassifier(engine, taxonomy, cls.ClassifyConfig(delta=delta)).classify(embeddings)
    finally:
        engine.close()
    columns = cls.label_columns(labels)
    result = table
    for name, values in columns.items():
        if name in result.column_names:
            result = result.drop_columns([name])
        result = result.append_column(name, pa.array(values))
    io.write_table(result, output_path, out_fmt)
    seconds = time.perf_counter() - started

    model_name = Path(engine.model).parent.name if Path(engine.model).name == "model" else Path(engine.model).name
    summary = Table(title=f"classify ({method} on {model_name} embeddings, delta={delta})", title_justify="left")
    for name in ("dimension", "prompts", "assigned", "agreement n", "accuracy", "macro-F1"):
        summary.add_column(name, justify="right" if name != "dimension" else "left")
    refs = [c.strip() for c in reference_columns.split(",") if c.strip() in table.column_names]
    for dim in DIMENSIONS:
        assigned = sum(a is not None for a in columns[f"{dim}_domain"])
        row = [dim, f"{len(prompts):,}", f"{assigned:,}", "-", "-", "-"]
        if dim in refs:
            score = cls.agreement(columns[f"{dim}_domain"], [v or None for v in table.column(dim).to_pylist()])
            row[3:] = [f"{score['n']:,}", f"{score['accuracy']:.3f}", f"{score['macro_f1']:.3f}"]
        summary.add_row(*row)
    out.print(summary)
    out.print(f"{len(prompts):,} prompts in {seconds:.1f} s; written to {output_path}")


@main.command()
@click.argument("config_path", metavar="[CONFIG]", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value, e.g. --set respond.candidates=1 (repeatable).")
@click.option("--limit", type=int, help="Use only the first N valid input prompts.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the run is written (and resumed from); overrides run.dir.")
def build(config_path, overrides, limit, run_dir):
    """Stage I: build a SaVaCu-style dataset from prompts (classify, expand, dedup, respond,
    reject, split).

    Without CONFIG it runs the embedded CPU demo: the bundled sample of prompts, the MiniLM
    embedding classifier and the tiny random-weight stand-in model for every generative step
    (a few minutes on a laptop).  A CONFIG starts from the paper's settings; see
    configs/paper-gpu.toml.  Every stage checkpoints its output: run the same command again to
    resume an interrupted run.
    """
    from misalign import config as config_mod
    from misalign.build import build as run_build

    overrides = list(overrides)
    if limit is not None:
        overrides.append(f"run.limit={limit}")
    if run_dir is not None:
        overrides.append(f'run.dir="{run_dir}"')
    config = config_mod.load(config_path or config_mod.embedded_default(), overrides)
    columns = (TextColumn("{task.description:<9}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} rows"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {}

        def on_progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        summary = run_build(config, on_progress)
    _print_build_summary(summary)


def _print_build_summary(summary):
    profile = Table(title="per stage", title_justify="left")
    for name in ("stage", "in", "out", "seconds", "items/s", "prompt tok", "gen tok", "tok/s", "cache hits", "shards reused"):
        profile.add_column(name, justify="left" if name == "stage" else "right")
    for p in summary["profile"]:
        profile.add_row(p["stage"], f"{p['items_in']:,}", f"{p['items_out']:,}", f"{p['seconds']:.1f}",
                        f"{p['items_per_s']:,.1f}", f"{p['prompt_tokens']:,}", f"{p['generated_tokens']:,}",
                        f"{p['tokens_per_s']:,.0f}", f"{p['prefix_cache_hit_rate']:.0%}",
                        f"{p['shards_reused']}/{p['shards_reused'] + p['shards_run']}")
    out.print(profile)
    stats = Table(title="per domain (domains with prompts)", title_justify="left")
    for name in ("dimension", "domain", "classified", "expanded", "dedup removed", "to generation",
                 "filtered al/mis", "recovered", "final pairs"):
        stats.add_column(name, justify="left" if name in ("dimension", "domain") else "right")
    for s in summary["stats"]:
        if s["classified"] or s["expanded"]:
            stats.add_row(s["dimension"], s["domain"], str(s["classified"]), str(s["expanded"]),
                          str(s["removed_by_dedup"]), str(s["sent_to_generation"]),
                          f"{s['aligned_filtered']}/{s['misaligned_filtered']}", str(s["recovered_by_resampling"]),
                          str(s["final_pairs"]))
    out.print(stats)
    splits = ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items())
    out.print(f"{summary['pairs']:,} pairs ({splits}); {summary['dropped_pairs']:,} dropped; "
              f"{summary['rejected_inputs']:,} input rows set aside; near-duplicates across splits "
              f"{summary['cross_split_near_duplicate_rate']:.2%}")
    for role, model in summary["models"].items():
        out.print(f"  {role}: {model}")
    out.print(f"written to {summary['run_dir']}")


@main.group()
def models():
    """Local models: build the tiny stand-in used by the tests and the CPU demo."""


@models.command("make-tiny")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompts to train the tokenizer on (a file with a 'prompt' column); "
                   "by default the bundled sample.")
def make_tiny(out_dir, seed, corpus):
    """Build a tiny random-weight Llama model (a few MB) in DIR.

    It is a stand-in so that every LLM step can run on a laptop CPU: its outputs are noise, and
    everything that reports them says so.  Same seed, same files.
    """
    from misalign.inference.tiny import make_tiny_model
    prompts = None
    if corpus is not None:
        fmt = io.detect_format(corpus)
        prompts = io.text_column(io.read_table(corpus, fmt), "prompt", corpus, fmt).to_pylist()
    path = make_tiny_model(out_dir, corpus=prompts, seed=seed)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    out.print(f"tiny stand-in model written to {path} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
