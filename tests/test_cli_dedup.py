import json
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from misalign._lines import take_ranges
from misalign.cli import main

ROWS = [
    {"id": 1, "text": "How do I pick a lock?", "note": "007"},
    {"id": 2, "text": "Tell me about green tea.", "note": "a"},
    {"id": 3, "text": "how do I pick a LOCK??", "note": "b"},
    {"id": 4, "text": "Something else, about gardens.", "note": "c"},
]


def write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def read(path, fmt):
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if fmt == "csv":
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"id": pa.string(), "text": pa.string(), "note": pa.string()})).to_pylist()
    return pq.read_table(path).to_pylist()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_dedup_each_format_keeps_first_of_each_cluster(tmp_path, fmt):
    src, dst, clusters = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}", tmp_path / "clusters.csv"
    write(src, ROWS, fmt)
    result = run("dedup", src, dst, "--tau", 6, "--clusters", clusters)
    assert result.exit_code == 0, result.output
    kept = read(dst, fmt)
    assert [str(r["id"]) for r in kept] == ["1", "2", "4"]
    if fmt == "csv":
        assert kept[0]["note"] == "007"    # CSV values are text: no type guessing
    table = pacsv.read_csv(clusters).to_pylist()
    assert [r["representative"] for r in table] == [0, 1, 0, 3]
    assert "rows kept" in result.output


def test_features_are_chosen_and_recorded_in_the_outputs(tmp_path):
    src, dst, clusters = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "clusters.parquet"
    write(src, ROWS, "parquet")
    for features in ("char4", "word2"):
        result = run("dedup", src, dst, "--features", features, "--clusters", clusters)
        assert result.exit_code == 0 and f"{features}, 10" in result.output, result.output
        recorded = {"features": features, "tau": 10, "seed": 0, "merge_empty": False}
        assert json.loads(pq.read_schema(dst).metadata[b"misalign.dedup"]) == recorded
        table = pq.read_table(clusters)
        assert json.loads(table.schema.metadata[b"misalign.dedup"]) == recorded
        assert set(table.column("features").to_pylist()) == {features} and set(table.column("tau").to_pylist()) == {10}
    result = run("dedup", src, dst, "--features", "char9")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "char1..char8 or word1..word16" in result.output


def test_jsonl_output_copies_kept_lines_verbatim(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b'{"text": "alpha beta", "z": 1,  "a": [1, 2]}\n\n \t\r\n{"text": "ALPHA beta!", "z": 2, "a": []}\n'
                    b' {"text": "delta", "z": 4}\r\n{"text": "gamma", "z": 3, "a": null}')
    assert run("dedup", src, dst).exit_code == 0      # blank and whitespace lines are no rows; the last gets its newline
    assert dst.read_bytes() == (b'{"text": "alpha beta", "z": 1,  "a": [1, 2]}\n {"text": "delta", "z": 4}\r\n'
                                b'{"text": "gamma", "z": 3, "a": null}\n')


def test_kept_lines_are_gathered_from_their_ranges_and_a_range_outside_is_refused():
    raw = b"ab\ncd\nef"
    assert take_ranges(raw, np.array([0, 6]), np.array([3, 8])) == b"ab\nef"
    assert take_ranges(raw, np.array([], np.int64), np.array([], np.int64)) == b""
    for starts, ends in (([6], [9]), ([3], [2]), ([-1], [2])):
        with pytest.raises(ValueError, match="outside"):
            take_ranges(raw, np.array(starts), np.array(ends))


def fed(fifo, payload: bytes, *args, command="dedup"):
    """Run `command` on a FIFO that a thread feeds `payload`.  A second open of the FIFO would wait
    for a writer that never comes: the watchdog ends it (with no bytes) rather than hang the suite."""
    writer = threading.Thread(target=fifo.write_bytes, args=(payload,))
    watchdog = threading.Timer(20, lambda: open(fifo, "wb").close())
    watchdog.daemon = True        # should it fire after the command closed the FIFO, its open waits for ever
    writer.start()
    watchdog.start()
    result = run(command, fifo, *args)
    watchdog.cancel()
    writer.join()
    return result


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_fifo_input_is_read_once_in_each_format(tmp_path, fmt):
    """INPUT a FIFO (a pipe, `<(command)` with --format): one reading serves the table and, for
    JSON Lines, the lines copied out."""
    src, fifo, dst = tmp_path / f"src.{fmt}", tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    write(src, ROWS, fmt)
    os.mkfifo(fifo)
    result = fed(fifo, src.read_bytes(), dst, "--tau", 6)
    assert result.exit_code == 0, result.output
    assert [str(r["id"]) for r in read(dst, fmt)] == ["1", "2", "4"]


def test_a_csv_header_longer_than_the_first_read_of_it_is_read_whole(tmp_path):
    """The header is decoded from a growing start of the bytes (64 KiB first): behind a name of
    200,000 characters with a quoted newline, the id column is still known, so read as text ("007"
    stays "007"; a header cut short would leave pyarrow to read it as a number)."""
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    name = '"' + "n" * 100_000 + "\n" + "m" * 100_000 + '"'
    src.write_text(f"{name},id,text\nx,007,How do I pick a lock?\ny,008,how do I pick a LOCK??\n")
    result = run("dedup", src, dst, "--tau", 6)
    assert result.exit_code == 0, result.output
    assert pacsv.read_csv(dst).column_names == ["n" * 100_000 + "\n" + "m" * 100_000, "id", "text"]
    assert pacsv.read_csv(dst).num_rows == 1 and '"007"' in dst.read_text()


