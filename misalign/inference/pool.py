"""Engines by model name, started on first use and closed together (a run uses each model in
several stages; starting vLLM once per model is what keeps a CPU run short).

What vLLM prints goes to RUN_DIR/logs/NAME.log unless MISALIGN_VERBOSE is set (the CLI's
--verbose sets it): a run's terminal shows our progress and tables, not the engines' chatter."""
from __future__ import annotations

import os
from pathlib import Path

from misalign.config import BUNDLED_PREFIX, Config, ModelConfig, redact_url
from misalign.inference.base import Pool


class EnginePool(Pool):
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

    def is_bundled(self, name: str) -> bool:
        """Whether `name` is the real model shipped in a package (SmolLM2-135M-Instruct)."""
        return self.config.model(name).path.startswith(BUNDLED_PREFIX)

    def resolve_path(self, name: str, model: ModelConfig) -> str:
        """The model's path; the stand-in "tiny" is built in the run directory on first use, the
        bundled SmolLM2 converted once into the user's cache."""
        if model.path.startswith(BUNDLED_PREFIX):
            from misalign.inference import smollm2
            return str(smollm2.prepare())
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

    def log_file(self, name: str) -> str | None:
        verbose = os.environ.get("MISALIGN_VERBOSE", "").lower() not in ("", "0", "false")
        return None if verbose else str(self.run_dir / "logs" / f"{name}.log")

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
                    tensor_parallel_size=model.tensor_parallel_size, seed=self.config.run.seed, chat=model.chat,
                    log_file=self.log_file(name)))
            self._engines[name] = engine
        return self._engines[name]

    def embedder(self):
        """The sentence-embedding engine (bundled MiniLM), shared by classification and probes."""
        if self._embedder is None:
            from misalign.inference.embedding_model import embedding_engine
            self._embedder = embedding_engine(log_file=self.log_file("embedder"))
        return self._embedder

    def started(self, names) -> list:
        """The engines among `names` that are running (counting tokens must not start one)."""
        return [self._engines[n] for n in dict.fromkeys(names) if n in self._engines]

    def describe(self, name: str) -> str:
        model = self.config.model(name)
        if self.is_stand_in(name):
            return "tiny (random-weight stand-in)"
        if self.is_bundled(name):
            from misalign.inference.smollm2 import NOTE
            return f"{name} ({NOTE})"
        if model.kind == "probe":
            return f"{name} (logistic probe on MiniLM embeddings, trained on {model.path or 'the train split'})"
        if model.kind == "openai":
            return f"{name} ({model.path or name} served at {redact_url(model.base_url)})"
        return f"{name} ({model.path})"

    def close(self) -> None:
        for engine in [*self._engines.values(), self._embedder]:
            close = getattr(engine, "close", None) if engine is not None else None
            if close:
                close()
        self._engines.clear()
        self._embedder = None
