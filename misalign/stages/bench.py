"""Stage II: each model under test judges every test item's two responses, zero-shot.

An item is a prompt with one aligned and one misaligned response (a Stage I pair, or a row and
generator of the released SaVaCu CSV).  The detector sees the prompt and one response, never
the domain labels or the other response, and answers whether the response is misaligned; the
verdict comes from the probabilities of its answers ("Yes" / "No"), not from parsing prose.

    temperature 0   flagged when P(misaligned) >= threshold; every run gives the same verdicts
    temperature T   run r flags with probability P(misaligned) sharpened by 1/T, drawn with a
                    seed of (run seed, model, run, item, response, question): the verdict one
                    sampled answer token would give, reproducible however the work is batched

The model is asked once per response and question whatever the number of runs.  A response the
model gave no usable answer for (a server without log-probabilities whose text matched no
answer) is kept with P = NaN and flagged = null, and counted.

The probe (model kind "probe") is a trained baseline beside the zero-shot models: a logistic
regression on MiniLM embeddings of prompt and response, trained on a dataset's train split; its
runs differ by a bootstrap resample of the training pairs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from misalign import savacu, tables
from misalign.config import SPLITS, BenchConfig
from misalign.errors import ConfigError, InputError
from misalign.classifiers import fit_softmax, softmax
from misalign.prompting import SIDES, detector_prompt
from misalign.inference.base import EMBEDDER, Pool
from misalign.stages.base import Stage, section_values
from misalign.stages.common import ask_yes_no, item_seed, polarity_balanced
from misalign.taxonomy import DIMENSIONS, Taxonomy

# Stage I's per-dimension verdict on the misaligned response (null: not asked, or no such record)
VERIFIED = tuple(f"misaligned_in_{dim}" for dim in DIMENSIONS)
ITEM_SCHEMA = pa.schema([("item", pa.string()), ("id", pa.string()), ("prompt", pa.string()),
                         ("safety_domain", pa.string()), ("value_domain", pa.string()),
                         ("cultural_domain", pa.string()), ("generator", pa.string()),
                         ("aligned_response", pa.string()), ("misaligned_response", pa.string()),
                         *((name, pa.bool_()) for name in VERIFIED)])
# p_misaligned combines the answers to both polarities: yes_to_misaligned is P(Yes) to "is it
# misaligned?", yes_to_aligned P(Yes) to "is it aligned?" (null: not asked, or not a yes/no model)
SAMPLE_SCHEMA = pa.schema([("model", pa.string()), ("run", pa.int32()), ("item", pa.string()), ("id", pa.string()),
                           ("response", pa.string()), ("question", pa.string()), ("p_misaligned", pa.float64()),
                           ("yes_to_misaligned", pa.float64()), ("yes_to_aligned", pa.float64()),
                           ("flagged", pa.bool_()), ("generator", pa.string()), ("safety_domain", pa.string()),
                           ("value_domain", pa.string()), ("cultural_domain", pa.string()),
                           *((name, pa.bool_()) for name in VERIFIED)])
LENGTH_BASELINE = "length-only"


@dataclass
class Items:
    table: pa.Table              # ITEM_SCHEMA, one row per item
    source: str
    problems: list               # (where, reason) of rows set aside
    notes: list = field(default_factory=list)    # what a user should know about how labels were read

    def write_problems(self, path) -> None:
        """The rows set aside, one JSON object (where, reason) per line."""
        with tables.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for where, reason in self.problems:
                f.write(json.dumps({"where": where, "reason": reason}, ensure_ascii=False) + "\n")

    def require_some(self, split: str, problems_path) -> None:
        """Stop with one line when no row could be used, after writing the rows set aside."""
        if not self.table.num_rows:
            self.write_problems(problems_path)
            raise InputError(self.source, f"has no usable items in split {split!r}: {len(self.problems):,} rows "
                                          f"set aside, each with its reason, in {problems_path}")

    @cached_property
    def sha256(self) -> str:
        """A digest of the items' content (ids, prompts, responses, labels), order-independent."""
        digest = hashlib.sha256()
        rows = sorted(self.table.to_pylist(), key=lambda r: r["item"])
        for row in rows:
            digest.update("\x1f".join(str(row[c]) for c in ITEM_SCHEMA.names if c not in VERIFIED).encode()
                          + b"\x1e")
        return digest.hexdigest()


