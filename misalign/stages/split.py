"""80/10/10 by near-duplicate cluster: clusters are shuffled with the run's seed and filled into
train, then validation, then test, so that no cluster crosses splits.  What still leaks across
splits is then measured by an independent criterion (misalign.leakage)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from misalign.config import SPLITS, SplitConfig
from misalign.leakage import cross_split_leaks
from misalign.stages.base import Stage, section_values
from misalign.stages.common import count_domains


class SplitStage(Stage):
    """Built from [split].  Adds `split`, and per row the most similar prompt of another split
    (`leak_id`, `leak_jaccard`; null where none is near).  Counts the pairs it splits ("pairs")
    and the rows with a near-duplicate in another split ("cross_split_leaks", also per domain),
    so the rate is measured on every run, resumed or not."""
    name = "split"
    rowwise = False

    def __init__(self, config: SplitConfig, seed: int = 0):
        super().__init__()
        self.config, self.seed = config, seed
        self.fractions = [config.train, config.validation, config.test]

    def settings(self) -> dict[str, object]:
        return {**section_values("split", self.config), "run.seed": self.seed}

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
        leaks = cross_split_leaks(table.column("prompt").to_pylist(), split)
        ids = table.column("id").to_pylist()
        self.counts["pairs"] += table.num_rows
        for row, neighbour in zip(table.select([c for c in table.column_names if c.endswith("_domain")]).to_pylist(),
                                  leaks.neighbour):
            if neighbour is not None:
                self.counts["cross_split_leaks"] += 1
                count_domains(self.per_domain, "cross_split_leaks", row)
        return (table.append_column("split", pa.array(split, pa.string()))
                .append_column("leak_id", pa.array([None if n is None else ids[n] for n in leaks.neighbour],
                                                   pa.string()))
                .append_column("leak_jaccard", pa.array(leaks.similarity, pa.float64())))
