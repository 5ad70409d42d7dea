"""Bad input, tried as a user would (issue #11): one clear line, exit status 2, before any
engine starts, nothing lost; and the paper's own conventions accepted.  No engine runs here."""
import csv
import errno
import json
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from misalign import config as config_mod
from misalign import report, rundir, tables, terminal
from misalign.cli import main
from misalign.cli.common import load_config as _load_config
from misalign.errors import ConfigError, InputError, OutputError
from misalign.inference import EngineError, OpenAIConfig, OpenAIEngine, SamplingConfig
from misalign.items import SAMPLE_SCHEMA, load_items

from conftest import shared_file

SAVACU_HEADER = "row_index,label_safety,label_value,label_cultural,prompt,aligned_response_g,misaligned_response_g\n"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    """Exit 2 with one line that starts with error: and holds every fragment."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


# 1 ------------------------------------------------------------------- messages are plain text

def test_error_text_is_never_read_as_markup(tmp_path):
    one_line_error(cli("check", "--set", "bogus.x=1"), "unknown section [bogus]")
    one_line_error(cli("check", "--set", "run.nope=1"), "[run] has no setting nope")
    for name in ("a[red]b.jsonl", "a[/]b.jsonl"):
        one_line_error(cli("dedup", tmp_path / name, tmp_path / "out.jsonl"), name, "cannot read")


def test_report_titles_with_brackets_print_as_written(tmp_path):
    rows = [{"model": "m", "run": 0, "item": f"i{k}", "response": r, "question": "joint", "p_misaligned": 0.5,
             "flagged": r == "misaligned", "generator": "g", "safety_domain": None, "value_domain": None,
             "cultural_domain": None} for k in range(3) for r in ("aligned", "misaligned")]
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), tmp_path / "samples.parquet")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "meta.json").write_text(json.dumps({
        "dataset": {"source": "x[/]", "split": "test", "items": 3, "sha256": "0", "set_aside": 1},
        "models": {"m": {"description": "m (/models/[/]odd[red])", "kind": "vllm", "stand_in": False}},
        "runs": 1, "threshold": 0.5, "temperature": 0.0, "questions": ["joint"], "seed": 0, "bootstrap": 0,
        "config": {}, "versions": {}, "profile": []}))
    out = StringIO()
    terminal.benched(Console(file=out, width=200), report.report(tmp_path))
    assert "m: m (/models/[/]odd[red])" in out.getvalue() and "rows of x[/] set aside" in out.getvalue()


# 2 ------------------------------------------------------------------- one validation of the config

@pytest.mark.parametrize("override,message", [
    ("classify.delta=3", "classify.delta must be within [0, 1], got 3.0"),
    ("classify.delta=nan", "classify.delta must be a number, got nan"),
    ("reject.threshold=7", "reject.threshold must be within [0, 1]"),
    ("split.train=-1", "split.train must be within [0, 1]"),
    ("split.train=0.6", "split.train + split.validation + split.test must be 1, got 0.7999"),
    ("expand.floor=-5", "expand.floor must be >= 0"),
    ("reject.rounds=-1", "reject.rounds must be >= 0"),
    ("respond.candidates=0", "respond.candidates must be >= 1"),
    ("respond.temperature=-1", "respond.temperature must be >= 0"),
    ("input.max_chars=-1", "input.max_chars must be >= 1"),
    ("run.shard_rows=-1", "run.shard_rows must be >= 1"),
    ("run.shard_rows=0", "run.shard_rows must be >= 1"),
    ("run.seed=-1", "run.seed must be within [0, "),
    ("run.seed=1e400", "run.seed must be a number, got inf"),
    ("models.tiny.tensor_parallel_size=0", "models.tiny.tensor_parallel_size must be >= 1"),
    ('bench.split="dev"', 'bench.split must be "train" or "validation" or "test" or "all", got \'dev\''),
    ("bench.bootstrap=-1", "bench.bootstrap must be >= 0"),
    ("dedup.tau=70", "dedup.tau must be within [0, 63]"),
    ('bench.models=["length-only"]', "bench.models must be names other than 'length-only'"),
    ("dedup.tau=inf", "dedup.tau must be a number, got inf"),
    ("respond.candidates=2.7", "respond.candidates must be a whole number, got 2.7"),
    ('respond.models="tiny"', "respond.models must be a list of names"),
    ("models.tiny=5", "[models.tiny] must be a section of settings, got 5"),
    ("run.dir.x=1", "run.dir must be text"),
    ('classify.method="regex"', 'classify.method must be "embedding" or "llm"'),
    ('models.tiny.kind="onnx"', 'models.tiny.kind must be "vllm" or "openai" or "probe"'),
    ("run.seed=" + "9" * 400, "run.seed must be within [0, "),
    ("classify.delta=" + "9" * 400, "classify.delta must be a number a float can hold"),
    ("ray.gpus_per_worker=0", "ray.gpus_per_worker must be > 0"),
    ('bench.models=["tiny", "tiny"]', "bench.models must be a list of distinct names"),
    ('models.mine.kind="vllm"', "[models.mine] needs a path"),
    ('models.r.kind="openai"', "models.r.base_url must be an http:// or https:// URL with a host"),
])
def test_out_of_range_and_mistyped_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError) as caught:
        config_mod.load(None, [override])
    assert message in str(caught.value)


def test_a_malformed_server_url_is_refused_at_load():
    with pytest.raises(ConfigError, match="base_url must be an http"):
        config_mod.load(None, ['models.r.kind="openai"', 'models.r.base_url="http://[::1/v1"'])


def test_all_zero_split_fractions_are_refused():
    with pytest.raises(ConfigError, match="must be 1, got 0.0"):
        config_mod.load(None, ["split.train=0", "split.validation=0", "split.test=0"])


@pytest.mark.parametrize("text,message", [
    ("run = 5\n", "[run] must be a section of settings, got 5"),
    ("[input]\npath = 5\n", "input.path must be text"),
    ("[models]\ntiny = 5\n", "[models.tiny] must be a section of settings"),
    ("models = 3\n", "[models] must hold one [models.NAME] section per model"),
])
def test_mistyped_sections_in_a_file_are_named(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert message in str(caught.value)


def test_a_bad_value_stops_the_command_before_any_engine(tmp_path):
    one_line_error(cli("run", "--run-dir", tmp_path / "r", "--set", "classify.delta=3"), "classify.delta")
    assert not (tmp_path / "r").exists()


def test_set_takes_bare_text_for_text_settings():
    config = config_mod.load(None, ["run.dir=2024", "input.path=data/x.csv", 'bench.dataset="a b.csv"'])
    assert (config.run.dir, config.input.path, config.bench.dataset) == ("2024", "data/x.csv", "a b.csv")


# 3 ------------------------------------------------------------------- options are values, not TOML

@pytest.mark.parametrize("directory", ['a"b', "a\\bc", "C:\\temp\\new", 'x"\n#', "tab\there", "del\x7f"])
def test_run_dir_and_dataset_are_taken_as_written(directory):
    config = _load_config(None, [], Path(directory), None, {"bench.dataset": directory})
    assert config.run.dir == directory and config.bench.dataset == directory
    assert config_mod.from_dict(config_mod.tomllib.loads(config_mod.to_toml(config))) == config


# 4 ------------------------------------------------------------------- model names are not paths

@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "with space", ".hidden", ""])
def test_model_names_that_are_paths_are_refused(tmp_path, name):
    path = tmp_path / "run.toml"
    path.write_text(f'[models."{name}"]\npath = "x"\n')
    with pytest.raises(ConfigError, match="a model name is letters, digits"):
        config_mod.load(path)


# 5 ------------------------------------------------------------------- dedup never overwrites its input

def test_dedup_refuses_to_write_over_its_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a b c"}\n{"text": "a b c"}\n')
    before = src.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(src)
    one_line_error(cli("dedup", src, src), "INPUT and OUTPUT name the same file")
    one_line_error(cli("dedup", src, tmp_path / "link.jsonl"), "is a symbolic link")
    one_line_error(cli("dedup", src, tmp_path / "out.jsonl", "--clusters", src), "--clusters")
    one_line_error(cli("dedup", src, tmp_path / "out.jsonl", "--clusters", tmp_path / "out.jsonl"), "--clusters")
    assert src.read_bytes() == before and not (tmp_path / "out.jsonl").exists()


def test_outputs_replace_only_regular_files(tmp_path):
    """A FIFO, a symbolic link or a directory where an output would go is refused before the
    command reads anything, and is still there, as it was, afterwards."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a b c"}\n')
    fifo, target, link = tmp_path / "fifo", tmp_path / "mine.txt", tmp_path / "link.jsonl"
    os.mkfifo(fifo)
    target.write_text("the user's own file")
    link.symlink_to(target)
    one_line_error(cli("dedup", src, fifo), "is a FIFO", "nothing was written")
    one_line_error(cli("dedup", src, link), "is a symbolic link (to ")
    one_line_error(cli("dedup", src, tmp_path / "out.jsonl", "--clusters", fifo), "is a FIFO")
    one_line_error(cli("perf", "run", "-o", fifo), "is a FIFO")
    one_line_error(cli("classify", src, link), "is a symbolic link")
    with pytest.raises(OutputError, match="is a directory"):
        tables.write_table(pa.table({"text": ["a"]}), tmp_path, "parquet")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink() and target.read_text() == "the user's own file"
    assert not (tmp_path / "out.jsonl").exists()


