"""Small helpers the stages share: refusals, per-item seeds, sampling, per-domain counts."""
from __future__ import annotations

import re

import xxhash

from misalign.inference import SamplingConfig
from misalign.taxonomy import row_domains


REFUSAL = re.compile(r"\b(i can ?not|i can't|i won't|i will not|i'm sorry|i am sorry|as an ai|i'm unable|"
                     r"i am unable|i'm not able)\b", re.I)


def item_seed(*parts) -> int:
    """A sampling seed for one item (e.g. run seed, prompt id, generator, side, candidate):
    the same item gets the same seed however the work is batched or resumed."""
    return xxhash.xxh64_intdigest("\x1f".join(map(str, parts)).encode()) >> 1


def sampling_of(config) -> SamplingConfig:
    """The sampling settings of a config section with max_tokens, temperature and top_p."""
    return SamplingConfig(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p)


def count_domains(counts, what: str, row: dict, n: int = 1) -> None:
    """Add `n` to `what` for each domain the row carries, under "what|dimension|domain": the
    per-domain figures of stats.csv travel as stage counters."""
    if n:
        for dim, name in row_domains(row):
            counts[f"{what}|{dim}|{name}"] += n
