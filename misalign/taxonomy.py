"""The Mis-Align Bench taxonomy: 14 safety, 56 value and 41 cultural domains.

Names are the paper's (BeaverTails harm categories, ValueCompass / Schwartz values, UNESCO
cultural domains); each has a one-line description of ours, written to be read by a model, since
it goes into prompts and into the zero-shot embedding classifier.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

DIMENSIONS = ("safety", "value", "cultural")
UNKNOWN = "Unknown"      # the paper's label for "the classifier gave no usable answer": no domain, counted


@dataclass(frozen=True)
class Domain:
    name: str
    dimension: str
    description: str
    code: str          # S01.., V01.., C01..: stable short ids for files and tables


@dataclass(frozen=True)
class Taxonomy:
    domains: tuple[Domain, ...]
    sources: dict

    @classmethod
    def load(cls) -> "Taxonomy":
        raw = json.loads(resources.files("misalign").joinpath("data/taxonomy.json").read_text(encoding="utf-8"))
        domains = []
        for dimension in DIMENSIONS:
            for k, entry in enumerate(raw["dimensions"][dimension]["domains"], start=1):
                domains.append(Domain(entry["name"], dimension, entry["description"], f"{dimension[0].upper()}{k:02d}"))
        return cls(tuple(domains), {d: raw["dimensions"][d]["source"] for d in DIMENSIONS})

    def of(self, dimension: str) -> list[Domain]:
        if dimension not in DIMENSIONS:
            raise KeyError(f"unknown dimension {dimension!r} (one of {', '.join(DIMENSIONS)})")
        return [d for d in self.domains if d.dimension == dimension]

    @cached_property
    def digest(self) -> str:
        """sha256 of every domain's dimension, name, description and code: what prompts and the
        zero-shot classifier read of the taxonomy."""
        text = json.dumps([[d.dimension, d.name, d.description, d.code] for d in self.domains], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    @cached_property
    def by_name(self) -> dict[tuple[str, str], Domain]:
        return {(d.dimension, d.name): d for d in self.domains}

    def domain(self, dimension: str, name: str) -> Domain:
        try:
            return self.by_name[(dimension, name)]
        except KeyError:
            raise KeyError(f"{name!r} is not a {dimension} domain") from None


def row_domains(row: dict) -> list[tuple[str, str]]:
    """The (dimension, domain) pairs a record carries in its <dim>_domain columns."""
    return [(dim, row[f"{dim}_domain"]) for dim in DIMENSIONS if row.get(f"{dim}_domain")]
