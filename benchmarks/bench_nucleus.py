"""Nucleus (top-p) sampling on a CPU: vLLM's own top-p against misalign-fast's nucleus processor.

    .venv/bin/python benchmarks/bench_nucleus.py

One engine (the bundled SmolLM2-135M-Instruct, as `respond` runs it) answers the first 64
bundled prompts, up to 200 tokens at temperature 0.7 with top_p 0.95 (respond's defaults), three
ways, alternating, three times (the best of each kept): vLLM given top_p itself (its CPU sampler
sorts each sequence's 49,152-token vocabulary at every step: the baseline), misalign-fast's way
(`VLLMEngine.generate`: vLLM given top_p = 1, the nucleus processor given p), and no top-p at all
(the ceiling).  Also the mask alone on 64 rows of logits shaped as SmolLM2's.
"""
from __future__ import annotations

import time

import torch

from misalign.inference import EngineConfig, SamplingConfig, VLLMEngine
from misalign.inference.nucleus import outside_nucleus
from misalign.inference.smollm2 import prepare
from misalign.inference.tiny import bundled_prompts

SAMPLING = SamplingConfig(max_tokens=200, temperature=0.7, top_p=0.95)


def decode(engine: VLLMEngine, prompts: list[str], way: str) -> tuple[float, int]:
    """Generated tokens per second of one batch answered `way`, and how many answers ran to the
    token limit (a sampler that narrowed or widened the nucleus would shift it)."""
    from vllm import SamplingParams
    texts = [engine.render(p) for p in prompts]
    if way == "ours":
        params = engine.sampling_params(SAMPLING)
    else:
        params = SamplingParams(max_tokens=SAMPLING.max_tokens, temperature=SAMPLING.temperature,
                                top_p=SAMPLING.top_p if way == "vllm" else 1.0)
    started = time.perf_counter()
    outputs = engine.llm.generate(texts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return (sum(len(o.outputs[0].token_ids) for o in outputs) / seconds,
            sum(o.outputs[0].finish_reason == "length" for o in outputs))


def mask_ms(mask, logits: torch.Tensor, repeats: int = 10) -> float:
    mask(logits)
    started = time.perf_counter()
    for _ in range(repeats):
        mask(logits)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch
    engine = VLLMEngine(EngineConfig(model=str(prepare()), max_model_len=4096))
    prompts = bundled_prompts()[:64]
    ways = {"vllm": "vLLM's top-p (baseline)", "ours": "misalign-fast's nucleus processor", "none": "no top-p (ceiling)"}
    engine.generate(prompts[:2], SamplingConfig(max_tokens=8))                # warm-up
    best, cut = {way: 0.0 for way in ways}, {way: 0 for way in ways}
    for _ in range(3):
        for way in ways:
            speed, limited = decode(engine, prompts, way)
            best[way], cut[way] = max(best[way], speed), cut[way] + limited
    engine.close()
    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(0)) * 10 / SAMPLING.temperature
    p = torch.full((64,), SAMPLING.top_p)
    masks = {"vllm": lambda x: apply_top_k_top_p_pytorch(x.clone(), None, p),
             "ours": lambda x: outside_nucleus(x, p), "none": lambda x: x}
    print(f"SmolLM2-135M-Instruct, 64 answers of up to {SAMPLING.max_tokens} tokens, temperature "
          f"{SAMPLING.temperature}, top_p {SAMPLING.top_p}; {torch.get_num_threads()} threads; best of 3\n")
    print("| top-p by | decode tok/s | speed-up | answers cut at the limit, of 192 | mask of 64 x 49,152 logits, ms |")
    print("|---|---|---|---|---|")
    for way, name in ways.items():
        print(f"| {name} | {best[way]:,.0f} | {best[way] / best['vllm']:.2f}x | {cut[way]} "
              f"| {mask_ms(masks[way], logits):.1f} |")


if __name__ == "__main__":
    main()
