"""`misalign-fast dedup`: drop the near-duplicate rows of a JSON Lines, CSV or Parquet file."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from misalign import tables
from misalign.dedup import Deduplicator
from misalign.errors import MisalignError

CHUNK_ROWS = 100_000        # fingerprinted at a time, so that progress can be shown


@dataclass
class DedupReport:
    rows: int
    kept: int
    clusters_with_duplicates: int
    seconds: float
    text_mb: float           # UTF-8 text fingerprinted


def dedup_file(input_path: Path, output_path: Path, deduper: Deduplicator, column: str = "text",
               fmt: str | None = None, clusters_path: Path | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> DedupReport:
    """Keep the first row of each cluster of near-duplicates, in input order, in the input's
    format (JSON Lines: the kept lines byte for byte); `clusters_path` gets every row's row,
    cluster, representative and distance, and the features and tau they were found with.
    Parquet outputs carry the settings in their schema metadata ("misalign.dedup")."""
    started = time.perf_counter()
    tables.require_distinct({"INPUT": input_path, "OUTPUT": output_path, "--clusters": clusters_path})
    in_fmt = tables.detect_format(input_path, fmt)
    if tables.detect_format(output_path, fmt) != in_fmt:
        raise MisalignError(f"{output_path}: output is written in the input's format ({in_fmt}); "
                            f"give it a .{in_fmt} name")
    if clusters_path is not None:
        tables.detect_format(clusters_path)
    raw = tables.read_bytes(input_path)          # once (a pipe can be read no more): lines are copied from it
    table = tables.table_from_bytes(input_path, raw, in_fmt)
    texts = tables.text_column(table, column, input_path, in_fmt, raw)
    fps, shingles = np.empty(len(texts), np.uint64), np.empty(len(texts), np.int64)
    for start in range(0, len(texts), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(texts))
        fps[start:stop], shingles[start:stop] = deduper.fingerprints(texts[start:stop])
        if on_progress:
            on_progress(stop, len(texts))
    result = deduper.fit_fingerprints(fps, shingles == 0)
    settings = {b"misalign.dedup": json.dumps(deduper.settings()).encode()}
    tables.write_rows_like(raw, table.replace_schema_metadata({**(table.schema.metadata or {}), **settings}),
                           result.keep, output_path, in_fmt)
    if clusters_path is not None:
        clusters = pa.table({"row": np.arange(len(fps)), "cluster": result.cluster,
                             "representative": result.representative, "distance": result.distance,
                             "features": pa.array([deduper.features] * len(fps), pa.string()).dictionary_encode(),
                             "tau": np.full(len(fps), deduper.tau, dtype=np.int8)})
        tables.write_table(clusters.replace_schema_metadata(settings), clusters_path)
    text_bytes = sum(c.buffers()[2].size if c.buffers()[2] is not None else 0 for c in texts.chunks)
    return DedupReport(len(fps), int(result.keep.sum()), int((np.bincount(result.cluster) > 1).sum()) if len(fps) else 0,
                       time.perf_counter() - started, text_bytes / 1e6)
