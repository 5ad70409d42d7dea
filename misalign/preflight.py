"""Preflight: what can be known about a run's models in seconds, without loading any weights.

For every model the config uses: its config.json, its tokenizer, its chat template, the answer
tokens of every label question it is asked (the classifier's codes per dimension, the judge's
and detector's Yes/No: each answer one token of its own), and its context against the longest
request a stage will send it; for a server, the API-key variable and that it answers.
`misalign-fast check` prints the table; `run` and `build` call `require` before any engine
starts, so a bad config costs seconds, not a model load.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from misalign import hub, savacu
from misalign.config import BUNDLED_PREFIX, MODEL_UNDER_TEST, Config, ModelConfig, redact_url
from misalign.errors import ConfigError
from misalign.tables import one_line
from misalign.inference.base import EMBEDDER, ChoiceError, answer_codes, chat_messages, check_choices
from misalign.inference.pool import model_directories
from misalign.items import load_items
from misalign.stages.ingest import Prompts
from misalign.memory_plan import GIB, Device, MemoryPlan, Schedule, detect_device, plan_memory, schedule
from misalign.taxonomy import DIMENSIONS, Taxonomy

YES_NO = ["Yes", "No"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
CHAT_OVERHEAD = 32           # tokens a chat template adds around a message, at most in the families we know
LONGEST_CHECKED = 100        # input prompts tokenised for the context check: the longest by characters


@dataclass
class ModelCheck:
    name: str
    roles: list[str]
    kind: str
    source: str = ""
    tokenizer: str = "-"
    chat_template: str = "-"
    answers: str = "-"
    context: str = "-"
    memory: str = "-"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_model(name: str, model: ModelConfig) -> None:
    """The files a model's config names exist (its values were validated when the config loaded)."""
    if model.kind == "vllm" and hub.is_hub_id(model.path):
        if not (hub.small_files(model.path, model.revision) / "config.json").is_file():
            raise ConfigError(f"[models.{name}] Hub model {model.path!r} has no config.json")
    elif model.kind == "vllm" and model.path and not model.path.startswith(BUNDLED_PREFIX) \
            and not (Path(model.path) / "config.json").exists():
        raise ConfigError(f"[models.{name}] path {model.path!r} is not a model directory (no config.json), nor "
                          "a Hugging Face Hub id (ORG/NAME)")
    if model.kind == "probe" and model.path and not Path(model.path).exists():
        raise ConfigError(f"[models.{name}] path {model.path!r} (the probe's training data) does not exist")


def check_models(config: Config) -> None:
    """Stage I's files: the classifier's probe and every model that makes the dataset."""
    if config.classify.probe and not Path(config.classify.probe).exists():
        raise ConfigError(f"classify.probe = {config.classify.probe!r} does not exist")
    for name in config.stage1_models():
        check_model(name, config.model(name))


def check_bench(config: Config) -> None:
    """Stage II's files: the models', and a probe without training data or that would be
    tested on its own training split."""
    bench = config.bench
    given_csv = bool(bench.dataset) and savacu.is_savacu(bench.dataset)
    for name in bench.models:
        model = config.model(name)
        check_model(name, model)
        if model.kind == "probe" and not model.path and given_csv:
            raise ConfigError(f"probe {name!r} has no training data: a SaVaCu CSV has no train split, so set "
                              f"[models.{name}] path to a Stage I dataset or another CSV, disjoint from the test "
                              "items")
        if model.kind == "probe" and not model.path and bench.split in ("train", "all") and not given_csv:
            raise ConfigError(f"probe {name!r} trains on the train split, which bench.split = {bench.split!r} "
                              "also tests on; benchmark another split or give the probe its own path")


def rejected_items_path(config: Config) -> Path:
    return Path(config.run.dir) / "bench" / "rejected_items.jsonl"


def plan_run(config: Config, passes: list[tuple[str, str, str | None]], device: Device | None = None,
             directories: dict | None = None) -> Schedule:
    """The memory plan and schedule of a run's (stage, pass, model) passes (misalign.run.passes) on
    `device`, by default this machine's."""
    names = [model for _, _, model in passes if model and model != EMBEDDER]
    plan = plan_memory(config, device or detect_device(), names, embedder=any(m == EMBEDDER for _, _, m in passes),
                       directories={**model_directories(config), **(directories or {})})
    return schedule(plan, passes)


