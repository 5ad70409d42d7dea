"""The runner: stages in order, each checkpointed as Parquet shards with a manifest.

A row-wise stage (its output for input rows [a, b) depends on those rows alone) runs shard by
shard, here or on an executor's workers (misalign.distributed: any order); a re-run with the
same run directory skips every shard its manifest lists, so an interrupted run loses at most
the shards in flight.  A global stage (expand, dedup, split: they need every row) runs in one
piece, in this process, and is checkpointed when done.  On an executor a stage's `seconds` add
up the workers' time.
Stages never call each other; each reads the table the previous one wrote (`run`), or all read
the same table (`run_each`).  The stage contract is misalign.stages.base.Stage.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from misalign.errors import MisalignError
from misalign.stages.base import Stage
from misalign.tables import atomic_path


MANIFEST_FORMAT = 2        # 2: stages count per-domain figures and the split's pairs (#12)


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
    shards_reused: int = 0
    shards_run: int = 0
    counters: dict = field(default_factory=dict)   # the stage's own counts (e.g. unknown_value), summed over shards

    def add(self, other: dict) -> None:
        for key, value in other.items():
            if key in SHARD_FIELDS:
                setattr(self, key, getattr(self, key) + value)
            else:
                self.counters[key] = self.counters.get(key, 0) + value

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
                "items_per_s": self.items_out / self.seconds if self.seconds else 0.0,
                "tokens_per_s": (self.prompt_tokens + self.generated_tokens) / self.seconds if self.seconds else 0.0}


SHARD_FIELDS = ("items_in", "items_out", "seconds", "prompt_tokens", "generated_tokens", "cached_tokens")


def run_shard(stage: Stage, index: int, part: pa.Table) -> tuple[int, pa.Table, dict]:
    """One shard through a stage: (index, output, stats of that shard)."""
    before = stage.counters()
    began = time.perf_counter()
    out = stage.run(part)
    after = stage.counters()
    stats = {"items_in": part.num_rows, "items_out": out.num_rows, "seconds": time.perf_counter() - began,
             **{k: after.get(k, 0) - before.get(k, 0) for k in after}}
    return index, out, stats


@dataclass
class Manifest:
    stage: str
    input_rows: int
    shard_rows: int
    shards: list = field(default_factory=list)     # [{"index", "file", "rows", "stats"}]
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
            manifest = cls(**{"format": 1, **raw})
            if not all({"index", "file", "rows", "stats"} <= set(s) for s in manifest.shards):
                raise ValueError("a shard entry lacks index, file, rows or stats")
        except (ValueError, TypeError) as exc:
            raise ResumeError(f"{path}: not a readable checkpoint manifest ({exc}); use a new run directory") from None
        if manifest.format != MANIFEST_FORMAT:
            raise ResumeError(f"{path.parent}: checkpointed by an older misalign-fast, whose stages counted their "
                              "statistics differently; use a new run directory")
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
        manifest = Manifest.read(manifest_path) or Manifest(stage.name, table.num_rows, shard_rows)
        if (manifest.input_rows, manifest.shard_rows) != (table.num_rows, shard_rows):
            raise ResumeError(f"{stage_dir}: this run directory holds a {manifest.stage} stage over "
                              f"{manifest.input_rows} rows in shards of {manifest.shard_rows}, but this "
                              f"run gives it {table.num_rows} rows in shards of {shard_rows}; use a new "
                              "run directory, or the same config and input")
        profile = StageProfile(stage.name)
        done = {s["index"] for s in manifest.shards}
        for s in manifest.shards:
            profile.add(s["stats"])
            profile.shards_reused += 1
        n_shards = max(-(-table.num_rows // shard_rows), 1)
        pending = [(index, table.slice(index * shard_rows, shard_rows)) for index in range(n_shards) if index not in done]
        spread = self.executor is not None and stage.rowwise and pending
        results = self.executor.map(stage, pending) if spread else (run_shard(stage, i, part) for i, part in pending)
        finished = len(done)
        for index, out, stats in results:        # in order of completion (any order on Ray)
            name = f"shard-{index:05d}.parquet"
            with atomic_path(stage_dir / name) as tmp:
                pq.write_table(out, tmp)
            manifest.shards.append({"index": index, "file": name, "rows": out.num_rows, "stats": stats})
            manifest.write(manifest_path)
            profile.add(stats)
            profile.shards_run += 1
            finished += 1
            if self.on_progress:
                self.on_progress(stage.name, min(finished * shard_rows, table.num_rows), table.num_rows)
        manifest.complete = True
        manifest.write(manifest_path)
        self.profiles.append(profile)
        shards = sorted(manifest.shards, key=lambda s: s["index"])
        try:
            return pa.concat_tables([pq.read_table(stage_dir / s["file"]) for s in shards], promote_options="default")
        except (OSError, pa.ArrowException) as exc:
            raise ResumeError(f"{stage_dir}: a checkpointed shard is missing or damaged ({type(exc).__name__}); "
                              f"delete {stage_dir} to compute that stage again") from None
