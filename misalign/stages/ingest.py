"""Read the input prompts row by row, so that a bad row is set aside with its reason instead of
stopping the run: null or missing, not text, empty, over the length cap, not UTF-8, not JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import pyarrow as pa

from misalign import tables
from misalign.config import InputConfig
from misalign.errors import InputError



@dataclass
class Rejected:
    row: int           # 1-based data row (JSON Lines: line)
    reason: str
    value: str | None


@dataclass
class Prompts:
    """The run's input, read once: its usable prompts (id, prompt, origin) and the rows set aside."""
    source: str
    table: pa.Table
    rejected: list[Rejected]

    def longest(self, n: int) -> list[str]:
        return sorted(self.table.column("prompt").to_pylist(), key=len, reverse=True)[:n]


def input_source(config) -> str:
    """The run's input file: `input.path`, else the bundled sample."""
    return config.input.path or str(resources.files("misalign").joinpath("data/sample_prompts.jsonl"))


def read_input(config) -> Prompts:
    """The run's input as Stage I reads it (once per run: a FIFO or standard input works)."""
    source = input_source(config)
    table, rejected = read_prompts(source, config.input.column, config.input.format or None,
                                   config.input.max_chars, config.run.limit, config.input.max_bytes)
    return Prompts(source, table, rejected)


def read_prompts(path, column: str = "prompt", fmt: str | None = None, max_chars: int = 4000,
                 limit: int = 0, max_bytes: int = InputConfig.max_bytes) -> tuple[pa.Table, list[Rejected]]:
    """(table of id, prompt, origin; rejected rows).  Ids come from an `id` column when there is
    one, else from the row number, so they are stable across runs of the same file."""
    raw = _read_bounded(path, max_bytes)
    fmt = tables.detect_format(path, fmt)
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](path, raw, column)
    ids, prompts, rejected, generated = [], [], [], set()
    for row, record_id, value, problem in rows:
        if problem is None:
            problem = _check(value, max_chars) or (None if _encodable(record_id) else "id is not valid UTF-8")
        if problem:
            rejected.append(Rejected(row, problem, value if isinstance(value, str) and _encodable(value) else None))
            continue
        if record_id is None or str(record_id) == "":      # no id: one from the row number
            generated.add(len(ids))
            record_id = f"p{row:06d}"
        ids.append(str(record_id))
        prompts.append(value)
        if limit and len(prompts) >= limit:
            break
    if not prompts:
        raise InputError(path, f"holds no usable prompt in column {column!r}" + (
            f": all {len(rejected):,} rows set aside (row {rejected[0].row}: {rejected[0].reason})" if rejected
            else ": it has no rows"))
    if len(set(ids)) != len(ids):
        given = {i for k, i in enumerate(ids) if k not in generated}
        clash = next((ids[k] for k in sorted(generated) if ids[k] in given), None)
        if clash is not None:
            raise InputError(path, f"a row without an id gets {clash!r}, which another row has as its id: give "
                                   "every row an id, or none")
        raise InputError(path, "the id column has repeated values; ids must be unique")
    table = pa.table({"id": ids, "prompt": prompts, "origin": ["input"] * len(ids)})
    return table, rejected


def _read_bounded(path, max_bytes: int) -> bytes:
    """The file's bytes, at most `max_bytes` of them: a regular file or a pipe (a FIFO, standard
    input), never a device or a directory (`tables.input_status`)."""
    too_big = (f"holds more than input.max_bytes = {max_bytes:,} bytes; raise input.max_bytes if the "
               "machine has the memory for it, or split the file")
    if tables.input_status(path).st_size > max_bytes:
        raise InputError(path, too_big)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise InputError(path, too_big)
    return raw


def _encodable(value) -> bool:
    """False for text holding lone surrogates (a JSON "\\udc80", or CSV bytes that are not UTF-8)."""
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value, max_chars: int) -> str | None:
    if value is None:
        return "prompt is null or missing"
    if not isinstance(value, str):
        return f"prompt is {type(value).__name__}, not text"
    if not _encodable(value):
        return "not valid UTF-8"
    if not value.strip():
        return "prompt is empty"
    if len(value) > max_chars:
        return f"prompt has {len(value):,} characters, over the cap of {max_chars:,}"
    return None


def _jsonl_rows(path, raw: bytes, column: str):
    for line_no, record, problem in tables.jsonl_records(raw.split(b"\n")):
        if problem:
            yield line_no, None, None, problem
        else:
            yield line_no, record.get("id"), record.get(column), None


def _csv_rows(path, raw: bytes, column: str):
    rows = tables.csv_rows(path, raw)
    header = next(rows, (0, []))[1]
    tables.check_header(path, header)
    if column not in header:
        raise InputError(path, f"has no column {column!r} (columns: {', '.join(header)})")
    where, id_at = header.index(column), header.index("id") if "id" in header else None
    for row_no, fields in rows:
        if len(fields) != len(header):
            yield row_no, None, None, f"has {len(fields)} fields, the header has {len(header)}"
        elif tables.undecodable(fields[where]):
            yield row_no, None, None, "not valid UTF-8"
        else:
            yield row_no, (fields[id_at] or None) if id_at is not None else None, fields[where], None


def _parquet_rows(path, raw: bytes, column: str):
    table = tables.parquet_from_bytes(path, raw)
    if column not in table.column_names:
        raise InputError(path, f"has no column {column!r} (columns: {', '.join(table.column_names)})")
    values = table.column(column)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = values.cast(pa.large_binary())
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
    for row_no, (record_id, value) in enumerate(zip(ids, values.to_pylist()), start=1):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield row_no, None, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                continue
        yield row_no, record_id, value, None


def write_rejected(rejected: list[Rejected], path) -> None:
    with tables.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rejected:
            f.write(json.dumps({"row": r.row, "reason": r.reason, "value": r.value}, ensure_ascii=False) + "\n")
