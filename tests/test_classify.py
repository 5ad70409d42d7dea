"""The embedding classifier on the real MiniLM model (one engine per session)."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from misalign.cli import main
from misalign.classifiers import (ZeroShotConfig, LinearProbe, ZeroShotClassifier, agreement,
                                      classes_of, train_probe)
from misalign.taxonomy import DIMENSIONS, Taxonomy

TAX = Taxonomy.load()

COOKING = ["How do I cook a traditional Spanish paella?", "Share a recipe for Moroccan lamb tagine.",
           "What spices go into an Indian curry?", "How long should I bake sourdough bread?",
           "What is the best way to season a cast-iron pan for cooking?", "Give me a recipe for Japanese ramen broth."]
DANCING = ["Teach me the basic steps of the Argentine tango.", "What is the history of ballet in Russia?",
           "How do I learn salsa dancing as a beginner?", "Describe the choreography of a flamenco performance.",
           "What are the moves of a traditional Irish step dance?", "How do hip-hop dancers practise breaking?"]
OTHER = ["What is the derivative of x squared?", "Convert 5 kilometres to miles.",
         "Sort this list of numbers in ascending order.", "What is the boiling point of nitrogen?"]


def domain_index(dim, name):
    return classes_of(TAX, dim).index(name)


def test_zero_shot_probabilities_and_delta(minilm_engine):
    embeddings = minilm_engine.embed(COOKING[:2] + ["I want to hurt myself tonight."])
    labels = ZeroShotClassifier(minilm_engine, TAX, ZeroShotConfig(delta=0.5)).classify(embeddings)
    for dim in DIMENSIONS:
        probs = labels[dim].probs
        assert probs.shape == (3, len(TAX.of(dim)) + 1)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        for row, assigned in zip(probs, labels[dim].assigned):
            best = int(row.argmax())
            expected = labels[dim].classes[best] if row[best] >= 0.5 and best != len(row) - 1 else None
            assert assigned == expected
    cultural = labels["cultural"].probs[:, :-1]
    assert all(cultural[i].argmax() == domain_index("cultural", "Culinary Arts") for i in (0, 1))
    assert labels["safety"].probs[2, :-1].argmax() == domain_index("safety", "Self-harm")
    strict = ZeroShotClassifier(minilm_engine, TAX, ZeroShotConfig(delta=1.0)).classify(embeddings)
    assert all(a is None for dim in DIMENSIONS for a in strict[dim].assigned)


def test_probe_learns_labels_and_round_trips(tmp_path, minilm_engine):
    prompts = COOKING + DANCING + OTHER
    cultural = ["Culinary Arts"] * 6 + ["Dance"] * 6 + [None] * 4
    embeddings = minilm_engine.embed(prompts)
    probe = train_probe(embeddings, {"cultural": cultural}, TAX, "minilm")
    predicted = probe.classify(embeddings)["cultural"].assigned
    assert agreement(predicted, cultural)["accuracy"] >= 0.9
    probe.save(tmp_path / "probe.npz")
    again = LinearProbe.load(tmp_path / "probe.npz")
    assert again.classes == probe.classes and again.embedding_model == "minilm"
    assert np.allclose(again.classify(embeddings)["cultural"].probs, probe.classify(embeddings)["cultural"].probs)


def test_agreement_accuracy_and_macro_f1():
    score = agreement(["A", "A", None, "B", "B"], ["A", "B", None, "B", "Unknown"])
    # rows: A/A, A/B, none/none, B/B (Unknown skipped); per class F1: A 2/3, B 2/3, none 1
    assert score["n"] == 4
    assert score["accuracy"] == pytest.approx(0.75)
    assert score["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_unknown_label_in_training_is_rejected_clearly(minilm_engine):
    with pytest.raises(Exception, match="not a cultural domain"):
        train_probe(np.zeros((1, 384), np.float32), {"cultural": ["Knitting"]}, TAX, "m")


def test_classify_command_trains_a_probe_and_reports_agreement(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    rows = {"prompt": COOKING + DANCING + OTHER, "safety": [""] * 16, "value": [""] * 16,
            "cultural": ["Culinary Arts"] * 6 + ["Dance"] * 6 + [""] * 4}
    pacsv.write_csv(pa.table(rows), tmp_path / "train.csv")
    result = CliRunner().invoke(main, ["classify", str(tmp_path / "train.csv"), str(tmp_path / "out.parquet"),
                                       "--train", str(tmp_path / "train.csv")])
    assert result.exit_code == 0, result.output
    out = pq.read_table(tmp_path / "out.parquet")
    assert {"cultural_domain", "cultural_prob", "cultural_probs", "safety_domain"} <= set(out.column_names)
    assert (tmp_path / "out.probe.npz").exists()
    assert "macro-F1" in result.output and "probe" in result.output
    assert out.column("cultural_domain").to_pylist()[0] == "Culinary Arts"
    assert len(out.column("value_probs")[0].as_py()) == 57


def test_llm_classifier_reads_answer_code_probabilities(tiny_engine):
    from misalign.classifiers import LLMClassifier
    prompts = COOKING[:3]
    before = tiny_engine.stats().cached_tokens
    labels = LLMClassifier(tiny_engine, TAX, delta=0.5, min_mass=0.0).classify(prompts)
    for dim in DIMENSIONS:
        probs = labels[dim].probs
        assert probs.shape == (3, len(TAX.of(dim)) + 1)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        assert labels[dim].classes[-1] == "none"
        for row, assigned in zip(probs, labels[dim].assigned):
            best = int(row.argmax())
            assert assigned == (labels[dim].classes[best] if row[best] >= 0.5 and best < len(row) - 1 else None)
    assert tiny_engine.stats().cached_tokens > before     # the instruction + domain list is a shared prefix


def test_a_bad_label_is_refused_before_anything_is_embedded_or_written(tmp_path, monkeypatch):
    """A reference or training label that is no domain stops classify before its engine starts
    (the embedding engine is replaced by one that fails if it is ever built) and writes nothing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from misalign.inference import embedding_model

    def never():
        raise AssertionError("the engine started before the labels were checked")
    monkeypatch.setattr(embedding_model, "embedding_engine", never)
    pacsv.write_csv(pa.table({"prompt": ["a", "b"], "safety": ["", ""], "value": ["", ""],
                              "cultural": ["Dance", "Knitting"]}), tmp_path / "in.csv")
    for extra in ([], ["--train", str(tmp_path / "in.csv")]):
        result = CliRunner().invoke(main, ["classify", str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"), *extra])
        assert result.exit_code == 2 and "row 2" in result.output and "Knitting" in result.output, result.output
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.probe.npz").exists()
