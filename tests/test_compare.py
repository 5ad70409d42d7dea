"""`misalign-fast compare`: models side by side, differences from a paired bootstrap over prompts.
The runs here are bench outputs written with the real schema (samples.parquet, bench/meta.json),
with verdicts chosen so that every figure and difference is known exactly."""
import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from misalign import compare
from misalign.cli import main
from misalign.items import SAMPLE_SCHEMA

N = 200                                            # prompts, one item each, both responses


def bench_run(folder, flags: dict[str, tuple[np.ndarray, np.ndarray]], items=N, runs=1, sha256="0" * 64,
              bench=None):
    """A run directory whose models flagged misaligned responses `flags[m][0]` and aligned ones
    `flags[m][1]` (booleans per item)."""
    rows = []
    for model, (on_misaligned, on_aligned) in flags.items():
        for run in range(runs):
            for k in range(items):
                for response, flagged in (("misaligned", on_misaligned[k]), ("aligned", on_aligned[k])):
                    rows.append({"model": model, "run": run, "item": f"i{k}", "id": f"p{k}", "response": response,
                                 "question": "joint", "p_misaligned": 0.9 if flagged else 0.1,
                                 "flagged": bool(flagged), "generator": "g",
                                 "safety_domain": "Self-harm" if k % 2 else None, "value_domain": "Honesty",
                                 "cultural_domain": None})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), folder / "samples.parquet")
    (folder / "bench").mkdir()
    (folder / "bench" / "meta.json").write_text(json.dumps({
        "dataset": {"source": "x", "split": "test", "items": items, "sha256": sha256, "set_aside": 0},
        "models": {m: {"description": m, "kind": "vllm", "stand_in": False} for m in flags}, "runs": runs,
        "threshold": 0.5, "temperature": 0.0, "questions": ["joint"], "seed": 0, "bootstrap": 50,
        "config": {"bench": bench or {"threshold": 0.5, "temperature": 0.0}},
        "versions": {}, "profile": []}))
    return folder