def check(config: Config, planned: Schedule, stage1: bool = True, stage2: bool = True,
          inputs: Prompts | None = None) -> list[ModelCheck]:
    """One ModelCheck per model the run uses: in Stage I's roles, as a model under test, or both;
    `planned`: the run's memory plan; `inputs`: Stage I's input, whose longest prompts each
    model's context must hold."""
    taxonomy = config.protocol.read_taxonomy()
    prompts = inputs.longest(LONGEST_CHECKED) if stage1 and inputs else []
    memory = planned.plan
    results = []
    for name, roles in config.roles().items():
        roles = [r for r in roles if (stage2 if r == MODEL_UNDER_TEST else stage1)]
        if not roles:
            continue
        model = config.model(name)
        result = ModelCheck(name, roles, model.kind)
        try:
            check_model(name, model)
        except ConfigError as exc:
            result.problems.append(str(exc))
        else:
            if model.kind == "openai":
                _check_server(model, result)
            elif model.kind == "vllm":
                _check_local(name, model, config, taxonomy, prompts, result)
                _check_memory(name, memory, result, on_ray=config.run.executor == "ray")
            else:
                result.source = model.path or "the run's train split"
        results.append(result)
    return results


def _check_memory(name: str, plan: MemoryPlan, result: ModelCheck, on_ray: bool = False) -> None:
    """The model's memory need; a model this machine cannot hold is a problem, or, on Ray (where
    each worker plans its own device and this machine may hold none of the engines), a note."""
    memory = plan.models.get(name)
    if memory is None:
        return
    result.memory = f"{memory.need / GIB:.1f} GiB" + (f" ({memory.share:.0%} of a GPU)" if plan.device.kind == "gpu" else "")
    found = [why for model, why in plan.problems if model == name]
    if on_ray:
        result.notes += [f"on this machine: {why} (the Ray workers plan their own devices)" for why in found]
    else:
        result.problems += found


def require(config: Config, stage1: bool, stage2: bool, planned: Schedule,
            inputs: Prompts | None = None) -> list[ModelCheck]:
    """`check`, stopping with the first problem as one line; the caller has run `check_models`
    before planning and read Stage I's input (one without a usable prompt stops there)."""
    if stage2:
        bench = config.bench
        if bench.dataset:                    # a given dataset is read now, not after Stage I
            items = load_items(bench.dataset, bench.split, config.protocol.read_taxonomy())
            items.require_some(bench.split, rejected_items_path(config))
        check_bench(config)
    results = check(config, planned, stage1, stage2, inputs)
    for result in results:
        if result.problems:
            raise ConfigError(f"check: model {result.name!r}: {result.problems[0]}")
    return results


def _check_server(model, result: ModelCheck) -> None:
    import httpx
    result.source = redact_url(model.base_url)
    headers = {}
    if model.api_key_env:
        key = os.environ.get(model.api_key_env)
        if not key:
            result.problems.append(f"environment variable {model.api_key_env} (its API key) is not set")
            return
        headers["Authorization"] = f"Bearer {key}"
    url = model.base_url.rstrip("/") + "/models"
    try:
        reply = httpx.get(url, headers=headers, timeout=5.0)
        url = redact_url(url)
    except httpx.HTTPError as exc:
        url = redact_url(url)
        result.problems.append(f"the server does not answer at {url} ({type(exc).__name__})")
        return
    if reply.status_code >= 400:
        result.problems.append(f"the server at {url} answered HTTP {reply.status_code}")
        return
    result.tokenizer = "server's"
    result.notes.append("the server answers")


def _check_local(name: str, model, config: Config, taxonomy: Taxonomy, prompts: list[str],
                 result: ModelCheck) -> None:
    path = _local_path(name, model)
    if path is None:
        result.source = "tiny stand-in, built at start" if not model.path else "bundled, converted at first use"
        return
    result.source = str(path)
    try:
        model_config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        result.problems.append(f"{path / 'config.json'} cannot be read ({exc})")
        return
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        result.problems.append(f"{path} has no usable tokenizer: none of {', '.join(TOKENIZER_FILES)}")
        return
    try:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:     # transformers raises many kinds for a missing or broken tokenizer
        result.problems.append(f"{path} has no usable tokenizer ({type(exc).__name__}: {one_line(exc)})")
        return
    result.tokenizer = f"{len(tokenizer):,} tokens"
    template = getattr(tokenizer, "chat_template", None)
    if model.chat and not template:
        result.problems.append(f"{path} has no chat template: set chat = false in [models.{name}] for a "
                               "base model")
        return
    result.chat_template = "yes" if template else "no (plain text)"
    if model.system_prompt:
        try:
            tokenizer.apply_chat_template(chat_messages("?", model.system_prompt), tokenize=False,
                                          add_generation_prompt=True)
        except Exception as exc:     # a template that raises on a system message (jinja's own error)
            result.problems.append(f"its chat template does not take a system message ({one_line(exc)}): "
                                   f"remove system_prompt from [models.{name}]")
            return
    _check_answers(tokenizer, result, taxonomy)
    _check_context(tokenizer, model, model_config, config, prompts, result, taxonomy)


