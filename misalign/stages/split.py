"""80/10/10 by near-duplicate cluster: clusters are shuffled with the run's seed and filled into
train, then validation, then test, so that no cluster crosses splits."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from misalign.config import SPLITS, DedupConfig, SplitConfig
from misalign.dedup import HammingIndex, fingerprint, plan_blocks
from misalign.stages.base import Stage



class SplitStage(Stage):
    """Built from [split]; the cross-split check uses [dedup]'s tau and ngram.  Counts the
    pairs it splits ("pairs") and the rows with a near-duplicate in another split
    ("cross_split_rows"), so the rate is measured on every run, resumed or not."""
    name = "split"
    rowwise = False

    def __init__(self, config: SplitConfig, dedup: DedupConfig, seed: int = 0):
        super().__init__()
        self.fractions = [config.train, config.validation, config.test]
        self.seed, self.tau, self.ngram = seed, dedup.tau, dedup.ngram

    @property
    def cross_split_rate(self) -> float:
        return self.counts["cross_split_rows"] / self.counts["pairs"] if self.counts["pairs"] else 0.0

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
        self.counts["pairs"] += table.num_rows
        self.counts["cross_split_rows"] += self._cross_split_rows(table.column("prompt").to_pylist(), split)
        return table.append_column("split", pa.array(split))

    def _cross_split_rows(self, prompts, split) -> int:
        """Rows with a near-duplicate (within tau) in another split; 0 by construction."""
        if not prompts:
            return 0
        index = HammingIndex(self.tau, plan_blocks(self.tau, len(prompts)))
        index.add(fingerprint(prompts, ngram=self.ngram))
        i, j, _ = index.pairs()
        crossing = {int(a) for a, b in zip(i, j) if split[a] != split[b]} | \
                   {int(b) for a, b in zip(i, j) if split[a] != split[b]}
        return len(crossing)