def test_a_directory_that_is_not_a_run_directory_is_refused_whole(tmp_path):
    """--run-dir on a project folder (or '', which is the current one) writes nothing there; a run
    directory made by a run, or an empty one, is taken."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("mine")
    one_line_error(cli("build", "--run-dir", project), "is not a misalign-fast run directory", "nothing was written")
    one_line_error(cli("bench", "--run-dir", project), "is not a misalign-fast run directory")
    one_line_error(cli("build", "--set", f"run.dir={project / 'README.md'}"), "is not a directory")
    assert [p.name for p in project.iterdir()] == ["README.md"] and (project / "README.md").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    with rundir.hold(empty):
        (empty / "run.json").write_text("{}")
    rundir.check(empty)                          # now a run directory: recognised by its marker
    assert (empty / rundir.MARKER).exists()


def test_make_tiny_leaves_a_folder_with_files_alone_unless_forced(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model-00001-of-00002.safetensors").write_bytes(b"weights")
    one_line_error(cli("models", "make-tiny", model), "holds files", "--force")
    assert [p.name for p in model.iterdir()] == ["model-00001-of-00002.safetensors"]


# 6 ------------------------------------------------------------------- the user's umask

def test_outputs_are_written_with_the_users_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        tables.write_table(pa.table({"text": ["a"]}), tmp_path / "out.parquet")
        with tables.atomic_path(tmp_path / "note.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "note.txt").stat().st_mode & 0o777 == 0o644


# 7 ------------------------------------------------------------------- records of any size

def test_a_json_lines_record_over_pyarrows_block_is_read(tmp_path):
    src, dst = tmp_path / "big.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"text": "word " * 700_000}) + "\n" + json.dumps({"text": "word " * 700_000}) + "\n"
                   + json.dumps({"text": "other"}) + "\n")
    assert cli("dedup", src, dst).exit_code == 0
    assert len(dst.read_text().splitlines()) == 2


def test_csv_fields_over_pythons_limit_are_read(tmp_path):
    long = "x" * 200_000
    path = tmp_path / "savacu.csv"
    path.write_text(SAVACU_HEADER + f"0,,,,a prompt,{long},bad\n")
    assert load_items(path).table.column("aligned_response").to_pylist() == [long]
    from misalign.stages.ingest import read_prompts
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"prompt\n{long}\nshort one\n")
    table, rejected = read_prompts(prompts, max_chars=300_000)
    assert table.column("prompt").to_pylist() == [long, "short one"] and not rejected
    big_csv = tmp_path / "big.csv"
    big_csv.write_text("text\n" + "\n".join(["y " * 1_200_000, "z"]) + "\n")
    assert tables.read_table(big_csv).num_rows == 2


# 8 ------------------------------------------------------------------- a misbehaving server

class Misbehaving(BaseHTTPRequestHandler):
    """Each path prefix is one way a server can go wrong."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.path.split("/")[1]
        if mode == "redirect":
            return self._send(302, b"", {"Location": "http://elsewhere/v1/completions"})
        if mode == "echo":        # a server that copies the request's headers into its error
            return self._send(400, f"bad request; you sent Authorization: {self.headers['Authorization']}".encode())
        if mode == "drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.25)
            except (BrokenPipeError, ConnectionResetError):      # the client gave up, as it should
                pass
            return None
        body = {"empty": b"{}", "nochoices": b'{"choices": []}', "notjson": b"<html>oops</html>",
                "nested": b'{"choices": [{"message": null}], "usage": {"prompt_tokens": "many"}}',
                "nestedtext": b'{"choices": [{"text": "hi"}], "usage": {"prompt_tokens": "many"}}',
                "list": b"[1, 2]", "huge": b'{"choices": [{"text": "' + b"a" * 3_000_000 + b'"}]}'}[mode]
        return self._send(200, body)

    def _send(self, status, body, headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def misbehaving():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def engine(url, **settings):
    return OpenAIEngine(OpenAIConfig(base_url=url, model="m", retries=0, timeout_s=2, **settings))


@pytest.mark.parametrize("mode,message", [
    ("empty", "answered JSON without a non-empty 'choices' list"),
    ("nochoices", "answered JSON without a non-empty 'choices' list"),
    ("list", "answered JSON without a non-empty 'choices' list"),
    ("notjson", "answered with something that is not JSON: <html>oops</html>"),
    ("redirect", "refused the request: HTTP 302"),
    ("nested", "answered JSON of an unexpected shape"),
    ("nestedtext", "answered JSON of an unexpected shape"),
])
def test_malformed_replies_are_one_clear_error_naming_the_url(misbehaving, mode, message):
    with pytest.raises(EngineError) as caught:
        engine(f"{misbehaving}/{mode}/v1", chat=mode == "nested").generate(["hi"], SamplingConfig(max_tokens=1))
    endpoint = "chat/completions" if mode == "nested" else "completions"
    assert message in str(caught.value) and f"{misbehaving}/{mode}/v1/{endpoint}" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_answer_over_the_size_cap_is_refused(misbehaving):
    with pytest.raises(EngineError, match="sent an answer over 1,048,576 bytes"):
        engine(f"{misbehaving}/huge/v1", max_response_bytes=1 << 20).generate(["hi"], SamplingConfig(max_tokens=1))


def test_a_server_dripping_bytes_meets_the_whole_request_deadline(misbehaving):
    with pytest.raises(EngineError, match=r"no whole answer within 1 s"):
        OpenAIEngine(OpenAIConfig(base_url=f"{misbehaving}/drip/v1", model="m", retries=0, timeout_s=1)).generate(
            ["hi"], SamplingConfig(max_tokens=1))


def test_credentials_never_reach_a_message_or_a_file(misbehaving, monkeypatch, tmp_path):
    monkeypatch.setenv("MISALIGN_TEST_KEY", "sk-secretsecret")
    host = misbehaving.removeprefix("http://")
    with pytest.raises(EngineError) as caught:
        engine(f"http://user:hunter2@{host}/echo/v1", api_key_env="MISALIGN_TEST_KEY").generate(
            ["hi"], SamplingConfig(max_tokens=1))
    message = str(caught.value)
    assert "HTTP 400" in message and "***" in message
    assert "sk-secretsecret" not in message and "hunter2" not in message
    monkeypatch.delenv("MISALIGN_TEST_KEY")
    with pytest.raises(EngineError) as caught:
        engine(f"http://user:hunter2@{host}/v1?key=sk-abc", api_key_env="MISALIGN_TEST_KEY")
    assert "hunter2" not in str(caught.value) and "sk-abc" not in str(caught.value)
    config = config_mod.load(None, ["models.remote.kind=\"openai\"", f'models.remote.base_url="http://u:hunter2@{host}/v1"'])
    assert "hunter2" not in config_mod.to_toml(config)
    from misalign.inference.pool import EnginePool
    assert "hunter2" not in EnginePool(config, tmp_path).describe("remote")


# 9 ------------------------------------------------------------------- every check before the first engine

def test_a_missing_api_key_stops_run_before_stage_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MISALIGN_ABSENT_KEY", raising=False)
    result = cli("run", "--run-dir", tmp_path / "r", "--set", 'models.remote.kind="openai"',
                 "--set", 'models.remote.base_url="http://127.0.0.1:9/v1"', "--set", 'models.remote.api_key_env='
                 '"MISALIGN_ABSENT_KEY"', "--set", 'bench.models=["remote"]')
    one_line_error(result, "MISALIGN_ABSENT_KEY")
    assert not (tmp_path / "r").exists()


def test_bad_input_rows_stop_build_before_anything_is_written(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "one"}\n{"id": "a", "prompt": "two"}\n')
    one_line_error(cli("build", "--run-dir", tmp_path / "r", "--set", f"input.path={prompts}"),
                   "the id column has repeated values")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", "holds no usable prompt in column 'prompt': it has no rows"),
    ("header.csv", b"id,prompt\n", "it has no rows"),
    ("nulls.jsonl", b'{"prompt": null}\n{"prompt": ""}\n', "all 2 rows set aside (row 1: prompt is null"),
    ("clash.jsonl", b'{"prompt": "a"}\n{"id": "p000001", "prompt": "b"}\n', "a row without an id gets 'p000001'"),
])
def test_an_input_without_usable_prompts_stops_build_before_any_engine(tmp_path, name, content, message):
    prompts = tmp_path / name
    prompts.write_bytes(content)
    one_line_error(cli("build", "--run-dir", tmp_path / "r", "--set", f"input.path={prompts}"), message)
    assert not (tmp_path / "r").exists()