def test_csv_prompts_that_span_lines_are_read_across_pyarrows_blocks(tmp_path):
    """Quoted newlines in a file of several of pyarrow's 1 MB blocks: each row stays one row."""
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    texts = [f"prompt {i}\nabout {i * 7919 % 100_003} and\n{i * 104_729 % 1_000_003}" for i in range(100_000)]
    pacsv.write_csv(pa.table({"text": texts}), src)
    assert src.stat().st_size > 3 * 2**20     # several blocks
    result = run("dedup", src, dst, "--tau", 0)
    assert result.exit_code == 0, result.output
    assert pacsv.read_csv(dst, parse_options=pacsv.ParseOptions(newlines_in_values=True)).num_rows > 99_000


def test_a_blank_first_line_of_a_csv_is_skipped_as_pyarrow_skips_it(tmp_path):
    """The header our checks read is pyarrow's, so its columns are read as text ("007" stays "007")."""
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_bytes(b"\xef\xbb\xbf\nid,text\n007,How do I pick a lock?\n008,Tell me about green tea.\n")
    result = run("dedup", src, dst)
    assert result.exit_code == 0, result.output
    assert pacsv.read_csv(dst).column_names == ["id", "text"] and '"007"' in dst.read_text()


def test_a_bad_row_in_a_fifo_is_named_from_the_one_reading(tmp_path):
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    result = fed(fifo, b'{"text": "x"}\n\n{"text": null}\n', tmp_path / "out.jsonl")
    assert result.exit_code == 2 and "row 3: column 'text' is null or missing" in result.output, result.output


def test_classify_names_a_bad_row_in_a_fifo_from_the_one_reading(tmp_path):
    """classify reads its INPUT once too (before, the row's line was looked up by opening the FIFO
    again, which waited for a writer that never came)."""
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    result = fed(fifo, b'{"prompt": "x"}\n\n{"prompt": null}\n', tmp_path / "out.jsonl", command="classify")
    assert result.exit_code == 2 and "row 3: column 'prompt' is null or missing" in result.output, result.output


def test_a_device_input_is_refused_unread(tmp_path):
    """/dev/zero never ends: refused by what it is, before a byte is read (it used to be read for ever)."""
    result = run("dedup", "/dev/zero", tmp_path / "out.jsonl", "--format", "jsonl")
    assert result.exit_code == 2 and "/dev/zero: is a device or a terminal" in result.output, result.output
    assert not list(tmp_path.iterdir())


BAD_INPUTS = [
    ("missing.jsonl", None, "cannot read"),
    ("nocol.jsonl", '{"prompt": "x"}\n', "has no column 'text' (columns: prompt)"),
    ("number.jsonl", '{"text": "x"}\n{"text": 5}\n', "row 2: field 'text' is int here but str"),
    ("allnumbers.jsonl", '{"text": 1}\n{"text": 5}\n', "row 1: column 'text' holds int64 values"),
    ("null.jsonl", '{"text": "x"}\n\n{"text": null}\n', "row 3: column 'text' is null or missing"),
    ("broken.jsonl", '{"text": "x"}\n{"text": "y"\n', "row 2: is not valid JSON"),
    ("utf8.jsonl", b'{"text": "ok"}\n{"text": "bad \xff byte"}\n', "row 2: column 'text' is not valid UTF-8"),
    ("utf8.csv", b'text\nok\n"bad \xfe"\n', "row 2: column 'text' is not valid UTF-8"),
    ("blankfirst.csv", b"\xef\xbb\xbf\r\n\xc3,text\nx,y\n", "the header row is not valid UTF-8"),
    ("parquet.csv", "PARQUET", "looks like a Parquet file, not CSV"),
    ("parquet.jsonl", "PARQUET", "looks like a Parquet file, not JSONL"),
    ("fake.parquet", "text\nnot parquet\n", "is not a Parquet file"),
    ("prompts.txt", "text\n", "cannot tell the format"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_no_output(tmp_path, name, content, message):
    src, dst = tmp_path / name, tmp_path / ("out" + (tmp_path / name).suffix)
    if content == "PARQUET":
        pq.write_table(pa.table({"text": ["a"]}), src)
    elif isinstance(content, bytes):
        src.write_bytes(content)
    elif content is not None:
        src.write_text(content)
    result = run("dedup", src, dst)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(src) in lines[0] and message in " ".join(lines), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])


def test_output_format_must_match_input(tmp_path):
    src = tmp_path / "in.jsonl"
    write(src, ROWS, "jsonl")
    result = run("dedup", src, tmp_path / "out.csv")
    assert result.exit_code == 2 and "input's format" in result.output


def test_help_explains_the_command():
    result = run("dedup", "--help")
    assert result.exit_code == 0 and "near-duplicate" in result.output and "--tau" in result.output
