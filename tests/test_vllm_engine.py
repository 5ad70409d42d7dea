"""The in-process engine on a real vLLM (CPU build) with the tiny model and MiniLM."""
from pathlib import Path

import numpy as np
import pytest

from misalign.inference import ChoiceError, EngineConfig, EngineError, SamplingConfig, VLLMEngine, prefix_order
from misalign.inference.base import cache_root
from misalign.inference.nucleus import ARG
from misalign.inference.tiny import STAND_IN_NOTE, make_tiny_model
from misalign.inference.vllm_engine import CPU_BLOCK_SIZE

PROMPTS = ["Is it fair to read a partner's messages?", "Explain the Day of the Dead.",
           "How do I store bleach safely?", "Write a haiku about snow."]


def test_generate_keeps_order_counts_tokens_and_is_deterministic(tiny_engine):
    sampling = SamplingConfig(max_tokens=8, temperature=0.0)
    first = tiny_engine.generate(PROMPTS, sampling)
    again = tiny_engine.generate(list(reversed(PROMPTS)), sampling)[::-1]
    assert len(first) == len(PROMPTS)
    assert [g.text for g in first] == [g.text for g in again]
    assert all(g.prompt_tokens > 0 and 0 < g.completion_tokens <= 8 for g in first)
    # different prompts see different contexts: the order really is the caller's
    lengths = [g.prompt_tokens for g in first]
    assert lengths == [len(tiny_engine.tokenizer.encode(tiny_engine.render(p), add_special_tokens=False))
                       for p in PROMPTS]


def test_chat_template_is_applied(tiny_engine):
    assert tiny_engine.chat
    assert tiny_engine.render("hi") == "<|user|>\nhi<|end|>\n<|assistant|>\n"


def test_label_probs_are_distributions_in_order(tiny_engine):
    probs = tiny_engine.label_probs(PROMPTS, ["Yes", "No", "Maybe"])
    assert probs.shape == (4, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    single = np.vstack([tiny_engine.label_probs([p], ["Yes", "No", "Maybe"]) for p in PROMPTS])
    assert np.allclose(probs, single, atol=1e-5)


def test_label_probs_refuse_choices_sharing_a_first_token(tiny_engine):
    with pytest.raises(ChoiceError, match="start with the same token"):
        tiny_engine.label_probs(PROMPTS[:1], ["Yes", "Yes please"])
    with pytest.raises(ChoiceError, match="at least two"):
        tiny_engine.label_probs(PROMPTS[:1], ["Yes"])


def test_shared_prefix_is_served_from_cache(tiny_engine):
    instruction = "You are a careful annotator. " + " ".join(
        f"Domain {k}: prompts about topic number {k} and its many aspects." for k in range(60))
    items = [f"{instruction}\nItem {i}: is this prompt about topic {i % 60}?" for i in range(200)]
    before = tiny_engine.stats().cached_tokens, tiny_engine.stats().prompt_tokens
    tiny_engine.label_probs(items, ["Yes", "No"])
    cached = tiny_engine.stats().cached_tokens - before[0]
    prompt = tiny_engine.stats().prompt_tokens - before[1]
    assert cached / prompt > 0.5


def test_a_prefix_shorter_than_vllms_cpu_block_is_served_from_cache(tiny_engine):
    """vLLM's CPU default of 128-token blocks serves nothing of a shared prefix shorter than 128
    tokens (a judge's instruction and the pair's prompt); 32-token blocks serve all but its tail."""
    assert tiny_engine.llm.llm_engine.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE == 32
    shared = "Judge the answer below for safety, values and culture. " * 3
    items = [f"{shared}\nAnswer {i}: fine." for i in range(12)]
    tokens = len(tiny_engine.tokenizer.encode(tiny_engine.render(items[0]), add_special_tokens=False))
    assert 2 * CPU_BLOCK_SIZE < tokens < 128
    before = tiny_engine.stats().cached_tokens
    tiny_engine.label_probs(items, ["Yes", "No"])
    assert tiny_engine.stats().cached_tokens - before >= (len(items) - 1) * 2 * CPU_BLOCK_SIZE


def test_vllms_own_caches_are_kept_in_ours(tiny_engine):
    """One $MISALIGN_FAST_CACHE carries vLLM's compile and model-inspection caches too."""
    import vllm.envs
    root = cache_root() / "vllm"
    assert Path(vllm.envs.VLLM_CACHE_ROOT) == root
    assert any((root / "modelinfos").iterdir())         # written while the session's engine started


def test_top_p_is_applied_on_a_cpu_by_the_nucleus_processor(tiny_engine):
    """vLLM is asked for top_p = 1 on a CPU (its own top-p sorts the vocabulary) and
    misalign-fast's processor applies p: a nucleus of one token makes sampling at temperature 1
    give the same text every time, where a random-weight model's would wander."""
    narrow = SamplingConfig(max_tokens=12, temperature=1.0, top_p=1e-6)
    params = tiny_engine.sampling_params(narrow)
    assert (params.top_p, params.extra_args) == (1.0, {ARG: 1e-6})
    tiny_engine.reset_prefix_cache()                  # both calls compute every token alike
    first = tiny_engine.generate(PROMPTS, narrow)
    tiny_engine.reset_prefix_cache()
    again = tiny_engine.generate(PROMPTS, narrow)
    assert [g.text for g in first] == [g.text for g in again]
    assert all(g.completion_tokens > 0 for g in first)


def test_prefix_order_groups_shared_prefixes_stably():
    texts = ["b-2", "a-1", "b-1", "a-1", "c"]
    assert prefix_order(texts) == [1, 3, 2, 0, 4]


def test_embed_unit_vectors_deterministic(minilm_engine):
    texts = ["How do I store bleach safely?", "Safe storage of household chemicals", "A haiku about snow",
             "How do I store bleach safely?", "word " * 1000]
    vectors = minilm_engine.embed(texts)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[3])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]     # a real model, not noise


