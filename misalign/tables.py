"""Read and write tables of records: JSON Lines, CSV and Parquet, chosen by extension or by name.

Everything is read into a pyarrow Table.  CSV columns are read as text (no type guessing: a
"007" stays "007").  Problems become `InputError`s naming the file and, where there is one, the
1-based data row (JSON Lines: the line number); writes go to a temporary name and are renamed
on success, so a failed run leaves no partial output.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import mmap
import os
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from misalign._lines import newline_offsets, take_ranges
from misalign.errors import InputError, OutputError

FORMATS = ("jsonl", "csv", "parquet")
MAX_BLOCK = 2**31 - 1          # pyarrow's largest block: a record up to 2 GiB
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
    return table_from_bytes(path, read_bytes(path), fmt)


def table_from_bytes(path, raw: bytes | mmap.mmap, fmt: str) -> pa.Table:
    """The Table of a file's bytes, already read (`path` names it in errors): what reads a FIFO
    or a pipe, which can be read only once, and what keeps the bytes for copying lines out."""
    if fmt == "parquet":
        return parquet_from_bytes(path, raw)
    if raw[:4] == _PARQUET_MAGIC:
        raise InputError(path, f"looks like a Parquet file, not {fmt.upper()}; pass --format parquet")
    return _csv_table(path, raw) if fmt == "csv" else _jsonl_table(path, raw)


def read_text_column(path, column: str, fmt: str | None = None) -> tuple[pa.Table, pa.ChunkedArray]:
    """A file's Table and its text `column` (see `text_column`), the file read once: a pipe works,
    and a bad JSON Lines row's line is found in the same bytes."""
    fmt = detect_format(path, fmt)
    raw = read_bytes(path)
    table = table_from_bytes(path, raw, fmt)
    return table, text_column(table, column, path, fmt, raw)


def input_status(path) -> os.stat_result:
    """`path`'s status, refused unless it is a regular file or a pipe: a directory is no table,
    and a device (/dev/zero) or a terminal could be read for ever."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise InputError(path, "is a directory, not a file")
    if not (stat.S_ISREG(status.st_mode) or stat.S_ISFIFO(status.st_mode)):
        raise InputError(path, "is a device or a terminal, not a file: save what it gives to a file, or pipe it in")
    return status


def read_bytes(path) -> bytes | mmap.mmap:
    """The whole file, read once: a regular file is mapped into memory rather than copied (~25 ms
    of a 40 MB dedup), a pipe read.  The price of the mapping: a file truncated while a command
    uses it ends the process (SIGBUS); our own outputs replace files by renaming, which leaves a
    mapped file whole."""
    input_status(path)
    try:
        with open(path, "rb") as f:
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                try:
                    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):      # an empty file, a file system that maps nothing
                    pass
            return f.read()
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None


def _jsonl_table(path, raw: bytes | mmap.mmap) -> pa.Table:
    """Records of any size; no bytes at all is a table without rows (like a CSV with only a header)."""
    if not raw:                           # pyarrow refuses it; blank lines alone it reads as no rows
        return pa.table({})
    try:
        return _with_block_size(len(raw), lambda block: pajson.read_json(pa.BufferReader(raw), read_options=(
            pajson.ReadOptions(block_size=block) if block else None)))
    except pa.ArrowInvalid as exc:
        _locate_jsonl_problem(path, raw)
        raise InputError(path, f"is not valid JSON Lines: {one_line(exc)}") from None


def parquet_from_bytes(path, raw: bytes | mmap.mmap) -> pa.Table:
    """A Parquet file already read into memory (`path` names it in errors): a FIFO's, say."""
    if raw[:4] != _PARQUET_MAGIC:
        raise InputError(path, "is not a Parquet file (it does not start with PAR1)")
    try:
        import pyarrow.parquet as pq      # imported where used: a JSON Lines dedup starts ~20 ms sooner
        return pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"is not a readable Parquet file: {exc}") from None


def _csv_table(path, raw: bytes | mmap.mmap) -> pa.Table:
    header = _csv_header(raw)
    if not header:
        raise InputError(path, "is empty: a CSV file needs a header row")
    header[0] = header[0].lstrip("\ufeff")
    if any(undecodable(name) for name in header):
        raise InputError(path, "the header row is not valid UTF-8", row=None)
    check_header(path, header)
    block = 1 << 24                        # quotes pair up, escaped ones too: an odd count leaves one open
    if sum(raw[at:at + block].count(b'"') for at in range(0, len(raw), block)) % 2:
        _locate_csv_problem(path, header, raw)
    text = {name: pa.string() for name in header}
    try:
        return _with_block_size(len(raw), lambda block: pacsv.read_csv(
            pa.BufferReader(raw), read_options=pacsv.ReadOptions(use_threads=True, block_size=block),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),    # a prompt may span lines
            convert_options=pacsv.ConvertOptions(column_types=text, strings_can_be_null=False)))
    except pa.ArrowInvalid as exc:
        _locate_csv_problem(path, header, raw)
        raise InputError(path, f"is not valid CSV: {one_line(exc)}") from None


