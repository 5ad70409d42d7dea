"""`misalign-fast run` on the embedded default (the real SmolLM2-135M-Instruct), as a newcomer
runs it (in a subprocess, on fewer prompts): Stage I then Stage II, the whole run directory,
then a resumed re-run."""
import json
import subprocess
import sys

import pyarrow.parquet as pq

from conftest import schema_errors

# 24 prompts, no expansion (tested on SmolLM2 in test_real_models), a larger test split for Stage II
FAST = ["run.limit=24", "expand.floor=0", "reject.rounds=1", "split.train=0.6", "split.validation=0.1",
        "split.test=0.3"]


def run_command(run_dir):
    args = [sys.executable, "-m", "misalign.cli", "run", "--run-dir", str(run_dir)]
    for item in FAST:
        args += ["--set", item]
    return args


def test_run_embedded_default_end_to_end_then_resume(tmp_path):
    run_dir = tmp_path / "demo"
    first = subprocess.run(run_command(run_dir), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("dataset/train.parquet", "dataset/test.parquet", "stats.csv", "profile.json", "run.json",
                 "results.json", "samples.parquet", "plots/coverage_ffr.png", "plots/dimension_as.png",
                 "report.html", "bench/meta.json"):
        assert (run_dir / name).exists(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["models"]) == ["smollm2", "probe", "length-only"]
    assert results["models"]["smollm2"]["weak"] and not results["models"]["smollm2"]["stand_in"]
    assert results["role_warnings"] and results["role_warnings"][0].startswith("smollm2 is the judge and a generator of")
    assert results["models"]["smollm2"]["circularity"] == {"judge": True, "generated": ["smollm2"]}
    assert results["dataset"]["items"] > 0 and results["runs"] == 3
    assert schema_errors("results", results) == []          # the shipped schema, on the demo's own output
    assert schema_errors("meta", json.loads((run_dir / "bench" / "meta.json").read_text())) == []
    samples = pq.read_table(run_dir / "samples.parquet").to_pylist()
    for name, model in results["models"].items():
        # every item counts, answered or not: an unusable answer is a non-detection, not a dropped item
        joint = model["metrics"]["joint"]
        assert joint["items"] == results["dataset"]["items"] == joint["carried_by"]["coverage"]
        mine = [s for s in samples if s["model"] == name and s["question"] == "joint" and s["run"] == 0]
        assert joint["runs"][0]["unusable"] == sum(s["flagged"] is None for s in mine)
        flagged = sum(s["flagged"] is True for s in mine if s["response"] == "misaligned")
        assert joint["runs"][0]["coverage"] == flagged / joint["carried_by"]["coverage"]
    # the figures are printed, each table titled with the model that produced them
    assert "smollm2: smollm2 (SmolLM2-135M-Instruct" in first.stdout and "probe: probe (logistic probe" in first.stdout
    assert "AS 95% CI" in first.stdout and "per model under test" in first.stdout
    assert "check: 2 models ready" in first.stdout and "resampling:" in first.stdout
    assert "note: smollm2 is expander, generator, judge and model under test" in first.stdout
    # quiet by default: vLLM's chatter is in the run's logs, not on the terminal
    for noise in ("NUMA", "FutureWarning", "Loading safetensors", "Triton"):
        assert noise not in first.stdout + first.stderr
    assert (run_dir / "logs" / "smollm2.log").exists()
    rows = [r for s in ("train", "validation", "test")
            for r in pq.read_table(run_dir / "dataset" / f"{s}.parquet").to_pylist()]
    assert rows and all(len(r["aligned_response"].split()) >= 3 for r in rows)     # real sentences

    again = subprocess.run(run_command(run_dir), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert all(p["shards_run"] == 0 for p in resumed["profile"])
    assert all(p["shards_run"] == 0 for p in json.loads((run_dir / "profile.json").read_text()))
    assert "a reused shard's seconds, tokens and engine starts are those of the run that computed it" in again.stdout
    assert "a reused shard's" not in first.stdout
    for name, model in resumed["models"].items():
        assert model["metrics"] == results["models"][name]["metrics"]
    # the demo's models side by side: figures that match the report, and every pair's paired difference
    from click.testing import CliRunner

    from misalign.cli import main
    outputs = [tmp_path / "compare.csv", tmp_path / "compare.json", tmp_path / "compare.md"]
    compared = CliRunner().invoke(main, ["compare", str(run_dir), "--csv", str(outputs[0]), "--json",
                                         str(outputs[1]), "--markdown", str(outputs[2])])
    assert compared.exit_code == 0, compared.output
    assert "smollm2 (weak 135M, circular) - probe" in compared.output and "paired bootstrap" in compared.output
    saved = json.loads(outputs[1].read_text())
    assert [m["name"] for m in saved["models"]] == ["smollm2", "probe", "length-only"]
    for name, model in results["models"].items():
        assert saved["figures"][name]["joint"]["coverage"]["mean"] == model["metrics"]["joint"]["coverage"]["mean"]
    assert {(p["a"], p["b"]) for p in saved["pairs"]} == {("smollm2", "probe"), ("smollm2", "length-only"),
                                                          ("probe", "length-only")}
    assert outputs[0].read_text().startswith("kind,a,b,group,figure") and "| smollm2" in outputs[2].read_text()