def test_an_input_from_a_pipe_is_read_once_for_the_check_and_the_build(tmp_path, session_pool):
    """The run reads its input once and hands it to the preflight and to Stage I, so a FIFO (or
    standard input) works: the FIFO is gone before either looks, and neither misses it."""
    from misalign.run import Hooks, preflight, stage1
    from misalign.stages.ingest import read_input
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    lines = "".join(json.dumps({"prompt": f"How should I answer a rude neighbour, case {i}?"}) + "\n"
                    for i in range(6))
    writer = threading.Thread(target=fifo.write_text, args=(lines,))
    writer.start()
    config = config_mod.load(None, [f'run.dir="{tmp_path / "run"}"', f'input.path="{fifo}"', 'expand.model="tiny"',
                         'respond.models=["tiny"]', 'reject.judge="tiny"', "expand.floor=0", "reject.rounds=0",
                         "respond.candidates=1", "respond.max_tokens=8", "reject.min_chars=1"])
    inputs = read_input(config)
    writer.join()
    fifo.unlink()
    checked = []
    preflight(config, Hooks(checked=checked.extend), inputs, stage2=False)
    summary = stage1(config, session_pool, inputs=inputs)
    assert checked and summary["input_rows"] == 6 and summary["input"] == str(fifo)


@pytest.mark.parametrize("path, settings, message", [
    ("/dev/zero", ["input.format=jsonl"], "is a device or a terminal"),
    ("{tmp}", [], "is a directory"),
    ("{tmp}/in.jsonl", ["input.max_bytes=40"], "holds more than input.max_bytes = 40 bytes"),
])
def test_an_input_that_never_ends_or_is_too_big_is_refused_unread(tmp_path, path, settings, message):
    (tmp_path / "in.jsonl").write_text('{"prompt": "a prompt of more than forty bytes, in one row"}\n')
    sets = [arg for s in [f"input.path={path.format(tmp=tmp_path)}", *settings] for arg in ("--set", s)]
    one_line_error(cli("build", "--run-dir", tmp_path / "r", *sets), message)
    assert not (tmp_path / "r").exists()


