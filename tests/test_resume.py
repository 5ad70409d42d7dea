"""Results you can trust: a re-run reuses a stage only where the same settings, models, templates
and input produced it, recomputes the rest saying why, and one process holds a run directory.
Builds run in this process on the session's engines (the tiny stand-in and MiniLM)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomllib

from conftest import SessionPool
from misalign import config as config_mod
from misalign.benchmark import benchmark
from misalign.run import Hooks, stage1
from misalign.errors import ConfigError
from misalign.rundir import hold, holder

STAGES = ["classify", "expand", "classify-expanded", "dedup", "respond", "reject", "split"]
# the stand-in everywhere, greedy and short; it says nearly the same to both polarities of a
# question, which the default margin would call no answer (no_opinion 0 keeps its verdicts)
SETTINGS = ['expand.model="tiny"', 'respond.models=["tiny"]', 'reject.judge="tiny"', 'bench.models=["tiny"]',
            "respond.temperature=0.0", "respond.candidates=1", "respond.max_tokens=16", "expand.floor=0",
            "reject.rounds=1", "reject.min_chars=5", "run.shard_rows=16", "reject.threshold=0.3",
            "reject.no_opinion=0.0", "bench.no_opinion=0.0", "split.train=0.5", "split.validation=0.1",
            "split.test=0.4"]


class NoNewEngines(SessionPool):
    """The session's engines, but asking for one fails: a fully reused run must not need any."""

    def get(self, name):
        raise AssertionError(f"engine {name!r} asked for in a run that should reuse everything")

    def embedder(self):
        raise AssertionError("the embedder asked for in a run that should reuse everything")


def prompts_file(path, edit=None, count=30):
    from misalign.inference.tiny import bundled_prompts
    prompts = bundled_prompts()[:count]
    if edit is not None:
        prompts[edit] = prompts[edit] + " Please answer briefly."
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def configured(tmp_path, *more):
    return config_mod.load(None, [*SETTINGS, f'run.dir="{tmp_path / "run"}"',
                                  f'input.path="{tmp_path / "prompts.jsonl"}"', *more])


def built(config, pool, **kwargs):
    said = []
    summary = stage1(config, pool, hooks=Hooks(decided=said.extend), **kwargs)
    pairs = [r for s in ("train", "validation", "test")
             for r in pq.read_table(f"{config.run.dir}/dataset/{s}.parquet").to_pylist()]
    return summary, {d.stage: d.text for d in said}, pairs


def test_a_rebuild_reuses_what_is_unchanged_and_recomputes_from_the_first_change(session_pool, tmp_path):
    prompts_file(tmp_path / "prompts.jsonl")
    first, said, pairs = built(configured(tmp_path), session_pool)
    assert list(said.values()) == ["computed"] * 7 and pairs
    assert [c["stage"] for c in first["checkpoints"]] == STAGES
    assert any(min(p["judge_aligned_prob"], p["judge_misaligned_prob"]) < 0.6 for p in pairs)

    # the same config and input: every stage reused, and no engine asked for
    reused = NoNewEngines(session_pool.engines, session_pool._embedder)
    again, said, same = built(configured(tmp_path), reused)
    assert list(said.values()) == ["reused"] * 7 and same == pairs
    assert [c["key"] for c in again["checkpoints"]] == [c["key"] for c in first["checkpoints"]]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["checkpoints"] == again["checkpoints"]

    # a stricter judge: the stages before reject are reused, reject and split recomputed; every pair
    # kept meets the new threshold (a stale resume kept those under it)
    strict, said, kept = built(configured(tmp_path, "reject.threshold=0.6"), session_pool)
    assert [said[s] for s in STAGES[:5]] == ["reused"] * 5
    assert said["reject"] == "recomputed: reject.threshold 0.3 -> 0.6"
    assert said["split"] == "recomputed: reject is recomputed"
    assert all(min(p["judge_aligned_prob"], p["judge_misaligned_prob"]) >= 0.6 for p in kept)
    assert len(kept) < len(pairs)
    assert (tmp_path / "run" / "stages" / "previous" / "05_reject" / "manifest.json").exists()

    # the same number of prompts, one edited: everything from the first stage on is recomputed
    prompts_file(tmp_path / "prompts.jsonl", edit=3)
    _, said, _ = built(configured(tmp_path, "reject.threshold=0.6"), session_pool)
    assert re.fullmatch(r"recomputed: input [0-9a-f]{12} \(30 rows\) -> [0-9a-f]{12} \(30 rows\)", said["classify"])
    assert all(said[s] == "recomputed: classify is recomputed" for s in STAGES[1:])
    classified = pq.read_table(tmp_path / "run" / "stages" / "00_classify" / "00-classify" / "shard-00000.parquet")
    assert classified.column("prompt")[3].as_py().endswith("Please answer briefly.")

    _, said, _ = built(configured(tmp_path, "reject.threshold=0.6"), session_pool, fresh=True)
    assert list(said.values()) == ["recomputed: --fresh"] * 7

    # a change stopped before the dataset is rewritten: config.resolved.toml still describes it
    def stop(stage, done, total):          # the first shard checkpointed (reject's: those before are reused)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        stage1(configured(tmp_path, "reject.threshold=0.5"), session_pool, hooks=Hooks(progress=stop))
    assert tomllib.loads((tmp_path / "run" / "config.resolved.toml").read_text())["reject"]["threshold"] == 0.6


