"""The run layer: what Stage I and Stage II are made of, and the order in which a run takes its
directory, checks its models, plans the device, starts engines and runs its stages.

    build(config, hooks)    Stage I: the dataset
    bench(config, hooks)    Stage II on the run's dataset (or bench.dataset), then the report
    run(config, hooks)      both, the engines kept across them where the memory plan lets them
    plan(config), check(config)   what can be known before any engine starts

The command line parses, calls one of these and prints what `Hooks` hands it; a library caller
passes the hooks it wants (none: a quiet run).  Stage I's stages are `stage1_stages`: a caller
composes its own list from it (a stage of its own inserted, see misalign.stages.base) and gives
it to `build` or `stage1`.  Nothing here imports the CLI; preflight, the memory plan and the
stages are given what they need.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from misalign.benchmark import benchmark, circularity_warnings
from misalign.build import build as write_stage1
from misalign.config import Config
from misalign.distributed import check_head
from misalign.errors import ConfigError
from misalign.inference.base import EMBEDDER, Pool
from misalign.memory_plan import Schedule
from misalign.pipeline import Decision
from misalign.preflight import check_models, plan_run, require
from misalign.preflight import check as check_models_of
from misalign.report import report
from misalign.rundir import hold
from misalign.stages.base import Stage
from misalign.stages.bench import LengthBaseline
from misalign.stages.classify import ClassifyStage
from misalign.stages.dedup import DedupStage
from misalign.stages.expand import ExpandStage
from misalign.stages.ingest import Prompts, read_input
from misalign.stages.reject import RejectStage
from misalign.stages.respond import RespondStage
from misalign.stages.split import SplitStage


def _ignore(*args) -> None:
    pass


@dataclass
class Hooks:
    """What a run tells its caller as it goes, in this order; each does nothing by default."""
    checked: Callable[[list], None] = _ignore            # every model passed the preflight (ModelChecks)
    planned: Callable[[Schedule], None] = _ignore         # the memory plan, before any engine starts
    note: Callable[[str], None] = _ignore                # a warning the user should see before the run
    decided: Callable[[list[Decision]], None] = _ignore   # what each stage does with its checkpoint
    progress: Callable[[str, int, int], None] | None = None   # (stage, rows done, rows total)
    built: Callable[[dict], None] = _ignore              # Stage I's summary (misalign.build)
    benched: Callable[[dict], None] = _ignore            # Stage II's record (bench/meta.json)
    reported: Callable[[dict], None] = _ignore           # Stage II's results (results.json)


# ------------------------------------------------------------------------------------ stages

def stage1_stages(config: Config, pool: Pool | None) -> list[Stage]:
    """Stage I's stages in order, each from its own config section (and the run's templates and
    taxonomy, [protocol]), with the user's own stages ([stages.NAME], misalign.config.StageSection)
    each after the stage it names."""
    taxonomy, templates = config.protocol.read_taxonomy(), config.protocol.read_templates()
    seed = config.run.seed
    stages = [ClassifyStage(config.classify, pool, taxonomy, prompt_templates=templates),
              ExpandStage(config.expand, pool, taxonomy, dedup=config.dedup, seed=seed, prompt_templates=templates),
              ClassifyStage(config.classify, pool, taxonomy, expanded=True, prompt_templates=templates),
              DedupStage(config.dedup, seed=seed),
              RespondStage(config.respond, pool, seed=seed, prompt_templates=templates),
              RejectStage(config.reject, pool, respond=config.respond, seed=seed, prompt_templates=templates),
              SplitStage(config.split, seed=seed)]
    for name, section in config.stages.items():
        names = [s.name for s in stages]
        if section.after not in names:
            raise ConfigError(f"stages.{name}.after = {section.after!r} is no Stage I stage (one of: {', '.join(names)})")
        stage = section.stage(section.settings, pool)
        stage.prompt_templates = templates          # built as Class(settings, pool); it renders the run's templates
        stages.insert(names.index(section.after) + 1, stage)
    return stages


def passes(config: Config, stage1: bool = True, stage2: bool = True,
           stages: list[Stage] | None = None) -> list[tuple[str, str, str | None]]:
    """(stage, pass, model) for every pass the run makes, in order, for the memory plan (no
    engine is started): Stage I's (`stages`, else stage1_stages'), then one per model under test
    (a probe's is the embedder's) and the length baseline's."""
    found = []
    if stage1:
        found += [(stage.name, step.name, step.model) for stage in stages or stage1_stages(config, None)
                  for step in stage.passes()]
    if stage2:
        found += [(f"bench-{name}", f"bench-{name}", EMBEDDER if config.model(name).kind == "probe" else name)
                  for name in config.bench.models]
        found.append((LengthBaseline.name, LengthBaseline.name, None))
    return found