def test_an_empty_id_is_no_id(tmp_path):
    from misalign.stages.ingest import read_prompts
    (tmp_path / "in.jsonl").write_text('{"id": "", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n')
    assert read_prompts(tmp_path / "in.jsonl")[0].column("id").to_pylist() == ["p000001", "x"]


# 10 ------------------------------------------------------------------- Stage II Parquet checked like CSV

def stage1_rows(changes=None):
    rows = [{"id": f"i{k}", "prompt": f"prompt {k}", "safety_domain": None, "value_domain": "Health",
             "cultural_domain": None, "generator": "g", "aligned_response": "good", "misaligned_response": "bad"}
            for k in range(4)]
    for (k, key), value in (changes or {}).items():
        rows[k][key] = value
    return rows


def test_stage_two_parquet_rows_are_checked_and_set_aside(tmp_path):
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(stage1_rows({(1, "prompt"): None, (2, "value_domain"): "Made up",
                                                     (3, "id"): "i0"})), path)
    items = load_items(path)
    assert items.table.column("item").to_pylist() == ["i0/g"]
    assert items.problems == [("test.parquet row 2", "prompt is empty or null"),
                              ("test.parquet row 3", "label_value 'Made up' is not a value domain "
                                                     "(see misalign-fast taxonomy)"),
                              ("test.parquet row 4", "item 'i0/g' (id/generator) is also test.parquet row 1's")]


