"""The answer cache: a label question asked again of the same model is answered from the cache,
never the engine; anything that changes the answer (model, request, choices) is a new question."""
import json
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np

from misalign import config as config_mod
from misalign.inference.answer_cache import AnswerCache, CachedAnswers
from misalign.stages.common import ANSWERS

FIXTURE = Path(__file__).parent / "data" / "savacu_fixture.csv"


def test_a_question_asked_again_is_answered_from_the_cache(tmp_path, tiny_engine):
    store, counts = AnswerCache(tmp_path / "answers.sqlite"), Counter()
    started = []

    def start():
        started.append(1)
        return tiny_engine
    cached = CachedAnswers(start, {"model": "tiny"}, store, counts)
    prompts = ["Is this response misaligned? It says hello.", "Is this one? It insults the reader."]
    before = tiny_engine.stats().requests
    first = cached.answer_probs(prompts, ANSWERS)
    asked = tiny_engine.stats().requests - before
    again = cached.answer_probs(list(reversed(prompts)), ANSWERS)
    assert asked == 2 and tiny_engine.stats().requests - before == asked       # the second time: no request
    np.testing.assert_array_equal(again.probs, first.probs[::-1])
    np.testing.assert_array_equal(again.mass, first.mass[::-1])
    assert counts == {"answer_cache_misses": 2, "answer_cache_hits": 2}
    # another model, or other choices, is another question
    other = CachedAnswers(start, {"model": "tinyb"}, store, counts)
    other.label_probs(prompts[:1], ANSWERS)
    cached.label_probs(prompts[:1], ["No", "Yes"])
    assert tiny_engine.stats().requests - before == 4 and store.info()["answers"] == 4
    assert store.clear() == 4 and store.info()["answers"] == 0


def _write(path, start):
    store = AnswerCache(path)
    for k in range(start, start + 300):
        store.put({f"key{k}": ([0.25, 0.75], 0.9)})
    store.close()


def test_two_processes_write_one_cache(tmp_path):
    path = tmp_path / "answers.sqlite"
    others = [multiprocessing.get_context("spawn").Process(target=_write, args=(path, k * 300)) for k in range(2)]
    for p in others:
        p.start()
    _write(path, 600)
    for p in others:
        p.join(60)
    store = AnswerCache(path)
    assert [p.exitcode for p in others] == [0, 0] and store.info()["answers"] == 900
    assert store.get(["key0", "key899"]) == {"key0": ([0.25, 0.75], 0.9), "key899": ([0.25, 0.75], 0.9)}


def test_a_second_bench_of_the_same_model_asks_no_engine(tmp_path):
    """Benchmarked again from scratch (--fresh: no checkpoint reused), every verdict comes from the
    cache: no engine starts, no request, and profile.json counts the hits."""
    from misalign.run import bench
    config = config_mod.load(None, [f'run.dir="{tmp_path}"', f'bench.dataset="{FIXTURE}"', 'bench.models=["tiny"]',
                                    "bench.runs=1", "bench.bootstrap=50", "bench.no_opinion=0.0"])
    bench(config)
    first = {p["stage"]: p for p in json.loads((tmp_path / "bench" / "meta.json").read_text())["profile"]}
    assert first["bench-tiny"]["counters"]["answer_cache_misses"] == 10 * 2 * 2     # items x responses x polarities
    bench(config, fresh=True)
    again = {p["stage"]: p for p in json.loads((tmp_path / "bench" / "meta.json").read_text())["profile"]}
    tiny = again["bench-tiny"]
    assert tiny["counters"]["answer_cache_hits"] == 10 * 2 * 2 and tiny["counters"]["answer_cache_misses"] == 0
    assert tiny["engine_starts"] == {} and tiny["prompt_tokens"] == 0 and tiny["shards_run"] > 0
