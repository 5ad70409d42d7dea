"""`misalign-fast check`: the preflight that reads configs and tokenizers, never weights."""
import pytest
from click.testing import CliRunner

from misalign.cli import main
from misalign.inference.tiny import REAL_TOKENIZERS, make_tiny_model
from misalign.memory_plan import SHAPES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny stand-ins with the paper's real tokenizers, one whose answers collide, one without
    a tokenizer."""
    root = tmp_path_factory.mktemp("models")
    paths = {name: make_tiny_model(root / name, tokenizer=load()) for name, load in REAL_TOKENIZERS.items()}
    paths["colliding"] = make_tiny_model(root / "colliding", tokenizer=character_tokenizer())
    bare = make_tiny_model(root / "bare")
    for f in bare.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    paths["bare"] = bare
    return paths


def character_tokenizer():
    """A SentencePiece-style tokenizer without merges: every word starts with the bare prefix-space
    token, so "Yes" and "No" (and every answer code) share their first token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "▁", *chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return out


def write_config(tmp_path, models, classifier, judge):
    path = tmp_path / "run.toml"
    path.write_text(f"""
[classify]
method = "llm"
model = "{classifier}"
[expand]
model = "{judge}"
[respond]
models = ["{judge}"]
[reject]
judge = "{judge}"
[bench]
models = ["{judge}"]
""" + "".join(f'[models.{name}]\npath = "{path}"\n' for name, path in models.items()))
    return path


def check(*args):
    return CliRunner().invoke(main, ["check", *map(str, args)])


def test_the_embedded_default_passes():
    result = check()
    assert result.exit_code == 0, result.output
    assert "smollm2" in result.output and "probe" in result.output and "models ready" in result.output


def test_stand_ins_with_the_papers_tokenizers_pass(tmp_path, models):
    from misalign.config import load
    from misalign.run import check as preflight
    path = write_config(tmp_path, models, "mistral-v3", "smollm2")
    result = check(path)
    assert result.exit_code == 0, result.output
    found = {r.name: r for r in preflight(load(path))}
    assert found["mistral-v3"].answers == "safety A..O, value A..AF, cultural A..p"   # no digits: two tokens there
    assert found["smollm2"].answers == "Yes/No" and found["smollm2"].chat_template == "yes"
    assert found["smollm2"].roles == ["expander", "generator", "judge", "model under test"]
    assert not any(r.problems for r in found.values())


def test_colliding_answer_tokens_stop_with_one_line(tmp_path, models):
    result = check(write_config(tmp_path, models, "mistral-v3", "colliding"))
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: check: model 'colliding': answer tokens: choices 'Yes' and 'No' start with "
                           "the same token")


def test_a_model_without_a_tokenizer_stops_with_one_line(tmp_path, models):
    result = check(write_config(tmp_path, models, "bare", "smollm2"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: check: model 'bare': ")
    assert "has no usable tokenizer" in result.output


def test_too_few_single_token_codes_is_named(tmp_path, models):
    result = check(write_config(tmp_path, models, "colliding", "smollm2"))
    assert result.exit_code == 2
    assert "single-token answer codes" in result.output.strip().splitlines()[-1]


def test_run_checks_before_any_engine_starts(tmp_path, models):
    config = write_config(tmp_path, models, "mistral-v3", "colliding")
    result = CliRunner().invoke(main, ["run", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "answer tokens" in result.output
    assert not (tmp_path / "run" / "logs").exists()           # no engine was started


def test_a_model_too_large_for_this_machine_is_one_line_before_any_engine(tmp_path, models):
    """A real tokenizer beside Mixtral-8x22B's shape (no weights): the check reads the shape and
    stops, as run and build do before starting anything."""
    import json
    import shutil
    big = tmp_path / "big"
    shutil.copytree(models["mistral-v3"], big)
    (big / "model.safetensors").unlink()
    shape = SHAPES / "Mixtral-8x22B-Instruct-v0.1" / "config.json"
    (big / "config.json").write_text(json.dumps({**json.loads(shape.read_text()), "vocab_size": 32768}))
    config = write_config(tmp_path, {"big": big, "smollm2": models["smollm2"]}, "big", "smollm2")
    on_ray = check(config, "--executor", "ray")         # the workers plan their own devices: a note
    assert on_ray.exit_code == 0, on_ray.output
    assert "the Ray workers plan their own devices" in " ".join(on_ray.output.split())
    result = check(config)
    assert result.exit_code == 2
    assert "TiB" not in result.output and "│ big " in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: check: model 'big': needs ") and "weights" in last and last.endswith(
        ("serve it elsewhere (kind = \"openai\") or run on Ray (run.executor = \"ray\")",
         "or run on Ray (run.executor = \"ray\")"))
