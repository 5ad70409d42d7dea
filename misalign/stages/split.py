"""80/10/10 by near-duplicate cluster: clusters are shuffled with the run's seed and filled into
train, then validation, then test, so that no cluster crosses splits."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from misalign.dedup import HammingIndex, fingerprint, plan_blocks

SPLITS = ("train", "validation", "test")


class SplitStage:
    name = "split"
    rowwise = False

    def __init__(self, fractions: tuple[float, float, float], seed: int, tau: int, ngram: int):
        total = sum(fractions)
        self.fractions = [f / total for f in fractions]
        self.seed, self.tau, self.ngram = seed, tau, ngram
        self.cross_split_rate = 0.0
        self.cross_split_rows = 0

    def run(self, table: pa.Table) -> pa.Table:
        table = table.filter(pc.field("accepted"))
        clusters = table.column("cluster").to_numpy()
        unique, sizes = np.unique(clusters, return_counts=True)
        order = np.random.default_rng(self.seed).permutation(len(unique))
        bounds = np.cumsum(self.fractions) * len(clusters)
        filled, assignment = 0, {}
        for k in order:
            split = int(np.searchsorted(bounds, filled, side="right"))
            assignment[unique[k]] = SPLITS[min(split, 2)]
            filled += sizes[k]
        split = [assignment[c] for c in clusters]
        self.cross_split_rate = self._cross_split_rate(table.column("prompt").to_pylist(), split)
        return table.append_column("split", pa.array(split))

    def _cross_split_rate(self, prompts, split) -> float:
        """Share of rows with a near-duplicate (within tau) in another split; 0 by construction."""
        self.cross_split_rows = 0
        if not prompts:
            return 0.0
        index = HammingIndex(self.tau, plan_blocks(self.tau, len(prompts)))
        index.add(fingerprint(prompts, ngram=self.ngram))
        i, j, _ = index.pairs()
        crossing = {int(a) for a, b in zip(i, j) if split[a] != split[b]} | \
                   {int(b) for a, b in zip(i, j) if split[a] != split[b]}
        self.cross_split_rows = len(crossing)
        return len(crossing) / len(prompts)

    def counters(self) -> dict:
        return {"cross_split_rows": self.cross_split_rows}
