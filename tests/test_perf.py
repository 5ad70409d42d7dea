"""`misalign-fast perf`: the result file's schema, and the verdicts of `compare` on synthetic results
(never a timed assertion: the mechanics are what is tested), and the quick pipeline suite on
Mistral-7B's shape (one layer, random weights) on this CPU."""
import copy
import json

import pytest
from click.testing import CliRunner

from misalign.cli import main
from misalign.perf import Benchmark

ENV = {"cpu": "Test CPU", "gpu": None, "cores": 2}


def result(tmp_path, name, benchmarks, env=ENV):
    path = tmp_path / name
    path.write_text(json.dumps({"format": 1, "suite": "quick", "environment": env,
                                "benchmarks": [b.__dict__ for b in benchmarks]}))
    return path


BASE = [Benchmark.of("fingerprint, ASCII", "MB/s", [300, 305, 310]),
        Benchmark.of("self-join 1M, tau 10", "s", [2.5, 2.52, 2.55], higher_is_better=False),
        Benchmark.of("pipeline respond: tokens/s", "tokens/s", [170, 172, 175])]


def scaled(benchmarks, name, factor):
    out = copy.deepcopy(benchmarks)
    for b in out:
        if b.name == name:
            b.samples = [s * factor for s in b.samples]
            b.median, b.min, b.max = b.median * factor, b.min * factor, b.max * factor
    return out


def compare(*args):
    return CliRunner().invoke(main, ["perf", "compare", *map(str, args)])


def test_a_result_compared_with_itself_is_unchanged_and_exits_0(tmp_path):
    base = result(tmp_path, "base.json", BASE)
    res = compare(base, base)
    assert res.exit_code == 0, res.output
    assert res.output.count("unchanged") == 3


def test_a_throughput_30_percent_worse_is_a_regression_named_and_exit_1(tmp_path):
    base = result(tmp_path, "base.json", BASE)
    new = result(tmp_path, "new.json", scaled(BASE, "pipeline respond: tokens/s", 0.7))
    res = compare(base, new)
    assert res.exit_code == 1
    assert "regression beyond 10%: pipeline respond: tokens/s" in res.output
    verdicts = json.loads(compare(base, new, "--json").output)
    assert {v["name"]: v["status"] for v in verdicts}["pipeline respond: tokens/s"] == "regression"
    assert {v["status"] for v in verdicts if v["name"] != "pipeline respond: tokens/s"} == {"unchanged"}


def test_a_2_percent_change_is_unchanged_and_a_slower_join_is_a_regression(tmp_path):
    base = result(tmp_path, "base.json", BASE)
    assert compare(base, result(tmp_path, "small.json", scaled(BASE, "fingerprint, ASCII", 0.98))).exit_code == 0
    slower = result(tmp_path, "slow.json", scaled(BASE, "self-join 1M, tau 10", 1.3))      # seconds: lower is better
    res = compare(base, slower, "--markdown")
    assert res.exit_code == 1 and "| self-join 1M, tau 10 | 2.52 s | 3.28 s | 1.300 | regression |" in res.output
    faster = result(tmp_path, "fast.json", scaled(BASE, "self-join 1M, tau 10", 0.7))
    assert "improvement" in compare(base, faster).output


def test_wide_overlapping_samples_are_noisy_not_a_verdict(tmp_path):
    wide = [Benchmark.of("fingerprint, ASCII", "MB/s", [150, 300, 450])]
    base = result(tmp_path, "base.json", wide)
    new = result(tmp_path, "new.json", [Benchmark.of("fingerprint, ASCII", "MB/s", [140, 250, 400])])
    res = compare(base, new)
    assert res.exit_code == 0 and "noisy" in res.output
    apart = result(tmp_path, "apart.json", [Benchmark.of("fingerprint, ASCII", "MB/s", [50, 60, 70])])
    assert compare(base, apart).exit_code == 1          # far below every base sample: a regression all the same