# ------------------------------------------------------------------------------ before engines

def plan(config: Config, stage1: bool = True, stage2: bool = True, device=None, directories: dict | None = None,
         stages: list[Stage] | None = None) -> Schedule:
    """The run's memory plan and schedule (on `device`, by default this machine's)."""
    return plan_run(config, passes(config, stage1, stage2, stages), device, directories)


def plan_for(config: Config, gpus: int | None = None, gpu_memory: float | None = None, shapes=None) -> Schedule:
    """`misalign-fast plan`: the plan on this machine, or on `gpus` GPUs of `gpu_memory` GiB each;
    a model whose files are not here is planned from DIR/NAME/config.json under `shapes`
    (default: the bundled shapes of the paper's models), NAME being its path's last part."""
    from pathlib import Path

    from misalign.memory_plan import GIB, SHAPES, Device
    device = Device("gpu", int(gpu_memory * GIB), gpus or 1, "GPU") if gpu_memory else None
    directories = {}
    for name, model in config.models.items():
        candidate = Path(shapes or SHAPES) / Path(model.path).name
        if model.kind == "vllm" and model.path and not (Path(model.path) / "config.json").exists() \
                and (candidate / "config.json").exists():
            directories[name] = candidate
    return plan(config, device=device, directories=directories)


def require_plan(config: Config, schedule: Schedule, note: Callable[[str], None] = _ignore) -> None:
    """Stop on a model that cannot fit (a ConfigError); on Ray only a note, since the workers'
    devices are not this machine's (each worker plans for its own)."""
    if config.run.executor == "ray":
        for name, why in schedule.plan.problems:
            note(f"note: on this machine model {name!r} {why.split(' (')[0]}; each Ray worker plans its own")
    else:
        schedule.plan.require()


def check(config: Config) -> list:
    """`misalign-fast check`: every model the run uses, checked without loading weights, against
    the longest of Stage I's input prompts."""
    return check_models_of(config, plan(config), inputs=read_input(config))


def preflight(config: Config, hooks: Hooks, inputs: Prompts | None, stage2: bool = True,
              stages: list[Stage] | None = None) -> Schedule:
    """Everything that can be known before an engine starts, in order: the files the plan reads,
    the plan, every model's check (a ConfigError on the first problem), the plan's verdict (on
    Ray a note: each worker plans its own device), and the role warnings.  `inputs`: Stage I's
    input, read once by the caller (None: no Stage I)."""
    stage1 = inputs is not None
    if config.run.executor == "ray":
        check_head(config.ray.address)
    if stage1:
        check_models(config)
    schedule = plan(config, stage1, stage2, stages=stages)
    hooks.checked(require(config, stage1, stage2, schedule, inputs))
    hooks.planned(schedule)
    require_plan(config, schedule, hooks.note)
    if stage2:                                  # said before the run, not only in its report
        for note in config.role_warnings() if stage1 else circularity_warnings(config):
            hooks.note(f"warning: {note}")
    return schedule


