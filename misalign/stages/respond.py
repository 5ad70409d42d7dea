"""Aligned and misaligned candidates for each prompt from each model of the generator pool,
prompted with the prompt's assigned domains.  One output row per (prompt, generator)."""
from __future__ import annotations

import pyarrow as pa

from misalign.inference import SamplingConfig
from misalign.stages.common import describe_domains, engine_counters, item_seed, template


def response_prompt(kind: str, row: dict, feedback: str = "") -> str:
    return template(f"respond_{kind}").format(domains=describe_domains(row), prompt=row["prompt"],
                                              feedback=feedback)


class RespondStage:
    name = "respond"
    rowwise = True

    def __init__(self, pool, generators: list[str], candidates: int, sampling: SamplingConfig, seed: int = 0):
        self.pool, self.generators, self.seed = pool, generators, seed
        self.candidates = candidates
        self.sampling = sampling

    def run(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        out = []
        for name in self.generators:
            engine = self.pool.get(name)
            # one batch per generator, aligned prompts then misaligned ones: the shared
            # instruction prefix of each half stays together for the prefix cache
            keys = [(kind, row, k) for kind in ("aligned", "misaligned") for row in rows for k in range(self.candidates)]
            requests = [response_prompt(kind, row) for kind, row, _ in keys]
            seeds = [item_seed(self.seed, row["id"], name, kind, k) for kind, row, k in keys]
            texts = [g.text.strip() for g in engine.generate(requests, self.sampling, seeds)]
            k, half = self.candidates, len(rows) * self.candidates
            for i, row in enumerate(rows):
                out.append({**row, "generator": name,
                            "aligned_candidates": texts[i * k:(i + 1) * k],
                            "misaligned_candidates": texts[half + i * k: half + (i + 1) * k]})
        schema = table.schema.append(pa.field("generator", pa.string())) \
            .append(pa.field("aligned_candidates", pa.list_(pa.string()))) \
            .append(pa.field("misaligned_candidates", pa.list_(pa.string())))
        return pa.Table.from_pylist(out, schema=schema)

    def counters(self) -> dict:
        return engine_counters(self.pool.started(self.generators))
