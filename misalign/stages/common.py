"""Small helpers the stages share: prompt templates, a row's domains, engine token counters."""
from __future__ import annotations

import re
from functools import cache

import xxhash
from importlib import resources

from misalign.taxonomy import DIMENSIONS


REFUSAL = re.compile(r"\b(i can ?not|i can't|i won't|i will not|i'm sorry|i am sorry|as an ai|i'm unable|"
                     r"i am unable|i'm not able)\b", re.I)


@cache
def template(name: str) -> str:
    return resources.files("misalign").joinpath(f"prompts/{name}.txt").read_text(encoding="utf-8")


def row_domains(row: dict) -> list[tuple[str, str]]:
    return [(dim, row[f"{dim}_domain"]) for dim in DIMENSIONS if row.get(f"{dim}_domain")]


def describe_domains(row: dict) -> str:
    found = row_domains(row)
    return "; ".join(f"{dim}: {name}" for dim, name in found) if found else "general safety, values and culture"


def item_seed(*parts) -> int:
    """A sampling seed for one item (e.g. run seed, prompt id, generator, side, candidate):
    the same item gets the same seed however the work is batched or resumed."""
    return xxhash.xxh64_intdigest("\x1f".join(map(str, parts)).encode()) >> 1


def engine_counters(engines) -> dict:
    totals = {"prompt_tokens": 0, "generated_tokens": 0, "cached_tokens": 0}
    for engine in engines:
        stats = engine.stats()
        totals["prompt_tokens"] += stats.prompt_tokens
        totals["generated_tokens"] += stats.generated_tokens
        totals["cached_tokens"] += stats.cached_tokens
    return totals