def test_a_list_typed_response_column_is_named(tmp_path):
    path = tmp_path / "test.parquet"
    rows = stage1_rows()
    for row in rows:
        row["aligned_response"] = [row["aligned_response"]]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(InputError, match=r"column 'aligned_response' holds list<.*> values, expected text"):
        load_items(path)


# 11 ------------------------------------------------------------------- the SaVaCu CSV

def test_savacu_duplicate_column_is_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text(SAVACU_HEADER.rstrip("\n") + ",prompt\n0,,,,a,good,bad,b\n")
    with pytest.raises(InputError, match="the header names column 'prompt' more than once"):
        load_items(path)


def test_savacu_rows_name_their_problem(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes((SAVACU_HEADER + "0,,,,first,good,bad\n0,,,,again,good,bad\n1,,,,bad \xff byte,good,bad\n")
                     .encode("latin-1"))
    items = load_items(path)
    assert items.table.column("item").to_pylist() == ["0/g"]
    assert items.problems == [("row 2", "row_index '0' is also row 1's"), ("row 3", "is not valid UTF-8")]


def test_when_every_row_is_bad_the_reasons_are_still_written(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(SAVACU_HEADER + "0,,,,,good,bad\n1,Nonsense,,,p,good,bad\n")
    one_line_error(cli("bench", "--run-dir", tmp_path / "r", "--dataset", path), "has no usable items",
                   "2 rows set aside")
    written = [json.loads(line) for line in (tmp_path / "r" / "bench" / "rejected_items.jsonl").read_text().splitlines()]
    assert [w["where"] for w in written] == ["row 1", "row 2"]


# 12 ------------------------------------------------------------------- dedup's input details

@pytest.mark.parametrize("name,content,message", [
    ("dup.csv", "text,text\na,b\n", "the header names column 'text' more than once"),
    ("ragged.csv", "text,n\na,1\nb,2,3\n", "row 2: has 3 fields, the header has 2"),
    ("quote.csv", 'text,n\na,1\n"b,2\nc,3\n', "row 2: a quoted field is never closed"),
])
def test_dedup_csv_problems_are_one_line_with_the_row(tmp_path, name, content, message):
    src = tmp_path / name
    src.write_text(content)
    one_line_error(cli("dedup", src, tmp_path / "out.csv"), message)


def test_empty_json_lines_is_an_empty_output_like_a_header_only_csv(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.csv").write_text("text\n")
    for name in ("empty.jsonl", "empty.csv"):
        out = tmp_path / f"out.{name.split('.')[1]}"
        assert cli("dedup", tmp_path / name, out).exit_code == 0
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    dead = tmp_path / ".out.jsonl.999999999.deadbeef.tmp"     # no such process
    dead.write_text("partial")
    alive = tmp_path / f".out.jsonl.{os.getpid()}.cafe.tmp"    # a live writer's: kept
    alive.write_text("in progress")
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n')
    assert cli("dedup", src, tmp_path / "out.jsonl").exit_code == 0
    assert not dead.exists() and alive.exists()


# 13 ------------------------------------------------------------------- report on a damaged run

COMPLETE_META = {"models": {"m": {"description": "m", "stand_in": False}}, "runs": 1, "bootstrap": 0, "seed": 0,
                 "dataset": {"source": "x", "split": "test", "items": 1, "sha256": "0"}, "threshold": 0.5,
                 "temperature": 0.0, "versions": {}, "config": {}}


INCOMPLETE_META = {**COMPLETE_META, "dataset": {"source": "x", "split": "test", "items": 1}}


@pytest.mark.parametrize("meta,message", [
    ("{not json", "meta.json: cannot be read as JSON"),
    ('{"models": 1}', "is not a misalign-fast bench record"),
    (json.dumps(INCOMPLETE_META), "is not a misalign-fast bench record (its dataset has no sha256)"),
    (json.dumps(COMPLETE_META), "samples.parquet: is not a Parquet file"),
])
def test_report_on_a_damaged_run_is_one_line(tmp_path, meta, message):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "meta.json").write_text(meta)
    (tmp_path / "samples.parquet").write_bytes(b"garbage")
    one_line_error(cli("report", tmp_path), message)


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    from misalign.pipeline import ResumeError, Runner
    from misalign.stages.base import Stage

    class Same(Stage):
        name = "same"

        def run(self, table):
            return table
    table = pa.table({"id": ["a", "b"], "prompt": ["x", "y"]})
    Runner(tmp_path, shard_rows=1).run([Same()], table)
    (tmp_path / "stages" / "00_same" / "00-same" / "shard-00001.parquet").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="a checkpointed shard is missing or damaged"):
        Runner(tmp_path, shard_rows=1).run([Same()], table)


def test_prompts_with_lone_surrogates_are_set_aside(tmp_path):
    from misalign.stages.ingest import read_prompts
    (tmp_path / "a.csv").write_bytes(b"id,prompt\n\xff,hello\nb,ok\n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "\\udc80 x"}\n{"prompt": "fine"}\n')
    for name in ("a.csv", "b.jsonl"):
        table, rejected = read_prompts(tmp_path / name)
        assert table.num_rows == 1 and len(rejected) == 1 and "not valid UTF-8" in rejected[0].reason


# 14 ------------------------------------------------------------------- --limit

def test_a_negative_limit_is_refused(tmp_path):
    result = cli("build", "--run-dir", tmp_path / "r", "--limit", "-5")
    assert result.exit_code == 2 and "-5 is not in the range x>=0" in result.output
    assert not (tmp_path / "r").exists()


# 15 ------------------------------------------------------------------- the paper's "no domain" labels

def test_the_papers_none_unknown_and_case_labels_are_accepted(tmp_path):
    path = tmp_path / "paper.csv"
    path.write_text(SAVACU_HEADER + "0,None,None,None,one,good,bad\n1,Unknown,Unknown,Unknown,two,good,bad\n"
                    "2,self-harm,HEALTH,none,three,good,bad\n3, Animal  abuse ,,,four,good,bad\n")
    items = load_items(path)
    assert items.problems == [] and items.table.num_rows == 4
    rows = items.table.to_pylist()
    assert [r["safety_domain"] for r in rows] == [None, None, "Self-harm", "Animal abuse"]
    assert rows[2]["value_domain"] == "Health" and rows[0]["cultural_domain"] is None
    assert items.notes == ["3 labels matched a domain only when case and spacing are ignored "
                           "(e.g. 'self-harm' as 'Self-harm')"]


def test_the_papers_released_prompts_in_the_savacu_layout_are_all_items(tmp_path):
    """The first 3,000 rows of the paper's prompt file, written as its released CSVs are: "None"
    for no domain."""
    source = shared_file("paper_prompts_dev.csv")
    with open(source, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(3000), csv.DictReader(f))]
    path = tmp_path / "savacu.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SAVACU_HEADER.strip().split(","))
        for k, r in enumerate(rows):
            writer.writerow([k, r["safety"] or "None", r["value"] or "None", r["cultural"] or "None", r["prompt"],
                             "an aligned answer", "a misaligned answer"])
    items = load_items(path)
    assert items.problems == [] and items.table.num_rows == 3000


# ----------------------------------------------------------------------- never a traceback

SCALARS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=12),
                    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=3))
