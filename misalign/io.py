"""Read and write prompt tables: JSON Lines, CSV and Parquet, chosen by extension or by name.

Everything is read into a pyarrow Table.  CSV columns are read as text (no type guessing: a
"007" stays "007").  Problems become `InputError`s naming the file and, where there is one, the
1-based data row (JSON Lines: the line number); writes go to a temporary name and are renamed
on success, so a failed run leaves no partial output.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from misalign.errors import InputError

FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}
_PARQUET_MAGIC = b"PAR1"


def detect_format(path, fmt: str | None = None) -> str:
    """The format named by `fmt`, else the one the file's extension says."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(path, f"unknown format {fmt!r} (choose one of {', '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise InputError(path, f"cannot tell the format from the extension {suffix or '(none)'!r}; "
                               f"use .jsonl, .csv or .parquet, or pass --format")
    return _EXTENSIONS[suffix]


def read_table(path, fmt: str | None = None) -> pa.Table:
    """Read a whole file into a Table, checking that it is the format it claims to be."""
    fmt = detect_format(path, fmt)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    if fmt == "parquet":
        if head != _PARQUET_MAGIC:
            raise InputError(path, "is not a Parquet file (it does not start with PAR1)")
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, f"is not a readable Parquet file: {exc}") from None
    if head == _PARQUET_MAGIC:
        raise InputError(path, f"looks like a Parquet file, not {fmt.upper()}; pass --format parquet")
    return _read_csv(path) if fmt == "csv" else _read_jsonl(path)


def _read_csv(path) -> pa.Table:
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise InputError(path, "is empty: a CSV file needs a header row")
    header[0] = header[0].lstrip("\ufeff")
    text = {name: pa.string() for name in header}
    try:
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=True),
                              convert_options=pacsv.ConvertOptions(column_types=text,
                                                                   strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        if "UTF8" not in str(exc):
            raise InputError(path, f"is not valid CSV: {exc}") from None
    # Find the first row that is not UTF-8, to name it.
    raw = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in header}))
    for name in raw.column_names:
        for row, value in enumerate(raw.column(name).to_pylist(), start=1):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, f"column {name!r} is not valid UTF-8 "
                                       f"({exc.reason} at byte {exc.start})", row=row) from None
    raise InputError(path, "is not valid UTF-8")


def _read_jsonl(path) -> pa.Table:
    try:
        table = pajson.read_json(path)
    except pa.ArrowInvalid as exc:
        _locate_jsonl_problem(path)
        raise InputError(path, f"is not valid JSON Lines: {exc}") from None
    if table.num_rows == 0:
        raise InputError(path, "has no rows")
    return table


def _locate_jsonl_problem(path) -> None:
    """Re-read line by line to name the first line pyarrow refused; return if none is found."""
    types: dict[str, type] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputError(path, f"is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                                 row=line_no) from None
            except json.JSONDecodeError as exc:
                raise InputError(path, f"is not valid JSON ({exc.msg} at column {exc.colno})",
                                 row=line_no) from None
            if not isinstance(record, dict):
                raise InputError(path, f"is a JSON {type(record).__name__}, expected an object",
                                 row=line_no)
            for key, value in record.items():
                if value is None:
                    continue
                seen = types.setdefault(key, type(value))
                if seen is not type(value) and {seen, type(value)} != {int, float}:
                    raise InputError(path, f"field {key!r} is {type(value).__name__} here but "
                                           f"{seen.__name__} on earlier lines", row=line_no)


def jsonl_line_numbers(path) -> np.ndarray:
    """Line number of each data row (pyarrow skips blank lines, so rows and lines can differ)."""
    with open(path, "rb") as f:
        return np.array([n for n, line in enumerate(f, start=1) if line.strip()], dtype=np.int64)


def text_column(table: pa.Table, column: str, path, fmt: str) -> pa.ChunkedArray:
    """The named column, checked to hold only non-null, valid UTF-8 strings."""
    if column not in table.column_names:
        raise InputError(path, f"has no column {column!r} (columns: {', '.join(table.column_names)})")
    values = table.column(column)
    if pa.types.is_large_string(values.type) or pa.types.is_string(values.type):
        pass
    elif pa.types.is_null(values.type):
        raise InputError(path, f"column {column!r} is null in every row", row=_row_label(path, fmt, 0))
    else:
        first = next(i for i, v in enumerate(values.to_pylist()) if v is not None)
        raise InputError(path, f"column {column!r} holds {values.type} values, expected text "
                               f"(value {values[first].as_py()!r})", row=_row_label(path, fmt, first))
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(path, f"column {column!r} is null or missing", row=_row_label(path, fmt, first))
    offset = 0
    for chunk in values.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            for i, blob in enumerate(chunk.cast(pa.binary()).to_pylist()):
                try:
                    blob.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(path, f"column {column!r} is not valid UTF-8 "
                                           f"({exc.reason} at byte {exc.start})",
                                     row=_row_label(path, fmt, offset + i)) from None
        offset += len(chunk)
    return values


def _row_label(path, fmt: str, index: int) -> int:
    """The 1-based row (JSON Lines: line) a user sees for a 0-based table index."""
    if fmt == "jsonl":
        return int(jsonl_line_numbers(path)[index])
    return index + 1


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: pa.Table, path, fmt: str | None = None) -> None:
    """Write a Table atomically in the given format (JSON Lines: one object per row)."""
    fmt = detect_format(path, fmt)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt == "csv":
            pacsv.write_csv(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for batch in table.to_batches(max_chunksize=65536):
                    for record in batch.to_pylist():
                        f.write(json.dumps(record, ensure_ascii=False))
                        f.write("\n")


def write_rows_like(source, table: pa.Table, keep: np.ndarray, path, fmt: str) -> None:
    """Write the kept rows of `table` (read from `source`) in the source's format.

    JSON Lines output copies the kept lines byte for byte, so fields keep their spelling and
    order; CSV and Parquet are written from the table.
    """
    if fmt != "jsonl":
        write_table(table.filter(pa.array(keep)), path, fmt)
        return
    wanted = set(jsonl_line_numbers(source)[keep].tolist())
    with atomic_path(path) as tmp, open(source, "rb") as src, open(tmp, "wb") as dst:
        for line_no, line in enumerate(src, start=1):
            if line_no in wanted:
                dst.write(line if line.endswith(b"\n") else line + b"\n")


# ------------------------------------------------------------------- the released SaVaCu CSV
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
    generator.  Returns one pair per (row, generator) holding both responses, and the problems
    found, as (row, reason): an empty prompt, or a generator with only one of its two responses.
    A generator with neither is not a problem (not every generator answered every prompt)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
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
    pairs, problems = [], []
    for row, record in enumerate(reader, start=1):
        if None in record:
            problems.append((row, f"{len(record[None])} more field(s) than the header has"))
            continue
        prompt = (record.get("prompt") or "").strip()
        if not prompt:
            problems.append((row, "prompt is empty"))
            continue
        labels = {dim: (record.get(f"label_{dim}") or "").strip() for dim in ("safety", "value", "cultural")}
        for gen in generators:
            aligned = (record.get(f"aligned_response_{gen}") or "").strip()
            misaligned = (record.get(f"misaligned_response_{gen}") or "").strip()
            if aligned and misaligned:
                pairs.append(SavacuPair(row, record["row_index"], labels, prompt, gen, aligned, misaligned))
            elif aligned or misaligned:
                problems.append((row, f"generator {gen!r} has only its {'aligned' if aligned else 'misaligned'} "
                                      "response"))
    return pairs, problems
