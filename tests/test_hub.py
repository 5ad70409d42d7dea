"""Models named by a Hugging Face Hub id, read through huggingface_hub's cache.  No machine here
reaches the Hub: conftest points HF_HOME at an empty folder with HF_HUB_OFFLINE=1, and this file
lays a tiny model out in it as the Hub's cache does (models--ORG--NAME/refs, snapshots/COMMIT/),
so the real resolution code runs from the id to the engine."""
import json
import os
from pathlib import Path

import pytest

from misalign import config as config_mod
from misalign import hub
from misalign.errors import ConfigError
from misalign.inference.tiny import make_tiny_model

REPO_ID, COMMIT = "acme/tiny-chat", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def cached_model():
    """acme/tiny-chat in the Hub cache: branch main at COMMIT."""
    repo = Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    make_tiny_model(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def hub_config(tmp_path, *settings):
    roles = ['expand.model="hubbed"', 'respond.models=["hubbed"]', 'reject.judge="hubbed"', 'bench.models=["hubbed"]']
    return config_mod.load(None, [f'models.hubbed.path="{REPO_ID}"', 'models.hubbed.max_model_len=512', *roles,
                                  f'run.dir="{tmp_path / "run"}"', "expand.floor=0", "run.limit=6", "reject.rounds=0",
                                  "respond.candidates=1", "respond.max_tokens=8", "reject.min_chars=1", *settings])


def test_a_hub_id_passes_check_plan_and_a_build(tmp_path, cached_model):
    from misalign import run
    config = hub_config(tmp_path)
    found = {c.name: c for c in run.check(config)}
    assert found["hubbed"].source == str(cached_model) and not found["hubbed"].problems
    assert found["hubbed"].roles == ["expander", "generator", "judge", "model under test"]
    planned = run.plan(config)
    assert planned.plan.models["hubbed"].need > 0            # sized from the cached safetensors header
    summary = run.build(config)                              # a real engine, from the Hub cache
    assert summary["pairs"] >= 0 and summary["models"]["hubbed"] == (   # make-tiny's marker travels with its files
        f"hubbed (random-weight stand-in: {REPO_ID} at commit {COMMIT}, Hub cache)")
    key = json.loads((tmp_path / "run" / "stages" / "04_respond" / "manifest.json").read_text())["key"]
    assert key["model hubbed hub"] == REPO_ID and key["model hubbed revision"] == COMMIT


def test_a_revision_is_resolved_and_an_uncached_model_is_one_line(tmp_path, cached_model):
    assert hub.small_files(REPO_ID, COMMIT) == cached_model
    assert hub.is_hub_id(REPO_ID) and not hub.is_hub_id(str(cached_model)) and not hub.is_hub_id("bundled:smollm2")
    from misalign.run import check
    problems = {c.name: c.problems for c in check(config_mod.load(None, ['models.tiny.path="acme/other"']))}
    assert len(problems["tiny"]) == 1 and "model acme/other is not in the Hugging Face cache" in problems["tiny"][0]
    assert "(HF_HUB_OFFLINE is set): download it first (hf download acme/other)" in problems["tiny"][0]
    with pytest.raises(ConfigError, match="at revision 'v2' is not in the Hugging Face cache"):
        hub.small_files(REPO_ID, "v2")
    from click.testing import CliRunner

    from misalign.cli import main
    refused = CliRunner().invoke(main, ["build", "--run-dir", str(tmp_path / "r"), "--set",
                                        'models.smollm2.path="acme/other"'])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "acme/other" in refused.output
    assert not (tmp_path / "r").exists()
