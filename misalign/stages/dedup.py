"""Near-duplicate removal over the whole pool: the first row of each SimHash cluster is kept and
the cluster id stays on it, for the split."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from misalign.config import DedupConfig
from misalign.dedup import Deduplicator
from misalign.stages.base import Stage, section_values
from misalign.stages.common import count_domains


class DedupStage(Stage):
    name = "dedup"
    rowwise = False

    def __init__(self, config: DedupConfig, seed: int = 0):
        super().__init__()
        self.config, self.seed = config, seed
        self.deduper = Deduplicator(tau=config.tau, features=config.features, seed=seed)

    def settings(self) -> dict[str, object]:
        return {**section_values("dedup", self.config), "run.seed": self.seed}

    def run(self, table: pa.Table) -> pa.Table:
        result = self.deduper.fit(table.column("prompt"))
        for row, keep in zip(table.select([c for c in table.column_names if c.endswith("_domain")]).to_pylist(),
                             result.keep):
            count_domains(self.per_domain, "sent_to_generation" if keep else "removed_by_dedup", row)
        kept = table.filter(pa.array(result.keep))
        return kept.append_column("cluster", pa.array(result.cluster[result.keep].astype(np.int64)))
