"""The stage contract: what the runner asks of a stage, and the counting all stages share.

A stage is one class in one file, built from its own config section (plus the engine pool and
the taxonomy where it needs them):

    class ShoutStage(Stage):
        name, rowwise = "shout", True          # rowwise: output rows depend on their input rows alone

        def __init__(self, config: ShoutConfig, pool: Pool):
            super().__init__(pool)
            self.config = config

        def run(self, table: pa.Table) -> pa.Table:
            self.counts["shouted"] += table.num_rows
            at = table.schema.get_field_index(self.config.column)
            return table.set_column(at, self.config.column, pc.utf8_upper(table[self.config.column]))

The runner (misalign.pipeline) checkpoints what `run` returns shard by shard and stores, with
each shard, the change of `counters()` over it: the tokens of the engines the stage used and
everything it put in `self.counts`.  Summed over shards in profile.json, kept across a resume.
"""
from __future__ import annotations

import copy
from collections import Counter

import pyarrow as pa

from misalign.inference.base import Engine, Pool
from misalign.stages.common import engine_counters


class Stage:
    name: str = ""
    rowwise: bool = True          # False: the stage needs every row at once (expand, dedup, split)

    def __init__(self, pool: Pool | None = None):
        self.pool = pool
        self.counts: Counter = Counter()

    def run(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def engines(self) -> list[Engine]:
        """The running engines whose tokens this stage counts (none by default)."""
        return []

    def counters(self) -> dict[str, int]:
        """Running totals: engine tokens (prompt_tokens, generated_tokens, cached_tokens) and the
        stage's own counts."""
        return {**engine_counters(self.engines()), **self.counts}

    def bind(self, pool: Pool) -> "Stage":
        """A copy of this stage that uses `pool`'s engines (a Ray actor's own)."""
        local = copy.copy(self)
        local.pool = pool
        local.counts = Counter()
        return local
