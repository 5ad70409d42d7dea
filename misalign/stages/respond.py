"""Aligned and misaligned candidates for each prompt from each model of the generator pool,
prompted with the prompt's assigned domains.  One output row per (prompt, generator); each
candidate keeps whether the token limit cut it off, for the filter of the next stage."""
from __future__ import annotations

import pyarrow as pa

from misalign.prompting import SIDES, response_prompt
from misalign.config import RespondConfig
from misalign.inference.base import Pool
from misalign.stages.base import Stage
from misalign.stages.common import item_seed, sampling_of


class RespondStage(Stage):
    name = "respond"
    rowwise = True

    def __init__(self, config: RespondConfig, pool: Pool, seed: int = 0):
        super().__init__(pool)
        self.config, self.seed = config, seed
        self.generators = list(config.models)
        self.sampling = sampling_of(config)

    def run(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        out = []
        k = self.config.candidates
        for name in self.generators:
            # one batch per generator, aligned prompts then misaligned ones: the shared
            # instruction prefix of each half stays together for the prefix cache
            keys = [(kind, row, c) for kind in SIDES for row in rows for c in range(k)]
            requests = [response_prompt(kind, row) for kind, row, _ in keys]
            seeds = [item_seed(self.seed, row["id"], name, kind, c) for kind, row, c in keys]
            gens = self.pool.get(name).generate(requests, self.sampling, seeds)
            half = len(rows) * k
            for i, row in enumerate(rows):
                record = {**row, "generator": name}
                for side, offset in zip(SIDES, (0, half)):
                    mine = gens[offset + i * k: offset + (i + 1) * k]
                    record[f"{side}_candidates"] = [g.text.strip() for g in mine]
                    record[f"{side}_truncated"] = [g.truncated for g in mine]
                out.append(record)
        schema = table.schema.append(pa.field("generator", pa.string()))
        for side in SIDES:
            schema = schema.append(pa.field(f"{side}_candidates", pa.list_(pa.string()))) \
                .append(pa.field(f"{side}_truncated", pa.list_(pa.bool_())))
        return pa.Table.from_pylist(out, schema=schema)

    def engines(self) -> list:
        return self.pool.started(self.generators)
