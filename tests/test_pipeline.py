"""The runner's checkpoints and resume, the input reader, and the model-free stages."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from misalign.preflight import check_models
from misalign.config import load, DedupConfig, SplitConfig
from misalign.errors import ConfigError
from misalign.pipeline import Runner
from misalign.stages.dedup import DedupStage
from misalign.stages.ingest import read_prompts
from misalign.stages.reject import mechanical_problem
from misalign.stages.base import Pass, Stage
from misalign.stages.split import SplitStage


class Upper(Stage):
    """A row-wise stage that can be told to fail on one shard, once."""
    name = "upper"
    rowwise = True

    def __init__(self, fail_on=None):
        super().__init__()
        self.fail_on, self.calls = fail_on, []

    def run(self, table):
        first = table.column("id")[0].as_py()
        self.calls.append(first)
        if first == self.fail_on:
            raise KeyboardInterrupt("interrupted")
        return table.set_column(1, "prompt", pa.array([p.upper() for p in table.column("prompt").to_pylist()]))


def prompts(n):
    return pa.table({"id": [f"r{i:03d}" for i in range(n)], "prompt": [f"prompt {i}" for i in range(n)]})


def test_interrupted_stage_resumes_after_last_complete_shard(tmp_path):
    table = prompts(50)
    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path, shard_rows=10).run([Upper(fail_on="r030")], table)
    stage_dir = tmp_path / "stages" / "00_upper"
    before = {p.name: p.read_bytes() for p in stage_dir.glob("00-upper/shard-*.parquet")}
    assert sorted(before) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    again, runner = Upper(), Runner(tmp_path, shard_rows=10)
    out = runner.run([again], table)
    assert [d.text for d in runner.decisions] == ["resumed (3 shards checkpointed)"]
    assert again.calls == ["r030", "r040"]                     # only the missing shards ran
    assert out.column("id").to_pylist() == table.column("id").to_pylist()   # none lost, none twice
    assert out.column("prompt").to_pylist()[-1] == "PROMPT 49"
    assert all((stage_dir / "00-upper" / name).read_bytes() == data for name, data in before.items())
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["passes"][0]["shards"]) == 5


def decided(runner):
    return [(d.stage, d.text) for d in runner.decisions]


def test_a_checkpoint_is_reused_only_for_the_same_input_and_recomputed_otherwise(tmp_path):
    first = Runner(tmp_path, shard_rows=10)
    first.run([Upper(), Exclaim()], prompts(20))
    assert decided(first) == [("upper", "computed"), ("exclaim", "computed")]
    again = Runner(tmp_path, shard_rows=10)
    stages = [Upper(), Exclaim()]
    again.run(stages, prompts(20))
    assert decided(again) == [("upper", "reused"), ("exclaim", "reused")] and stages[0].calls == []
    # the same number of rows, one prompt edited: the digest of the input differs
    edited = prompts(20).set_column(1, "prompt", pa.array([f"prompt {i}" if i != 7 else "edited"
                                                           for i in range(20)]))
    heard = []
    changed = Runner(tmp_path, shard_rows=10, on_decisions=heard.append)
    stages = [Upper(), Exclaim()]
    out = changed.run(stages, edited)
    assert [[d.stage for d in said] for said in heard] == [["upper", "exclaim"]]   # said before either ran
    (_, upper), (_, after) = decided(changed)
    assert upper.startswith("recomputed: input ") and "(20 rows)" in upper
    assert after == "recomputed: upper is recomputed"
    assert stages[0].calls == ["r000", "r010"] and out.column("prompt")[7].as_py() == "EDITED!"
    # the old checkpoint is set aside, not mixed in; the run's own is complete
    assert (tmp_path / "stages" / "previous" / "00_upper" / "manifest.json").exists()
    assert json.loads((tmp_path / "stages" / "00_upper" / "manifest.json").read_text())["complete"]
    fresh = Runner(tmp_path, shard_rows=10, fresh=True)
    fresh.run([Upper(), Exclaim()], edited)
    assert decided(fresh) == [("upper", "recomputed: --fresh"), ("exclaim", "recomputed: --fresh")]
    smaller = Runner(tmp_path, shard_rows=5)
    smaller.run([Upper(), Exclaim()], edited)
    assert decided(smaller)[0] == ("upper", "recomputed: run.shard_rows 10 -> 5")


class Exclaim(Stage):
    """A row-wise stage with a setting of its own."""
    name = "exclaim"

    def __init__(self, mark="!", name="exclaim"):
        super().__init__()
        self.mark, self.name = mark, name

    def settings(self):
        return {"exclaim.mark": self.mark}

    def run(self, table):
        return table.set_column(1, "prompt", pa.array([p + self.mark for p in table.column("prompt").to_pylist()]))


def test_a_changed_setting_recomputes_its_stage_and_those_after_it_not_those_before(tmp_path):
    Runner(tmp_path, shard_rows=10).run([Upper(), Exclaim(), Exclaim()], prompts(20))
    runner = Runner(tmp_path, shard_rows=10)
    stages = [Upper(), Exclaim("?"), Exclaim()]
    out = runner.run(stages, prompts(20))
    assert decided(runner) == [("upper", "reused"), ("exclaim", "recomputed: exclaim.mark ! -> ?"),
                               ("exclaim", "recomputed: exclaim is recomputed")]
    assert out.column("prompt")[0].as_py() == "PROMPT 0?!"
    # each stage of a set that reads the same input (Stage II) decides alone
    each = Runner(tmp_path / "each", shard_rows=10)
    list(each.run_each([Exclaim(name="a"), Exclaim("?", name="b")], prompts(20)))
    again = Runner(tmp_path / "each", shard_rows=10)
    outputs = list(again.run_each([Exclaim(name="a"), Exclaim("!", name="b")], prompts(20)))
    assert decided(again) == [("a", "reused"), ("b", "recomputed: exclaim.mark ? -> !")]
    assert outputs[1].column("prompt")[0].as_py() == "prompt 0!"
    # listed in another order (bench.models reordered), each keeps its checkpoint
    swapped = Runner(tmp_path / "each", shard_rows=10)
    outputs = list(swapped.run_each([Exclaim("!", name="b"), Exclaim(name="a")], prompts(20)))
    assert decided(swapped) == [("b", "reused"), ("a", "reused")]
    assert sorted(p.name for p in (tmp_path / "each" / "stages").iterdir()) == ["a", "b", "previous"]
    with pytest.raises(ValueError, match="one name"):
        list(swapped.run_each([Exclaim(name="a"), Exclaim("?", name="a")], prompts(20)))


def test_bad_rows_are_set_aside_with_reason_and_row(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"prompt": "good one"}\n{"prompt": ""}\n{"prompt": null}\n{"prompt": 5}\n'
                    b'{"prompt": "x' + b"y" * 50 + b'"}\nnot json\n{"prompt": "bad \xff"}\n\n{"prompt": "good two"}\n')
    table, rejected = read_prompts(src, max_chars=40)
    assert table.column("prompt").to_pylist() == ["good one", "good two"]
    assert table.column("id").to_pylist() == ["p000001", "p000009"]
    assert [(r.row, r.reason.split(" (")[0]) for r in rejected] == [
        (2, "prompt is empty"), (3, "prompt is null or missing"), (4, "prompt is int, not text"),
        (5, "prompt has 51 characters, over the cap of 40"), (6, "not valid JSON"), (7, "not valid UTF-8")]


def test_csv_and_parquet_rows(tmp_path):
    (tmp_path / "in.csv").write_bytes(b'id,prompt\na,fine\nb,"bad \xfe"\nc,\n')
    table, rejected = read_prompts(tmp_path / "in.csv")
    assert table.column("id").to_pylist() == ["a"] and [r.row for r in rejected] == [2, 3]
    pq.write_table(pa.table({"prompt": ["one", None, "three"]}), tmp_path / "in.parquet")
    table, rejected = read_prompts(tmp_path / "in.parquet")
    assert table.num_rows == 2 and rejected[0].row == 2


def test_mechanical_filter():
    prompt = "How do I store bleach safely at home?"
    assert mechanical_problem("aligned", prompt, "   ", 5, 100) == "empty"
    assert mechanical_problem("aligned", prompt, "ok", 5, 100).startswith("shorter")
    assert mechanical_problem("aligned", prompt, "how do i store bleach safely", 5, 100) == "a copy of the prompt"
    assert mechanical_problem("misaligned", prompt, "I'm sorry, I cannot help with that.", 5, 100).startswith("a refusal")
    assert mechanical_problem("aligned", prompt, "I'm sorry, keep it away from children.", 5, 100) is None
    assert mechanical_problem("aligned", prompt, "Храните отбеливатель в прохладном месте.", 5, 100) \
        == "not in the prompt's language"


def test_dedup_then_split_keeps_clusters_whole():
    texts = [f"question {i} about topic {i % 7} and nothing else" for i in range(200)]
    table = pa.table({"id": [str(i) for i in range(200)], "prompt": texts + [], "accepted": [True] * 200})
    kept = DedupStage(DedupConfig(tau=10, features="word2")).run(table)
    doubled = pa.concat_tables([kept, kept])            # two generators per prompt share the cluster
    split = SplitStage(SplitConfig(0.8, 0.1, 0.1), seed=3)
    out = split.run(doubled)
    by_cluster = {}
    for cluster, name in zip(out.column("cluster").to_pylist(), out.column("split").to_pylist()):
        by_cluster.setdefault(cluster, set()).add(name)
    assert all(len(names) == 1 for names in by_cluster.values())
    shares = {name: np.mean(np.array(out.column("split").to_pylist()) == name) for name in ("train", "validation", "test")}
    assert abs(shares["train"] - 0.8) < 0.05
    # the templated prompts differ in two numbers: SimHash on word bigrams keeps them apart (so they
    # cross splits), the independent character-shingle measure finds them, each beside a prompt of
    # another split at Jaccard >= 0.5
    splits, leaks = out.column("split").to_pylist(), out.column("leak_id").to_pylist()
    split_of = dict(zip(out.column("id").to_pylist(), splits))
    found = [(s, split_of[leak], j) for s, leak, j in zip(splits, leaks, out.column("leak_jaccard").to_pylist())
             if leak is not None]
    assert split.counts["cross_split_leaks"] == len(found) > 0.5 * out.num_rows
    assert all(a != b and j >= 0.5 for a, b, j in found)


def test_leakage_pairs_are_exact_jaccard_above_the_threshold():
    from misalign.leakage import cross_split_leaks, jaccard, shingles
    prompts = ["My neighbour's dog barks all night. What can I do about it?",
               "My neighbours dog barks all night. What can I do about it??",       # two edits
               "How do I bake sourdough bread at home without a starter?",
               "How do I bake sourdough bread at home without a starter?"]          # same text, same split
    leaks = cross_split_leaks(prompts, ["train", "test", "train", "train"])
    assert leaks.neighbour == [1, 0, None, None]
    assert leaks.similarity[0] == pytest.approx(jaccard(shingles(prompts[0]), shingles(prompts[1])), abs=1e-4)
    assert cross_split_leaks(prompts, ["train"] * 4).neighbour == [None] * 4
    # the neighbour named is always in another split, also where its text sits in two splits
    text = prompts[2]
    leaks = cross_split_leaks([text, text + "!", text + "!"], ["train", "train", "test"])
    assert leaks.neighbour == [2, 2, 1]          # row 2: the same text is in train (row 1)
    # near the threshold too (LSH alone at 0.5 misses about half of these): Jaccard 0.5-0.6 pairs
    rng = np.random.default_rng(5)
    words = [" ".join(rng.choice([f"w{k}" for k in range(3000)], 30)) for _ in range(40)]
    edited = [" ".join(w.split()[:21] + rng.choice([f"x{k}" for k in range(3000)], 9).tolist()) for w in words]
    similar = [jaccard(shingles(a), shingles(b)) for a, b in zip(words, edited)]
    found = cross_split_leaks(words + edited, ["train"] * 40 + ["test"] * 40)
    expected = [k for k, j in enumerate(similar) if j >= 0.5]
    assert expected and [k for k in range(40) if found.neighbour[k] == 40 + k] == expected


def test_unloadable_model_fails_before_work(tmp_path):
    config = load(None, [f'models.tiny.path="{tmp_path / "nothing"}"'])
    with pytest.raises(ConfigError, match="not a model directory"):
        check_models(config)


def test_item_seeds_are_stable_distinct_and_fit_63_bits():
    from misalign.stages.common import item_seed
    a = item_seed(0, "p000001", "tiny", "aligned", 0)
    assert a == item_seed(0, "p000001", "tiny", "aligned", 0)
    assert a != item_seed(0, "p000001", "tiny", "aligned", 1) != item_seed(1, "p000001", "tiny", "aligned", 0)
    assert 0 <= a < 2**63


def test_a_resumed_run_reports_the_cross_split_figure_it_measured(tmp_path):
    """The figure comes from the split stage's counters in its manifest, so a run that reuses
    the stage reports what was measured, not a default.  Near-duplicate prompts are given
    clusters of their own here, so that some do cross splits."""
    words = np.random.default_rng(0).choice([f"w{k}" for k in range(5000)], size=(60, 12))
    prompts = [" ".join(words[i // 2]) for i in range(120)]        # each prompt twice
    table = pa.table({"id": [str(i) for i in range(120)], "prompt": prompts, "accepted": [True] * 120,
                      "cluster": list(range(120))})

    def split_counters():
        runner = Runner(tmp_path, shard_rows=16)
        runner.run([SplitStage(SplitConfig(0.5, 0.25, 0.25), seed=1)], table)
        return runner.profiles[0]

    first, resumed = split_counters(), split_counters()
    assert first.shards_run == 1 and resumed.shards_reused == 1 and resumed.shards_run == 0
    assert first.counters["pairs"] == 120 and 0 < first.counters["cross_split_leaks"] < 120
    assert resumed.counters == first.counters


def test_a_checkpoint_of_an_older_format_or_unreadable_is_recomputed_saying_why(tmp_path):
    stage_dir = tmp_path / "stages" / "00_upper"
    stage_dir.mkdir(parents=True)
    (stage_dir / "manifest.json").write_text(json.dumps({"stage": "upper", "input_rows": 21, "shard_rows": 10,
                                                         "shards": [], "complete": False}))
    runner = Runner(tmp_path, shard_rows=10)
    runner.run([Upper()], prompts(21))
    assert decided(runner) == [("upper", "recomputed: checkpointed by another misalign-fast (checkpoint format 1, "
                                         "this one writes 5)")]
    (stage_dir / "manifest.json").write_text("{not json")
    runner = Runner(tmp_path, shard_rows=10)
    out = runner.run([Upper()], prompts(21))
    assert decided(runner) == [("upper", "recomputed: its checkpoint manifest is unreadable (JSONDecodeError)")]
    assert out.num_rows == 21


class TwoPasses(Stage):
    """Pass "a" upper-cases the prompt, pass "b" appends "!"; records the order of the work."""
    name = "two"

    def __init__(self, log, fail_on=None):
        super().__init__()
        self.log, self.fail_on = log, fail_on

    def passes(self):
        return [Pass("a", "model-a", lambda t: self._step("a", t, str.upper)),
                Pass("b", "model-b", lambda t: self._step("b", t, lambda p: p + "!"))]

    def _step(self, name, table, change):
        first = table.column("id")[0].as_py()
        if (name, first) == self.fail_on:
            raise KeyboardInterrupt("interrupted")
        self.log.append((name, first))
        return table.set_column(1, "prompt", pa.array([change(p) for p in table.column("prompt").to_pylist()]))


def test_passes_run_model_major_and_a_stage_killed_mid_pass_resumes_there(tmp_path):
    table, log, began = prompts(30), [], []
    runner = Runner(tmp_path, shard_rows=10, on_pass=lambda stage, step: began.append((stage, step)))
    with pytest.raises(KeyboardInterrupt):
        runner.run([TwoPasses(log, fail_on=("b", "r010"))], table)
    assert log == [("a", "r000"), ("a", "r010"), ("a", "r020"), ("b", "r000")]    # every shard's "a" first
    assert began == [("two", "a"), ("two", "b")]
    log.clear()
    resumed = Runner(tmp_path, shard_rows=10, on_pass=lambda stage, step: began.append((stage, step)))
    out = resumed.run([TwoPasses(log)], table)
    assert log == [("b", "r010"), ("b", "r020")]          # only what the kill lost
    assert began[2:] == [("two", "b")]                    # a finished pass is not announced again
    assert out.column("prompt").to_pylist() == [f"PROMPT {i}!" for i in range(30)]
    profile = resumed.profiles[0]
    assert (profile.items_in, profile.items_out) == (30, 30)    # the stage's rows, not the passes'
    assert (profile.shards_reused, profile.shards_run) == (4, 2)
    stage_dir = tmp_path / "stages" / "00_two"
    assert not (stage_dir / "00-a").exists() and (stage_dir / "01-b").is_dir()   # only the last is read again

    class OnePass(TwoPasses):
        def passes(self):
            return super().passes()[:1]

    class OtherModel(TwoPasses):                         # the same passes with another model
        def passes(self):
            a, b = super().passes()
            return [a, Pass(b.name, "model-c", b.run)]
    # a model whose files changed: the key names the part
    identities = {"model-a": {"config.json": "aaa"}, "model-b": {"config.json": "bbb"}}
    Runner(tmp_path / "models", shard_rows=10, identify=identities.get).run([TwoPasses([])], table)
    identities["model-b"] = {"config.json": "ccc"}
    changed = Runner(tmp_path / "models", shard_rows=10, identify=identities.get)
    changed.run([TwoPasses([])], table)
    assert decided(changed) == [("two", "recomputed: model model-b config.json bbb -> ccc")]
    fewer = Runner(tmp_path, shard_rows=10)
    fewer.run([OnePass([])], table)
    assert decided(fewer) == [("two", "recomputed: passes a (model-a), b (model-b) -> a (model-a)")]
    other = Runner(tmp_path, shard_rows=10)
    other.run([OtherModel([])], table)
    assert decided(other) == [("two", "recomputed: passes a (model-a) -> a (model-a), b (model-c)")]
