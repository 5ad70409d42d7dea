"""Conditional generation for domains under the floor.

The floor counts distinct prompts: the input's near-duplicates (within tau) count once.  Each
round asks the expander for every domain still under its floor in one engine call, parses each
answer into a prompt (instruct models wrap it in preambles, quotes, numbering and talk about the
task; refusals and answers with no prompt in them are counted and dropped), and checks each
against the SimHash index of everything kept so far (the input and earlier candidates): a
candidate within tau is dropped and counted.  Rounds stop when every domain reaches its floor
or its attempt budget.  New rows carry the domain they were generated for; the next stage
(classify-expanded) labels them on all three dimensions."""
from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa

from misalign.dedup import Deduplicator, NearDuplicateFilter
from misalign.inference import SamplingConfig
from misalign.prompting import PromptTemplates
from misalign.config import DedupConfig, ExpandConfig
from misalign.inference.base import Pool
from misalign.stages.base import Stage, section_values
from misalign.stages.common import REFUSAL, item_seed
from misalign.taxonomy import DIMENSIONS, Taxonomy

QUOTED = re.compile(r"[\"“«]([^\"“”«»]{12,})[\"”»]")
INTRO = re.compile(r"^(?:here(?:'s| is| are)?|a|an|one|the|your|this|sample|example)\b[^:]{0,60}"
                   r"\b(?:message|prompt|question|request|query|user|example)s?\b[^:]{0,30}:\s*", re.I)
NUMBERING = re.compile(r"^\s*(?:[-*•>]+|\(?#?\d{1,3}[.):\]]|#{1,6}|\*\*|__)\s*")
LABEL = re.compile(r"^(?:(?:sure|okay|ok|certainly|of course)[,!.]?\s*)?(?:here(?:'s| is| are)\s+)?"
                   r"(?:(?:a|an|one|my|your|the)\s+)?(?:(?:new|possible|user|sample|example|different)\s+)*"
                   r"(?:user\s+)?(?:prompt|question|request|query)(?:\s*#?\d+)?\s*[:\-–—]\s*", re.I)
QUOTES = "\"'“”‘’«»`"
META_START = re.compile(r"^(?:hello|hi|hey|greetings|sure|certainly|of course|absolutely|okay|great|what a|"
                        r"thank|i'm here|i am here|i'd be|i would be|i'll|i will|here's|here is|as an ai|"
                        r"note:|this prompt|the prompt)\b", re.I)
META_WORDS = re.compile(r"\b(?:prompts?|benchmark|domains?|ai (?:assistant|model|system|language model)|"
                        r"language model|this conversation)\b", re.I)
NEED = re.compile(r"^(?:i|we)(?:'m| am| are|'d| would| have|'ve)? (?:want|need|like|looking|trying|planning|wondering|"
                  r"think|feel|was|got|have|just|recently|can't|cannot)\b|^(?:my|our) ", re.I)
IMPERATIVES = {"write", "tell", "explain", "give", "help", "describe", "list", "suggest", "recommend", "create",
               "make", "draft", "show", "compose", "find", "plan", "teach", "share", "convince", "generate",
               "provide", "summarize", "summarise", "translate", "compare", "argue", "design", "name", "outline",
               "classify", "identify", "predict", "rewrite", "calculate", "convert", "solve", "analyze", "analyse",
               "edit", "fix", "imagine", "pretend", "act", "answer", "choose", "rank", "rate", "sort", "extract",
               "categorize", "check", "proofread", "paraphrase", "reply", "say", "play", "build", "code",
               "implement", "determine", "evaluate", "estimate", "review", "select", "complete", "continue",
               "brainstorm", "propose", "prepare", "detect", "guess", "draw", "sing", "develop", "discuss",
               "guide", "talk", "walk", "remind", "recall", "interpret", "assess"}


def parse_prompt(text: str, cut: bool = False) -> tuple[str | None, str]:
    """(the prompt, "ok"), or (None, why not): "refused", "no prompt" (only talk about the task,
    a description of the domain, a title), "empty", or "cut off" (`cut`: the token limit stopped
    the answer, so its last line may be half a prompt)."""
    if not text.strip():
        return None, "empty"
    lines = text.strip().splitlines()
    if cut:
        found = parse_prompt("\n".join(lines[:-1]))
        return found if found[0] is not None or found[1] == "refused" else (None, "cut off")
    for line in lines:
        line = line.strip()
        for _ in range(3):                   # "1. **Prompt:** "..."" peels in several passes
            line = INTRO.sub("", LABEL.sub("", NUMBERING.sub("", line))).strip().strip(QUOTES + "*_ ").strip()
        quoted = QUOTED.search(line)           # 'A user might ask: "..." (about X)'
        before = line[:quoted.start()].strip() if quoted else ""
        if quoted and len(quoted.group(1).split()) >= 3 and (not before or before.endswith(":")):
            line = quoted.group(1).strip()
        if not line or line.endswith(":"):
            continue
        if REFUSAL.search(line) and not is_request(line):   # "I can't sleep, what can I do?" is a prompt
            return None, "refused"
        words = line.split()
        if META_START.search(line) or META_WORDS.search(line) or len(words) < 3:
            continue
        if not is_request(line):
            continue                         # a statement about the domain, not something a user asks
        return " ".join(words), "ok"
    return None, "no prompt"


def as_text(messages: list[dict]) -> str:
    """A conversation as plain text, for an expander without a chat template."""
    turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content'].strip()}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


def _rotate(items: list, k: int) -> list:
    return items[k % len(items):] + items[:k % len(items)] if items else []