def load_items(source, split: str = "test", taxonomy: Taxonomy | None = None) -> Items:
    """Items from a Stage I dataset (a run directory, its dataset/ directory or one Parquet file)
    or from a CSV in the released SaVaCu layout.  Rows that cannot be items are set aside with
    their place and reason: no prompt, not both responses, a label that is no domain, an item
    (id and generator) seen before."""
    path = Path(source)
    labels = savacu.DomainLabels(taxonomy or Taxonomy.load())
    if savacu.is_savacu(path):
        pairs, problems = savacu.read_savacu(path)
        rows = [(f"row {p.row}", {"id": p.row_index, "prompt": p.prompt, "generator": p.generator,
                                  "aligned_response": p.aligned, "misaligned_response": p.misaligned,
                                  **{f"{dim}_domain": p.labels[dim] for dim in DIMENSIONS}}) for p in pairs]
        return _items(rows, [(f"row {row}", reason) for row, reason in problems], str(path), labels)
    if path.is_dir():
        folder = path / "dataset" if (path / "dataset").is_dir() else path
        if split not in (*SPLITS, "all"):
            raise ConfigError(f"bench.split must be train, validation, test or all, got {split!r}")
        files = [folder / f"{name}.parquet" for name in (SPLITS if split == "all" else (split,))]
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            raise InputError(folder, f"has no {', '.join(absent)}: build the dataset first "
                                     "(misalign-fast build), or point bench.dataset at one")
        source = str(folder)
    elif not path.exists():
        raise InputError(path, "does not exist: build a dataset there first (misalign-fast build), or point "
                               "bench.dataset (--dataset) at one")
    else:
        files, source = [path], str(path)
    rows = [row for f in files for row in _stage1_rows(f)]
    return _items(rows, [], source, labels)


def _stage1_rows(path: Path):
    """(where, record) of each row of a Stage I Parquet file, its columns checked to be text."""
    table = tables.read_table(path, "parquet")
    needed = [n for n in ITEM_SCHEMA.names if n != "item" and n not in VERIFIED]
    missing = [n for n in needed if n not in table.column_names]
    if missing:
        raise InputError(path, f"is not a misalign-fast dataset: no column {', '.join(missing)}")
    for name in needed:
        kind = table.schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise InputError(path, f"column {name!r} holds {kind} values, expected text")
    verified = [n for n in VERIFIED if n in table.column_names]    # a dataset before the per-dimension check has none
    for row, record in enumerate(table.select(needed + verified).to_pylist(), start=1):
        yield f"{path.name} row {row}", record


def _items(rows, problems: list, source: str, labels: savacu.DomainLabels) -> Items:
    """The items among (where, record) rows; the others added to `problems`."""
    kept, first = [], {}
    for where, row in rows:
        reason = None
        if not (row["prompt"] or "").strip():
            reason = "prompt is empty or null"
        elif not row["id"] or not row["generator"]:
            reason = "id or generator is empty or null"
        elif not row["aligned_response"] or not row["misaligned_response"]:
            reason = f"has no {'aligned' if not row['aligned_response'] else 'misaligned'} response"
        else:
            try:
                domains = {f"{dim}_domain": labels.domain(dim, row[f"{dim}_domain"]) for dim in DIMENSIONS}
            except ValueError as exc:
                reason = str(exc)
        item = f"{row['id']}/{row['generator']}"
        if reason is None and item in first:
            reason = f"item {item!r} (id/generator) is also {first[item]}'s"
        if reason:
            if not problems or problems[-1] != (where, reason):     # once per row, not per generator
                problems.append((where, reason))
            continue
        first[item] = where
        kept.append({**dict.fromkeys(VERIFIED), **row, **domains, "item": item})
    return Items(pa.Table.from_pylist(kept, schema=ITEM_SCHEMA), source, problems, labels.notes())


def questions(per_dimension: bool) -> list[str]:
    return ["joint", *DIMENSIONS] if per_dimension else ["joint"]


def verdicts(p_misaligned: np.ndarray, keys: list[tuple], runs: int, threshold: float, temperature: float,
             seed: int) -> np.ndarray:
    """(runs, n) flags as float (NaN: no usable answer) from P(misaligned) per response."""
    p = np.asarray(p_misaligned, dtype=np.float64)
    usable = np.isfinite(p)
    out = np.full((runs, len(p)), np.nan)
    if temperature <= 0:
        out[:, usable] = p[usable] >= threshold
        return out
    sharp = np.where(usable, p, 0.5) ** (1 / temperature)
    rest = np.where(usable, 1 - p, 0.5) ** (1 / temperature)
    q = sharp / (sharp + rest)
    for r in range(runs):
        u = np.array([item_seed(seed, r, *key) for key in keys], dtype=np.float64) / 2.0 ** 63
        out[r, usable] = (u < q)[usable]
    return out


