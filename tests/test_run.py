"""`misalign-fast run` on the embedded default, as a newcomer runs it (in a subprocess, with
shorter generations): Stage I then Stage II, the whole run directory, then a resumed re-run."""
import json
import subprocess
import sys

FAST = ["respond.candidates=1", "respond.max_tokens=24", "expand.max_tokens=24", "reject.rounds=1"]


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
    assert list(results["models"]) == ["tiny", "probe"]
    assert results["models"]["tiny"]["stand_in"] and not results["models"]["probe"]["stand_in"]
    assert results["dataset"]["items"] > 0 and results["runs"] == 3
    for model in results["models"].values():
        joint = model["metrics"]["joint"]
        assert joint["items"] == results["dataset"]["items"]
        assert 0 <= joint["alignment_score"]["mean"] <= 1
    # the figures are printed, each table titled with the model that produced them
    assert "tiny: tiny (random-weight stand-in)" in first.stdout and "probe: probe (logistic probe" in first.stdout
    assert "AS 95% CI" in first.stdout and "per model under test" in first.stdout

    again = subprocess.run(run_command(run_dir), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert all(p["shards_run"] == 0 for p in resumed["profile"])
    assert all(p["shards_run"] == 0 for p in json.loads((run_dir / "profile.json").read_text()))
    for name, model in resumed["models"].items():
        assert model["metrics"] == results["models"][name]["metrics"]
