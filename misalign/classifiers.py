"""Classifiers onto the taxonomy: per dimension, a probability for every domain and "none".

Shared by the classify stage, Stage II's probe baseline and `misalign-fast classify`.  The
embedding method is the fast path: prompts and domain descriptions are
embedded with a sentence-embedding model (all-MiniLM-L6-v2 by default, on CPU).

- zero-shot: softmax over cosine similarities / temperature, with "none" scored as a fixed
  similarity (`none_similarity`): a prompt close to no description gets "none".
- probe: a multinomial logistic regression per dimension on the embeddings, trained on labelled
  prompts (the paper's LLM labels, or ours on a sample) and saved as .npz; it labels the rest
  at embedding speed.

A domain is assigned when its probability is at least delta (0.5); since the probabilities of a
dimension sum to 1, a dimension carries at most one domain, and a prompt can carry one in each
dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from misalign.errors import InputError
from misalign.inference.base import answer_codes
from misalign.tables import atomic_path
from misalign.taxonomy import DIMENSIONS, UNKNOWN, Taxonomy

NONE = "none"


@dataclass
class ZeroShotConfig:
    delta: float = 0.5
    temperature: float = 0.05
    none_similarity: float = 0.3


@dataclass
class DimensionLabels:
    classes: list[str]               # domain names of the dimension, then "none"
    probs: np.ndarray                # (n, len(classes))
    delta: float
    mass: np.ndarray | None = None   # LLM labels: the probability the model put on the answer codes
    min_mass: float = 0.0

    @property
    def unknown(self) -> np.ndarray:
        """Rows without a usable answer: too little mass on the codes, or no answer at all."""
        bad = ~np.isfinite(self.probs).all(axis=1)
        return bad if self.mass is None else bad | (self.mass < self.min_mass)

    @property
    def assigned(self) -> list[str | None]:
        """The domain with probability >= delta, else None (which includes a "none" win and
        Unknown rows)."""
        best = np.nan_to_num(self.probs, nan=0.0).argmax(axis=1)
        unknown = self.unknown
        return [self.classes[k] if not unknown[i] and self.probs[i, k] >= self.delta and self.classes[k] != NONE
                else None for i, k in enumerate(best)]


def classes_of(taxonomy: Taxonomy, dimension: str) -> list[str]:
    return [d.name for d in taxonomy.of(dimension)] + [NONE]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ZeroShotClassifier:
    def __init__(self, engine, taxonomy: Taxonomy, config: ZeroShotConfig | None = None):
        self.config = config or ZeroShotConfig()
        self.taxonomy = taxonomy
        self.descriptions = {dim: engine.embed([f"{d.name}: {d.description}" for d in taxonomy.of(dim)])
                             for dim in DIMENSIONS}

    def classify(self, embeddings: np.ndarray) -> dict[str, DimensionLabels]:
        out = {}
        for dim in DIMENSIONS:
            sims = embeddings @ self.descriptions[dim].T
            none = np.full((len(sims), 1), self.config.none_similarity)
            probs = softmax(np.hstack([sims, none]) / self.config.temperature)
            out[dim] = DimensionLabels(classes_of(self.taxonomy, dim), probs, self.config.delta)
        return out


@dataclass
class LinearProbe:
    """One softmax-regression head per dimension over sentence embeddings."""
    weights: dict[str, np.ndarray]       # (dim, classes)
    biases: dict[str, np.ndarray]
    classes: dict[str, list[str]]
    embedding_model: str

    def classify(self, embeddings: np.ndarray, delta: float = 0.5) -> dict[str, DimensionLabels]:
        return {dim: DimensionLabels(self.classes[dim], softmax(embeddings @ self.weights[dim] + self.biases[dim]),
                                     delta) for dim in self.weights}

    def save(self, path) -> None:
        """Write the probe to `path` as named (numpy would add .npz to a bare name), atomically."""
        arrays = {}
        for dim in self.weights:
            arrays[f"{dim}.weights"] = self.weights[dim]
            arrays[f"{dim}.biases"] = self.biases[dim]
            arrays[f"{dim}.classes"] = np.array(self.classes[dim])
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, embedding_model=np.array(self.embedding_model), **arrays)

    @classmethod
    def load(cls, path) -> "LinearProbe":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"is not a probe saved by misalign-fast ({exc})") from None
        dims = sorted({k.split(".")[0] for k in data.files if "." in k}, key=DIMENSIONS.index)
        return cls({d: data[f"{d}.weights"] for d in dims}, {d: data[f"{d}.biases"] for d in dims},
                   {d: data[f"{d}.classes"].tolist() for d in dims}, str(data["embedding_model"]))


def train_probe(embeddings: np.ndarray, labels: dict[str, list[str | None]], taxonomy: Taxonomy,
                embedding_model: str, l2: float = 1e-5, epochs: int = 800, lr: float = 0.1,
                seed: int = 0) -> LinearProbe:
    """Fit a softmax regression per dimension (full-batch Adam).  Labels: a domain name, None or
    "" for none; the paper's "Unknown" rows are left out of that dimension's training."""
    rng = np.random.default_rng(seed)
    weights, biases, classes = {}, {}, {}
    for dim, column in labels.items():
        names = classes_of(taxonomy, dim)
        index = {name: k for k, name in enumerate(names)}
        rows, targets = [], []
        for i, label in enumerate(column):
            if label == UNKNOWN:
                continue
            label = label or NONE
            if label not in index:
                raise InputError("training labels", f"{label!r} is not a {dim} domain")
            rows.append(i)
            targets.append(index[label])
        w, b = fit_softmax(embeddings[rows], np.array(targets), len(names), rng, l2, epochs, lr)
        weights[dim], biases[dim], classes[dim] = w, b, names
    return LinearProbe(weights, biases, classes, embedding_model)


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, rng: np.random.Generator, l2: float = 1e-5,
                epochs: int = 800, lr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression by full-batch Adam: (weights (features, classes), biases), float32."""
    w = rng.normal(0, 0.01, size=(x.shape[1], n_classes))
    b = np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    for step in range(1, epochs + 1):
        p = softmax(x @ w + b)
        grad_w = x.T @ (p - onehot) / len(x) + l2 * w
        grad_b = (p - onehot).mean(axis=0)
        for k, (param, grad) in enumerate(((w, grad_w), (b, grad_b))):
            m[k] = 0.9 * m[k] + 0.1 * grad
            v[k] = 0.999 * v[k] + 0.001 * grad ** 2
            param -= lr * (m[k] / (1 - 0.9 ** step)) / (np.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8)
    return w.astype(np.float32), b.astype(np.float32)


