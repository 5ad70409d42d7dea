"""Aligned and misaligned candidates for each prompt from each model of the generator pool,
prompted with the prompt's assigned domains.  One output row per (prompt, generator); each
candidate keeps whether the token limit cut it off, for the filter of the next stage.

One pass per generator adds its candidates to every prompt row (a column per generator), so
that each generator runs over all rows before the next starts; a last pass lays the rows out
one per (prompt, generator)."""
from __future__ import annotations

from functools import partial

import pyarrow as pa

from misalign.prompting import SIDES, PromptTemplates
from misalign.config import RespondConfig
from misalign.inference.base import Pool
from misalign.stages.base import Pass, Stage, section_values
from misalign.stages.common import item_seed, sampling_of

CANDIDATES = pa.struct([pa.field(f"{side}{part}", kind) for side in SIDES
                        for part, kind in (("_candidates", pa.list_(pa.string())), ("_truncated", pa.list_(pa.bool_())))])


def candidates_column(generator: str) -> str:
    return f"candidates:{generator}"


class RespondStage(Stage):
    name = "respond"
    rowwise = True
    templates = ("respond_aligned", "respond_misaligned")

    def __init__(self, config: RespondConfig, pool: Pool, seed: int = 0,
                 prompt_templates: PromptTemplates | None = None):
        super().__init__(pool, prompt_templates)
        self.config, self.seed = config, seed
        self.generators = list(config.models)
        self.sampling = sampling_of(config)

    def settings(self) -> dict[str, object]:
        return {**section_values("respond", self.config), "run.seed": self.seed}

    def passes(self) -> list[Pass]:
        return [*(Pass(f"respond-{name}", name, partial(self.respond, name), one_to_one=True) for name in self.generators),
                Pass("respond-rows", None, self.rows)]

    def run(self, table: pa.Table) -> pa.Table:
        return self.run_passes(table)

    def respond(self, name: str, table: pa.Table) -> pa.Table:
        """`name`'s candidates for every row, as one struct column."""
        rows = table.to_pylist()
        k = self.config.candidates
        # one batch, aligned prompts then misaligned ones: the shared instruction prefix of each
        # half stays together for the prefix cache
        keys = [(kind, row, c) for kind in SIDES for row in rows for c in range(k)]
        requests = [self.prompt_templates.response_prompt(kind, row) for kind, row, _ in keys]
        seeds = [item_seed(self.seed, row["id"], name, kind, c) for kind, row, c in keys]
        gens = self.pool.get(name).generate(requests, self.sampling, seeds) if requests else []
        half = len(rows) * k
        made = []
        for i in range(len(rows)):
            record = {}
            for side, offset in zip(SIDES, (0, half)):
                mine = gens[offset + i * k: offset + (i + 1) * k]
                record[f"{side}_candidates"] = [g.text.strip() for g in mine]
                record[f"{side}_truncated"] = [g.truncated for g in mine]
            made.append(record)
        return table.append_column(pa.field(candidates_column(name), CANDIDATES), pa.array(made, CANDIDATES))

    def rows(self, table: pa.Table) -> pa.Table:
        """One row per (prompt, generator), generator by generator."""
        columns = [candidates_column(name) for name in self.generators]
        prompts = table.drop_columns(columns)
        out = []
        for name, column in zip(self.generators, columns):
            out += [{**row, "generator": name, **made}
                    for row, made in zip(prompts.to_pylist(), table.column(column).to_pylist())]
        schema = prompts.schema.append(pa.field("generator", pa.string()))
        for field in CANDIDATES:
            schema = schema.append(field)
        return pa.Table.from_pylist(out, schema=schema)

    def models(self) -> list[str]:
        return self.generators
