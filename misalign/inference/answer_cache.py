"""Answers to label questions, kept across runs: a model asked the same question again answers
from the cache instead of the engine.

What makes an answer the same answer is the key: the model's identity (misalign.identity: its
files' digests, dtype, context, chat template, system prompt, or a server's URL and model), the
exact request (the prompt or chat messages, before the model's template, which the identity
fixes) and what is asked of it: the choices whose probabilities are read, or for a written answer
the sampling settings.  A label question's answer is read from log-probabilities at temperature
0, and a greedy answer is written at temperature 0: each is a function of its key, and both are
cached.  A sampled answer is not, unless the user opts in (run.cache_sampled; its seed then joins
the key, so that a re-run with the same seed gets the answers it got before, and another seed new
ones).  Stage I's judge (and its critiques) and LLM classifier and Stage II's detectors ask this
way, so a second benchmark of a model on a dataset that overlaps an earlier one asks the engine
only for what is new (profile.json counts `answer_cache_hits` and `answer_cache_misses`).

One SQLite file (~/.cache/misalign-fast/answers.sqlite; $MISALIGN_FAST_CACHE/answers.sqlite, or
$MISALIGN_FAST_ANSWER_CACHE naming the file), in WAL
mode so that two processes on one machine (two runs, Ray actors) read and write it safely; not
on a network file system.  `--no-cache` (or run.answer_cache = false) leaves it alone;
`misalign-fast cache info|clear`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from misalign.inference.base import AnswerProbs, cache_root, Engine, Generation, Prompt, SamplingConfig

FILE = "answers.sqlite"


def default_path() -> Path:
    if os.environ.get("MISALIGN_FAST_ANSWER_CACHE"):        # the file itself (the test suite's own)
        return Path(os.environ["MISALIGN_FAST_ANSWER_CACHE"])
    return cache_root() / FILE


class AnswerCache:
    """The store: key -> the probabilities of the choices and the mass the model put on them."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, probs TEXT, mass REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT, "
                         "prompt_tokens INTEGER, completion_tokens INTEGER, truncated INTEGER)")

    def _select(self, query: str, keys: Sequence[str]) -> list[tuple]:
        found = []
        for start in range(0, len(keys), 500):            # SQLite's bound on a statement's parameters
            part = keys[start:start + 500]
            found += self._db.execute(query.format(",".join("?" * len(part))), part).fetchall()
        return found

    def get(self, keys: Sequence[str]) -> dict[str, tuple[list, float]]:
        return {key: (json.loads(probs), mass)
                for key, probs, mass in self._select("SELECT key, probs, mass FROM answers WHERE key IN ({})", keys)}

    def get_generations(self, keys: Sequence[str]) -> dict[str, Generation]:
        rows = self._select("SELECT key, text, prompt_tokens, completion_tokens, truncated FROM generations "
                            "WHERE key IN ({})", keys)
        return {key: Generation(text, prompt, completion, truncated=bool(cut)) for key, text, prompt, completion, cut in rows}

    def put_generations(self, entries: dict[str, Generation]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?)",
                                 [(k, g.text, g.prompt_tokens, g.completion_tokens, int(g.truncated))
                                  for k, g in entries.items()])

    def put(self, entries: dict[str, tuple[list, float]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                                 [(k, json.dumps(p), m) for k, (p, m) in entries.items()])

    def info(self) -> dict:
        answers = self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        written = self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(FILE + "*") if p.is_file())
        return {"path": str(self.path), "answers": answers, "written answers": written, "bytes": size}

    def clear(self) -> int:
        with self._db:
            removed = self._db.execute("DELETE FROM answers").rowcount
            removed += self._db.execute("DELETE FROM generations").rowcount
        self._db.execute("VACUUM")
        return removed

    def close(self) -> None:
        self._db.close()


def request_key(identity: dict, prompt: Prompt, asked: Sequence) -> str:
    """The key of one request: `asked`, the choices read, or ["written", sampling settings, seed]."""
    return hashlib.sha256(json.dumps([identity, prompt, list(asked)], sort_keys=True,
                                     ensure_ascii=False).encode()).hexdigest()


class CachedAnswers:
    """An engine whose label questions are answered from the cache where it can; the engine
    itself (`start()`: started on first need) is asked the rest, and anything else."""

    def __init__(self, start: Callable[[], Engine], identity: dict, cache: AnswerCache, counts: Counter,
                 sampled: bool = False):
        """`sampled`: cache sampled written answers too, keyed by their seeds (run.cache_sampled)."""
        self._start, self._identity, self._cache, self._counts = start, identity, cache, counts
        self._sampled = sampled

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """Written answers: greedy ones (and, opted in, sampled ones with seeds) from the cache
        where asked before, the rest from the engine."""
        sampling = sampling or SamplingConfig()
        greedy = sampling.temperature == 0
        if not (greedy or (self._sampled and seeds is not None)):
            return self._start().generate(prompts, sampling, seeds)
        asked = ["written", sampling.max_tokens, sampling.temperature, sampling.top_p]
        keys = [request_key(self._identity, p, asked + [None if greedy else seeds[k]]) for k, p in enumerate(prompts)]
        found = self._cache.get_generations(keys)
        missing = [k for k, key in enumerate(keys) if key not in found]
        if missing:
            written = self._start().generate([prompts[k] for k in missing], sampling,
                                             None if seeds is None else [seeds[k] for k in missing])
            fresh = {keys[k]: g for k, g in zip(missing, written)}
            self._cache.put_generations(fresh)
            found.update(fresh)
        self._counts["answer_cache_hits"] += len(keys) - len(missing)
        self._counts["answer_cache_misses"] += len(missing)
        return [found[key] for key in keys]

    def answer_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> AnswerProbs:
        keys = [request_key(self._identity, p, choices) for p in prompts]
        found = self._cache.get(keys)
        missing = [k for k, key in enumerate(keys) if key not in found]
        if missing:
            asked = self._start().answer_probs([prompts[k] for k in missing], choices)
            fresh = {keys[k]: ([None if not np.isfinite(x) else float(x) for x in asked.probs[j]], float(asked.mass[j]))
                     for j, k in enumerate(missing)}
            self._cache.put(fresh)
            found.update(fresh)
        self._counts["answer_cache_hits"] += len(keys) - len(missing)
        self._counts["answer_cache_misses"] += len(missing)
        probs = np.array([[np.nan if x is None else x for x in found[key][0]] for key in keys], dtype=np.float64)
        mass = np.array([found[key][1] for key in keys], dtype=np.float64)
        return AnswerProbs(probs.reshape(len(keys), len(choices)), mass)

    def label_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> np.ndarray:
        return self.answer_probs(prompts, choices).probs

    def __getattr__(self, name):              # generation, tokens, stats: the engine's own
        return getattr(self._start(), name)
