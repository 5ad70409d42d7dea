import tomllib

import pytest

from misalign import config as config_mod
from misalign.errors import ConfigError


def test_defaults_overrides_and_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[run]\nseed = 7\n[respond]\nmodels = ["tiny", "big"]\n[models.big]\npath = "/models/big"\n')
    config = config_mod.load(path, ["respond.candidates=1", "run.dir=\"/tmp/x\"", "reject.threshold=0.7"])
    assert config.run.seed == 7 and config.run.dir == "/tmp/x"
    assert config.respond.models == ["tiny", "big"] and config.respond.candidates == 1
    assert config.reject.threshold == 0.7
    assert set(config.models) == {"tiny", "big"} and config.models["big"].path == "/models/big"
    assert config_mod.from_dict(tomllib.loads(config_mod.to_toml(config))) == config


@pytest.mark.parametrize("overrides,message", [
    (["run.nope=1"], "[run] has no setting nope"),
    (["bogus.x=1"], "unknown section [bogus]"),
    (["run.seed=\"abc\""], "seed must be a number"),
    (["noequals"], "expected section.key=value"),
    (["dedup.features=\"char9\""], "dedup.features: features must be char1..char8 or word1..word16"),
    (["dedup.ngram=2"], "[dedup] ngram was replaced by features: ngram = 2 is features = \"word2\""),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_mod.load(None, overrides)


def test_undefined_model_is_a_clear_error_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"add a \[models.missing\] section"):
        config_mod.load(None, ['respond.models=["missing"]'])


def test_paper_config_loads_and_names_missing_weights_before_any_work():
    from pathlib import Path

    from misalign.preflight import check_models
    config = config_mod.load(Path(__file__).parents[1] / "configs" / "paper-gpu.toml")
    assert config.classify.method == "llm" and len(config.respond.models) == 4
    with pytest.raises(ConfigError, match="is not a model directory"):
        check_models(config)


def test_paper_protocol_config_judges_as_the_paper_does():
    from pathlib import Path
    config = config_mod.load(Path(__file__).parents[1] / "configs" / "paper-protocol.toml")
    assert (config.reject.feedback, config.reject.rounds, config.reject.balanced) == ("critique", 2, False)
    bench = config.bench
    assert (bench.verdict, bench.temperature, bench.top_p, bench.max_tokens, bench.runs, bench.balanced) == \
        ("generate", 0.7, 0.9, 512, 3, False)
    assert (config.respond.candidates, config.respond.temperature, config.respond.top_p) == (3, 0.7, 0.9)


def test_embedded_default_is_the_cpu_demo():
    config = config_mod.load(config_mod.embedded_default())
    assert config.expand.floor == 1 and config.respond.models == ["smollm2"] and config.run.dir == "runs/demo"
    assert config.models["smollm2"].path == "bundled:smollm2" and config.reject.judge == "smollm2"


def test_one_model_in_making_and_judged_roles_is_flagged():
    config = config_mod.load(config_mod.embedded_default())
    assert config.roles()["smollm2"] == ["expander", "generator", "judge", "model under test"]
    assert [w.split(" is ")[0] for w in config.role_warnings()] == ["smollm2"]
    assert [w.split(" is ")[0] for w in config_mod.load(None).role_warnings()] == ["tiny"]


def test_the_old_run_engine_key_still_works_with_a_deprecation_line():
    with pytest.warns(FutureWarning, match="run.engine is now run.executor"):
        config = config_mod.load(None, ['run.engine="ray"'])
    assert config.run.executor == "ray"