def is_request(line: str) -> bool:
    """A question, an instruction ("Write…", "Please explain…") or a user's need ("I want…",
    "My neighbour's dog…"): what a user sends, unlike a statement about the topic."""
    line = line.replace("’", "'")
    words = [w.strip(",.!:;\"'").lower() for w in line.split()]
    if words and words[0] == "please":
        words = words[1:]
    return "?" in line or (bool(words) and words[0] in IMPERATIVES) or bool(NEED.search(line))


class ExpandStage(Stage):
    """Built from [expand]; its near-duplicate check uses [dedup]'s tau and features, the same as
    the dedup stage's."""
    name = "expand"
    rowwise = False
    templates = ("expand", "expand_more")

    def __init__(self, config: ExpandConfig, pool: Pool, taxonomy: Taxonomy, dedup: DedupConfig, seed: int = 0,
                 prompt_templates: PromptTemplates | None = None):
        super().__init__(pool, prompt_templates)
        self.config, self.taxonomy, self.seed = config, taxonomy, seed
        self.tau, self.features = dedup.tau, dedup.features
        self.sampling = SamplingConfig(max_tokens=config.max_tokens, temperature=config.temperature,
                                       top_p=config.top_p)

    def settings(self) -> dict[str, object]:
        return {**section_values("expand", self.config), "dedup.tau": self.tau, "dedup.features": self.features,
                "run.seed": self.seed, "taxonomy": self.taxonomy.digest}

    def floor_counts(self, rows: list[dict]) -> Counter:
        """Prompts per domain, counting each cluster of near-duplicates once."""
        unique = Deduplicator(tau=self.tau, features=self.features, seed=self.seed).fit([r["prompt"] for r in rows]).keep
        return Counter((dim, r[f"{dim}_domain"]) for r, keep in zip(rows, unique) if keep
                       for dim in DIMENSIONS if r[f"{dim}_domain"])

    def run(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        counts = self.floor_counts(rows)
        kept = NearDuplicateFilter(tau=self.tau, features=self.features, seed=self.seed)
        kept.add([r["prompt"] for r in rows])
        missing = {d: self.config.floor - counts[(d.dimension, d.name)] for d in self.taxonomy.domains}
        attempts, made, new = Counter(), Counter(), []
        names = {dim: {d.name: d for d in self.taxonomy.of(dim)} for dim in DIMENSIONS}
        by_dimension = {dim: [(names[dim][r[f"{dim}_domain"]], r["prompt"]) for r in rows
                              if r[f"{dim}_domain"] in names[dim]] for dim in DIMENSIONS}
        seed_pools = {}                      # domain -> (its own prompts, other domains' prompts)
        while True:
            asked = []                       # one round: every domain still short, one engine call
            for domain in self.taxonomy.domains:
                short = missing[domain] - made[domain]
                n = min(2 * short, self.config.budget - attempts[domain]) if short > 0 else 0
                asked += [(domain, attempts[domain] + k) for k in range(n)]
                attempts[domain] += n
            if not asked:
                break
            engine = self.pool.get(self.config.model)
            for domain, _ in asked:
                if domain not in seed_pools:
                    seed_pools[domain] = self._seed_pool(domain, by_dimension[domain.dimension])
            requests = [self._request(domain, seed_pools[domain], k) for domain, k in asked]
            if not getattr(engine, "chat", True):
                requests = [as_text(r) for r in requests]
            seeds = [item_seed(self.seed, domain.code, k) for domain, k in asked]
            for (domain, _), gen in zip(asked, engine.generate(requests, self.sampling, seeds)):
                prompt, outcome = parse_prompt(gen.text, cut=gen.truncated)
                if prompt is not None and made[domain] >= missing[domain]:
                    outcome = "surplus"
                elif prompt is not None and not kept.add_if_new([prompt])[0]:
                    outcome = "near_duplicate"
                self.reasons[(f"expand_{outcome.replace(' ', '_')}", domain.code)] += 1
                if outcome == "ok":
                    made[domain] += 1
                    new.append(self._row(table.schema, domain, prompt, made[domain]))
        table = table.append_column("target_dimension", pa.nulls(table.num_rows, pa.string()))
        if not new:
            return table
        return pa.concat_tables([table, pa.Table.from_pylist(new, schema=table.schema)])

    @staticmethod
    def _seed_pool(domain, labelled: list[tuple]) -> tuple[list, list]:
        """(domain, prompt) pairs of the domain itself and of the other domains of its dimension."""
        return [x for x in labelled if x[0] == domain], [x for x in labelled if x[0] != domain]

    def _request(self, domain, seed_pool: tuple[list, list], attempt: int) -> list[dict]:
        """The expander's conversation: a few seed prompts as its own earlier answers, each to a
        request for a domain, then the request for this domain.  Small instruct models copy a
        format they have answered in far more reliably than one described to them.  The seeds
        are the domain's own prompts, topped up with those of other domains of its dimension
        (a domain under the floor often has none), rotated per attempt so that attempts differ
        even where decoding is greedy."""
        own, others = seed_pool
        seeds = (_rotate(own, attempt) + _rotate(others, attempt))[: self.config.seeds]
        messages = []
        for k, (shown, prompt) in enumerate([*seeds, (domain, None)]):
            ask = self.prompt_templates["expand" if k == 0 else "expand_more"]
            messages.append({"role": "user", "content": ask.format(domain=shown.name, description=shown.description)})
            if prompt is not None:
                messages.append({"role": "assistant", "content": prompt})
        return messages

    @staticmethod
    def _row(schema, domain, text: str, k: int) -> dict:
        row = {name: None for name in schema.names}
        row.update(id=f"x-{domain.code}-{k:04d}", prompt=text, origin="expanded", target_dimension=domain.dimension)
        row[f"{domain.dimension}_domain"] = domain.name
        row[f"{domain.dimension}_prob"] = 1.0
        return row

    def models(self) -> list[str]:
        return [self.config.model]