def test_with_enough_samples_a_side_the_u_test_decides(tmp_path):
    """Two runs of the same code whose medians differ by 12% but whose samples interleave are
    noisy, not an improvement; a shift every sample shows is a regression at p < 0.01."""
    base = [100, 104, 108, 112, 116, 120, 124, 128, 132]
    same = result(tmp_path, "same.json", [Benchmark.of("x", "MB/s", [s + 14 for s in base])])
    shifted = result(tmp_path, "shifted.json", [Benchmark.of("x", "MB/s", [s * 0.8 for s in base])])
    base_path = result(tmp_path, "base.json", [Benchmark.of("x", "MB/s", base)])
    verdicts = {v["status"]: v for v in json.loads(compare(base_path, same, "--json").output)}
    assert list(verdicts) == ["noisy"] and verdicts["noisy"]["decided_by"].startswith("Mann-Whitney p = ")
    res = compare(base_path, shifted, "--json")
    (verdict,) = json.loads(res.output)
    assert res.exit_code == 1 and verdict["status"] == "regression" and "p = 0.00029" in verdict["decided_by"]


@pytest.mark.parametrize("n,decided_by", [
    (5, "Mann-Whitney p = 0.0079"),                         # 2 / C(10, 5): five a side reach p < 0.01
    (4, "4 and 4 samples apart (a U test needs 5 each)"),   # 2 / C(8, 4) = 0.029 could not: non-overlap decides
])
def test_five_samples_a_side_are_the_fewest_the_u_test_decides_with(tmp_path, n, decided_by):
    base = result(tmp_path, "base.json", [Benchmark.of("x", "s", [1.0 + i / 100 for i in range(n)], higher_is_better=False)])
    slower = result(tmp_path, "slow.json", [Benchmark.of("x", "s", [1.5 + i / 100 for i in range(n)], higher_is_better=False)])
    (verdict,) = json.loads(compare(base, slower, "--json").output)
    assert verdict["status"] == "regression" and verdict["decided_by"] == decided_by


@pytest.mark.parametrize("benchmarks,message", [
    ([{"name": "x", "unit": "MB/s", "samples": [1.0, float("nan")]}], "finite samples"),
    ([{"name": "x", "unit": "MB/s", "samples": "fast"}], "finite samples"),
    ([{"name": "x", "unit": "MB/s", "samples": [1.0]}, {"name": "x", "unit": "MB/s", "samples": [2.0]}],
     "benchmark 'x' is given more than once"),
    ([{"name": "y", "unit": "MB/s", "samples": [1.0]}], "no benchmark in common: nothing was compared"),
    ([{"name": "x", "unit": "s", "samples": [1.0]}], "is in MB/s in the base and s in the new result"),
    ([], "no benchmark in common"),
])
def test_a_gate_that_cannot_compare_says_so_with_exit_2(tmp_path, benchmarks, message):
    base = result(tmp_path, "base.json", [Benchmark.of("x", "MB/s", [1.0, 1.1, 1.2])])
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"format": 1, "suite": "quick", "environment": ENV, "benchmarks": benchmarks}))
    res = compare(base, new)
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert compare(base, base, "--threshold", "nan").exit_code == 2


def test_results_from_another_processor_are_refused_unless_forced(tmp_path):
    base = result(tmp_path, "base.json", BASE)
    other = result(tmp_path, "other.json", BASE, env={**ENV, "cpu": "Other CPU"})
    res = compare(base, other)
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == ("error: the results were measured on different CPUs ('Test CPU' "
                                                   "and 'Other CPU'); compare results from one machine, or pass --force")
    assert compare(base, other, "--force").exit_code == 0
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert compare(base, tmp_path / "bad.json").exit_code == 2


def test_two_run_directories_compare_by_their_profiles(tmp_path):
    def run_dir(name, respond_rate):
        d = tmp_path / name
        d.mkdir()
        stage = {"items_in": 10, "items_out": 10, "seconds": 1.0, "prompt_tokens": 100, "generated_tokens": 50,
                 "engine_starts": {"m": 1}, "startup_seconds": 30.0}
        (d / "profile.json").write_text(json.dumps([
            {**stage, "stage": "classify", "items_per_s": 100.0, "tokens_per_s": 1000.0},
            {**stage, "stage": "respond", "items_per_s": respond_rate, "tokens_per_s": 200.0}]))
        return d
    res = compare(run_dir("a", 10.0), run_dir("b", 6.0))
    assert res.exit_code == 1 and "regression beyond 10%: respond: items/s" in res.output
    assert "classify: engine start-up" in res.output


