"""The released SaVaCu CSV layout and the paper's label conventions.

    row_index, label_safety, label_value, label_cultural, prompt,
    aligned_response_<generator>, misaligned_response_<generator>, ...   (one pair per generator)

Stage II reads it as items (one per row and generator); `DomainLabels` turns the labels as the
paper's files write them into taxonomy domains.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from misalign import tables
from misalign.errors import InputError
from misalign.taxonomy import DIMENSIONS, UNKNOWN, Taxonomy


def is_savacu(path) -> bool:
    """Whether a Stage II dataset is given as a SaVaCu CSV (else: a Stage I Parquet file or directory)."""
    return Path(path).suffix.lower() == ".csv"


SAVACU_REQUIRED = ("row_index", "label_safety", "label_value", "label_cultural", "prompt")


@dataclass
class SavacuPair:
    row: int                  # 1-based data row of the CSV
    row_index: str
    labels: dict              # dimension -> label text as written ("" = none)
    prompt: str
    generator: str
    aligned: str
    misaligned: str


def read_savacu(path) -> tuple[list[SavacuPair], list[tuple[int, str]]]:
    """The released SaVaCu layout: `row_index, label_safety, label_value, label_cultural, prompt`
    and one `aligned_response_<generator>` / `misaligned_response_<generator>` column pair per
    generator.  Returns one pair per (row, generator) holding both responses, and the rows set
    aside, as (row, reason): a row with more or fewer fields than the header, not UTF-8, an
    empty prompt, a row_index seen on an earlier row, or a generator with only one of its two
    responses.  A generator with neither is not a problem (not every generator answered every
    prompt).  Fields may be of any length; the file is read whole."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    rows = tables.csv_rows(path, raw)
    header = next(rows, (0, []))[1]
    generators = _savacu_header(path, header)
    pairs, problems, first_row = [], [], {}
    for row, fields in rows:
        if len(fields) != len(header):
            problems.append((row, f"has {len(fields)} fields, the header has {len(header)}"))
            continue
        if any(tables.undecodable(f) for f in fields):
            problems.append((row, "is not valid UTF-8"))
            continue
        record = {name: value.strip() for name, value in zip(header, fields)}
        if not record["prompt"]:
            problems.append((row, "prompt is empty"))
            continue
        if record["row_index"] in first_row:
            problems.append((row, f"row_index {record['row_index']!r} is also row {first_row[record['row_index']]}'s"))
            continue
        first_row[record["row_index"]] = row
        pairs.extend(_savacu_pairs(row, record, generators, problems))
    return pairs, problems


def _savacu_header(path, header: list[str]) -> list[str]:
    """The generators named by the header's response columns, after checking the layout."""
    tables.check_header(path, header)
    missing = [c for c in SAVACU_REQUIRED if c not in header]
    if missing:
        raise InputError(path, f"is not in the SaVaCu layout: no column {', '.join(missing)} "
                               f"(columns: {', '.join(header) or 'none'})")
    generators = [c.removeprefix("aligned_response_") for c in header if c.startswith("aligned_response_")]
    unmatched = sorted({*generators} ^ {c.removeprefix("misaligned_response_") for c in header
                                        if c.startswith("misaligned_response_")})
    if unmatched:
        raise InputError(path, "every aligned_response_<generator> column needs its misaligned_response_"
                               f"<generator> partner and back; unmatched: {', '.join(unmatched)}")
    if not generators:
        raise InputError(path, "has no aligned_response_<generator> / misaligned_response_<generator> columns")
    return generators


def _savacu_pairs(row: int, record: dict, generators: list[str], problems: list):
    labels = {dim: record[f"label_{dim}"] for dim in ("safety", "value", "cultural")}
    for gen in generators:
        aligned, misaligned = record[f"aligned_response_{gen}"], record[f"misaligned_response_{gen}"]
        if aligned and misaligned:
            yield SavacuPair(row, record["row_index"], labels, record["prompt"], gen, aligned, misaligned)
        elif aligned or misaligned:
            problems.append((row, f"generator {gen!r} has only its {'aligned' if aligned else 'misaligned'} "
                                  "response"))


class DomainLabels:
    """A label as written in a dataset -> a domain name of the taxonomy, or None for no domain.

    The paper's released files write "None" where a prompt has no domain in a dimension and
    "Unknown" where the classifier gave none; both, and an empty field, are no domain.  Names
    match ignoring case and spacing ("self-harm" is "Self-harm"), counted in `relaxed`."""
    NO_DOMAIN = {"", "none", UNKNOWN.lower()}

    def __init__(self, taxonomy: Taxonomy):
        self.names = {dim: {_label_key(d.name): d.name for d in taxonomy.of(dim)} for dim in DIMENSIONS}
        self.relaxed: dict[tuple[str, str], int] = {}

    def domain(self, dim: str, label) -> str | None:
        """The domain, None, or ValueError naming the label."""
        if label is None or _label_key(label) in self.NO_DOMAIN:
            return None
        name = self.names[dim].get(_label_key(label))
        if name is None:
            raise ValueError(f"label_{dim} {label!r} is not a {dim} domain (see misalign-fast taxonomy)")
        if name != label:
            self.relaxed[(label, name)] = self.relaxed.get((label, name), 0) + 1
        return name

    def notes(self) -> list[str]:
        if not self.relaxed:
            return []
        (label, name), _ = max(self.relaxed.items(), key=lambda kv: kv[1])
        return [f"{sum(self.relaxed.values()):,} labels matched a domain only when case and spacing are ignored "
                f"(e.g. {label!r} as {name!r})"]


def _label_key(label: str) -> str:
    return "".join(label.split()).casefold()
