"""The runner: stages in order, each checkpointed as Parquet shards with a manifest.

A row-wise stage (its output for input rows [a, b) depends on those rows alone) runs shard by
shard, here or on an executor's workers (misalign.distributed: any order); a re-run with the
same run directory skips every shard its manifest lists, so an interrupted run loses at most
the shards in flight.  A global stage (expand, dedup, split: they need every row) runs in one
piece, in this process, and is checkpointed when done.  On an executor a stage's `seconds` add
up the workers' time.
A stage of several passes (one model each) runs pass by pass, each over every shard before the
next (model-major): an engine starts once per pass however few fit in memory, and each
(pass, shard) is checkpointed, so a run killed in the middle of a pass resumes there.
Stages never call each other; each reads the table the previous one wrote (`run`), or all read
the same table (`run_each`).  The stage contract is misalign.stages.base.Stage.

Every checkpoint carries its stage's key (misalign.identity.StageKey): the settings, templates
and models the stage declares, its shard layout, its version and a digest of its input.  Before
any stage runs, `plan` decides per stage: reused (same key), resumed (same key, shards missing)
or recomputed, saying what changed; in a chain (`run`) a recomputed stage recomputes every
stage after it.  A checkpoint that is not reused is moved to stages/previous/, never mixed in.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from misalign.errors import MisalignError
from misalign.identity import StageKey, table_digest
from misalign.stages.base import Stage
from misalign.stats import STARTS, StageCounts
from misalign.tables import atomic_path


# 2: per-domain figures counted by the stages (#12); 3: passes (#10); 4: the judge asked both ways, the
# verify pass, leakage columns, Stage II samples with each polarity's answer (#14); 5: content keys (#23)
MANIFEST_FORMAT = 5
PREVIOUS = "previous"          # stages/previous/NN_name: the last checkpoint a stage did not reuse


class ResumeError(MisalignError):
    """The run directory holds a checkpoint that cannot be read."""


@dataclass
class StageProfile:
    stage: str
    items_in: int = 0
    items_out: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    shards_reused: int = 0         # (pass, shard) pieces taken from the checkpoint
    shards_run: int = 0
    startup_seconds: float = 0.0   # starting engines (and stopping others to make room); `seconds` is the work
    engine_starts: dict = field(default_factory=dict)   # model -> engines started for it
    counters: dict = field(default_factory=dict)   # the stage's own counts, flat (misalign.stats), summed over shards

    def add(self, other: dict) -> None:
        for key, value in other.items():
            if key in SHARD_FIELDS:
                setattr(self, key, getattr(self, key) + value)
            elif key.startswith(STARTS):
                if value:
                    model = key.removeprefix(STARTS)
                    self.engine_starts[model] = self.engine_starts.get(model, 0) + value
            else:
                self.counters[key] = self.counters.get(key, 0) + value

    def counts(self) -> StageCounts:
        """What the stage counted, as its typed record."""
        return StageCounts.read(self.counters)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
                "items_per_s": self.items_out / self.seconds if self.seconds else 0.0,
                "tokens_per_s": (self.prompt_tokens + self.generated_tokens) / self.seconds if self.seconds else 0.0}


SHARD_FIELDS = ("items_in", "items_out", "seconds", "prompt_tokens", "generated_tokens", "cached_tokens",
                "startup_seconds")


def batched(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last may be shorter), taken lazily."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def run_shards(stage: Stage, shards: list[tuple[int, pa.Table]], pass_no: int = 0) -> list[tuple[int, pa.Table, dict]]:
    """Shards of a one-to-one pass (misalign.stages.base.Pass) in one call, the output cut back
    into the shards: [(index, output, stats)].  The call's counters go with its last shard (the
    others count their rows only), so that the shards' stats still sum to the stage's."""
    if len(shards) == 1:
        return [run_shard(stage, *shards[0], pass_no)]
    _, out, stats = run_shard(stage, -1, pa.concat_tables([part for _, part in shards], promote_options="default"),
                              pass_no)
    if out.num_rows != sum(part.num_rows for _, part in shards):
        raise MisalignError(f"stage {stage.name!r}: pass {stage.passes()[pass_no].name!r} is declared one to one "
                            f"but returned {out.num_rows} rows for {stats['items_in']}")
    found, at = [], 0
    for k, (index, part) in enumerate(shards):
        piece = out.slice(at, part.num_rows).combine_chunks()
        at += part.num_rows
        counted = stats if k == len(shards) - 1 else {name: 0 for name in stats}
        found.append((index, piece, {**counted, "items_in": part.num_rows, "items_out": piece.num_rows}))
    return found


def run_shard(stage: Stage, index: int, part: pa.Table, pass_no: int = 0) -> tuple[int, pa.Table, dict]:
    """One shard through one pass of a stage: (index, output, stats of that piece); the seconds
    spent starting engines are counted apart from the work."""
    before = stage.counters()
    began = time.perf_counter()
    out = stage.passes()[pass_no].run(part)
    elapsed = time.perf_counter() - began
    after = stage.counters()
    change = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    stats = {"items_in": part.num_rows, "items_out": out.num_rows, **change,
             "seconds": elapsed - change.get("startup_seconds", 0.0)}
    return index, out, stats


@dataclass
class Manifest:
    stage: str
    input_rows: int
    shard_rows: int
    passes: list = field(default_factory=list)     # [{"name", "model", "shards": [{"index", "file", "rows", "stats"}]}]
    key: dict = field(default_factory=dict)        # StageKey.parts: what the shards were computed from
    complete: bool = False
    format: int = MANIFEST_FORMAT

    @classmethod
    def read(cls, path: Path) -> "Manifest | str | None":
        """The manifest at `path`; None if there is none; or, for one this run cannot reuse (another
        checkpoint format, unreadable), why not."""
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("format", 1) != MANIFEST_FORMAT:
                return f"checkpointed by another misalign-fast (checkpoint format {raw.get('format', 1)}, this one " \
                       f"writes {MANIFEST_FORMAT})"
            manifest = cls(**raw)
            if not all({"index", "file", "rows", "stats"} <= set(s) for p in manifest.passes for s in p["shards"]):
                raise ValueError("a shard entry lacks index, file, rows or stats")
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            return f"its checkpoint manifest is unreadable ({type(exc).__name__})"
        return manifest

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.__dict__, indent=1))


@dataclass
class Decision:
    """What a run does with a stage's checkpoint: "reuse" it (every shard there), "resume" it
    (some shards there), "recompute" it (moved aside first) or "compute" (none there)."""
    stage: str
    action: str
    reason: str = ""
    key: str = ""                  # the digest of the key the stage runs under (without its input for a
                                   # chained stage not yet run; complete once it has run)

    @property
    def text(self) -> str:
        """As a user reads it: reused, resumed (4 shards checkpointed), recomputed: reject.threshold 0.5 -> 0.7."""
        done = {"reuse": "reused", "resume": "resumed", "recompute": "recomputed", "compute": "computed"}[self.action]
        return f"{done}: {self.reason}" if self.action == "recompute" else \
            f"{done} ({self.reason})" if self.reason else done


@dataclass
class Runner:
    run_dir: Path
    shard_rows: int = 256
    on_progress: Callable[[str, int, int], None] | None = None   # (stage, rows done, rows total)
    executor: object | None = None   # spreads the shards of row-wise stages (misalign.distributed), or None
    on_pass: Callable[[str, str], None] | None = None   # (stage, pass) about to run: the pool's at_pass
    identify: Callable[[str], dict] | None = None   # model name -> its identity (the pool's), for the keys
    fresh: bool = False            # recompute every stage, whatever its checkpoint holds
    on_decisions: Callable[[list[Decision]], None] | None = None   # the stages' decisions, before any runs
    batch_shards: int = 1          # shards per call of a one-to-one pass with a model (run.batch_shards)
    profiles: list = field(default_factory=list)
    decisions: list = field(default_factory=list)
    _identities: dict = field(default_factory=dict)

    def run(self, stages: list[Stage], table: pa.Table) -> pa.Table:
        """Each stage on the table the previous one returned; the last one's table.  Only the
        table between two stages is held: every stage's output is in its checkpoint."""
        plan = self.plan(stages, table, chained=True)
        for k, (stage, decision) in enumerate(zip(stages, plan)):
            table = self._run_stage(self._stage_dir(k, stage, chained=True), stage, table, decision)
        return table

    def run_each(self, stages: list[Stage], table: pa.Table) -> Iterator[pa.Table]:
        """Every stage on the same input (Stage II: one stage per model under test), yielding
        each one's output as it finishes.  Their checkpoints are kept by name: one name each."""
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages that read one table need one name each, got {names}")
        plan = self.plan(stages, table, chained=False)
        for k, (stage, decision) in enumerate(zip(stages, plan)):
            yield self._run_stage(self._stage_dir(k, stage, chained=False), stage, table, decision)

    def checkpoints(self) -> list[dict]:
        """Each stage's key (its digest) and what this run did with its checkpoint, for run.json."""
        return [{"stage": d.stage, "key": d.key, "decision": d.text} for d in self.decisions]

    def _stage_dir(self, k: int, stage: Stage, chained: bool) -> Path:
        """stages/NN_name where each stage reads the one before (Stage I: the pipeline's order);
        stages/name where all read one table (Stage II, a stage per model under test): a
        reordered bench.models keeps every model's checkpoint."""
        return self.run_dir / "stages" / (f"{k:02d}_{stage.name}" if chained else stage.name)

    def plan(self, stages: list[Stage], table: pa.Table, chained: bool) -> list[Decision]:
        """Each stage's decision, from its checkpoint and its key, before any of them runs (and
        so before any engine starts), given to `on_decisions`.  `chained`: each stage
        reads the one before (its input is known only as far as the first stage's, and a stage
        recomputed recomputes the rest); else all read `table`."""
        decisions, changed = [], None
        digest = table_digest(table)
        for k, stage in enumerate(stages):
            known = k == 0 or not chained
            key = self.key(stage, table.num_rows, digest if known else None)
            found = Manifest.read(self._stage_dir(k, stage, chained) / "manifest.json")
            if self.fresh and found is not None:
                decision = Decision(stage.name, "recompute", "--fresh")
            elif changed is not None:
                decision = Decision(stage.name, "recompute" if found is not None else "compute",
                                    f"{changed} is recomputed" if found is not None else "")
            elif found is None:
                decision = Decision(stage.name, "compute")
            elif isinstance(found, str):
                decision = Decision(stage.name, "recompute", found)
            else:
                stored = found.key if known else {n: v for n, v in found.key.items() if n != "input"}
                if stored != key.parts:
                    decision = Decision(stage.name, "recompute", key.first_difference(stored))
                elif found.complete:
                    decision = Decision(stage.name, "reuse")
                else:
                    done = sum(len(p["shards"]) for p in found.passes)
                    decision = Decision(stage.name, "resume", f"{done} shard{'s' if done != 1 else ''} checkpointed")
            if chained and decision.action in ("recompute", "compute") and changed is None:
                changed = stage.name
            decision.key = key.digest
            decisions.append(decision)
        if self.on_decisions:
            self.on_decisions(decisions)
        self.decisions += decisions
        return decisions

    def key(self, stage: Stage, rows: int, input_digest: str | None) -> StageKey:
        """What `stage`'s output depends on; without "input" where `input_digest` is None."""
        passes = stage.passes()
        models = list(dict.fromkeys([*(p.model for p in passes if p.model), *stage.models()]))
        parts = {"version": stage.version,
                 **{name: _text(value) for name, value in stage.settings().items()},
                 **{f"template {name}": stage.prompt_templates.digest(name) for name in stage.templates},
                 **{f"model {model} {part}": value for model in models for part, value in self._identity(model).items()},
                 "passes": ", ".join(f"{p.name} ({p.model or '-'})" for p in passes),
                 "run.shard_rows": self.shard_rows if stage.rowwise else "one piece"}
        if input_digest is not None:
            parts["input"] = f"{input_digest} ({rows} rows)"
        return StageKey(parts)

    def _identity(self, model: str) -> dict:
        if model not in self._identities:
            self._identities[model] = self.identify(model) if self.identify else {}
        return self._identities[model]

    def _set_aside(self, stage_dir: Path) -> None:
        """Move a checkpoint this run does not reuse to stages/previous/ (replacing the one there)."""
        if stage_dir.exists():
            aside = stage_dir.parent / PREVIOUS / stage_dir.name
            shutil.rmtree(aside, ignore_errors=True)
            aside.parent.mkdir(parents=True, exist_ok=True)
            stage_dir.rename(aside)

    def _run_stage(self, stage_dir: Path, stage: Stage, table: pa.Table, decision: Decision) -> pa.Table:
        key = self.key(stage, table.num_rows, table_digest(table))
        found = Manifest.read(stage_dir / "manifest.json") if decision.action in ("reuse", "resume") else None
        if isinstance(found, Manifest) and found.key != key.parts:       # its input is not what it was
            decision.action, decision.reason = "recompute", key.first_difference(found.key)
            if self.on_decisions:
                self.on_decisions([decision])
        decision.key = key.digest
        if decision.action in ("recompute", "compute"):
            self._set_aside(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = stage_dir / "manifest.json"
        shard_rows = self.shard_rows if stage.rowwise else max(table.num_rows, 1)
        passes = stage.passes()
        manifest = found if isinstance(found, Manifest) and decision.action != "recompute" else \
            Manifest(stage.name, table.num_rows, shard_rows, [{"name": p.name, "model": p.model, "shards": []}
                                                             for p in passes], key.parts)
        profile = StageProfile(stage.name)
        n_shards = max(-(-table.num_rows // shard_rows), 1)
        for pass_no, (step, entry) in enumerate(zip(passes, manifest.passes)):
            for s in entry["shards"]:
                profile.add(s["stats"])
                profile.shards_reused += 1
            done = {s["index"] for s in entry["shards"]}
            if self.on_pass and len(done) < n_shards:
                self.on_pass(stage.name, step.name)
            pending = ((index, self._input(stage_dir, manifest, pass_no, index, table, shard_rows))
                       for index in range(n_shards) if index not in done)
            spread = self.executor is not None and stage.rowwise and len(done) < n_shards
            together = self.batch_shards if step.one_to_one and step.model else 1
            results = ([found] for found in self.executor.map(stage, pass_no, pending)) if spread else \
                (run_shards(stage, group, pass_no) for group in batched(pending, together))
            finished = len(done)
            label = step.name if len(passes) > 1 else stage.name
            for group in results:        # the shards of one call, in order of completion (any order on Ray)
                for index, out, stats in group:
                    name = f"{pass_no:02d}-{step.name}/shard-{index:05d}.parquet"
                    (stage_dir / name).parent.mkdir(exist_ok=True)
                    with atomic_path(stage_dir / name) as tmp:
                        pq.write_table(out, tmp)
                    # the stage's rows in and out: those of its first and its last pass
                    stats["items_in"] *= pass_no == 0
                    stats["items_out"] *= pass_no == len(passes) - 1
                    entry["shards"].append({"index": index, "file": name, "rows": out.num_rows, "stats": stats})
                    profile.add(stats)
                    profile.shards_run += 1
                    finished += 1
                manifest.write(manifest_path)        # a call's shards are checkpointed together, or none
                if self.on_progress:
                    self.on_progress(label, min(finished * shard_rows, table.num_rows), table.num_rows)
        manifest.complete = True
        manifest.write(manifest_path)
        for pass_no, entry in enumerate(manifest.passes[:-1]):    # only the last pass is read again
            shutil.rmtree(stage_dir / f"{pass_no:02d}-{entry['name']}", ignore_errors=True)
        self.profiles.append(profile)
        shards = sorted(manifest.passes[-1]["shards"], key=lambda s: s["index"])
        return pa.concat_tables([self._read(stage_dir, s) for s in shards], promote_options="default")

    @staticmethod
    def _input(stage_dir: Path, manifest: Manifest, pass_no: int, index: int, table: pa.Table,
               shard_rows: int) -> pa.Table:
        """Shard `index` as pass `pass_no` takes it: a slice of the stage's input, or what the
        previous pass wrote for it."""
        if pass_no == 0:
            return table.slice(index * shard_rows, shard_rows)
        previous = {s["index"]: s for s in manifest.passes[pass_no - 1]["shards"]}
        return Runner._read(stage_dir, previous[index])

    @staticmethod
    def _read(stage_dir: Path, shard: dict) -> pa.Table:
        try:
            return pq.read_table(stage_dir / shard["file"])
        except (OSError, pa.ArrowException) as exc:
            raise ResumeError(f"{stage_dir}: a checkpointed shard is missing or damaged ({type(exc).__name__}); "
                              f"run again with --fresh, or delete {stage_dir}, to compute that stage again") from None


def _text(value) -> str | int | float | bool | list:
    """A setting as the key keeps it: JSON's own types as they are, anything else as text."""
    return value if isinstance(value, (str, int, float, bool, list)) or value is None else str(value)
