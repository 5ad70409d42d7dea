"""The Mis-Align Bench taxonomy: 14 safety, 56 value and 41 cultural domains.

Names are the paper's (BeaverTails harm categories, ValueCompass / Schwartz values, UNESCO
cultural domains); each has a one-line description of ours, written to be read by a model, since
it goes into prompts and into the zero-shot embedding classifier.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path

DIMENSIONS = ("safety", "value", "cultural")
UNKNOWN = "Unknown"      # the paper's label for "the classifier gave no usable answer": no domain, counted
MAX_DOMAINS = 99         # codes S01..S99


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
    def load(cls, path: str = "") -> "Taxonomy":
        """The bundled taxonomy, or the user's (protocol.taxonomy): a JSON file of the bundled
        file's layout, {"dimensions": {"safety": {"source": ..., "domains": [{"name": ...,
        "description": ...}, ...]}, "value": ..., "cultural": ...}}.  A ValueError says what is
        wrong with a user's file."""
        if not path:
            return _bundled()
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"protocol.taxonomy = {path!r}: cannot read it as JSON ({exc})") from None
        return cls._parse(raw, f"protocol.taxonomy {path}")

    @classmethod
    def _parse(cls, raw, where: str) -> "Taxonomy":
        dimensions = raw.get("dimensions") if isinstance(raw, dict) else None
        if not isinstance(dimensions, dict) or set(dimensions) != set(DIMENSIONS):
            raise ValueError(f"{where}: needs \"dimensions\" with exactly {', '.join(DIMENSIONS)} "
                             "(the layout of misalign/data/taxonomy.json)")
        domains = []
        for dimension in DIMENSIONS:
            entries = dimensions[dimension].get("domains") if isinstance(dimensions[dimension], dict) else None
            if not isinstance(entries, list) or not entries or len(entries) > MAX_DOMAINS:
                raise ValueError(f"{where}: {dimension} needs a list of 1 to {MAX_DOMAINS} domains")
            names = set()
            for k, entry in enumerate(entries, start=1):
                if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"].strip()
                        and isinstance(entry.get("description"), str)):
                    raise ValueError(f"{where}: {dimension} domain {k} needs a \"name\" and a \"description\" (text)")
                if "{" in entry["name"] + entry["description"] or "}" in entry["name"] + entry["description"]:
                    raise ValueError(f"{where}: {dimension} domain {k} has a brace in its name or description "
                                     "(they are filled into prompt templates, where braces mark fields)")
                if entry["name"] in names or entry["name"] == UNKNOWN:
                    raise ValueError(f"{where}: {dimension} domain {entry['name']!r} is named twice, or is "
                                     f"{UNKNOWN!r} (the name of no domain)")
                names.add(entry["name"])
                domains.append(Domain(entry["name"], dimension, entry["description"], f"{dimension[0].upper()}{k:02d}"))
        return cls(tuple(domains), {d: str(dimensions[d].get("source", "")) for d in DIMENSIONS})

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


@cache
def _bundled() -> Taxonomy:
    raw = json.loads(resources.files("misalign").joinpath("data/taxonomy.json").read_text(encoding="utf-8"))
    return Taxonomy._parse(raw, "misalign/data/taxonomy.json")


def row_domains(row: dict) -> list[tuple[str, str]]:
    """The (dimension, domain) pairs a record carries in its <dim>_domain columns."""
    return [(dim, row[f"{dim}_domain"]) for dim in DIMENSIONS if row.get(f"{dim}_domain")]