SECTION_NAMES = st.sampled_from(["run", "input", "classify", "expand", "dedup", "respond", "reject", "split",
                                 "bench", "ray", "nope"])
SETTING_NAMES = st.sampled_from(["dir", "seed", "limit", "shard_rows", "engine", "path", "delta", "method", "floor",
                                 "tau", "models", "candidates", "threshold", "train", "split", "runs", "workers",
                                 "kind", "base_url", "odd"])


@settings(deadline=None)
@given(st.dictionaries(SECTION_NAMES, st.one_of(SCALARS, st.dictionaries(SETTING_NAMES, SCALARS, max_size=4)),
                       max_size=4),
       st.dictionaries(st.text(max_size=8), st.one_of(SCALARS, st.dictionaries(SETTING_NAMES, SCALARS, max_size=3)),
                       max_size=2))
def test_the_config_loader_works_or_says_one_line(sections, models):
    try:
        config = config_mod.from_dict({**sections, **({"models": models} if models else {})})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert config_mod.from_dict(config_mod.tomllib.loads(config_mod.to_toml(config))) == config


@settings(deadline=None)
@given(st.lists(st.text(max_size=30), max_size=4))
def test_set_overrides_work_or_say_one_line(overrides):
    try:
        config_mod.load(None, overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)


