"""One inference interface, two engines: in-process vLLM and any OpenAI-compatible server.

Imports are lazy: `import misalign.inference` does not import vLLM (or Ray).
"""
from misalign.inference.base import (ChoiceError, Engine, EngineError, EngineStats, Generation, Pool,
                                     SamplingConfig, prefix_order)
from misalign.inference.openai_engine import OpenAIConfig, OpenAIEngine
from misalign.inference.vllm_engine import EngineConfig, VLLMEngine

__all__ = ["Engine", "EngineConfig", "EngineError", "EngineStats", "ChoiceError", "Generation",
           "OpenAIConfig", "OpenAIEngine", "Pool", "SamplingConfig", "VLLMEngine", "prefix_order"]
