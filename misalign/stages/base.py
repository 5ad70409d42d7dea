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
each shard, the change of `counters()` over it: the models' usage (misalign.stats.EngineUsage:
tokens, engine starts, start-up seconds of the models in `models()`) and what the stage counted
in its typed records (misalign.stats.StageCounts): `self.counts` (totals by name),
`self.per_domain` ((what, dimension, domain): count_domains) and `self.reasons` ((kind,
detail)).  Summed over shards in profile.json, kept across a resume.

A checkpoint is reused only while what the output depends on is unchanged: the stage declares
the config values it reads (`settings()`, by "section.key"; ShoutStage's would be
`section_values("shout", self.config)`), the templates it renders (`templates`) and a
`version` to bump when its behaviour changes; the runner adds its models' identities and a
digest of its input (misalign.identity).

A stage of a user's own joins Stage I from its config section alone: [stages.NAME] names the
class (`use = "module:Class"`) and the stage it follows (`after = "dedup"`); the class declares a
`Settings` dataclass for the rest of the section (checked when the config loads, with a
`validate()` of its own if it has one), is built as Class(settings, pool), and declares the
`columns` it adds to the dataset and the per-domain `domain_counts` it counts (count_domains),
which become columns of stats.csv and dataset.html (README "Adding a stage"; tests/toy_stage.py).

A stage that uses several models in turn (respond: each generator; reject: the judge, then each
generator's resampling, then the judge again) splits its work into `passes()`: each pass is a
row-wise function of the previous pass's output and uses one model, and the runner runs each
pass over every shard before the next (model-major), so that an engine starts once per pass
even when the models do not fit in memory together.  The last pass's output is the stage's.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from misalign.inference.base import Pool
from misalign.prompting import PromptTemplates
from misalign.stats import EngineUsage, StageCounts


@dataclass(frozen=True)
class Pass:
    """One sweep of a stage over its rows with one model (None: no model).  `one_to_one`: each
    output row is its input row's, in order (columns added or filled in, none dropped), so the
    runner may give the pass several shards in one call and cut the output back into shards:
    the engine then has the next shard's requests before the last of this one's finish."""
    name: str
    model: str | None
    run: Callable[[pa.Table], pa.Table]
    one_to_one: bool = False


def section_values(section: str, values, only: tuple[str, ...] | None = None) -> dict[str, object]:
    """A config section's values by "section.key" (`only`: those keys), for `Stage.settings`."""
    return {f"{section}.{f.name}": getattr(values, f.name) for f in dataclasses.fields(values)
            if only is None or f.name in only}


class Stage:
    name: str = ""
    rowwise: bool = True          # False: the stage needs every row at once (expand, dedup, split)
    version: int = 1              # bumped when the stage's output changes for the same settings and input
    templates: tuple[str, ...] = ()    # the prompt templates it renders (misalign/prompts/NAME.txt, or the
                                       # user's: protocol.templates), from self.prompt_templates
    columns: tuple[str, ...] = ()      # Stage I: columns it adds that the dataset keeps (beyond Stage I's own)
    domain_counts: tuple[str, ...] = ()    # Stage I: what it counts per domain (count_domains), for stats.csv
    one_to_one: bool = False     # `run` returns one row per input row, in order (see Pass)

    def __init__(self, pool: Pool | None = None, prompt_templates: PromptTemplates | None = None):
        self.pool = pool
        self.prompt_templates = prompt_templates or PromptTemplates.bundled()   # what `templates` name
        self.counts: Counter = Counter()          # name -> n
        self.per_domain: Counter = Counter()      # (what, dimension, domain) -> n; `domain_counts` names the whats
        self.reasons: Counter = Counter()         # (kind, detail) -> n

    def run(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def passes(self) -> list[Pass]:
        """The stage's passes in order; by default one, `run` with the stage's one model."""
        models = self.models()
        if len(models) > 1:
            raise NotImplementedError(f"stage {self.name!r} uses {len(models)} models: it must split its work "
                                      "into passes() of one model each")
        return [Pass(self.name, models[0] if models else None, self.run, self.one_to_one)]

    def run_passes(self, table: pa.Table) -> pa.Table:
        """Every pass in turn on one table: `run` for a stage of several passes."""
        for step in self.passes():
            table = step.run(table)
        return table

    def settings(self) -> dict[str, object]:
        """The config values its output depends on, by "section.key" (its own section and any
        it borrows), and anything else it reads besides its input and models (a probe file's
        digest); a checkpoint made under other values is not reused."""
        return {}

    def models(self) -> list[str]:
        """The models whose use this stage counts (misalign.inference.base.EMBEDDER for the
        embedder); none by default."""
        return []

    def usage(self) -> EngineUsage:
        """What its models have done so far (none without a pool or models)."""
        return self.pool.usage(self.models()) if self.pool is not None and self.models() else EngineUsage()

    def stage_counts(self) -> StageCounts:
        return StageCounts(self.counts, self.per_domain, self.reasons)

    def counters(self) -> dict[str, float]:
        """Running totals, flat as a checkpoint stores them: its models' usage and its own counts."""
        return {**self.usage().flat(), **self.stage_counts().flat()}

    def bind(self, pool: Pool) -> "Stage":
        """A copy of this stage that uses `pool`'s engines (a Ray actor's own)."""
        local = copy.copy(self)
        local.pool = pool
        local.counts, local.per_domain, local.reasons = Counter(), Counter(), Counter()
        return local
