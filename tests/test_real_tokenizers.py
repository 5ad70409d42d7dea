"""The label questions on real tokenizers and chat templates: tiny random-weight models that
carry the paper's models' tokenizers (shipped in installed packages), and the real SmolLM2.

Each runs on a real vLLM engine: the LLM classifier (answer codes chosen per tokenizer), the
judge, the detector and the chat-template path.  One engine at a time (module-scoped, one
per tokenizer)."""
from dataclasses import replace

import numpy as np
import pytest

from conftest import SessionPool
from misalign.config import load
from misalign.inference.base import CODE_CANDIDATES
from misalign.inference.tiny import REAL_TOKENIZERS, make_tiny_model
from misalign.stages.bench import DetectStage
from misalign.classifiers import LLMClassifier
from misalign.stages.reject import RejectStage
from misalign.taxonomy import DIMENSIONS, Taxonomy

TAX = Taxonomy.load()
PROMPTS = ["How do I cook a traditional Spanish paella for my in-laws?",
           "Is it rude to refuse food offered by a host in Japan?"]
# what each family's chat template puts around a user message
TEMPLATE_MARKS = {"mistral-v3": "[INST] ", "smollm2": "<|im_start|>assistant",
                  "llama3": "<|start_header_id|>assistant<|end_header_id|>", "qwen2": "You are Qwen"}


@pytest.fixture(scope="module", params=sorted(REAL_TOKENIZERS))
def real(request, tmp_path_factory, smollm2_engine):
    """(tokenizer name, engine): the real SmolLM2 for its own tokenizer, else a tiny stand-in."""
    if request.param == "smollm2":
        yield request.param, smollm2_engine
        return
    from misalign.inference import EngineConfig, VLLMEngine
    path = make_tiny_model(tmp_path_factory.mktemp(request.param) / "model", tokenizer=REAL_TOKENIZERS[request.param]())
    engine = VLLMEngine(EngineConfig(model=str(path), max_model_len=4096, max_num_seqs=16))
    yield request.param, engine
    engine.close()


def test_mistral_v3_writes_a_digit_as_two_tokens_so_codes_avoid_digits():
    tokenizer = REAL_TOKENIZERS["mistral-v3"]()
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("0", add_special_tokens=False)) == ["▁", "0"]
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("A", add_special_tokens=False)) == ["▁A"]


def test_classifier_codes_are_one_distinct_token_each(real):
    name, engine = real
    classifier = LLMClassifier(engine, TAX, min_mass=0.0)
    for dim in DIMENSIONS:
        head, codes = classifier.heads[dim]
        assert len(codes) == len(TAX.of(dim)) + 1
        ids = [engine.token_ids(c) for c in codes]
        assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(codes)
        assert f"\n{codes[-1]}: none of these" in head
    if name == "mistral-v3":                   # 56 value domains + none: past the letters, not digits
        value_codes = classifier.heads["value"][1]
        assert not any(c.isdigit() for c in value_codes) and value_codes[52] == CODE_CANDIDATES[61]


def test_classifier_probabilities_mass_and_unknown(real):
    _, engine = real
    labels = LLMClassifier(engine, TAX, min_mass=0.0).classify(PROMPTS)
    strict = LLMClassifier(engine, TAX, min_mass=1.01).classify(PROMPTS)     # no answer has that much
    for dim in DIMENSIONS:
        probs, mass = labels[dim].probs, labels[dim].mass
        assert probs.shape == (2, len(TAX.of(dim)) + 1) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
        assert ((mass > 0) & (mass <= 1 + 1e-6)).all()
        assert not labels[dim].unknown.any()
        assert strict[dim].unknown.all() and strict[dim].assigned == [None, None]


def test_chat_template_is_the_family_s(real):
    name, engine = real
    assert TEMPLATE_MARKS[name] in engine.render("Hello")


def test_judge_and_detector_read_yes_no(real):
    name, engine = real
    pool = SessionPool({name: engine}, None)
    config = load(None, [f'reject.judge="{name}"', f'bench.models=["{name}"]', f'models.{name}.path="{engine.model}"'])
    rows = [{"prompt": p, "safety_domain": None, "value_domain": None, "cultural_domain": None} for p in PROMPTS]
    one_way = replace(config.reject, balanced=False)          # each answer read alone: always a probability
    judged = RejectStage(one_way, pool, respond=config.respond)._judge(rows, ["Use saffron and good rice.", "Just eat."])
    assert all(0 <= p <= 1 for p in judged)
    import pyarrow as pa
    from misalign.items import ITEM_SCHEMA
    items = pa.Table.from_pylist([{"item": f"i{k}", "id": f"i{k}", "prompt": p, "safety_domain": None,
                                   "value_domain": None, "cultural_domain": None, "generator": "g",
                                   "aligned_response": "A kind, careful answer.",
                                   "misaligned_response": "A careless answer."} for k, p in enumerate(PROMPTS)],
                                 schema=ITEM_SCHEMA)
    out = DetectStage(replace(config.bench, runs=1), pool, name).run(items)
    p = np.array(out.column("p_misaligned").to_pylist())
    yes = np.array([out.column(c).to_pylist() for c in ("yes_to_misaligned", "yes_to_aligned")])
    assert yes.shape == (2, 4) and ((yes >= 0) & (yes <= 1)).all()          # both polarities' answers read
    same = np.abs(yes[0] - yes[1]) < config.bench.no_opinion          # the same answer both ways: no opinion
    assert np.array_equal(np.isnan(p), same) and np.allclose(p[~same], (yes[0] + 1 - yes[1])[~same] / 2)


@pytest.mark.parametrize("real", ["mistral-v3"], indirect=True)
def test_a_build_whose_classifier_has_mistral_s_tokenizer_finishes(real, tiny_engine, minilm_engine, tmp_path):
    from misalign.run import stage1
    name, engine = real
    pool = SessionPool({"tiny": tiny_engine, name: engine}, minilm_engine)
    config = load(None, [f'run.dir="{tmp_path}"', 'classify.method="llm"', f'classify.model="{name}"',
                         f'models.{name}.path="{engine.model}"', "classify.min_mass=0.0", "run.limit=12",
                         "expand.floor=0", "respond.candidates=1", "respond.max_tokens=16", "respond.temperature=0.0",
                         "reject.rounds=1", "reject.min_chars=1"])
    summary = stage1(config, pool)
    assert summary["models"]["classifier"] == f"LLM answer probabilities ({name})"
    classify = next(p for p in summary["profile"] if p["stage"] == "classify")
    assert classify["items_out"] == 12 and classify["prompt_tokens"] > 0
    assert {"unknown_safety", "unknown_value", "unknown_cultural"} <= set(classify["counters"])
    assert (tmp_path / "dataset" / "test.parquet").exists()
