"""Prefix caching: a classification-shaped workload sent grouped by prefix vs shuffled.

    python benchmarks/bench_prefix_cache.py                     # tiny stand-in model on CPU
    python benchmarks/bench_prefix_cache.py --model PATH_OR_ID  # a real model (GPU extra)

Each request is one of --prefixes long instructions (a domain list, as the classify stage
sends them) followed by a short item, answered with one label token.  The same engine serves
both orders, each from a cold prefix cache, twice, alternating, and the best of each is kept.
The baseline is "shuffled": what a pipeline that ignores prefixes sends.  --kv-tokens caps the
KV cache so that, as with a large model on a full GPU, the prefixes do not all fit at once; 0
leaves the whole cache.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

from misalign.inference import EngineConfig, VLLMEngine
from misalign.inference.tiny import bundled_prompts, make_tiny_model
from misalign.inference.vllm_engine import CPU_BLOCK_SIZE, on_gpu


def workload(n_items: int, n_prefixes: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    items = bundled_prompts()
    prefixes = [f"Task {p}. You label prompts by domain. Answer with one code.\n" + "\n".join(
        f"D{k:02d}: prompts about topic {k} of family {p}, its causes, its harms and its remedies."
        for k in range(40)) for p in range(n_prefixes)]
    return [f"{rng.choice(prefixes)}\nPrompt: {rng.choice(items)} (#{i})\nCode:" for i in range(n_items)]


def measure(engine, prompts):
    """Seconds, prefix-cache hit rate and prompt tokens of one label_probs call, from a cold cache."""
    engine.llm.reset_prefix_cache()
    cached, tokens = engine.stats().cached_tokens, engine.stats().prompt_tokens
    start = time.perf_counter()
    engine.label_probs(prompts, ["A", "B"])
    seconds = time.perf_counter() - start
    tokens = engine.stats().prompt_tokens - tokens
    return seconds, (engine.stats().cached_tokens - cached) / tokens, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model path or id (default: build the tiny stand-in)")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--prefixes", type=int, default=30, help="distinct instruction prefixes")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--kv-tokens", type=int, default=8192, help="KV cache size in tokens (0: all)")
    parser.add_argument("--block-size", type=int, help="tokens per KV block (default: the engine's own, "
                        f"{CPU_BLOCK_SIZE} on a CPU, vLLM's 16 on a GPU)")
    args = parser.parse_args()
    model = args.model or str(make_tiny_model(tempfile.mkdtemp() + "/tiny"))
    prompts = workload(args.requests, args.prefixes, seed=0)
    random.Random(1).shuffle(prompts)
    block = args.block_size or (16 if on_gpu() else CPU_BLOCK_SIZE)
    engine = VLLMEngine(EngineConfig(model=model, max_model_len=2048, max_num_seqs=args.max_num_seqs,
                                     block_size=block, kv_cache_blocks=args.kv_tokens // block or None))
    engine.label_probs(prompts[:8], ["A", "B"])           # warm-up
    best = {}
    for _ in range(2):
        for name, grouped in (("grouped by prefix", True), ("shuffled (baseline)", False)):
            engine.config.order_by_prefix = grouped
            result = measure(engine, prompts)
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    print(f"model: {model}{' (tiny random-weight stand-in)' if not args.model else ''}; {args.requests} requests, "
          f"{args.prefixes} prefixes, max_num_seqs={args.max_num_seqs}, "
          f"KV cache {engine.cache_tokens():,} tokens in blocks of {block}; best of 2\n")
    print("| order | seconds | requests/s | prompt tokens/s | share of prompt tokens from cache |")
    print("|---|---|---|---|---|")
    for name, (seconds, hit, tokens) in best.items():
        print(f"| {name} | {seconds:.2f} | {args.requests / seconds:,.1f} | {tokens / seconds:,.0f} | {hit:.1%} |")
    ratio = best["shuffled (baseline)"][0] / best["grouped by prefix"][0]
    print(f"\ngrouped / shuffled throughput: {ratio:.2f}x")
    engine.close()


if __name__ == "__main__":
    main()
