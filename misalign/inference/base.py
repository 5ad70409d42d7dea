"""What every engine shares: request and result records, the Engine protocol, prefix ordering
and the renormalisation of answer log-probabilities."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence, Union

import numpy as np

from misalign.config import EMBEDDER  # noqa: F401  (the embedder's name, where engines are asked for by name)
from misalign.errors import MisalignError
from misalign.stats import EngineUsage  # noqa: F401  (what Pool.usage returns)

Messages = list[dict]            # OpenAI-style chat messages: [{"role": "user", "content": "..."}]
Prompt = Union[str, Messages]


def cache_root() -> Path:
    """Where what outlives a run is kept (converted models, the answer cache, vLLM's own caches):
    $MISALIGN_FAST_CACHE, else ~/.cache/misalign-fast."""
    return Path(os.environ.get("MISALIGN_FAST_CACHE") or Path.home() / ".cache" / "misalign-fast")


def chat_messages(prompt: Prompt, system_prompt: str = "") -> Messages:
    """A prompt as chat messages: a text becomes the user's message; `system_prompt`, where
    given, goes first (unless the messages bring their own)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class EngineError(MisalignError):
    """The engine could not answer (model not loadable, server unreachable after retries)."""


class ChoiceError(MisalignError):
    """A list of answer choices that cannot be told apart by their first token."""


@dataclass
class SamplingConfig:
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    truncated: bool = False       # stopped by max_tokens (or the context), not by the model


@dataclass
class AnswerProbs:
    """Answer probabilities of a label question: `probs` renormalised over the allowed answers
    (rows sum to 1, NaN where no answer was usable) and `mass`, the probability the model put on
    those answers at all (low mass: the model wanted to say something else)."""
    probs: np.ndarray             # (n, choices)
    mass: np.ndarray              # (n,)


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    parsed_fallbacks: int = 0     # label_probs answered by parsing text, not log-probs
    unparsable: int = 0           # label_probs answers that matched no choice
    too_long: int = 0             # prompts longer than the model's context: not sent, answered empty / NaN

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class Engine(Protocol):
    """One interface for every model: in-process vLLM or an OpenAI-compatible server."""

    model: str

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """One generation per prompt, in the caller's order; `seeds` are per-prompt sampling
        seeds, honoured where the backend supports them."""

    def label_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> np.ndarray:
        """(n, len(choices)) probabilities of each answer, rows summing to 1 (NaN if unparsable)."""

    def answer_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> AnswerProbs:
        """label_probs with the probability mass the model put on the choices."""

    def token_ids(self, text: str) -> list[int] | None:
        """How the model's tokenizer writes `text` as an answer (None: not known here)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""

    def stats(self) -> EngineStats:
        """Totals since the engine started."""


class Pool(Protocol):
    """Engines by model name, started on first use (misalign.inference.pool.EnginePool; the
    tests' session pool implements it over engines they started once)."""

    def get(self, name: str) -> Engine:
        """The engine of the model named `name` in the config's [models]."""

    def embedder(self) -> Engine:
        """The sentence-embedding engine (bundled MiniLM)."""

    def usage(self, names: Iterable[str]) -> "EngineUsage":
        """What the models named (EMBEDDER for the embedder) have done since the pool began, over
        every engine started for them (misalign.stats.EngineUsage).  Never starts an engine."""

    def at_pass(self, stage: str, pass_name: str) -> None:
        """The runner begins this pass of this stage (the pool may plan which engine to release)."""

    def identity(self, name: str) -> dict[str, object]:
        """What makes the model answer as it does (files' digests, engine settings that change
        answers), by part: a checkpoint made with another identity is not reused.  Starts no engine."""

    def describe(self, name: str) -> str:
        """What the model is, for tables and reports."""

    def is_stand_in(self, name: str) -> bool:
        """Whether the model is the random-weight stand-in."""

    def is_bundled(self, name: str) -> bool:
        """Whether the model is the bundled SmolLM2 (real but weak)."""

    def close(self) -> None:
        """Stop every engine started."""


def prefix_order(texts: Sequence[str]) -> list[int]:
    """Indices that put texts sharing a prefix next to each other (stable for equal texts):
    sorting the strings does exactly that, and the prefix cache then hits batch after batch."""
    return sorted(range(len(texts)), key=texts.__getitem__)


def check_choices(choices: Sequence[str], first_tokens: Sequence) -> None:
    if len(choices) < 2:
        raise ChoiceError(f"label_probs needs at least two choices, got {list(choices)}")
    seen: dict = {}
    for choice, token in zip(choices, first_tokens):
        if token in seen:
            raise ChoiceError(f"choices {seen[token]!r} and {choice!r} start with the same token "
                              f"({token!r}), so their probabilities cannot be told apart; "
                              "use labels whose first tokens differ, e.g. 'A'/'B' or 'Yes'/'No'")
        seen[token] = choice


# Answer codes for multiple-choice questions, in order of preference: one character first, then
# two letters (SentencePiece tokenizers write a lone digit as two tokens, prefix space and digit).
CODE_CANDIDATES = [*"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *"abcdefghijklmnopqrstuvwxyz", *"123456789",
                   *(a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")]


def answer_codes(token_ids, n: int, tokenizer_name: str = "the tokenizer") -> list[str]:
    """`n` answer codes that `token_ids` (text -> token ids, or None when unknown) writes as one
    token each, all different, so that one answer token's probabilities tell them apart."""
    codes, seen = [], set()
    for code in CODE_CANDIDATES:
        ids = token_ids(code)
        if ids is None:                      # a tokenizer we cannot see: letters, checked later
            return CODE_CANDIDATES[:n]
        if len(ids) == 1 and ids[0] not in seen:
            codes.append(code)
            seen.add(ids[0])
            if len(codes) == n:
                return codes
    raise ChoiceError(f"{tokenizer_name} has only {len(codes)} single-token answer codes among "
                      f"{len(CODE_CANDIDATES)} candidates, and a question here has {n} answers")


def mass_of(logprobs: Sequence[float]) -> float:
    """Total probability of the given log-probabilities (None or -inf: 0)."""
    return float(sum(math.exp(lp) for lp in logprobs if lp is not None and lp > -math.inf))


def renormalise(logprobs: Sequence[float]) -> np.ndarray:
    """Probabilities proportional to exp(logprob), summing to 1 (-inf entries get 0)."""
    values = np.array([lp if lp is not None else -math.inf for lp in logprobs], dtype=np.float64)
    if not np.isfinite(values).any():
        return np.full(len(values), np.nan)
    values = np.exp(values - values[np.isfinite(values)].max())
    return values / values.sum()


@dataclass
class Timer:
    """Adds elapsed seconds to a stats record."""
    stats: EngineStats
    _start: float = field(default=0.0, init=False)

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.stats.seconds += time.perf_counter() - self._start
