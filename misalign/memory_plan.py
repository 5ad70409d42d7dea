"""The memory plan: before any engine starts, what each local model needs, how many engines can
be resident together on this device, and the schedule that follows from a run's passes (which
pass starts which engine and which engines it releases to make room: the one needed again last,
since the passes are known before the run).

A model's weights come from its checkpoint's safetensors headers (a few KB read per file, no
tensor loaded), or from its config.json shape where no weights are there (planning for a box
the weights are not on: `misalign-fast plan --shapes`).  Its KV cache per token comes from the
shape: 2 (K and V) x layers x KV heads x head size x bytes.  On a GPU each engine is given a
share of the card (vLLM's gpu_memory_utilization): the shares of resident engines add up to at
most GPU_BUDGET, and an engine's share beyond its weights becomes its KV cache.  On CPU an
engine takes its weights, its KV space (VLLM_CPU_KVCACHE_SPACE) and its process; together they
stay within CPU_BUDGET of the RAM.

Engines with tensor_parallel_size = t spread over cards 0..t-1, so card 0 carries every resident
engine: the plan counts per card, which is exact for t = 1 and safe above.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path

from misalign.config import BUNDLED_PREFIX, EMBEDDER, Config, ModelConfig
from misalign.errors import ConfigError

GIB = 1024 ** 3
GPU_BUDGET = 0.9            # of each card, for all engines together: vLLM's own default for one engine
CPU_BUDGET = 0.7            # of RAM: the rest is the OS, this process and the page cache
GPU_OVERHEAD = 2 * GIB      # per engine and card: CUDA context, activations, CUDA graphs
CPU_OVERHEAD = 1 * GIB      # per engine: its process
# The least KV cache an engine is planned with, in tokens: a request here takes about 1,000
# (prompt and up to 512 generated), and an engine batches 64 at once (EngineConfig.max_num_seqs);
# never less than one full-length sequence, which vLLM needs to start.
KV_TOKENS = 65_536
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
MAX_HEADER = 100_000_000    # bytes: the safetensors format's own limit on its JSON header
SMOLLM2_PARAMETERS = 134_515_008    # before `misalign-fast models prepare` has written its checkpoint
SHAPES = Path(__file__).parent / "data" / "shapes"    # config.json of the paper's models and their substitutes


class PlanError(ConfigError):
    """A model that cannot fit the device on its own."""


@dataclass
class Device:
    kind: str                   # "gpu" or "cpu"
    memory: int                 # bytes: of one card (GPU) or of RAM (CPU)
    cards: int = 1
    name: str = ""

    @property
    def budget(self) -> float:
        return GPU_BUDGET if self.kind == "gpu" else CPU_BUDGET

    def describe(self) -> str:
        if self.kind == "gpu":
            return f"{self.cards} x {self.name or 'GPU'} ({self.memory / GIB:.1f} GiB each)"
        return f"CPU, {self.memory / GIB:.0f} GiB RAM"


def detect_device() -> Device:
    """This machine's GPUs (through NVML, which does not start CUDA in this process; as many as
    CUDA_VISIBLE_DEVICES lets this process see), else its RAM."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            cards = pynvml.nvmlDeviceGetCount()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is not None:
                cards = min(cards, len([v for v in visible.split(",") if v.strip()]))
            if cards:
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                name = pynvml.nvmlDeviceGetName(handle)
                return Device("gpu", int(pynvml.nvmlDeviceGetMemoryInfo(handle).total), cards,
                              name.decode() if isinstance(name, bytes) else name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:           # no NVML library, no driver, no GPU: plan for the CPU
        pass
    return Device("cpu", os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass
class ModelMemory:
    name: str
    weights: int                # bytes, over all its cards
    kv_per_token: int           # bytes, over all its cards
    max_model_len: int
    tensor_parallel: int
    source: str                 # where the weights figure comes from
    need: int = 0               # bytes per card: weights, the least KV cache, overhead
    share: float = 0.0          # of a card (GPU) or of RAM (CPU): what its engine is given

    def describe(self) -> str:
        return (f"{self.weights / GIB:.1f} GiB weights + {self.kv_per_token * self.max_model_len / GIB:.2f} GiB KV "
                f"per {self.max_model_len:,}-token sequence")


# ------------------------------------------------------------------------------- model shapes

def read_shape(model_dir: Path) -> dict | None:
    """config.json's text part (multimodal checkpoints keep it under text_config), or None."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return {**config, **config.get("text_config", {})}


def shape_parameters(shape: dict) -> int:
    """Parameters of a decoder from its shape (attention, gated MLP or mixture of experts,
    embeddings): within a few percent of the checkpoint for the families we plan for."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    heads = shape["num_attention_heads"]
    kv_heads = shape.get("num_key_value_heads") or heads
    head = shape.get("head_dim") or hidden // heads
    experts = shape.get("num_local_experts") or shape.get("num_experts") or 1
    attention = 2 * hidden * heads * head + 2 * hidden * kv_heads * head
    mlp = 3 * hidden * shape["intermediate_size"] * experts + (hidden * experts if experts > 1 else 0)
    embeddings = shape["vocab_size"] * hidden * (1 if shape.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden


def kv_bytes_per_token(shape: dict, dtype_bytes: int) -> int:
    if "num_hidden_layers" not in shape or "num_attention_heads" not in shape:
        return 0                # an encoder without a KV cache, or a shape we cannot read
    heads = shape["num_attention_heads"]
    head = shape.get("head_dim") or shape["hidden_size"] // heads
    return 2 * shape["num_hidden_layers"] * (shape.get("num_key_value_heads") or heads) * head * dtype_bytes


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of the checkpoint: those its index names, else all but Mistral's
    `consolidated.safetensors` where shards sit beside it (its downloads carry both, as vLLM knows)."""
    try:
        index = json.loads((model_dir / "model.safetensors.index.json").read_text())
        return [model_dir / name for name in sorted(set(index["weight_map"].values()))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    files = sorted(model_dir.glob("*.safetensors"))
    shards = [f for f in files if not f.name.startswith("consolidated")]
    return shards or files


def safetensors_size(model_dir: Path) -> tuple[int, int] | None:
    """(parameters, bytes) from the headers of the checkpoint's safetensors files, or None."""
    files = checkpoint_files(model_dir)
    if not files:
        return None
    params = nbytes = 0
    try:
        for path in files:
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if length > MAX_HEADER:
                    return None
                header = json.loads(f.read(length))
            for key, tensor in header.items():
                if key != "__metadata__":
                    count = math.prod(tensor["shape"])
                    params += count
                    nbytes += count * SAFETENSORS_BYTES.get(tensor["dtype"], 2)
    except (OSError, ValueError, KeyError, TypeError):
        return None             # vLLM will say what is wrong with it; the plan falls back on the shape
    return params, nbytes


def estimate(name: str, model: ModelConfig, directory: Path | None, device: Device) -> ModelMemory:
    """A local model's memory from its files (see the module docstring).  With dtype = "auto",
    vLLM keeps a checkpoint's own 16-bit type, and on a GPU loads a float32 one in 16 bits."""
    shape = read_shape(directory) if directory else None
    checkpoint_bytes = DTYPE_BYTES.get(str((shape or {}).get("torch_dtype") or (shape or {}).get("dtype")), 2)
    if model.dtype == "auto" and device.kind == "gpu":
        checkpoint_bytes = min(checkpoint_bytes, 2)
    dtype_bytes = DTYPE_BYTES.get(model.dtype, checkpoint_bytes)
    sized = safetensors_size(directory) if directory else None
    if sized:
        params, nbytes = sized
        weights = nbytes if model.dtype == "auto" and device.kind == "cpu" else params * dtype_bytes
        source = "safetensors headers"
    elif shape and "intermediate_size" in shape:
        weights, source = shape_parameters(shape) * dtype_bytes, "config.json shape (no weights here)"
    elif model.path.startswith(BUNDLED_PREFIX):
        weights, source = SMOLLM2_PARAMETERS * 4, "SmolLM2's size (not prepared yet)"
    else:
        weights, source = 0, "unknown until built (the tiny stand-in: a few MB)"
    return ModelMemory(name, weights, kv_bytes_per_token(shape or {}, dtype_bytes), model.max_model_len,
                       model.tensor_parallel_size, source)


# --------------------------------------------------------------------------------------- plan

@dataclass
class MemoryPlan:
    device: Device
    models: dict                          # name -> ModelMemory: the local models (and the embedder)
    resident_models: int = 0              # engines alive at once at most (0: as many as fit)
    problems: list = field(default_factory=list)   # (model, why it cannot fit)

    def fits(self, resident: list[str], name: str) -> bool:
        """Whether `name`'s engine can start beside the `resident` ones (the embedder, always
        resident once started, is not among them: its share is set aside)."""
        if self.resident_models and len(resident) >= self.resident_models:
            return False
        return sum(self.models[n].share for n in [*resident, name]) <= self.llm_budget + 1e-9

    @property
    def llm_budget(self) -> float:
        embedder = self.models.get(EMBEDDER)
        return self.device.budget - (embedder.share if embedder else 0.0)

    @property
    def slots(self) -> int:
        """Engines (bar the embedder) that can surely be resident together: the largest ones."""
        shares = sorted((m.share for n, m in self.models.items() if n != EMBEDDER), reverse=True)
        fit = max(len([s for s in accumulate(shares) if s <= self.llm_budget + 1e-9]), 1)
        return min(fit, self.resident_models) if self.resident_models else fit

    def gpu_share(self, name: str) -> float | None:
        """The gpu_memory_utilization to start `name`'s engine with (None on CPU: vLLM's own)."""
        return self.models[name].share if self.device.kind == "gpu" and name in self.models else None

    def require(self) -> None:
        if self.problems:
            name, why = self.problems[0]
            raise PlanError(f"plan: model {name!r}: {why}")


def plan_memory(config: Config, device: Device, names: list[str], embedder: bool = False,
                directories: dict | None = None) -> MemoryPlan:
    """The plan for the local models among `names` (servers and probes take no memory here),
    and the embedder if the run uses it.  `directories`: where each model's files are now, by
    name (EMBEDDER's too; the inference layer knows where the bundled ones live), else its path."""
    directories = directories or {}
    models = {}
    for name in dict.fromkeys(names):
        model = config.model(name)
        if model.kind == "vllm":
            found = directories.get(name) or (Path(model.path) if model.path and not model.path.startswith(
                BUNDLED_PREFIX) else None)
            models[name] = estimate(name, model, found, device)
    if embedder:
        path = directories.get(EMBEDDER)
        models[EMBEDDER] = estimate(EMBEDDER, ModelConfig(path=str(path or ""), max_model_len=256), path, device)
    plan = MemoryPlan(device, models, config.run.resident_models)
    gpu = device.kind == "gpu"
    for memory in models.values():
        kv = memory.kv_per_token * max(memory.max_model_len, KV_TOKENS)
        if gpu:
            memory.need = (memory.weights + kv) // memory.tensor_parallel + GPU_OVERHEAD
        else:
            memory.need = memory.weights + int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1") or 1) * GIB + CPU_OVERHEAD
        memory.share = memory.need / device.memory
    if gpu:
        _gpu_shares(config, plan)
    for name, memory in models.items():
        if memory.tensor_parallel > device.cards:
            plan.problems.append((name, f"tensor_parallel_size = {memory.tensor_parallel}, but this box has "
                                        f"{device.cards} GPU{'s' if device.cards != 1 else ''}"))
        elif memory.need / device.memory > plan.llm_budget + 1e-9:
            plan.problems.append((name, _too_big(memory, device, plan.llm_budget)))
        elif memory.need > memory.share * device.memory + 1:
            plan.problems.append((name, f"gpu_memory_utilization = {memory.share:g} gives it "
                                        f"{memory.share * device.memory / GIB:.1f} GiB, less than the "
                                        f"{memory.need / GIB:.1f} GiB it needs ({memory.describe()}); raise it, "
                                        "or leave it unset for the plan to choose"))
    return plan


def _gpu_shares(config: Config, plan: MemoryPlan) -> None:
    """Each engine's share of a card: what it needs, scaled up when the engines that can be
    resident together (all of them, or the run.resident_models largest) leave memory spare, which
    then becomes KV cache.  A model whose config sets gpu_memory_utilization keeps it; the
    embedder keeps its need."""
    models = plan.models
    chosen = {n for n in models if n != EMBEDDER and config.model(n).gpu_memory_utilization}
    for name in chosen:
        models[name].share = config.model(name).gpu_memory_utilization
    free = [n for n in models if n not in chosen and n != EMBEDDER]
    together = sorted((models[n].share for n in free), reverse=True)[:plan.resident_models or len(free)]
    room = plan.llm_budget - sum(models[n].share for n in chosen)
    if together and sum(together) < room:
        for name in free:
            models[name].share *= room / sum(together)


def _too_big(memory: ModelMemory, device: Device, budget: float) -> str:
    per_card = "per card " if memory.tensor_parallel > 1 else ""
    advice = ("set its tensor_parallel_size (several GPUs), a smaller max_model_len, or run on Ray "
              "(run.executor = \"ray\")" if device.kind == "gpu" else
              "serve it elsewhere (kind = \"openai\") or run on Ray (run.executor = \"ray\")")
    return (f"needs {memory.need / GIB:.1f} GiB {per_card}({memory.describe()}, KV cache for "
            f"{max(memory.max_model_len, KV_TOKENS):,} tokens, engine overhead) but "
            f"{budget * device.memory / GIB:.1f} GiB of {device.describe()} is usable; {advice}")


# ----------------------------------------------------------------------------------- schedule

@dataclass
class Step:
    """One pass of a stage over all its rows and what it does to the resident engines."""
    stage: str
    pass_name: str
    model: str                  # "-" for a pass without a model
    action: str                 # "start", "resident", "server", "none"
    releases: list = field(default_factory=list)


def next_use(model: str, models: list, position: int) -> float:
    """Where `model` is used next after `position` in the passes' models (inf: never)."""
    return next((i for i in range(position + 1, len(models)) if models[i] == model), math.inf)


def to_release(resident: list[str], models: list, position: int) -> str:
    """The resident engine to shut down first: the one needed again last (none sooner knows
    better, as the passes are known in advance); among equals, the least recently used."""
    return max(resident, key=lambda name: (next_use(name, models, position), -resident.index(name)))


def schedule(plan: MemoryPlan, passes: list[tuple[str, str, str | None]]) -> "Schedule":
    """The engines each pass (stage, pass, model) starts and releases.  A pass with nothing to
    do at run time starts nothing: these are upper bounds."""
    steps, resident, embedder_started = [], [], False
    models = [model for _, _, model in passes]
    for position, (stage, pass_name, model) in enumerate(passes):
        if model is None:
            steps.append(Step(stage, pass_name, "-", "none"))
        elif model == EMBEDDER:
            steps.append(Step(stage, pass_name, model, "resident" if embedder_started else "start"))
            embedder_started = True
        elif model not in plan.models:
            steps.append(Step(stage, pass_name, model, "server"))
        elif model in resident:
            resident.remove(model)
            resident.append(model)
            steps.append(Step(stage, pass_name, model, "resident"))
        else:
            released = []
            while resident and not plan.fits(resident, model):
                released.append(to_release(resident, models, position))
                resident.remove(released[-1])
            resident.append(model)
            steps.append(Step(stage, pass_name, model, "start", released))
    return Schedule(plan, steps)


@dataclass
class Schedule:
    """A run's memory plan and the passes it schedules."""
    plan: MemoryPlan
    steps: list

    def position(self, stage: str, pass_name: str) -> int | None:
        return next((i for i, s in enumerate(self.steps) if (s.stage, s.pass_name) == (stage, pass_name)), None)

    def models(self) -> list[str]:
        return [step.model for step in self.steps]

    def engine_starts(self) -> dict[str, int]:
        """Engines started per model at most (a pass with nothing to do starts none)."""
        starts: dict[str, int] = {}
        for step in self.steps:
            if step.action == "start":
                starts[step.model] = starts.get(step.model, 0) + 1
        return starts

    def as_dict(self) -> dict:
        """What run.json records as "schedule"."""
        plan = self.plan
        return {"device": asdict(plan.device), "resident_models": plan.resident_models, "slots": plan.slots,
                "models": {n: asdict(m) for n, m in plan.models.items()},
                "passes": [asdict(s) for s in self.steps], "engine_starts": self.engine_starts()}
