"""Conditional generation for domains under the floor.  Every candidate is checked against the
SimHash index of everything kept so far (the input prompts and earlier candidates) and dropped
when it lies within tau; generation stops at the floor or at the domain's attempt budget."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa

from misalign.dedup import NearDuplicateFilter
from misalign.inference import SamplingConfig
from misalign.stages.common import engine_counters, item_seed, template
from misalign.taxonomy import DIMENSIONS, Taxonomy


class ExpandStage:
    name = "expand"
    rowwise = False

    def __init__(self, pool, model: str, taxonomy: Taxonomy, floor: int, budget: int, examples: int,
                 max_tokens: int, temperature: float, tau: int, ngram: int, seed: int = 0):
        self.pool, self.model, self.taxonomy, self.seed = pool, model, taxonomy, seed
        self.floor, self.budget, self.examples = floor, budget, examples
        self.sampling = SamplingConfig(max_tokens=max_tokens, temperature=temperature, top_p=0.95)
        self.tau, self.ngram = tau, ngram

    def run(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        counts = Counter((dim, r[f"{dim}_domain"]) for r in rows for dim in DIMENSIONS if r[f"{dim}_domain"])
        kept = NearDuplicateFilter(tau=self.tau, ngram=self.ngram)
        kept.add([r["prompt"] for r in rows])
        new = []
        for domain in self.taxonomy.domains:
            missing = self.floor - counts[(domain.dimension, domain.name)]
            if missing <= 0:
                continue
            examples = [r["prompt"] for r in rows if r[f"{domain.dimension}_domain"] == domain.name][: self.examples]
            shown = "\n".join(f"- {e}" for e in examples) or "- (none yet)"
            attempts = made = 0
            while made < missing and attempts < self.budget:
                batch = min(2 * (missing - made), self.budget - attempts)
                # the attempt number makes greedy decoding give different candidates
                prompts = [template("expand").format(domain=domain.name, description=domain.description,
                                                     examples=shown) + f" (#{attempts + k + 1})" for k in range(batch)]
                attempts += batch
                seeds = [item_seed(self.seed, domain.code, attempts - batch + k) for k in range(batch)]
                for gen in self.pool.get(self.model).generate(prompts, self.sampling, seeds):
                    text = " ".join(gen.text.strip().splitlines()[:1]).strip()
                    if made < missing and len(text.split()) >= 3 and kept.add_if_new([text])[0]:
                        made += 1
                        new.append(self._row(table.schema, domain, text, made))
        if not new:
            return table
        return pa.concat_tables([table, pa.Table.from_pylist(new, schema=table.schema)])

    @staticmethod
    def _row(schema, domain, text: str, k: int) -> dict:
        row = {name: None for name in schema.names}
        row.update(id=f"x-{domain.code}-{k:04d}", prompt=text, origin="expanded")
        row[f"{domain.dimension}_domain"] = domain.name
        row[f"{domain.dimension}_prob"] = 1.0
        return row

    def counters(self) -> dict:
        return engine_counters(self.pool.started([self.model]))