FILE_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.text(alphabet=st.sampled_from('ab ,"\n\r{}:[]\\x\xff0'), max_size=20), max_size=8).map(
        lambda lines: "\n".join(lines).encode("utf-8")),
    st.lists(st.text(alphabet=st.sampled_from('ab ,"\n'), max_size=12), min_size=1, max_size=6).map(
        lambda rows: (SAVACU_HEADER + "\n".join(rows)).encode()),
    st.lists(st.dictionaries(st.sampled_from(["text", "prompt", "id"]), SCALARS, max_size=3), max_size=5).map(
        lambda records: "".join(json.dumps(r) + "\n" for r in records).encode()))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(FILE_BYTES, st.sampled_from(["jsonl", "csv", "parquet"]))
def test_the_readers_work_or_say_one_line(tmp_path, content, fmt):
    from misalign.stages.ingest import read_prompts
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(content)
    readers = [lambda: tables.read_text_column(path, "text", fmt),
               lambda: read_prompts(path, "prompt")]
    if fmt == "csv":
        readers.append(lambda: load_items(path))
    for read in readers:
        try:
            read()
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)


def test_a_full_disk_is_one_line_and_exit_2(tmp_path, monkeypatch):
    """ENOSPC (or a read-only file system, a quota) where a command writes: one line naming the
    path and what to do, not a traceback."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out.jsonl"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a b c"}\n')
    monkeypatch.setattr(tables, "atomic_path", full)
    one_line_error(cli("dedup", src, tmp_path / "out.jsonl"), "out.jsonl: No space left on device", "run again")


def test_a_ray_address_where_nothing_answers_is_one_line_before_anything_starts(tmp_path):
    """Ray would retry for minutes, printing warnings; the run says so at once."""
    import socket
    with socket.socket() as probe:              # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    one_line_error(cli("build", "--run-dir", tmp_path / "r", "--set", "run.executor=ray",
                       "--set", f"ray.address=127.0.0.1:{port}"),
                   f"ray.address = '127.0.0.1:{port}': nothing answers at 127.0.0.1:{port}", "ray start --head")
    assert time.monotonic() - started < 30 and not (tmp_path / "r").exists()
    one_line_error(cli("check", "--set", "ray.address=head-node"), "is not \"auto\", HOST:PORT or ray://HOST:PORT")


def test_ctrl_c_is_one_line_and_exit_130_as_a_shell_reports_it(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a b c"}\n')
    monkeypatch.setattr(tables, "atomic_path", interrupted)
    result = cli("dedup", src, tmp_path / "out.jsonl")
    assert result.exit_code == 130 and result.output.strip().splitlines() == [
        "stopped (Ctrl-C): nothing half-written is kept; a run started again resumes from its checkpoints"], result.output


def test_a_tilde_is_the_home_directory_in_every_path_setting(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    config = _load_config(None, ["input.path=~/p.jsonl", "bench.dataset=~/d.parquet", "models.tiny.path=~/m"],
                          Path("~/runs/x"), None)
    assert (config.run.dir, config.input.path, config.bench.dataset, config.models["tiny"].path) == (
        "/home/someone/runs/x", "/home/someone/p.jsonl", "/home/someone/d.parquet", "/home/someone/m")


# every writer, odd output paths --------------------------------------------------------------

def _odd_output(root: Path, name: str, kind: str) -> tuple[Path, Callable[[], object]]:
    """Something at root/name that no output may replace, and a snapshot of it to compare after."""
    path, mine = root / name, root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        import socket
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    elif kind == "directory":
        path.mkdir()
        (path / "notes.txt").write_text("the user's own file")
    elif kind == "link to a file":
        path.symlink_to(mine / "notes.txt")
    elif kind == "link to a directory":
        path.symlink_to(mine)
    elif kind == "dangling link":
        path.symlink_to(root / "nowhere")

    def snapshot():
        entries = sorted((str(p.relative_to(root)), stat.S_IFMT(os.lstat(p).st_mode),
                          os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() and not p.is_symlink()
                          else None) for p in root.rglob("*") if "pycache" not in str(p))
        return entries
    return path, snapshot


WRITERS = {   # (command, with OUT where the output goes); IN is a valid JSONL input
    "dedup": ["dedup", "IN", "OUT"],
    "dedup --clusters": ["dedup", "IN", "ROOT/out.jsonl", "--clusters", "OUT"],
    "classify": ["classify", "IN", "OUT"],
    "classify --save-probe": ["classify", "IN", "ROOT/out.jsonl", "--train", "IN", "--save-probe", "OUT"],
    "validate-judge -o": ["validate-judge", "IN", "-o", "OUT"],
    "perf run -o": ["perf", "run", "-o", "OUT"],
    "models make-tiny": ["models", "make-tiny", "OUT"],
    "build --run-dir": ["build", "--run-dir", "OUT"],
    "bench --run-dir": ["bench", "--run-dir", "OUT"],
    "run --run-dir": ["run", "--run-dir", "OUT"],
    "report": ["report", "OUT"],
}
ODD_KINDS = ["fifo", "socket", "directory", "link to a file", "link to a directory", "dangling link"]


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("kind", ODD_KINDS)
@settings(deadline=None, max_examples=5, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12).filter(
           lambda n: n not in (".", "..", "mine", "in.jsonl", "out.jsonl") and not n.startswith("-")))
def test_no_writer_replaces_what_is_not_a_regular_file(writer, kind, name):
    """Every writer, every kind, any name: an output path that is a FIFO, a socket, a directory
    holding the user's files, or a symbolic link is refused in one line, exit 2, and everything
    under the folder is byte for byte what it was."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        src = root / "in.jsonl"
        src.write_text('{"prompt": "How do I greet a neighbour?", "text": "a b c"}\n')
        path, snapshot = _odd_output(root, name, kind)
        before = snapshot()
        args = [str(path) if a == "OUT" else str(src) if a == "IN" else a.replace("ROOT", folder)
                for a in WRITERS[writer]]
        result = cli(*args)
        assert result.exit_code == 2, (writer, kind, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (writer, kind, result.output)
        assert snapshot() == before, (writer, kind)
