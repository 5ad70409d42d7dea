"""Where an engine's time goes on a CPU: start-up, prefill and decode, per way of running vLLM.

Baseline: vLLM's defaults (its engine core in a process of its own, the model compiled, and the
float32 checkpoint downcast to bfloat16 as vLLM's dtype "auto" does), against the engine core in
this process, compiled and eager, and eager in float32 (what misalign-fast does on a CPU without
bfloat16 arithmetic, vllm_engine.engine_dtype).  Each way runs in a fresh interpreter (the engine
core's placement is read when vLLM starts), one after the other, on the bundled
SmolLM2-135M-Instruct:

    .venv/bin/python benchmarks/bench_engine_start.py             # every way
    .venv/bin/python benchmarks/bench_engine_start.py --eager     # the in-process eager ways only

import: torch and vLLM's LLM imported (once per process); start: engine construction (weights,
compilation, KV cache); restart: the same engine closed and started again in the same process (a
start without the imports); prefill: label_probs on 36 detector prompts of ~270 tokens (one token
generated each); decode: 32 greedy answers of up to 64 tokens.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from misalign.inference.vllm_engine import cpu_computes_bfloat16

MODES = {
    "vLLM defaults: engine process, compiled, bfloat16 (baseline)":
        {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "compile": True, "dtype": "bfloat16"},
    "engine in this process, compiled, bfloat16": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "compile": True,
                                                   "dtype": "bfloat16"},
    "engine in this process, eager, bfloat16": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "compile": False,
                                                "dtype": "bfloat16"},
    "engine in this process, eager, float32": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "compile": False,
                                              "dtype": "float32"},
}


def measure(compile_model: bool, dtype: str) -> dict:
    began = time.perf_counter()
    import torch  # noqa: F401
    from vllm import LLM  # noqa: F401
    imported = time.perf_counter() - began
    from misalign.inference import EngineConfig, SamplingConfig, VLLMEngine
    from misalign.inference.smollm2 import prepare
    from misalign.inference.tiny import bundled_prompts
    from misalign.prompting import PromptTemplates

    config = EngineConfig(model=str(prepare()), max_model_len=4096, max_num_seqs=64, enforce_eager=not compile_model,
                          dtype=dtype)
    started = time.perf_counter()
    VLLMEngine(config).close()
    start = time.perf_counter() - started
    started = time.perf_counter()
    engine = VLLMEngine(config)
    restart = time.perf_counter() - started
    prompts = bundled_prompts()
    judged = [PromptTemplates.bundled().detector_prompt("joint", p, "word " * 150, "misaligned") for p in prompts[:36]]
    engine.label_probs(judged[:2], ["Yes", "No"])                 # first-request warm-up, not timed
    engine.reset_prefix_cache()
    before, started = engine.stats().prompt_tokens, time.perf_counter()
    engine.label_probs(judged, ["Yes", "No"])
    prefill = (engine.stats().prompt_tokens - before) / (time.perf_counter() - started)
    before, started = engine.stats().generated_tokens, time.perf_counter()
    engine.generate(prompts[:32], SamplingConfig(max_tokens=64, temperature=0.0))
    decode = (engine.stats().generated_tokens - before) / (time.perf_counter() - started)
    engine.close()
    return {"import_s": imported, "start_s": start, "restart_s": restart, "prefill_tok_s": prefill,
            "decode_tok_s": decode}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2] == "compiled", sys.argv[3])), flush=True)
        return
    modes = {name: mode for name, mode in MODES.items() if "--eager" not in sys.argv or not mode["compile"]}
    rows = {}
    for name, mode in modes.items():
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "VLLM_ENABLE_V1_MULTIPROCESSING": mode["VLLM_ENABLE_V1_MULTIPROCESSING"]}
        done = subprocess.run([sys.executable, __file__, "--one", "compiled" if mode["compile"] else "eager",
                               mode["dtype"]], env=env, capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    base = next(iter(rows.values()))
    ours = "bfloat16" if cpu_computes_bfloat16() else "float32"      # what engine_dtype picks for SmolLM2 here
    print(f"SmolLM2-135M-Instruct, {os.cpu_count()} cores; ratios against the first row:\n")
    print("| how vLLM runs | import s | start s | restart s | prefill tok/s | decode tok/s | start, speed-up "
          "| prefill | decode |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        label = f"{name} (misalign-fast on this CPU)" if name.endswith(f"eager, {ours}") else name
        print(f"| {label} | {r['import_s']:.1f} | {r['start_s']:.1f} | {r['restart_s']:.1f} | {r['prefill_tok_s']:,.0f} "
              f"| {r['decode_tok_s']:,.0f} | {base['start_s'] / r['start_s']:.1f}x "
              f"| {r['prefill_tok_s'] / base['prefill_tok_s']:.2f}x | {r['decode_tok_s'] / base['decode_tok_s']:.2f}x |")


if __name__ == "__main__":
    main()