def _rows(model: str, table: pa.Table, asked: list[tuple], p: np.ndarray, flags: np.ndarray,
          yes: tuple = (None, None)) -> pa.Table:
    """Long format: one row per (run, item, response, question); `p` is one P(misaligned) per
    asked response, or one per run and response; `yes` the P(Yes) to each polarity per asked
    response (None: not asked)."""
    items = table.to_pylist()
    p = np.broadcast_to(p, flags.shape)
    polarity = [np.full(len(asked), np.nan) if y is None else y for y in yes]
    rows = []
    for r in range(flags.shape[0]):
        for k, (i, response, question) in enumerate(asked):
            item = items[i]
            rows.append({"model": model, "run": r, "item": item["item"], "id": item["id"], "response": response,
                         "question": question, "p_misaligned": float(p[r, k]),
                         "yes_to_misaligned": _number(polarity[0][k]), "yes_to_aligned": _number(polarity[1][k]),
                         "flagged": None if np.isnan(flags[r, k]) else bool(flags[r, k]),
                         **{key: item[key] for key in ("generator", *(f"{d}_domain" for d in DIMENSIONS), *VERIFIED)}})
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def _number(value) -> float | None:
    return float(value) if np.isfinite(value) else None


# the [bench] settings a model's verdicts depend on (dataset, split and models choose the items
# and the stages; bootstrap is the report's)
VERDICT_SETTINGS = ("runs", "threshold", "temperature", "per_dimension", "balanced", "no_opinion")


class DetectStage(Stage):
    """A generative model under test (local vLLM or a server), zero-shot; built from [bench]."""
    rowwise = True
    templates = ("detect",)

    def __init__(self, config: BenchConfig, pool: Pool, model: str, seed: int = 0):
        super().__init__(pool)
        self.name = f"bench-{model}"
        self.config, self.model, self.runs, self.seed = config, model, config.runs, seed
        self.threshold, self.temperature = config.threshold, config.temperature
        self.questions, self.balanced = questions(config.per_dimension), config.balanced

    def run(self, table: pa.Table) -> pa.Table:
        asked = [(i, response, q) for i in range(table.num_rows) for response in SIDES for q in self.questions]
        prompts, responses = table.column("prompt").to_pylist(), {
            r: table.column(f"{r}_response").to_pylist() for r in SIDES}
        yes = ask_yes_no(self.pool.get(self.model) if asked else None,
                         lambda k, quality: detector_prompt(asked[k][2], prompts[asked[k][0]],
                                                            responses[asked[k][1]][asked[k][0]], quality),
                         list(range(len(asked))), self.balanced)
        p = polarity_balanced(*yes, self.config.no_opinion)
        items = table.column("item").to_pylist()
        keys = [(self.model, items[i], r, q) for i, r, q in asked]
        return _rows(self.model, table, asked, p, verdicts(p, keys, self.runs, self.threshold, self.temperature,
                                                           self.seed), yes)

    def settings(self) -> dict[str, object]:
        return {**section_values("bench", self.config, VERDICT_SETTINGS), "run.seed": self.seed}

    def models(self) -> list[str]:
        return [self.model]


def pair_features(embedder, prompts: list[str], responses: list[str]) -> np.ndarray:
    """[prompt, response, prompt * response] embeddings: the product carries how the response
    relates to its prompt, which neither embedding alone does."""
    e = embedder.embed([*prompts, *responses])
    ep, er = e[:len(prompts)], e[len(prompts):]
    return np.hstack([ep, er, ep * er])