def test_the_core_suite_writes_the_result_schema(tmp_path):
    out = tmp_path / "core.json"
    res = CliRunner().invoke(main, ["perf", "run", "--only", "core", "--repeat", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    assert {"cpu", "cores", "python", "versions", "revision", "config_sha256", "models"} <= set(record["environment"])
    names = [b["name"] for b in record["benchmarks"]]
    assert names == ["fingerprint char4, ASCII", "fingerprint char4, non-ASCII", "self-join 1M, tau 3",
                     "self-join 1M, tau 10", "dedup 1.5M rows, 90% exact or near copies, tau 10, 2 threads",
                     "streaming filter char4, insert and query",
                     "dedup command end to end, 40 MB JSON Lines, whole process"]
    for b in record["benchmarks"]:
        assert len(b["samples"]) == 2 and b["min"] <= b["median"] <= b["max"] and b["min"] > 0
    assert compare(out, out).exit_code == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_quick_pipeline_suite_runs_mistrals_shape_on_this_cpu(tmp_path):
    out = tmp_path / "pipeline.json"
    res = CliRunner().invoke(main, ["perf", "run", "--only", "pipeline", "--repeat", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    found = {b["name"]: b for b in record["benchmarks"]}
    for stage in ("classify", "respond", "reject"):
        assert found[f"pipeline {stage}: items/s"]["median"] > 0
    assert found["pipeline respond: tokens/s"]["median"] > 0 and found["pipeline: engine start-up"]["median"] > 0
    for stage in ("respond", "judge"):                   # the pipeline's speed over raw vLLM's
        assert 0 < found[f"{stage} efficiency vs raw vLLM"]["median"] < 10
        assert 0 < found[f"{stage} efficiency vs raw vLLM given all requests at once"]["median"] < 10
    assert record["environment"]["models"] == ["shape"]


# Mistral's shape runs in the quick pipeline suite above; Qwen2.5's (qwen2 tokenizer) is left out to keep
# CI under 30 minutes (another 1.5 min engine); Gemma 2's tokenizer ships in no package.
@pytest.mark.parametrize("shape, tokenizer", [("Llama-3.1-8B-Instruct", "llama3")])
def test_the_papers_shapes_run_reduced_to_one_layer_on_this_cpu(tmp_path, shape, tokenizer):
    """The shapes a GPU box runs whole (benchmarks/gpu, perf on a GPU), here with one layer, random
    weights and their family's real tokenizer: vLLM loads them, generates and answers Yes/No."""
    from misalign.inference import EngineConfig, SamplingConfig, VLLMEngine
    from misalign.inference.tiny import REAL_TOKENIZERS, shape_checkpoint
    from misalign.memory_plan import SHAPES
    config = json.loads((SHAPES / shape / "config.json").read_text())
    path = shape_checkpoint(config, tmp_path / shape, REAL_TOKENIZERS[tokenizer](), layers=1)
    engine = VLLMEngine(EngineConfig(model=str(path), load_format="dummy", dtype="float32", enforce_eager=True,
                                     max_model_len=512, max_num_seqs=8))
    try:
        written = json.loads((path / "config.json").read_text())
        assert written["num_hidden_layers"] == 1 and written["hidden_size"] == config["hidden_size"]
        gens = engine.generate(["Is it safe to cross the road?"] * 4, SamplingConfig(max_tokens=8))
        assert all(g.completion_tokens > 0 for g in gens)
        probs = engine.label_probs(["Answer Yes or No: is water wet?"], ["Yes", "No"])
        assert probs.shape == (1, 2) and abs(probs.sum() - 1) < 1e-6
    finally:
        engine.close()