def verdicts(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(N) < 0.7, rng.random(N) < 0.1


def test_a_small_real_difference_is_significant_only_when_paired(tmp_path):
    """B misses 15 misaligned responses A catches, and agrees with A elsewhere: A - B is +15/200
    in Coverage.  Each model's own interval is too wide to tell them apart; the paired one is not."""
    hit, false_alarm = verdicts()
    worse = hit.copy()
    worse[np.flatnonzero(hit)[:15]] = False
    run = bench_run(tmp_path / "run", {"a": (hit, false_alarm), "b": (worse, false_alarm)})
    result = compare.compare(compare.entrants([run]), bootstrap=2000)
    a, b = (result["figures"][m]["joint"]["coverage"] for m in ("a", "b"))
    assert a["interval95"][0] < b["interval95"][1]                   # their own intervals overlap
    pair = next(p for p in result["pairs"] if p["group"] == "joint" and p["figure"] == "coverage")
    assert pair["difference"] == pytest.approx(15 / N) and pair["significant"] is True
    assert 0 < pair["interval95"][0] < 15 / N < pair["interval95"][1]
    ffr = next(p for p in result["pairs"] if p["group"] == "joint" and p["figure"] == "ffr")
    assert ffr["difference"] == 0 and ffr["interval95"] == [0, 0] and ffr["significant"] is False


def test_the_command_prints_and_writes_csv_json_and_markdown(tmp_path):
    hit, false_alarm = verdicts()
    run = bench_run(tmp_path / "run", {"a": (hit, false_alarm), "b": (~hit, false_alarm), "c": (hit, ~false_alarm)})
    files = [tmp_path / f"out.{ext}" for ext in ("csv", "json", "md")]
    result = CliRunner().invoke(main, ["compare", str(run), "--bootstrap", "200", "--csv", str(files[0]),
                                       "--json", str(files[1]), "--markdown", str(files[2])])
    assert result.exit_code == 0, result.output
    assert "a - b: paired bootstrap over prompts (200 resamples)" in result.output
    assert "b - c" in result.output and "+0.40 [" in result.output            # a - b: 0.7 vs 0.3 coverage, roughly
    rows = list(csv.DictReader(files[0].open()))
    groups = len(compare.GROUPS)
    assert len(rows) == 3 * groups * 4 + 3 * groups * 4                     # 3 models, 3 pairs, 4 figures each
    joint = {(r["kind"], r["a"], r["b"], r["figure"]): r for r in rows if r["group"] == "joint"}
    assert float(joint["model", "a", "", "coverage"]["value"]) == hit.mean()
    assert joint["difference", "a", "b", "coverage"]["significant"] == "true"
    saved = json.loads(files[1].read_text())
    assert saved["paired"] and saved["bootstrap_unit"] == "prompt" and len(saved["pairs"]) == 3 * groups * 4
    page = files[2].read_text()
    assert page.startswith("| model | Coverage | FFR | AS | AUROC |") and "| a − b | joint |" in page


def test_runs_on_other_items_are_refused_and_shared_names_told_apart(tmp_path):
    hit, false_alarm = verdicts()
    first = bench_run(tmp_path / "first", {"m": (hit, false_alarm)})
    second = bench_run(tmp_path / "second", {"m": (hit, false_alarm)})
    shorter = bench_run(tmp_path / "shorter", {"m": (hit, false_alarm)}, items=N - 1)
    result = CliRunner().invoke(main, ["compare", str(first), str(shorter)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "benchmarked on other items" in result.output and "2 responses only in" in result.output
    other = bench_run(tmp_path / "other", {"m": (hit, false_alarm)}, sha256="1" * 64)   # same ids, other content
    result = CliRunner().invoke(main, ["compare", str(first), str(other)])
    assert result.exit_code == 2 and "dataset sha256 111111111111… against 000000000000…" in result.output
    same = compare.compare(compare.entrants([first, second]), bootstrap=100)
    assert [m["name"] for m in same["models"]] == ["first:m", "second:m"]
    assert all(p["difference"] == 0 and p["significant"] is False for p in same["pairs"] if p["carried_by"])
    assert all(p["difference"] is None for p in same["pairs"] if not p["carried_by"])     # no cultural items
    assert same["settings_differ"] == []


def test_runs_asked_under_other_settings_say_so(tmp_path):
    """The same model at two thresholds differs by the threshold: the comparison says which
    settings differ, so that the difference is not read as the models'."""
    hit, false_alarm = verdicts()
    first = bench_run(tmp_path / "strict", {"m": (hit, false_alarm)}, bench={"threshold": 0.9, "temperature": 0.0})
    second = bench_run(tmp_path / "lenient", {"m": (hit, false_alarm)}, bench={"threshold": 0.3, "temperature": 0.0})
    result = CliRunner().invoke(main, ["compare", str(first), str(second), "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    said = f"bench.threshold 0.9 ({first}), 0.3 ({second})"
    assert f"note: the runs asked under other settings ({said})" in " ".join(result.output.split())
    assert json.loads((tmp_path / "c.json").read_text())["settings_differ"] == [said]
    # runs in folders of one name are told apart; models of one run alone differ in nothing
    a = bench_run(tmp_path / "a" / "run", {"m": (hit, false_alarm)}, bench={"threshold": 0.9, "temperature": 0.0})
    b = bench_run(tmp_path / "b" / "run", {"m": (hit, false_alarm)}, bench={"threshold": 0.3, "temperature": 0.0})
    assert compare.compare(compare.entrants([a, b]), bootstrap=0)["settings_differ"] == [
        f"bench.threshold 0.9 ({a}), 0.3 ({b})"]
    both = bench_run(tmp_path / "both", {"m": (hit, false_alarm), "n": (hit, false_alarm)})
    assert compare.compare(compare.entrants([first, both], ["both:m", "n"]), bootstrap=0)["settings_differ"] == []


def test_a_figure_too_few_responses_carry_is_no_difference(tmp_path):
    hit, false_alarm = verdicts()
    run = bench_run(tmp_path / "run", {"a": (hit, false_alarm), "b": (~hit, false_alarm)})
    result = compare.compare(compare.entrants([run]), bootstrap=100, min_count=N + 1)
    pair = next(p for p in result["pairs"] if p["group"] == "joint" and p["figure"] == "coverage")
    assert pair["difference"] is None and pair["carried_by"] == N and compare.difference_text(pair) == f"too few ({N})"
    one = CliRunner().invoke(main, ["compare", str(run), "--models", "a"])
    assert one.exit_code == 2 and "a comparison needs two or more" in one.output
