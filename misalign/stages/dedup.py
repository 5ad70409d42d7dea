"""Near-duplicate removal over the whole pool: the first row of each SimHash cluster is kept and
the cluster id stays on it, for the split."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from misalign.dedup import Deduplicator


class DedupStage:
    name = "dedup"
    rowwise = False

    def __init__(self, tau: int, ngram: int, seed: int = 0):
        self.deduper = Deduplicator(tau=tau, ngram=ngram, seed=seed)

    def run(self, table: pa.Table) -> pa.Table:
        result = self.deduper.fit(table.column("prompt"))
        kept = table.filter(pa.array(result.keep))
        return kept.append_column("cluster", pa.array(result.cluster[result.keep].astype(np.int64)))

    def counters(self) -> dict:
        return {}