def _csv_header(raw: bytes | mmap.mmap) -> list[str] | None:
    """The first row of a CSV file's bytes that is not blank (pyarrow skips those too), decoded
    from as short a start of them as holds it (a quoted field may span lines), bytes that are not
    UTF-8 kept as surrogates."""
    size = 1 << 16
    while True:
        text = raw[:size].decode("utf-8", errors="surrogateescape")
        stream = io.StringIO(text, newline="")
        with csv_fields_unbounded():
            header = next((row for row in csv.reader(stream) if row not in ([], [""], ["\ufeff"])), None)
        if stream.tell() < len(text) or size >= len(raw):      # the row ended inside what was decoded
            return header
        size *= 4


def _with_block_size(size: int, read):
    """`read(block_size)` with pyarrow's default block, and again with the whole file (`size`
    bytes) as one block when a record is larger than that (the table holds the whole file anyway)."""
    try:
        return read(None)
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc):
            raise
    return read(min(max(size + 1, 1 << 20), MAX_BLOCK))


@contextmanager
def csv_fields_unbounded():
    """Let Python's csv module read fields of any length (its default stops at 131,072 chars)."""
    previous = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def check_header(path, header: list[str]) -> None:
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputError(path, f"the header names column {', '.join(map(repr, repeated))} more than once")


def csv_rows(path, raw: bytes | None = None) -> Iterator[tuple[int, list[str]]]:
    """(row, fields) of a CSV file read strictly by Python's csv module, the header as row 0:
    fields of any length, bytes that are not UTF-8 kept as surrogates (see `undecodable`), and
    a malformed file an InputError naming the row.  `raw`: the file's bytes, if already read."""
    raw = Path(path).read_bytes() if raw is None else raw
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    row = 0
    with csv_fields_unbounded():
        try:
            for row, fields in enumerate(csv.reader(io.StringIO(text, newline=""), strict=True)):
                yield row, fields
        except csv.Error as exc:
            problem = "a quoted field is never closed" if "end of data" in str(exc) else f"is not valid CSV ({exc})"
            raise InputError(path, problem, row=row + 1) from None


def _locate_csv_problem(path, header: list[str], raw: bytes | mmap.mmap) -> None:
    """Read the file with Python's strict csv module to name the first bad row; return if none."""
    for row, record in csv_rows(path, raw[:]):
        if row == 0:
            continue
        if len(record) != len(header):
            raise InputError(path, f"has {len(record)} fields, the header has {len(header)}", row=row)
        bad = next((name for name, field in zip(header, record) if undecodable(field)), None)
        if bad is not None:
            raise InputError(path, f"column {bad!r} is not valid UTF-8", row=row)


def undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def one_line(exc) -> str:
    """An exception's message on one line, at most 200 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def jsonl_records(lines: Iterable[bytes]) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, record, None), or (line number, None, what is wrong), for each non-blank
    line of JSON Lines: the one reading of a line that the strict table reader and the
    row-tolerant prompt reader (misalign.stages.ingest) share."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield line_no, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
            continue
        except json.JSONDecodeError as exc:
            yield line_no, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(record, dict):
            yield line_no, None, f"a JSON {type(record).__name__}, not an object"
            continue
        yield line_no, record, None


def _locate_jsonl_problem(path, raw: bytes | mmap.mmap) -> None:
    """Go line by line to name the first line pyarrow refused; return if none is found."""
    types: dict[str, type] = {}
    for line_no, record, problem in jsonl_records(io.BytesIO(raw)):
        if problem:
            raise InputError(path, f"is {problem}", row=line_no)
        for key, value in record.items():
            if value is None:
                continue
            seen = types.setdefault(key, type(value))
            if seen is not type(value) and {seen, type(value)} != {int, float}:
                raise InputError(path, f"field {key!r} is {type(value).__name__} here but "
                                       f"{seen.__name__} on earlier lines", row=line_no)


def jsonl_lines(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(line number, start, end) of each data row's line in `raw`: 1-based, and byte offsets with
    the newline included (pyarrow skips blank lines, so rows and lines can differ)."""
    if not raw:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    newlines = newline_offsets(raw)
    start = np.concatenate([[0], newlines + 1])
    end = np.concatenate([newlines + 1, [len(raw)]])
    # a line is blank when it holds only whitespace: only one that is empty or begins with
    # whitespace can be, and only those are looked at one by one
    first_byte = np.frombuffer(raw, dtype=np.uint8)[np.minimum(start, len(raw) - 1)]
    maybe_blank = np.flatnonzero((start == end) | np.isin(first_byte, _WHITESPACE))
    data_rows = np.ones(len(start), dtype=bool)
    data_rows[[i for i in maybe_blank.tolist() if not raw[start[i]:end[i]].strip()]] = False
    return np.flatnonzero(data_rows) + 1, start[data_rows], end[data_rows]


