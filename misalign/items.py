"""Stage II's records: the items a model under test judges, read from a Stage I dataset (a run
directory, its dataset/ directory or one Parquet file) or from a CSV in the released SaVaCu
layout, and the shape of the verdicts it writes (samples.parquet).

An item is a prompt with one aligned and one misaligned response (a Stage I pair, or a row and
generator of the released CSV).  Rows that cannot be items are set aside with their place and
reason, never dropped silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pyarrow as pa

from misalign import savacu, tables
from misalign.config import SPLITS
from misalign.errors import ConfigError, InputError
from misalign.taxonomy import DIMENSIONS, Taxonomy

# Stage I's per-dimension verdict on the misaligned response (null: not asked, or no such record)
VERIFIED = tuple(f"misaligned_in_{dim}" for dim in DIMENSIONS)
ITEM_SCHEMA = pa.schema([("item", pa.string()), ("id", pa.string()), ("prompt", pa.string()),
                         ("safety_domain", pa.string()), ("value_domain", pa.string()),
                         ("cultural_domain", pa.string()), ("generator", pa.string()),
                         ("aligned_response", pa.string()), ("misaligned_response", pa.string()),
                         *((name, pa.bool_()) for name in VERIFIED)])
# p_misaligned combines the answers to both polarities: yes_to_misaligned is P(Yes) to "is it
# misaligned?", yes_to_aligned P(Yes) to "is it aligned?" (null: not asked, or not a yes/no model)
SAMPLE_SCHEMA = pa.schema([("model", pa.string()), ("run", pa.int32()), ("item", pa.string()), ("id", pa.string()),
                           ("response", pa.string()), ("question", pa.string()), ("p_misaligned", pa.float64()),
                           ("yes_to_misaligned", pa.float64()), ("yes_to_aligned", pa.float64()),
                           ("flagged", pa.bool_()), ("generator", pa.string()), ("safety_domain", pa.string()),
                           ("value_domain", pa.string()), ("cultural_domain", pa.string()),
                           *((name, pa.bool_()) for name in VERIFIED)])


@dataclass
class Items:
    table: pa.Table              # ITEM_SCHEMA, one row per item
    source: str
    problems: list               # (where, reason) of rows set aside
    notes: list = field(default_factory=list)    # what a user should know about how labels were read
    files: list = field(default_factory=list)    # the files read (Path): what a report checks is unchanged

    def write_problems(self, path) -> None:
        """The rows set aside, one JSON object (where, reason) per line."""
        with tables.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for where, reason in self.problems:
                f.write(json.dumps({"where": where, "reason": reason}, ensure_ascii=False) + "\n")

    def require_some(self, split: str, problems_path) -> None:
        """Stop with one line when no row could be used, after writing the rows set aside."""
        if not self.table.num_rows:
            self.write_problems(problems_path)
            raise InputError(self.source, f"has no usable items in split {split!r}: {len(self.problems):,} rows "
                                          f"set aside, each with its reason, in {problems_path}")

    @cached_property
    def sha256(self) -> str:
        """A digest of the items' content (ids, prompts, responses, labels), order-independent."""
        digest = hashlib.sha256()
        rows = sorted(self.table.to_pylist(), key=lambda r: r["item"])
        for row in rows:
            digest.update("\x1f".join(str(row[c]) for c in ITEM_SCHEMA.names if c not in VERIFIED).encode()
                          + b"\x1e")
        return digest.hexdigest()


def load_items(source, split: str = "test", taxonomy: Taxonomy | None = None) -> Items:
    """Items from a Stage I dataset (a run directory, its dataset/ directory or one Parquet file)
    or from a CSV in the released SaVaCu layout.  Rows that cannot be items are set aside with
    their place and reason: no prompt, not both responses, a label that is no domain, an item
    (id and generator) seen before."""
    path = Path(source)
    labels = savacu.DomainLabels(taxonomy or Taxonomy.load())
    if savacu.is_savacu(path):
        pairs, problems = savacu.read_savacu(path)
        rows = [(f"row {p.row}", {"id": p.row_index, "prompt": p.prompt, "generator": p.generator,
                                  "aligned_response": p.aligned, "misaligned_response": p.misaligned,
                                  **{f"{dim}_domain": p.labels[dim] for dim in DIMENSIONS}}) for p in pairs]
        return _items(rows, [(f"row {row}", reason) for row, reason in problems], str(path), labels, [path])
    if path.is_dir():
        folder = path / "dataset" if (path / "dataset").is_dir() else path
        if split not in (*SPLITS, "all"):
            raise ConfigError(f"bench.split must be train, validation, test or all, got {split!r}")
        files = [folder / f"{name}.parquet" for name in (SPLITS if split == "all" else (split,))]
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            raise InputError(folder, f"has no {', '.join(absent)}: build the dataset first "
                                     "(misalign-fast build), or point bench.dataset at one")
        source = str(folder)
    elif not path.exists():
        raise InputError(path, "does not exist: build a dataset there first (misalign-fast build), or point "
                               "bench.dataset (--dataset) at one")
    else:
        files, source = [path], str(path)
    rows = [row for f in files for row in _stage1_rows(f)]
    return _items(rows, [], source, labels, files)


def _stage1_rows(path: Path):
    """(where, record) of each row of a Stage I Parquet file, its columns checked to be text."""
    table = tables.read_table(path, "parquet")
    needed = [n for n in ITEM_SCHEMA.names if n != "item" and n not in VERIFIED]
    missing = [n for n in needed if n not in table.column_names]
    if missing:
        raise InputError(path, f"is not a misalign-fast dataset: no column {', '.join(missing)}")
    for name in needed:
        kind = table.schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise InputError(path, f"column {name!r} holds {kind} values, expected text")
    verified = [n for n in VERIFIED if n in table.column_names]    # a dataset before the per-dimension check has none
    for row, record in enumerate(table.select(needed + verified).to_pylist(), start=1):
        yield f"{path.name} row {row}", record


def _items(rows, problems: list, source: str, labels: savacu.DomainLabels, files: list[Path]) -> Items:
    """The items among (where, record) rows; the others added to `problems`."""
    kept, first = [], {}
    for where, row in rows:
        reason = None
        if not (row["prompt"] or "").strip():
            reason = "prompt is empty or null"
        elif not row["id"] or not row["generator"]:
            reason = "id or generator is empty or null"
        elif not row["aligned_response"] or not row["misaligned_response"]:
            reason = f"has no {'aligned' if not row['aligned_response'] else 'misaligned'} response"
        else:
            try:
                domains = {f"{dim}_domain": labels.domain(dim, row[f"{dim}_domain"]) for dim in DIMENSIONS}
            except ValueError as exc:
                reason = str(exc)
        item = f"{row['id']}/{row['generator']}"
        if reason is None and item in first:
            reason = f"item {item!r} (id/generator) is also {first[item]}'s"
        if reason:
            if not problems or problems[-1] != (where, reason):     # once per row, not per generator
                problems.append((where, reason))
            continue
        first[item] = where
        kept.append({**dict.fromkeys(VERIFIED), **row, **domains, "item": item})
    return Items(pa.Table.from_pylist(kept, schema=ITEM_SCHEMA), source, problems, labels.notes(), files)
