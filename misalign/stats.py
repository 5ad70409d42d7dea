"""What a stage counts, as typed records, and the one place that knows how they are stored.

    EngineUsage     what the stage's models did: tokens, engine starts per model, start-up seconds
    StageCounts     what the stage counted itself: totals by name, counts per (what, dimension,
                    domain) — the columns of stats.csv — and reasons by (kind, detail): an
                    expansion outcome per domain code, why a candidate response was rejected

Checkpoint manifests and profile.json keep both as one flat dict of numbers per shard (so that
statistics sum shard by shard and survive a resume): `flat()` writes that dict and
`StageCounts.read` / `EngineUsage.read` read it back; no other module takes a key apart.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

TOKEN_FIELDS = ("prompt_tokens", "generated_tokens", "cached_tokens", "parsed_fallbacks")
STARTS = "engine_starts|"       # flat key of a model's engine starts: engine_starts|NAME
_DOMAIN = "|"                    # what|dimension|domain
_REASON = "/"                    # kind/detail


@dataclass
class EngineUsage:
    """Over every engine started for the models named, since the pool began."""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    parsed_fallbacks: int = 0        # label answers read from text (a server without log-probabilities): P is 0 or 1
    startup_seconds: float = 0.0     # starting engines (and stopping others to make room)
    answer_cache_hits: int = 0       # label questions answered from the answer cache, not the engine
    answer_cache_misses: int = 0     # ...and asked of the engine (then kept in the cache)
    starts: Counter = field(default_factory=Counter)    # model -> engines started for it

    def add(self, other: "EngineUsage") -> None:
        for f in fields(self):
            if f.name != "starts":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.starts.update(other.starts)

    def flat(self) -> dict[str, float]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "starts"},
                **{STARTS + name: n for name, n in self.starts.items()}}

    @classmethod
    def read(cls, flat: dict) -> "EngineUsage":
        usage = cls(**{f.name: flat[f.name] for f in fields(cls) if f.name in flat and f.name != "starts"})
        usage.starts.update({key.removeprefix(STARTS): n for key, n in flat.items() if key.startswith(STARTS)})
        return usage


@dataclass
class StageCounts:
    totals: Counter = field(default_factory=Counter)        # name -> n (pairs, unknown_value, ...)
    per_domain: Counter = field(default_factory=Counter)    # (what, dimension, domain) -> n
    reasons: Counter = field(default_factory=Counter)       # (kind, detail) -> n

    def flat(self) -> dict[str, float]:
        return {**self.totals, **{_DOMAIN.join(key): n for key, n in self.per_domain.items()},
                **{_REASON.join(key): n for key, n in self.reasons.items()}}

    @classmethod
    def read(cls, flat: dict) -> "StageCounts":
        """A stage's counts from a flat dict (engine usage in it is left out)."""
        counts = cls()
        usage = {f.name for f in fields(EngineUsage)}
        for key, n in flat.items():
            if key in usage or key.startswith(STARTS):
                continue
            if _DOMAIN in key:
                what, dim, name = key.split(_DOMAIN, 2)
                counts.per_domain[(what, dim, name)] += n
            elif _REASON in key:
                kind, detail = key.split(_REASON, 1)
                counts.reasons[(kind, detail)] += n
            elif key.startswith("rejected "):            # profiles written before these records
                counts.reasons[("rejected", key.removeprefix("rejected "))] += n
            else:
                counts.totals[key] += n
        return counts

    def by_detail(self, kind: str) -> dict[str, int]:
        """The reasons of one kind, detail -> n, most frequent first."""
        found = Counter({detail: n for (k, detail), n in self.reasons.items() if k == kind})
        return dict(found.most_common())

    def domain_counts(self) -> dict[str, Counter]:
        """what -> Counter of (dimension, domain) -> n."""
        found: dict[str, Counter] = {}
        for (what, dim, name), n in self.per_domain.items():
            found.setdefault(what, Counter())[(dim, name)] += n
        return found