def test_generation_engine_refuses_embed(tiny_engine):
    with pytest.raises(EngineError, match="runner='pooling'"):
        tiny_engine.embed(["x"])


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="cannot load model"):
        VLLMEngine(EngineConfig(model=str(tmp_path / "no-such-model")))


def test_auto_keeps_a_float32_checkpoint_in_float32_on_a_cpu_without_bfloat16(tiny_model, tiny_engine, monkeypatch,
                                                                              tmp_path):
    """vLLM's "auto" downcasts float32 checkpoints to bfloat16; a CPU without bfloat16 arithmetic
    emulates it (SmolLM2: 2.4x slower decode here).  The engine and the checkpoint keys agree."""
    from misalign.inference import vllm_engine
    running = str(tiny_engine.llm.llm_engine.vllm_config.model_config.dtype)
    assert running == ("torch.bfloat16" if vllm_engine.cpu_computes_bfloat16() else "torch.float32")
    monkeypatch.setattr(vllm_engine, "cpu_computes_bfloat16", lambda: False)
    assert vllm_engine.engine_dtype("auto", tiny_model, gpu=False) == "float32"
    assert vllm_engine.engine_dtype("bfloat16", tiny_model, gpu=False) == "bfloat16"     # asked for: given
    assert vllm_engine.engine_dtype("auto", tiny_model, gpu=True) == "auto"              # vLLM's choice on GPUs
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    assert vllm_engine.engine_dtype("auto", tmp_path, gpu=False) == "auto"        # float32 would double its memory
    monkeypatch.setattr(vllm_engine, "cpu_computes_bfloat16", lambda: True)
    assert vllm_engine.engine_dtype("auto", tiny_model, gpu=False) == "auto"


def test_tiny_model_is_small_deterministic_and_labelled(tmp_path, tiny_model):
    again = make_tiny_model(tmp_path / "again", seed=0)
    size = sum(f.stat().st_size for f in again.iterdir())
    assert size < 5e6
    assert (again / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert (again / "STAND_IN.txt").read_text().strip() == STAND_IN_NOTE


def test_a_prompt_longer_than_the_context_is_left_out_and_counted(tiny_engine):
    long = "alignment benchmark " * 3000
    assert len(tiny_engine.tokenizer(tiny_engine.render(long))["input_ids"]) > tiny_engine.max_model_len
    before = tiny_engine.stats().too_long
    probs = tiny_engine.label_probs(["Is this fine?", long], ["Yes", "No"])
    assert np.isfinite(probs[0]).all() and np.isnan(probs[1]).all()
    short, too_long = tiny_engine.generate(["Hello there", long], SamplingConfig(max_tokens=4))
    assert too_long.text == "" and too_long.completion_tokens == 0 and short.prompt_tokens > 0
    assert tiny_engine.stats().too_long == before + 2


def test_closing_an_engine_leaves_the_other_engines_of_this_process_working(tiny_model, tiny_engine):
    """On a CPU engines run in this process, and vLLM's own shutdown of one would tear down the
    distributed state every other one runs on (seen: the next request looped for ever)."""
    other = VLLMEngine(EngineConfig(model=str(tiny_model), max_model_len=1024, max_num_seqs=4, seed=1))
    assert other.generate(["hello"], SamplingConfig(max_tokens=2))[0].completion_tokens == 2
    other.close()
    assert tiny_engine.generate(["hello there"], SamplingConfig(max_tokens=3))[0].completion_tokens == 3
