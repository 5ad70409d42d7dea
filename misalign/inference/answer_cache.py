"""Answers to label questions, kept across runs: a model asked the same question again answers
from the cache instead of the engine.

What makes an answer the same answer is the key: the model's identity (misalign.identity: its
files' digests, dtype, context, chat template, or a server's URL and model), the exact request
(the prompt or chat messages, before the model's template, which the identity fixes) and the
choices whose probabilities are read.  Only those requests are cached: a label question's answer
is read from log-probabilities at temperature 0, so it is a function of the key; sampled
generations are not.  Stage I's judge and LLM classifier and Stage II's detectors all ask this
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

from misalign.inference.base import AnswerProbs, Engine, Prompt

FILE = "answers.sqlite"


def default_path() -> Path:
    if os.environ.get("MISALIGN_FAST_ANSWER_CACHE"):        # the file itself (the test suite's own)
        return Path(os.environ["MISALIGN_FAST_ANSWER_CACHE"])
    root = os.environ.get("MISALIGN_FAST_CACHE") or Path.home() / ".cache" / "misalign-fast"
    return Path(root) / FILE


class AnswerCache:
    """The store: key -> the probabilities of the choices and the mass the model put on them."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, probs TEXT, mass REAL)")

    def get(self, keys: Sequence[str]) -> dict[str, tuple[list, float]]:
        found = {}
        for start in range(0, len(keys), 500):            # SQLite's bound on a statement's parameters
            part = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, probs, mass FROM answers WHERE key IN ({','.join('?' * len(part))})",
                                    part)
            found.update({key: (json.loads(probs), mass) for key, probs, mass in rows})
        return found

    def put(self, entries: dict[str, tuple[list, float]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                                 [(k, json.dumps(p), m) for k, (p, m) in entries.items()])

    def info(self) -> dict:
        answers = self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(FILE + "*") if p.is_file())
        return {"path": str(self.path), "answers": answers, "bytes": size}

    def clear(self) -> int:
        with self._db:
            removed = self._db.execute("DELETE FROM answers").rowcount
        self._db.execute("VACUUM")
        return removed

    def close(self) -> None:
        self._db.close()


def request_key(identity: dict, prompt: Prompt, choices: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([identity, prompt, list(choices)], sort_keys=True,
                                     ensure_ascii=False).encode()).hexdigest()


class CachedAnswers:
    """An engine whose label questions are answered from the cache where it can; the engine
    itself (`start()`: started on first need) is asked the rest, and anything else."""

    def __init__(self, start: Callable[[], Engine], identity: dict, cache: AnswerCache, counts: Counter):
        self._start, self._identity, self._cache, self._counts = start, identity, cache, counts

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
