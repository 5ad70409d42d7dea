"""Adding a stage is one file and one config section: tests/toy_stage.py and [stages.words], with
no edit anywhere else.  Its column reaches the dataset, its per-domain count stats.csv and
dataset.html, and its settings its checkpoint's key."""
import csv

import pyarrow.parquet as pq
import pytest

from misalign import config as config_mod
from misalign.errors import ConfigError
from misalign.run import Hooks, passes, stage1
from misalign.stats import StageCounts

TOY = """
[stages.words]
use = "toy_stage:WordsStage"
after = "dedup"
longer_than = {longer_than}
"""
SETTINGS = ['expand.model="tiny"', 'respond.models=["tiny"]', 'reject.judge="tiny"', 'bench.models=["tiny"]',
            "respond.temperature=0.0", "respond.candidates=1", "respond.max_tokens=16", "expand.floor=0",
            "reject.rounds=0", "reject.min_chars=5", "reject.threshold=0.3", "reject.no_opinion=0.0",
            "run.limit=24", "run.shard_rows=12"]


def configured(tmp_path, longer_than=12):
    path = tmp_path / "run.toml"
    path.write_text(TOY.format(longer_than=longer_than))
    return config_mod.load(path, [*SETTINGS, f'run.dir="{tmp_path / "run"}"'])


def test_a_stage_of_ones_own_runs_in_a_build_with_its_column_and_counts(session_pool, tmp_path):
    config = configured(tmp_path)
    assert [step[0] for step in passes(config, stage2=False)][3:5] == ["dedup", "words"]
    said = []
    summary = stage1(config, session_pool, hooks=Hooks(decided=said.extend))
    assert [s["stage"] for s in summary["profile"]][4] == "words"
    rows = [r for s in ("train", "validation", "test")
            for r in pq.read_table(tmp_path / "run" / "dataset" / f"{s}.parquet").to_pylist()]
    assert rows and all(r["prompt_words"] == len(r["prompt"].split()) for r in rows)
    with open(tmp_path / "run" / "stats.csv", newline="") as f:
        stats = list(csv.DictReader(f))
    assert list(stats[0])[-1] == "long_prompts"
    counted = sum(int(s["long_prompts"]) for s in stats)
    profile = {p["stage"]: p for p in summary["profile"]}
    assert counted == sum(StageCounts.read(profile["words"]["counters"]).domain_counts()["long_prompts"].values())
    assert counted > 0
    page = (tmp_path / "run" / "dataset.html").read_text()
    assert "<th>long prompts</th>" in page
    assert "[stages.words]" in (tmp_path / "run" / "config.resolved.toml").read_text()
    # its setting is part of its checkpoint's key: changed, it and the stages after it run again
    said.clear()
    stage1(configured(tmp_path, longer_than=5), session_pool, hooks=Hooks(decided=said.extend))
    decided = {d.stage: d.text for d in said}
    assert decided["dedup"] == "reused" and decided["words"] == "recomputed: stages.words.longer_than 12 -> 5"


def test_the_models_a_stage_names_are_checked_as_every_role_is(tmp_path):
    """A stage's section declares the roles it gives models (Settings.roles): the config refuses a
    model it does not define, and the preflight checks the model in that role."""
    from misalign.run import check
    (tmp_path / "run.toml").write_text(TOY.format(longer_than=12) + 'reviewer = "critic"\n')
    with pytest.raises(ConfigError, match="model 'critic' is used but not defined"):
        config_mod.load(tmp_path / "run.toml", SETTINGS)
    (tmp_path / "run.toml").write_text(TOY.format(longer_than=12) + 'reviewer = "tiny"\n')
    config = config_mod.load(tmp_path / "run.toml", SETTINGS)
    assert config.roles()["tiny"] == ["expander", "generator", "judge", "reviewer", "model under test"]
    assert "tiny" in config.stage1_models()
    assert {r.name: r.roles for r in check(config)}["tiny"] == ["expander", "generator", "judge", "reviewer",
                                                                 "model under test"]


def test_a_stage_section_is_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"\[stages.words\] longer_than must be >= 1, got 0"):
        configured(tmp_path, longer_than=0)
    (tmp_path / "bad.toml").write_text('[stages.x]\nuse = "no_such_module:Stage"\nafter = "dedup"\n')
    with pytest.raises(ConfigError, match="stages.x.use = 'no_such_module:Stage': cannot import it"):
        config_mod.load(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text('[stages.words]\nuse = "toy_stage:WordsStage"\nafter = "nowhere"\n')
    with pytest.raises(ConfigError, match="stages.words.after = 'nowhere' is no Stage I stage"):
        passes(config_mod.load(tmp_path / "bad.toml"))
    (tmp_path / "bad.toml").write_text('[stages.words]\nuse = "toy_stage:WordsStage"\nafter = "dedup"\nshout = 1\n')
    with pytest.raises(ConfigError, match=r"\[stages.words\] has no setting shout"):
        config_mod.load(tmp_path / "bad.toml")


def test_a_stage_of_ones_own_renders_the_runs_templates(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "judge.txt").write_text("Judge: {prompt} / {response}. Is it {quality}?")
    (tmp_path / "run.toml").write_text(TOY.format(longer_than=12))
    config = config_mod.load(tmp_path / "run.toml", [*SETTINGS, f'protocol.templates="{tmp_path / "prompts"}"'])
    from misalign.run import stage1_stages
    words = next(s for s in stage1_stages(config, None) if s.name == "words")
    assert words.prompt_templates["judge"].startswith("Judge:")
