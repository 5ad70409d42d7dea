"""Any OpenAI-compatible server (vLLM's, or a hosted API) behind the same Engine interface.

Requests run concurrently (at most `max_in_flight` at once), each with a timeout, and are
retried with exponential backoff on 429, 5xx and connection errors.  The API key is read from
the environment variable the config names and never logged or written anywhere.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from misalign.config import redact_url
from misalign.tables import one_line
from misalign.inference.base import (AnswerProbs, chat_messages, ChoiceError, EngineError, EngineStats, Generation, Prompt,
                                     SamplingConfig, Timer, check_choices, mass_of, renormalise)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
CREDENTIALS = [(re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 ***"),
               (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-***"),
               (re.compile(r"://[^/\s@]+@"), "://***@")]
# what each endpoint's answer must hold: key -> what its first element must have
REPLY_SHAPES = {"/chat/completions": ("choices", ("message",)), "/completions": ("choices", ("text",)),
                "/embeddings": ("data", ("embedding",)), "/tokenize": ("tokens", ()), "/detokenize": ("prompt", ())}


@dataclass
class OpenAIConfig:
    base_url: str                      # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = None     # name of the variable holding the key, e.g. OPENAI_API_KEY
    chat: bool = False                 # /v1/chat/completions instead of /v1/completions
    system_prompt: str = ""            # a system message before every request (chat only)
    max_in_flight: int = 16
    timeout_s: float = 60.0              # per attempt, the whole answer (not per read)
    max_response_bytes: int = 16 << 20
    retries: int = 3
    backoff_s: float = 0.5
    top_logprobs: int = 20


class OpenAIEngine:
    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.model = config.model
        self._stats = EngineStats()
        self._first_tokens: dict[tuple, list | None] = {}
        self._headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise EngineError(f"environment variable {config.api_key_env} (the API key for "
                                  f"{redact_url(config.base_url)}) is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    # -- transport -----------------------------------------------------------------------------

    async def _post(self, client, path: str, body: dict) -> dict:
        """One request: retried on RETRY_STATUS and connection errors, each attempt bounded by
        timeout_s as a whole (not per read) and its answer by max_response_bytes."""
        import httpx
        url = path if path.startswith("http") else self.config.base_url.rstrip("/") + path
        shown = redact_url(url)
        last = "no attempt"
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    status, payload = await self._send(client, url, body)
            except TimeoutError:
                last = f"no whole answer within {self.config.timeout_s:g} s"
                continue
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {self._scrub(str(exc))}"
                continue
            except httpx.DecodingError as exc:        # e.g. a body that says gzip and is not
                raise EngineError(f"{shown} sent an answer that cannot be decoded ({self._scrub(str(exc))})") from None
            if status in RETRY_STATUS:
                last = f"HTTP {status}"
                continue
            if status >= 300:
                raise EngineError(f"{shown} refused the request: HTTP {status}: {self._scrub(payload)}")
            return _parse_reply(shown, path, payload, self._scrub)
        raise EngineError(f"{shown} did not answer after {self.config.retries} retries ({last})")

    async def _send(self, client, url: str, body: dict) -> tuple[int, bytes]:
        async with client.stream("POST", url, json=body, headers=self._headers) as response:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.config.max_response_bytes:
                    raise EngineError(f"{redact_url(url)} sent an answer over {self.config.max_response_bytes:,} "
                                      "bytes (OpenAIConfig.max_response_bytes); stopped reading it")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    @contextmanager
    def _reading(self, path: str):
        """A field of the wrong type deep inside an answer: one error naming the URL."""
        try:
            yield
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            url = redact_url(self.config.base_url.rstrip("/") + path)
            raise EngineError(f"{url} answered JSON of an unexpected shape ({type(exc).__name__}: "
                              f"{self._scrub(str(exc))})") from None

    def _scrub(self, text: str | bytes) -> str:
        """A server's words for a message: one line, 200 characters at most, without our key
        or anything that looks like a credential (servers echo headers back)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        key = self._headers.get("Authorization", "").removeprefix("Bearer ")
        if key:
            text = text.replace(key, "***")
        for pattern, replacement in CREDENTIALS:
            text = pattern.sub(replacement, text)
        return one_line(text)

    def _post_all(self, path: str, bodies: list[dict]) -> list[dict]:
        import httpx

        async def run():
            limit = asyncio.Semaphore(self.config.max_in_flight)
            async with httpx.AsyncClient(timeout=self.config.timeout_s) as client:
                async def one(body):
                    async with limit:
                        return await self._post(client, path, body)
                return await asyncio.gather(*(one(b) for b in bodies))

        with Timer(self._stats):
            return asyncio.run(run())

    def _body(self, prompt: Prompt, **fields) -> tuple[str, dict]:
        if self.config.chat:
            return "/chat/completions", {"model": self.model,
                                         "messages": chat_messages(prompt, self.config.system_prompt), **fields}
        if not isinstance(prompt, str):
            raise EngineError("chat messages need OpenAIConfig(chat=True)")
        return "/completions", {"model": self.model, "prompt": prompt, **fields}

    def _count(self, reply: dict) -> Generation:
        choice = reply["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        usage = reply.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        gen = Generation(text=text or "", prompt_tokens=usage.get("prompt_tokens", 0),
                         completion_tokens=usage.get("completion_tokens", 0),
                         cached_tokens=details.get("cached_tokens") or 0,
                         truncated=choice.get("finish_reason") == "length")
        self._stats.requests += 1
        self._stats.prompt_tokens += gen.prompt_tokens
        self._stats.generated_tokens += gen.completion_tokens
        self._stats.cached_tokens += gen.cached_tokens
        return gen

    # -- the interface -------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        sampling = sampling or SamplingConfig()
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        requests = [self._body(p, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                               top_p=sampling.top_p, **({"seed": int(s)} if s is not None else {}))
                    for p, s in zip(prompts, seeds)]
        path = requests[0][0] if requests else "/completions"
        replies = self._post_all(path, [b for _, b in requests])
        with self._reading(path):
            return [self._count(r) for r in replies]

    def label_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> np.ndarray:
        return self.answer_probs(prompts, choices).probs

    def token_ids(self, text: str) -> list[int] | None:
        """From a vLLM server's /tokenize; None for servers without it."""
        root = self.config.base_url.rstrip("/").removesuffix("/v1")
        try:
            return list(self._post_all(root + "/tokenize", [{"model": self.model, "prompt": text,
                                                             "add_special_tokens": False}])[0]["tokens"])
        except (EngineError, KeyError, IndexError, TypeError):
            return None

    def answer_probs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> AnswerProbs:
        """From the first answer token's top log-probabilities.  A choice is matched by the
        token that starts it; when the server gives no log-probabilities, or none of the
        choices is among them, the answer text is parsed instead (counted in stats as
        parsed_fallbacks), and an answer that starts with no choice is a NaN row (unparsable)."""
        check_choices(choices, [c.strip() for c in choices])
        tokens = self._vllm_first_tokens(tuple(choices))
        if tokens is not None:
            return self._label_probs_by_token_ids(prompts, tokens)
        for a in choices:
            for b in choices:
                if a != b and b.strip().startswith(a.strip()):
                    raise ChoiceError(f"choice {b!r} starts with choice {a!r}: a server's answer "
                                      "token could not tell them apart")
        extra = ({"logprobs": True, "top_logprobs": self.config.top_logprobs} if self.config.chat
                 else {"logprobs": self.config.top_logprobs})
        requests = [self._body(p, max_tokens=1, temperature=0.0, **extra) for p in prompts]
        path = requests[0][0] if requests else "/completions"
        replies = self._post_all(path, [b for _, b in requests])
        with self._reading(path):
            return self._answers_from_top_logprobs(replies, choices)

    def _answers_from_top_logprobs(self, replies: list[dict], choices: Sequence[str]) -> AnswerProbs:
        probs, mass = np.empty((len(replies), len(choices))), np.zeros(len(replies))
        for row, reply in enumerate(replies):
            text = self._count(reply).text
            top = _top_logprobs(reply["choices"][0])
            scores = [max((lp for tok, lp in top.items() if tok.strip() and c.startswith(tok.strip())),
                          default=None) for c in choices]
            if any(s is not None for s in scores):
                probs[row], mass[row] = renormalise(scores), mass_of(scores)
                continue
            self._stats.parsed_fallbacks += 1
            hits = [i for i, c in enumerate(choices) if text.strip() and c.startswith(text.strip())]
            probs[row] = np.eye(len(choices))[hits[0]] if len(hits) == 1 else np.nan
            mass[row] = float(len(hits) == 1)
            self._stats.unparsable += len(hits) != 1
        return AnswerProbs(probs, mass)

    def _vllm_first_tokens(self, choices: tuple) -> list[tuple[int, str]] | None:
        """(id, text) of each choice's first token, from a vLLM server's /tokenize and
        /detokenize; None for servers without them (they get the top-logprobs path)."""
        if choices in self._first_tokens:
            return self._first_tokens[choices]
        root = self.config.base_url.rstrip("/").removesuffix("/v1")
        try:
            ids = [r["tokens"][0] for r in self._post_all(root + "/tokenize", [
                {"model": self.model, "prompt": c, "add_special_tokens": False} for c in choices])]
            texts = [r["prompt"] for r in self._post_all(root + "/detokenize", [
                {"model": self.model, "tokens": [i]} for i in ids])]
        except (EngineError, KeyError, IndexError, TypeError, ValueError):
            tokens = None
        else:
            check_choices(choices, ids)
            tokens = list(zip(ids, texts))
        self._first_tokens[choices] = tokens
        return tokens

    def _label_probs_by_token_ids(self, prompts, tokens) -> AnswerProbs:
        """vLLM's `logprob_token_ids`: the exact log-probability of each choice's first token."""
        ids = [i for i, _ in tokens]
        requests = [self._body(p, max_tokens=1, temperature=0.0, logprob_token_ids=ids,
                               logprobs=True if self.config.chat else 1) for p in prompts]
        path = requests[0][0] if requests else "/completions"
        replies = self._post_all(path, [b for _, b in requests])
        probs, mass = np.empty((len(replies), len(tokens))), np.zeros(len(replies))
        with self._reading(path):
            for row, reply in enumerate(replies):
                self._count(reply)
                top = _top_logprobs(reply["choices"][0])
                logprobs = [top.get(text) for _, text in tokens]
                probs[row], mass[row] = renormalise(logprobs), mass_of(logprobs)
        return AnswerProbs(probs, mass)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        replies = self._post_all("/embeddings", [{"model": self.model, "input": t} for t in texts])
        self._stats.requests += len(replies)
        with self._reading("/embeddings"):
            vectors = np.array([r["data"][0]["embedding"] for r in replies], dtype=np.float32).reshape(len(replies), -1)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def stats(self) -> EngineStats:
        return self._stats