_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)      # what bytes.strip() removes


def text_column(table: pa.Table, column: str, path, fmt: str, raw: bytes | mmap.mmap) -> pa.ChunkedArray:
    """The named column, checked to hold only non-null, valid UTF-8 strings; `raw`, the bytes
    `table` was read from, names a JSON Lines row's line without reading the file again."""
    if table.num_rows == 0 and table.num_columns == 0:      # an empty JSON Lines file
        return pa.chunked_array([], pa.string())
    if column not in table.column_names:
        raise InputError(path, f"has no column {column!r} (columns: {', '.join(table.column_names)})")
    values = table.column(column)
    if pa.types.is_large_string(values.type) or pa.types.is_string(values.type):
        pass
    elif pa.types.is_null(values.type):
        raise InputError(path, f"column {column!r} is null in every row", row=_row_label(path, fmt, 0, raw))
    else:
        first = next(i for i, v in enumerate(values.to_pylist()) if v is not None)
        raise InputError(path, f"column {column!r} holds {values.type} values, expected text "
                               f"(value {values[first].as_py()!r})", row=_row_label(path, fmt, first, raw))
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(path, f"column {column!r} is null or missing", row=_row_label(path, fmt, first, raw))
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
                                     row=_row_label(path, fmt, offset + i, raw)) from None
        offset += len(chunk)
    return values


def _row_label(path, fmt: str, index: int, raw: bytes | mmap.mmap) -> int:
    """The 1-based row (JSON Lines: line) a user sees for a 0-based table index."""
    if fmt == "jsonl":
        return int(jsonl_lines(raw)[0][index])
    return index + 1


def require_distinct(paths: dict) -> None:
    """Refuse two of the named paths (None: not given) that are one file, through links too."""
    seen = {}
    for name, path in paths.items():
        if path is None:
            continue
        key = Path(path).resolve()
        same = next((other for other, known in seen.items() if known == key or _same_file(known, key)), None)
        if same:
            raise InputError(path, f"{same} and {name} name the same file: give {name} a path of its own")
        seen[name] = key


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:            # one of them does not exist yet
        return False


def check_output(path) -> None:
    """OutputError unless `path` is absent or a regular file: the rename that writes an output
    would replace whatever is there, and a device, a FIFO, a socket, a directory or a symbolic
    link (a file elsewhere) is not ours to replace."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        raise OutputError(f"{path} is a symbolic link (to {os.readlink(path)}): name the file itself to write "
                          "there, or another path; nothing was written")
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise OutputError(f"{path} is {kind}: outputs are written as regular files and replace nothing else; "
                      "name a file path; nothing was written")


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The file is created with the user's umask (as a plain open would, not mkstemp's 0600), so
    collaborators can read a run on shared storage.  Its name carries our process id, so that
    the next write of `path` removes what a killed process left behind.
    """
    path = Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `atomic_path` temporaries of `path` whose process is no longer running here."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            stale.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's process
        return True
    return True


def write_table(table: pa.Table, path, fmt: str | None = None) -> None:
    """Write a Table atomically in the given format (JSON Lines: one object per row)."""
    fmt = detect_format(path, fmt)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            pq.write_table(table, tmp)
        elif fmt == "csv":
            pacsv.write_csv(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for batch in table.to_batches(max_chunksize=65536):
                    for record in batch.to_pylist():
                        f.write(json.dumps(record, ensure_ascii=False))
                        f.write("\n")


def write_rows_like(source: bytes | mmap.mmap, table: pa.Table, keep: np.ndarray, path, fmt: str) -> None:
    """Write the kept rows of `table` in its source's format.

    JSON Lines output copies the kept lines of `source` (the bytes `table` was read from) byte
    for byte, so fields keep their spelling and order; CSV and Parquet are written from the table.
    """
    if fmt != "jsonl":
        write_table(table.filter(pa.array(keep)), path, fmt)
        return
    _, start, end = jsonl_lines(source)
    with atomic_path(path) as tmp, open(tmp, "wb") as dst:
        dst.write(take_ranges(source, start[keep], end[keep]))
        if keep.any() and source[end[keep][-1] - 1:end[keep][-1]] != b"\n":     # the last line had none
            dst.write(b"\n")