def agreement(predicted: list[str | None], reference: list[str | None]) -> dict:
    """Accuracy and macro-F1 (over the classes the reference uses) on rows with a usable
    reference label; None / "" mean none, "Unknown" rows are skipped."""
    pairs = [(p or NONE, r or NONE) for p, r in zip(predicted, reference) if r != UNKNOWN]
    if not pairs:
        return {"n": 0, "accuracy": float("nan"), "macro_f1": float("nan")}
    pred, ref = map(np.array, zip(*pairs))
    f1s = []
    for label in np.unique(ref):
        tp = np.sum((pred == label) & (ref == label))
        precision = tp / max(np.sum(pred == label), 1)
        recall = tp / np.sum(ref == label)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"n": len(pairs), "accuracy": float(np.mean(pred == ref)), "macro_f1": float(np.mean(f1s))}


def label_columns(labels: dict[str, DimensionLabels]) -> dict[str, list]:
    """Output columns: <dim>_domain (name or null), <dim>_prob (its probability, or that of
    none), <dim>_probs (every class of the dimension, taxonomy order, none last)."""
    columns = {}
    for dim, result in labels.items():
        assigned = result.assigned
        best = np.nan_to_num(result.probs, nan=0.0).max(axis=1)
        columns[f"{dim}_domain"] = assigned
        columns[f"{dim}_prob"] = best.astype(np.float32).tolist()
        columns[f"{dim}_probs"] = [row.astype(np.float32).tolist() for row in result.probs]
        if result.mass is not None:
            columns[f"{dim}_answer_mass"] = result.mass.astype(np.float32).tolist()
    return columns


class LLMClassifier:
    """An LLM reads one prompt per dimension (instruction and domain list first, so the prefix
    cache serves them; the item last) and the answer code's probabilities are the labels.

    The codes are chosen for the model's tokenizer, so that each is one token of its own (a
    Mistral tokenizer writes "0" as a prefix space and a digit, "A" as one token).  A row where
    the model put less than `min_mass` of its probability on the codes at all is Unknown (the
    paper's class for no usable answer): no domain, counted."""

    def __init__(self, engine, taxonomy: Taxonomy, delta: float = 0.5, min_mass: float = 0.5,
                 template: str | None = None):
        """`template`: the classify template's text (default: the bundled one)."""
        from misalign.prompting import PromptTemplates
        template = template or PromptTemplates.bundled()["classify"]
        self.engine, self.taxonomy, self.delta, self.min_mass = engine, taxonomy, delta, min_mass
        self.heads = {}
        for dim in DIMENSIONS:
            domains = taxonomy.of(dim)
            codes = answer_codes(engine.token_ids, len(domains) + 1, f"the tokenizer of {engine.model!r}")
            listing = "\n".join(f"{c}: {d.name} ({d.description})" for c, d in zip(codes, domains))
            head = template.replace("{domains}", listing).replace("{dimension}", dim).replace("{none}", codes[-1])
            # literal braces are written {{ and }} in a template; the prompt goes in last, as it is
            self.heads[dim] = ("{prompt}".join(part.replace("{{", "{").replace("}}", "}")
                                               for part in head.split("{prompt}", 1)), codes)

    def classify(self, prompts: list[str]) -> dict[str, DimensionLabels]:
        out = {}
        for dim, (head, choices) in self.heads.items():
            before, after = head.split("{prompt}", 1)
            answer = self.engine.answer_probs([before + p + after for p in prompts], choices)
            out[dim] = DimensionLabels(classes_of(self.taxonomy, dim), answer.probs, self.delta,
                                       mass=answer.mass, min_mass=self.min_mass)
        return out


def append_labels(table: pa.Table, labels: dict[str, DimensionLabels]) -> pa.Table:
    for name, values in label_columns(labels).items():
        kind = (pa.list_(pa.float32()) if name.endswith("_probs") else
                pa.float32() if name.endswith(("_prob", "_answer_mass")) else pa.string())
        table = table.append_column(name, pa.array(values, kind))
    return table