class ProbeStage(Stage):
    """The trained baseline: `runs` logistic probes, each fit on a bootstrap resample of the
    training pairs (seeded), score every response; flagged when P(misaligned) >= threshold."""
    rowwise = True

    def __init__(self, config: BenchConfig, pool: Pool, model: str, train: Items, seed: int = 0):
        if not train.table.num_rows:
            raise ConfigError(f"probe {model!r} has no training pairs in {train.source}")
        super().__init__(pool)
        self.name = f"bench-{model}"
        self.model, self.train, self.runs = model, train, config.runs
        self.threshold, self.seed = config.threshold, seed
        self.heads = None
        self.engine = None

    def settings(self) -> dict[str, object]:
        return {"bench.runs": self.runs, "bench.threshold": self.threshold, "run.seed": self.seed,
                "training items": self.train.sha256}

    def _fit(self) -> list:
        t = self.train.table
        prompts = t.column("prompt").to_pylist()
        x = np.vstack([pair_features(self.engine, prompts, t.column(f"{r}_response").to_pylist()) for r in SIDES])
        y = np.repeat([0, 1], t.num_rows)         # aligned, misaligned
        heads = []
        for r in range(self.runs):
            rng = np.random.default_rng(item_seed(self.seed, self.model, "bootstrap", r))
            pick = rng.integers(0, t.num_rows, t.num_rows)
            rows = np.concatenate([pick, pick + t.num_rows])     # both responses of a drawn pair
            heads.append(fit_softmax(x[rows], y[rows], 2, rng, l2=1e-3, epochs=300, lr=0.05))
        return heads

    def run(self, table: pa.Table) -> pa.Table:
        self.engine = self.pool.embedder()
        if self.heads is None:
            self.heads = self._fit()
        prompts = table.column("prompt").to_pylist()
        x = np.vstack([pair_features(self.engine, prompts, table.column(f"{r}_response").to_pylist())
                       for r in SIDES]) if table.num_rows else np.empty((0, 1))
        n = table.num_rows
        asked = [(i, response, "joint") for response in SIDES for i in range(n)]
        p = np.array([softmax(x @ w + b)[:, 1] for w, b in self.heads]) if n else np.empty((self.runs, 0))
        return _rows(self.model, table, asked, p, (p >= self.threshold).astype(np.float64))

    def models(self) -> list[str]:
        return [EMBEDDER]


class LengthBaseline(Stage):
    """The shortcut baseline in every report: P(misaligned) from the lengths alone (the
    response's, and its ratio to the prompt's), by a logistic regression fit with 2-fold
    cross-fitting over prompts on the benchmarked items themselves, so it needs no training
    split and never scores a prompt it was fit on (a single prompt gets no P).  What it
    reaches, a model's score owes nothing to judgement."""
    rowwise = False           # it fits on the whole set
    name = f"bench-{LENGTH_BASELINE}"
    model = LENGTH_BASELINE

    def __init__(self, config: BenchConfig, seed: int = 0):
        super().__init__()
        self.runs, self.threshold, self.seed = config.runs, config.threshold, seed

    def settings(self) -> dict[str, object]:
        return {"bench.runs": self.runs, "bench.threshold": self.threshold, "run.seed": self.seed}

    def run(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        def log_chars(column):
            return np.log1p(np.array([len(t) for t in table.column(column).to_pylist()], dtype=np.float64))
        prompt = log_chars("prompt")
        x = np.vstack([np.column_stack([log_chars(f"{r}_response"), log_chars(f"{r}_response") - prompt])
                       for r in SIDES])
        y = np.repeat([0, 1], n)
        fold = np.tile(self.folds(table.column("id").to_pylist()), 2)
        p = np.full(2 * n, np.nan)          # a single prompt: nothing to fit on but itself, no baseline
        for f in (0, 1):
            train = fold != f
            if not train.any() or not (fold == f).any():
                continue
            mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
            w, b = fit_softmax((x[train] - mean) / std, y[train], 2, np.random.default_rng(self.seed), l2=1e-3,
                               epochs=300, lr=0.05)
            p[fold == f] = softmax(((x[fold == f] - mean) / std) @ w + b)[:, 1]
        asked = [(i, response, "joint") for response in SIDES for i in range(n)]
        flags = np.where(np.isfinite(p), p >= self.threshold, np.nan)
        return _rows(self.model, table, asked, p, np.broadcast_to(flags, (self.runs, 2 * n)))

    def folds(self, ids: list[str]) -> np.ndarray:
        """0 or 1 per item: the distinct prompts, ordered by a seeded hash, alternate, so both
        folds hold prompts whenever there are two (a prompt's items share its fold)."""
        order = sorted(set(ids), key=lambda i: item_seed(self.seed, "length fold", i))
        fold_of = {prompt: k % 2 for k, prompt in enumerate(order)}
        return np.array([fold_of[i] for i in ids], dtype=int)