def _top_logprobs(choice: dict) -> dict[str, float]:
    """token -> logprob of the first generated token, from a completions or chat reply."""
    logprobs = choice.get("logprobs") or {}
    if "content" in logprobs:                       # chat
        first = (logprobs.get("content") or [{}])[0]
        return {t["token"]: t["logprob"] for t in first.get("top_logprobs") or []
                if isinstance(t, dict) and isinstance(t.get("token"), str) and isinstance(t.get("logprob"), (int, float))}
    tops = logprobs.get("top_logprobs") or [{}]     # completions
    return dict(tops[0] or {})


def _parse_reply(url: str, path: str, payload: bytes, scrub) -> dict:
    """The answer as a dict of the endpoint's shape, or an EngineError saying what is wrong."""
    try:
        reply = json.loads(payload)
    except ValueError:
        raise EngineError(f"{url} answered with something that is not JSON: {scrub(payload[:200]) or '(empty)'}") \
            from None
    endpoint = next((e for e in REPLY_SHAPES if path.endswith(e)), None)
    if endpoint is None:
        return reply
    key, fields = REPLY_SHAPES[endpoint]
    value = reply.get(key) if isinstance(reply, dict) else None
    if value is None or (isinstance(value, list) and not value) or (
            fields and not (isinstance(value, list) and isinstance(value[0], dict) and
                            any(f in value[0] for f in fields))):
        wanted = f"a non-empty {key!r} list whose first entry has {' or '.join(map(repr, fields))}" if fields \
            else f"{key!r}"
        raise EngineError(f"{url} answered JSON without {wanted}: {scrub(payload[:200])}")
    return reply
