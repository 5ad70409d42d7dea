"""`misalign-fast classify`: label a file of prompts with MiniLM embeddings, zero-shot or with a
probe (trained here on a labelled file, or loaded), and score the labels against reference
columns where the file has them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from misalign import classifiers, savacu, tables
from misalign.errors import InputError, MisalignError
from misalign.taxonomy import DIMENSIONS, UNKNOWN, Taxonomy


@dataclass
class LabelReport:
    method: str                    # "zero-shot" or "probe"
    model: str                     # the embedding model's name
    prompts: int
    seconds: float
    assigned: dict = field(default_factory=dict)     # dimension -> prompts given a domain
    agreement: dict = field(default_factory=dict)    # dimension -> {n, accuracy, macro_f1}, where referenced
    probe_saved: Path | None = None
    trained_on: int = 0


def label_file(input_path: Path, output_path: Path, column: str = "prompt", probe_path: Path | None = None,
               train_path: Path | None = None, save_probe: Path | None = None,
               reference_columns: tuple[str, ...] = DIMENSIONS, delta: float = 0.5) -> LabelReport:
    """Write INPUT's columns plus <dim>_domain, <dim>_prob and <dim>_probs to OUTPUT."""
    from misalign.inference.embedding_model import embedding_engine
    if probe_path and train_path:
        raise MisalignError("give --probe or --train, not both")
    table, prompts = _prompts(input_path, column)
    out_fmt = tables.detect_format(output_path)
    train = _prompts(train_path, column, labelled=True) if train_path else None
    taxonomy = Taxonomy.load()
    names = savacu.DomainLabels(taxonomy)
    # every label is read and every output checked before the engine starts
    train_labels = {d: _labels(train[0], d, train_path, names) for d in DIMENSIONS} if train else None
    references = {d: _labels(table, d, input_path, names) for d in DIMENSIONS
                  if d in reference_columns and d in table.column_names}
    probe = classifiers.LinearProbe.load(probe_path) if probe_path else None
    probe_saved = (save_probe or output_path.with_suffix(".probe.npz")) if train else None
    if probe_saved:
        tables.check_output(probe_saved)
    started = time.perf_counter()
    engine = embedding_engine()
    report = LabelReport("probe" if probe_path or train else "zero-shot", _model_name(engine.model), len(prompts), 0.0)
    try:
        embeddings = engine.embed(prompts)
        if train is not None:
            probe = classifiers.train_probe(engine.embed(train[1]), train_labels, taxonomy, engine.model)
            report.probe_saved, report.trained_on = probe_saved, len(train[1])
            probe.save(probe_saved)
        labels = probe.classify(embeddings, delta) if probe else classifiers.ZeroShotClassifier(
            engine, taxonomy, classifiers.ZeroShotConfig(delta=delta)).classify(embeddings)
    finally:
        engine.close()
    columns = classifiers.label_columns(labels)
    result = table.drop_columns([name for name in columns if name in table.column_names])
    for name, values in columns.items():
        result = result.append_column(name, pa.array(values))
    tables.write_table(result, output_path, out_fmt)
    report.seconds = time.perf_counter() - started
    for dim in DIMENSIONS:
        report.assigned[dim] = sum(a is not None for a in columns[f"{dim}_domain"])
        if dim in references:
            report.agreement[dim] = classifiers.agreement(columns[f"{dim}_domain"], references[dim])
    return report


def _prompts(path: Path, column: str, labelled: bool = False) -> tuple[pa.Table, list[str]]:
    table, texts = tables.read_text_column(path, column)
    prompts = texts.to_pylist()
    missing = [d for d in DIMENSIONS if labelled and d not in table.column_names]
    if missing:
        raise MisalignError(f"{path}: no label column {', '.join(missing)}")
    return table, prompts


def _labels(table: pa.Table, dim: str, path: Path, names: savacu.DomainLabels) -> list[str | None]:
    """A label column as the classifiers take it: a domain name (matched ignoring case and
    spacing), None for none ("", "None", null), and the paper's "Unknown" kept (left out of
    training and of agreement)."""
    out = []
    for row, value in enumerate(table.column(dim).to_pylist(), start=1):
        if isinstance(value, str) and value.strip().lower() == UNKNOWN.lower():
            out.append(UNKNOWN)
            continue
        try:
            out.append(names.domain(dim, value if value is None else str(value)))
        except ValueError as exc:
            raise InputError(path, str(exc).replace(f"label_{dim}", f"column {dim!r}"), row=row) from None
    return out


def _model_name(path: str) -> str:
    return Path(path).parent.name if Path(path).name == "model" else Path(path).name
