"""One inference interface, two engines: in-process vLLM and any OpenAI-compatible server.

Imports are lazy: `import misalign.inference` imports no engine module (nor vLLM, Ray or the
HTTP client); each name is imported from its module on first use (PEP 562), so that commands
which run no model, such as `misalign-fast dedup`, start faster.
"""
from importlib import import_module

_MODULE_OF = {
    "ChoiceError": "base", "Engine": "base", "EngineError": "base", "EngineStats": "base", "Generation": "base",
    "Pool": "base", "SamplingConfig": "base", "prefix_order": "base",
    "OpenAIConfig": "openai_engine", "OpenAIEngine": "openai_engine",
    "EngineConfig": "vllm_engine", "VLLMEngine": "vllm_engine",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