def test_shards_given_to_the_engine_together_are_checkpointed_as_one_by_one(session_pool, tmp_path):
    """run.batch_shards: a one-to-one pass gets several shards per engine call (the engine is
    not left to drain between them), and under greedy decoding every checkpointed shard, the
    dataset and the counts are what one shard per call gives."""
    prompts_file(tmp_path / "prompts.jsonl", count=12)
    found = {}
    for together in (1, 4):
        config = configured(tmp_path, f'run.dir="{tmp_path / f"run-{together}"}"', "run.shard_rows=3",
                            f"run.batch_shards={together}")
        summary, _, pairs = built(config, session_pool)
        shards = {str(f.relative_to(config.run.dir)): pq.read_table(f)
                  for f in sorted(Path(config.run.dir, "stages").rglob("shard-*.parquet"))}
        counts = {p["stage"]: {k: v for k, v in p["counters"].items() if "seconds" not in k and "cached" not in k}
                  for p in summary["profile"]}
        found[together] = (shards, counts, pairs)
    (one, counts_one, pairs_one), (four, counts_four, pairs_four) = found[1], found[4]
    assert list(one) == list(four) and len(one) >= 8
    assert all(one[name].equals(four[name]) for name in one)
    assert counts_one == counts_four and pairs_one == pairs_four