def _local_path(name: str, model) -> Path | None:
    """Where the weights are, or None for models that are made at start (the stand-in, or the
    bundled SmolLM2 before its first conversion)."""
    if model.path.startswith(BUNDLED_PREFIX):
        from misalign.inference import smollm2
        ready = smollm2.checkpoint_dir()
        return ready if (ready / "config.json").exists() else None
    if hub.is_hub_id(model.path):
        return hub.small_files(model.path, model.revision)
    return Path(model.path) if model.path else None


def _token_ids(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def _check_answers(tokenizer, result: ModelCheck, taxonomy: Taxonomy) -> None:
    said = []
    try:
        if "classifier" in result.roles:
            for dim in DIMENSIONS:
                codes = answer_codes(_token_ids(tokenizer), len(taxonomy.of(dim)) + 1, "its tokenizer")
                said.append(f"{dim} {codes[0]}..{codes[-1]}")
        if {"judge", "model under test"} & set(result.roles):
            check_choices(YES_NO, [_token_ids(tokenizer)(c)[0] for c in YES_NO])
            said.append("Yes/No")
    except ChoiceError as exc:
        result.problems.append(f"answer tokens: {exc}")
    result.answers = ", ".join(said) or "-"


def _check_context(tokenizer, model, model_config: dict, config: Config, prompts: list[str], result: ModelCheck,
                   taxonomy: Taxonomy) -> None:
    """The model's context against each role's longest request (template, prompt, and what it
    generates); prompts that alone do not fit are noted (the engine leaves them out and counts
    them), a template that cannot fit at all is a problem."""
    positions = model_config.get("max_position_embeddings") or model_config.get("max_seq_len")
    if positions and model.max_model_len > positions:
        result.problems.append(f"max_model_len {model.max_model_len:,} is over the model's {positions:,} positions")
        return
    limit = model.max_model_len
    longest = prompts[0] if prompts else ""
    worst = 0
    system = len(tokenizer.encode(model.system_prompt)) if model.system_prompt else 0
    for role, text, generated in _requests(config, result.roles, longest, taxonomy):
        size = len(tokenizer.encode(text)) + system + generated + CHAT_OVERHEAD
        worst = max(worst, size)
        if size - len(tokenizer.encode(longest)) > limit:
            result.problems.append(f"the {role}'s request alone ({size:,} tokens with its answer) is over "
                                   f"max_model_len {limit:,}")
            return
    over = sum(len(tokenizer.encode(p)) + 64 > limit for p in prompts)
    if over:
        result.notes.append(f"{over} of the longest prompts do not fit its context: they are left out and counted")
    result.context = f"{worst:,} of {limit:,}"


def _requests(config: Config, roles: list[str], prompt: str, taxonomy: Taxonomy):
    """(role, the longest request text, tokens it generates) for each role of a model."""
    templates = config.protocol.read_templates()
    response = "word " * config.respond.max_tokens     # a response at the token limit, roughly
    fill = dict(domains="safety: Violence; value: Honesty; cultural: Religious Practices", prompt=prompt,
                feedback="", response=response, criterion="it is unsafe", dimension="value", none="Z",
                domain="Violence", description="", examples=f"- {prompt}\n" * config.expand.seeds,
                quality="disrespectful of human values")       # the longest quality a question names
    for role in roles:
        if role == "classifier":
            listing = "\n".join(f"AA: {d.name} ({d.description})" for d in taxonomy.of("value"))
            yield role, templates["classify"].format_map({**fill, "domains": listing}), 1
        elif role == "expander":
            yield role, templates["expand"].format_map(fill), config.expand.max_tokens
        elif role == "generator":
            yield role, templates["respond_misaligned"].format_map(fill), config.respond.max_tokens
        elif role in ("judge", "model under test"):
            yield role, templates["judge" if role == "judge" else "detect"].format_map(fill), 1
        if role == "judge" and config.reject.feedback == "critique":     # it also writes critiques
            yield role, templates["critique"].format_map(fill), config.reject.critique_tokens
