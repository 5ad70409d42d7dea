"""Engines by model name, started on first use and closed together (a run uses each model in
several stages; starting vLLM once per model is what keeps a CPU run short)."""
from __future__ import annotations

from pathlib import Path

from misalign.config import Config, ModelConfig


class EnginePool:
    def __init__(self, config: Config, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self._engines: dict = {}
        self._embedder = None

    def __getstate__(self):
        """A pool travels (to a Ray actor) as its config alone: engines never leave their process."""
        return {"config": self.config, "run_dir": self.run_dir, "_engines": {}, "_embedder": None}

    def is_stand_in(self, name: str) -> bool:
        """Whether `name` is the random-weight stand-in: "tiny" with no path of its own."""
        model = self.config.model(name)
        return name == "tiny" and not model.path and model.kind == "vllm"

    def resolve_path(self, name: str, model: ModelConfig) -> str:
        """The model's path; the stand-in "tiny" is built in the run directory on first use."""
        if model.path:
            return model.path
        if name != "tiny":
            from misalign.errors import ConfigError
            raise ConfigError(f"[models.{name}] needs a path (or kind = \"openai\" with a base_url)")
        from misalign.inference.tiny import make_tiny_model
        target = self.run_dir / "models" / "tiny"
        if not (target / "config.json").exists():
            make_tiny_model(target, seed=self.config.run.seed)
        return str(target)

    def get(self, name: str):
        if name not in self._engines:
            model = self.config.model(name)
            if model.kind == "openai":
                from misalign.inference import OpenAIConfig, OpenAIEngine
                engine = OpenAIEngine(OpenAIConfig(base_url=model.base_url, model=model.path or name,
                                                   api_key_env=model.api_key_env or None, chat=model.chat))
            else:
                from misalign.inference import EngineConfig, VLLMEngine
                engine = VLLMEngine(EngineConfig(
                    model=self.resolve_path(name, model), dtype=model.dtype, max_model_len=model.max_model_len,
                    gpu_memory_utilization=model.gpu_memory_utilization or None,
                    tensor_parallel_size=model.tensor_parallel_size, seed=self.config.run.seed, chat=model.chat))
            self._engines[name] = engine
        return self._engines[name]

    def embedder(self):
        """The sentence-embedding engine (bundled MiniLM), shared by classification and probes."""
        if self._embedder is None:
            from misalign.stages.classify import embedding_engine
            self._embedder = embedding_engine()
        return self._embedder

    def started(self, names) -> list:
        """The engines among `names` that are running (counting tokens must not start one)."""
        return [self._engines[n] for n in dict.fromkeys(names) if n in self._engines]

    def describe(self, name: str) -> str:
        model = self.config.model(name)
        if self.is_stand_in(name):
            return "tiny (random-weight stand-in)"
        if model.kind == "probe":
            return f"{name} (logistic probe on MiniLM embeddings, trained on {model.path or 'the train split'})"
        if model.kind == "openai":
            return f"{name} ({model.path or name} served at {model.base_url})"
        return f"{name} ({model.path})"

    def close(self) -> None:
        for engine in [*self._engines.values(), self._embedder]:
            close = getattr(engine, "close", None) if engine is not None else None
            if close:
                close()
        self._engines.clear()
        self._embedder = None