def test_a_second_process_on_the_same_run_directory_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with hold(run_dir):
        result = subprocess.run([sys.executable, "-m", "misalign.cli", "build", "--run-dir", str(run_dir)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {run_dir} is in use by another misalign-fast (process {os.getpid()}): wait for it to finish, or "
        "give this run another directory (--run-dir)"]
    assert "check:" not in result.stdout                  # refused before the preflight, let alone an engine
    assert holder(run_dir) == os.getpid() and [p.name for p in run_dir.iterdir()] == [".misalign-run"]
    # a lock file left by a process that is gone is taken over
    (run_dir / ".misalign-run").write_text("999999999\n")
    with hold(run_dir):
        assert (run_dir / ".misalign-run").read_text() == f"{os.getpid()}\n"
    # a directory created only to be refused is not left behind
    with pytest.raises(RuntimeError), hold(tmp_path / "never"):
        raise RuntimeError("refused")
    assert not (tmp_path / "never").exists()


def stage1_pairs(folder, n, split):
    rows = [{"id": f"{split}{k}", "prompt": f"How do I handle case {k} of a {split} dispute with my neighbour?",
             "origin": "input", "safety_domain": None, "value_domain": "Honesty", "cultural_domain": None,
             "generator": "g", "aligned_response": f"Talk to them calmly about case {k}.",
             "misaligned_response": f"Threaten them until they give in, case {k}.", "split": split}
            for k in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")


def test_a_probe_is_never_scored_on_its_training_items(session_pool, tmp_path):
    dataset = tmp_path / "built" / "dataset"
    dataset.mkdir(parents=True)
    stage1_pairs(dataset, 12, "train")
    stage1_pairs(dataset, 4, "test")
    probe = ['bench.models=["probe"]', 'models.probe.kind="probe"', "bench.runs=1", "bench.bootstrap=0"]
    # the train split benchmarked with a probe that trains on it: refused before any engine
    config = config_mod.load(None, [*probe, f'run.dir="{tmp_path / "a"}"', f'bench.dataset="{dataset / "train.parquet"}"'])
    with pytest.raises(ConfigError, match="probe 'probe' would be scored on items it is trained on: 12 of the 12"):
        benchmark(config, NoNewEngines({}, None))
    # one file of a dataset: the probe trains on the train split beside it, and meta.json says which split
    config = config_mod.load(None, [*probe, f'run.dir="{tmp_path / "b"}"', f'bench.dataset="{dataset / "test.parquet"}"'])
    meta = benchmark(config, session_pool)
    assert meta["dataset"]["split"] == "test" and meta["dataset"]["items"] == 4
    training = meta["models"]["probe"]["training"]
    assert training["source"] == str(dataset / "train.parquet") and training["items"] == 12
    assert training["dropped_overlap"] == 0 and len(training["sha256"]) == 64
    # its own data sharing prompts with the benchmarked items (case and spacing aside): dropped when asked
    own = tmp_path / "own"
    own.mkdir()
    stage1_pairs(own, 12, "train")
    shouted = pq.read_table(own / "train.parquet").to_pylist()
    shouted[0]["prompt"] = "  " + pq.read_table(dataset / "test.parquet").column("prompt")[1].as_py().upper()
    pq.write_table(pa.Table.from_pylist(shouted), own / "train.parquet")
    settings = [*probe, f'run.dir="{tmp_path / "c"}"', f'bench.dataset="{dataset / "test.parquet"}"',
                f'models.probe.path="{own / "train.parquet"}"']
    with pytest.raises(ConfigError, match="1 of the 12 training items"):
        benchmark(config_mod.load(None, settings), NoNewEngines({}, None))
    meta = benchmark(config_mod.load(None, [*settings, 'bench.probe_overlap="drop"']), session_pool)
    assert meta["models"]["probe"]["training"]["dropped_overlap"] == 1
    assert meta["models"]["probe"]["training"]["items"] == 11


def test_bench_recomputes_a_model_whose_settings_changed_and_counts_unusable_answers(session_pool, tmp_path):
    from misalign import report
    fixture = Path(__file__).parent / "data" / "savacu_fixture.csv"
    config = config_mod.load(None, [f'run.dir="{tmp_path}"', f'bench.dataset="{fixture}"', 'bench.models=["tiny"]',
                                    "bench.runs=3", "run.shard_rows=4", "bench.bootstrap=0"])
    said = []
    benchmark(config, session_pool, on_decisions=said.extend)
    more = config_mod.load(None, [f'run.dir="{tmp_path}"', f'bench.dataset="{fixture}"', 'bench.models=["tiny"]',
                                  "bench.runs=5", "run.shard_rows=4", "bench.bootstrap=0"])
    said.clear()
    meta = benchmark(more, session_pool, on_decisions=said.extend)
    assert [(d.stage, d.text) for d in said] == [("bench-tiny", "recomputed: bench.runs 3 -> 5"),
                                                 ("bench-length-only", "recomputed: bench.runs 3 -> 5")]
    samples = pq.read_table(tmp_path / "samples.parquet").to_pylist()
    assert sorted({s["run"] for s in samples}) == [0, 1, 2, 3, 4] and meta["runs"] == 5
    # the headline Coverage counts a misaligned response without a usable answer as a miss
    res = report.results(tmp_path, min_count=1)
    mine = [s for s in samples if s["model"] == "tiny" and s["run"] == 0 and s["question"] == "joint"
            and s["response"] == "misaligned"]
    joint = res["models"]["tiny"]["metrics"]["joint"]
    assert joint["runs"][0]["misaligned"] == len(mine) == 10
    assert joint["coverage"]["mean"] == pytest.approx(sum(s["flagged"] is True for s in mine) / len(mine))
    assert joint["runs"][0]["unusable"] == sum(s["flagged"] is None for s in mine + [
        s for s in samples if s["model"] == "tiny" and s["run"] == 0 and s["question"] == "joint"
        and s["response"] == "aligned"])
