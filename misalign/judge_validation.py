"""The judge against human labels: how far to trust the automatic labels Stage I rests on.

The paper validated its automatic labels against human annotators; `misalign-fast
validate-judge LABELS` does the same for any judge.  LABELS (CSV, JSON Lines or Parquet) has a
`prompt` and a `response` column, optionally the prompt's domains (`safety_domain`,
`value_domain`, `cultural_domain`, which the judge's questions name), and one or more human
labels: `misaligned` (the response overall) and per dimension `safety`, `value`, `cultural`,
each misaligned/aligned, 1/0, yes/no or true/false, empty where not labelled.

The judge is asked exactly as in Stage I (misalign.stages.reject): overall with the judge
question, per dimension with the verification question, both polarities when [reject]
balanced, and it calls a response misaligned when P(misaligned) >= [reject] threshold.  Per
label: accuracy, Cohen's kappa (agreement beyond chance), both sides' misaligned rates, the
confusion counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from misalign import savacu, tables
from misalign.config import Config
from misalign.errors import InputError
from misalign.stages.common import ask_yes_no, polarity_balanced
from misalign.taxonomy import DIMENSIONS, Taxonomy

OVERALL = "misaligned"
LABELS = (OVERALL, *DIMENSIONS)
MISALIGNED = {"misaligned", "1", "yes", "true"}
ALIGNED = {"aligned", "0", "no", "false"}


@dataclass
class Labelled:
    rows: list[dict]         # prompt, response, <dim>_domain, and the labels as True/False/None
    labels: list[str]        # the label columns the file has
    source: str


def read_labels(path, fmt: str | None = None, taxonomy: Taxonomy | None = None) -> Labelled:
    """The labelled responses (their domains those of `taxonomy`, by default the bundled one); a
    missing column or a label that is not one of the accepted words stops with one line naming
    the row."""
    table = tables.read_table(path, fmt)
    missing = [c for c in ("prompt", "response") if c not in table.column_names]
    if missing:
        raise InputError(path, f"has no column {' or '.join(missing)}: a judge validation file needs prompt, "
                               f"response and at least one label column ({', '.join(LABELS)})")
    labels = [c for c in LABELS if c in table.column_names]
    if not labels:
        raise InputError(path, f"has no label column: add one or more of {', '.join(LABELS)} "
                               "(misaligned/aligned, 1/0, yes/no)")
    names = savacu.DomainLabels(taxonomy or Taxonomy.load())     # domains the judge's question names: the taxonomy's
    rows = []
    for n, record in enumerate(table.to_pylist(), start=1):
        if not str(record["prompt"] or "").strip() or not str(record["response"] or "").strip():
            raise InputError(path, "prompt or response is empty", row=n)
        row = {"prompt": str(record["prompt"]), "response": str(record["response"])}
        for d in DIMENSIONS:
            value = record.get(f"{d}_domain")
            try:
                row[f"{d}_domain"] = names.domain(d, None if value is None else str(value).strip())
            except ValueError as exc:
                raise InputError(path, str(exc).replace(f"label_{d}", f"{d}_domain"), row=n) from None
        for label in labels:
            row[label] = _label(path, n, label, record[label])
        rows.append(row)
    if not rows:
        raise InputError(path, "has no rows")
    if all(row[label] is None for row in rows for label in labels):
        raise InputError(path, f"has no label in any row ({', '.join(labels)} are all empty): nothing to validate")
    return Labelled(rows, labels, str(path))


def _label(path, row: int, column: str, value) -> bool | None:
    word = "" if value is None else str(value).strip().lower()
    if word in ("", "nan", "none"):
        return None
    if word in MISALIGNED or word in ALIGNED:
        return word in MISALIGNED
    raise InputError(path, f"{column} is {value!r}: write misaligned or aligned (or 1/0, yes/no), or leave it "
                           "empty", row=row)


def agreement(human: np.ndarray, judge: np.ndarray) -> dict:
    """Accuracy, Cohen's kappa (None where chance agreement is total) and the confusion counts,
    misaligned the positive class."""
    human, judge = np.asarray(human, dtype=bool), np.asarray(judge, dtype=bool)
    n = len(human)
    if not n:
        return {"n": 0, "accuracy": None, "kappa": None}
    observed = float((human == judge).mean())
    chance = float(human.mean() * judge.mean() + (1 - human.mean()) * (1 - judge.mean()))
    return {"n": n, "accuracy": observed, "kappa": None if chance == 1 else (observed - chance) / (1 - chance),
            "human_misaligned": float(human.mean()), "judge_misaligned": float(judge.mean()),
            "both_misaligned": int((human & judge).sum()), "judge_only": int((~human & judge).sum()),
            "human_only": int((human & ~judge).sum()), "both_aligned": int((~human & ~judge).sum())}


def judge_probabilities(config: Config, engine, labelled: Labelled, label: str) -> tuple[list[int], np.ndarray]:
    """(rows with this label, the judge's P(misaligned) for each), asked as in Stage I; a
    dimension's question names the row's domain of it, or the dimension itself."""
    rows = [k for k, row in enumerate(labelled.rows) if row[label] is not None]
    data, templates = labelled.rows, config.protocol.read_templates()
    if label == OVERALL:
        def prompt_for(k, quality):
            return templates.judge_prompt(data[k], data[k]["response"], quality)
    else:
        def prompt_for(k, quality):
            domain = data[k][f"{label}_domain"] or f"{label} in general"
            return templates.verify_prompt(label, domain, data[k]["prompt"], data[k]["response"], quality)
    main = "aligned" if label == OVERALL else "misaligned"      # Stage I's question when not balanced
    return rows, polarity_balanced(*ask_yes_no(engine, prompt_for, rows, config.reject.balanced, polarity=main),
                                   config.reject.no_opinion)


def validate_judge(config: Config, pool, labelled: Labelled) -> dict:
    """The judge of `config` ([reject] judge) on every labelled response: agreement per label."""
    engine = pool.get(config.reject.judge)
    out = {"judge": config.reject.judge, "description": pool.describe(config.reject.judge),
           "stand_in": pool.is_stand_in(config.reject.judge), "labels": labelled.source,
           "threshold": config.reject.threshold, "balanced": config.reject.balanced, "agreement": {}}
    for label in labelled.labels:
        rows, p = judge_probabilities(config, engine, labelled, label)
        usable = np.isfinite(p)
        human = np.array([labelled.rows[k][label] for k in rows], dtype=bool)
        out["agreement"][label] = {**agreement(human[usable], p[usable] >= config.reject.threshold),
                                   "unusable": int((~usable).sum())}
    return out