@contextmanager
def engines(config: Config, schedule: Schedule | None = None):
    """The run's engine pool (following the memory plan) and, with run.executor = "ray", its Ray
    workers; every engine closed at the end, however the run ends."""
    from misalign.distributed import executor
    from misalign.inference.pool import EnginePool
    pool = EnginePool(config, config.run.dir, schedule)
    try:
        workers = executor(config)
        try:
            yield pool, workers
        finally:
            if workers is not None:
                workers.close()
    finally:
        pool.close()


# ------------------------------------------------------------------------------------- stages

def stage1(config: Config, pool: Pool, stages: list[Stage] | None = None, executor=None,
           schedule: Schedule | None = None, fresh: bool = False, hooks: Hooks | None = None,
           inputs: Prompts | None = None) -> dict:
    """Stage I on the given engines (on `inputs`, else the input read now); its summary (also run.json)."""
    hooks = hooks or Hooks()
    summary = write_stage1(config, pool, stages or stage1_stages(config, pool), inputs or read_input(config),
                           hooks.progress, executor, schedule.as_dict() if schedule else None, fresh, hooks.decided)
    hooks.built(summary)
    return summary


def stage2(config: Config, pool: Pool, executor=None, schedule: Schedule | None = None, fresh: bool = False,
           hooks: Hooks | None = None) -> dict:
    """Stage II on the given engines, then its report; the results (also results.json)."""
    hooks = hooks or Hooks()
    hooks.benched(benchmark(config, pool, hooks.progress, executor, schedule.as_dict() if schedule else None, fresh,
                            hooks.decided))
    found = report(config.run.dir)
    hooks.reported(found)
    return found


# ---------------------------------------------------------------------------------- the runs

def build(config: Config, hooks: Hooks | None = None, fresh: bool = False,
          stages: list[Stage] | None = None) -> dict:
    """`misalign-fast build`: the run directory held, the preflight, the engines, Stage I."""
    hooks = hooks or Hooks()
    inputs = read_input(config)                 # once: a pipe works, bad input stops before anything
    with hold(config.run.dir):
        schedule = preflight(config, hooks, inputs, stage2=False, stages=stages)
        with engines(config, schedule) as (pool, workers):
            return stage1(config, pool, stages, workers, schedule, fresh, hooks, inputs)


def bench(config: Config, hooks: Hooks | None = None, fresh: bool = False) -> dict:
    """`misalign-fast bench`: the run directory held, the preflight, the engines, Stage II."""
    hooks = hooks or Hooks()
    with hold(config.run.dir):
        schedule = preflight(config, hooks, None)
        with engines(config, schedule) as (pool, workers):
            return stage2(config, pool, workers, schedule, fresh, hooks)


def validate_judge(config: Config, labels_path, output=None) -> dict:
    """`misalign-fast validate-judge`: the labels read and the judge checked before its engine
    starts; its agreement with the labels (also written to `output`, JSON, when given)."""
    import json

    from misalign.judge_validation import read_labels
    from misalign.judge_validation import validate_judge as agreement
    from misalign.preflight import check_model
    from misalign.tables import atomic_path
    # bad input stops here, before any engine
    labelled = read_labels(labels_path, taxonomy=config.protocol.read_taxonomy())
    check_model(config.reject.judge, config.model(config.reject.judge))
    with engines(config) as (pool, _):
        result = agreement(config, pool, labelled)
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
    return result


def run(config: Config, hooks: Hooks | None = None, fresh: bool = False,
        stages: list[Stage] | None = None) -> tuple[dict, dict]:
    """`misalign-fast run`: Stage I then Stage II, the engines kept across both where they fit."""
    hooks = hooks or Hooks()
    inputs = read_input(config)
    with hold(config.run.dir):
        schedule = preflight(config, hooks, inputs, stages=stages)
        with engines(config, schedule) as (pool, workers):
            return (stage1(config, pool, stages, workers, schedule, fresh, hooks, inputs),
                    stage2(config, pool, workers, schedule, fresh, hooks))
