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
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from misalign.errors import MisalignError
from misalign.stages.base import Stage
from misalign.tables import atomic_path


# 2: per-domain figures counted by the stages (#12); 3: passes (#10); 4: the judge asked both ways, the
# verify pass, leakage columns, Stage II samples with each polarity's answer (#14)
MANIFEST_FORMAT = 4


class ResumeError(MisalignError):
    """The run directory holds a run that does not match this one."""


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
    counters: dict = field(default_factory=dict)   # the stage's own counts (e.g. unknown_value), summed over shards

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

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
                "items_per_s": self.items_out / self.seconds if self.seconds else 0.0,
                "tokens_per_s": (self.prompt_tokens + self.generated_tokens) / self.seconds if self.seconds else 0.0}


SHARD_FIELDS = ("items_in", "items_out", "seconds", "prompt_tokens", "generated_tokens", "cached_tokens",
                "startup_seconds")
STARTS = "engine_starts|"


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
    complete: bool = False
    format: int = MANIFEST_FORMAT

    @classmethod
    def read(cls, path: Path) -> "Manifest | None":
        """The manifest at `path`, None if there is none; a ResumeError for one whose shards
        were counted differently (their statistics would be missing from the run's figures)."""
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("format", 1) != MANIFEST_FORMAT:
                raise ResumeError(f"{path.parent}: checkpointed by another misalign-fast (checkpoint format "
                                  f"{raw.get('format', 1)}, this one writes {MANIFEST_FORMAT}), whose stages wrote "
                                  "other columns or counted differently; use a new run directory")
            manifest = cls(**raw)
            if not all({"index", "file", "rows", "stats"} <= set(s) for p in manifest.passes for s in p["shards"]):
                raise ValueError("a shard entry lacks index, file, rows or stats")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ResumeError(f"{path}: not a readable checkpoint manifest ({exc}); use a new run directory") from None
        return manifest

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.__dict__, indent=1))


@dataclass
class Runner:
    run_dir: Path
    shard_rows: int = 256
    on_progress: Callable[[str, int, int], None] | None = None   # (stage, rows done, rows total)
    executor: object | None = None   # spreads the shards of row-wise stages (misalign.distributed), or None
    on_pass: Callable[[str, str], None] | None = None   # (stage, pass) about to run: the pool's at_pass
    profiles: list = field(default_factory=list)

    def run(self, stages: list[Stage], table: pa.Table) -> pa.Table:
        """Each stage on the table the previous one returned; the last one's table.  Only the
        table between two stages is held: every stage's output is in its checkpoint."""
        for k, stage in enumerate(stages):
            table = self._run_stage(self.run_dir / "stages" / f"{k:02d}_{stage.name}", stage, table)
        return table

    def run_each(self, stages: list[Stage], table: pa.Table) -> Iterator[pa.Table]:
        """Every stage on the same input (Stage II: one stage per model under test), yielding
        each one's output as it finishes."""
        for k, stage in enumerate(stages):
            yield self._run_stage(self.run_dir / "stages" / f"{k:02d}_{stage.name}", stage, table)

    def _run_stage(self, stage_dir: Path, stage: Stage, table: pa.Table) -> pa.Table:
        stage_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = stage_dir / "manifest.json"
        shard_rows = self.shard_rows if stage.rowwise else max(table.num_rows, 1)
        passes = stage.passes()
        manifest = Manifest.read(manifest_path) or Manifest(stage.name, table.num_rows, shard_rows, [
            {"name": p.name, "model": p.model, "shards": []} for p in passes])
        had = [f"{p['name']} ({p['model'] or '-'})" for p in manifest.passes]
        wants = [f"{p.name} ({p.model or '-'})" for p in passes]
        if (manifest.input_rows, manifest.shard_rows, had) != (table.num_rows, shard_rows, wants):
            raise ResumeError(f"{stage_dir}: this run directory holds a {manifest.stage} stage over "
                              f"{manifest.input_rows} rows in shards of {manifest.shard_rows} (passes "
                              f"{', '.join(had)}), but this run gives it {table.num_rows} rows in shards of "
                              f"{shard_rows} (passes {', '.join(wants)}); use a new run directory, or the same "
                              "config and input")
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
            results = self.executor.map(stage, pass_no, pending) if spread else \
                (run_shard(stage, index, part, pass_no) for index, part in pending)
            finished = len(done)
            label = step.name if len(passes) > 1 else stage.name
            for index, out, stats in results:        # in order of completion (any order on Ray)
                name = f"{pass_no:02d}-{step.name}/shard-{index:05d}.parquet"
                (stage_dir / name).parent.mkdir(exist_ok=True)
                with atomic_path(stage_dir / name) as tmp:
                    pq.write_table(out, tmp)
                # the stage's rows in and out: those of its first and its last pass
                stats["items_in"] *= pass_no == 0
                stats["items_out"] *= pass_no == len(passes) - 1
                entry["shards"].append({"index": index, "file": name, "rows": out.num_rows, "stats": stats})
                manifest.write(manifest_path)
                profile.add(stats)
                profile.shards_run += 1
                finished += 1
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
                              f"delete {stage_dir} to compute that stage again") from None
