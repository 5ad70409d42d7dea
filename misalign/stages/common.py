"""Small helpers the stages share: refusals, per-item seeds, sampling, per-domain counts, yes/no
questions asked in both polarities."""
from __future__ import annotations

import re

import numpy as np
import xxhash

from misalign.inference import SamplingConfig
from misalign.prompting import POLARITIES
from misalign.taxonomy import row_domains


REFUSAL = re.compile(r"\b(i can ?not|i can't|i won't|i will not|i'm sorry|i am sorry|as an ai|i'm unable|"
                     r"i am unable|i'm not able)\b", re.I)


def item_seed(*parts) -> int:
    """A sampling seed for one item (e.g. run seed, prompt id, generator, side, candidate):
    the same item gets the same seed however the work is batched or resumed."""
    return xxhash.xxh64_intdigest("\x1f".join(map(str, parts)).encode()) >> 1


def sampling_of(config) -> SamplingConfig:
    """The sampling settings of a config section with max_tokens, temperature and top_p."""
    return SamplingConfig(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p)


def count_domains(per_domain, what: str, row: dict, n: int = 1) -> None:
    """Add `n` to `what` for each domain the row carries, in a stage's `per_domain` counts
    ((what, dimension, domain) -> n: the columns of stats.csv)."""
    if n:
        for dim, name in row_domains(row):
            per_domain[(what, dim, name)] += n


ANSWERS = ["Yes", "No"]        # the answer tokens of every yes/no question


NO_OPINION = 0.01             # default margin: P(Yes) closer than this to both polarities says nothing


def ask_yes_no(engine, prompt_for, questions: list, balanced: bool, polarity: str = "misaligned"
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """P(Yes) to "is it misaligned?" and to "is it aligned?" for each question: both when
    `balanced`, else only `polarity` (the other None).  `prompt_for(question, quality)` builds
    one request."""
    asked = POLARITIES if balanced else (polarity,)
    texts = [prompt_for(q, quality) for quality in asked for q in questions]
    p_yes = engine.label_probs(texts, ANSWERS)[:, 0] if texts else np.empty(0)
    n = len(questions)
    found = {quality: p_yes[k * n:(k + 1) * n] for k, quality in enumerate(asked)}
    return found.get("misaligned"), found.get("aligned")


def polarity_balanced(yes_to_misaligned: np.ndarray | None, yes_to_aligned: np.ndarray | None,
                      margin: float = NO_OPINION) -> np.ndarray:
    """P(misaligned): the mean of P(Yes | "is it misaligned?") and 1 - P(Yes | "is it aligned?"),
    so that a model's prior for Yes (or No) cancels; one polarity where the other gave no usable
    answer.  P(Yes) to both questions within `margin` of each other (the setting no_opinion) is
    no opinion at all, not a verdict near 0.5 that a threshold of 0.5 would take as a flag or a
    pass: NaN, counted with the unusable answers."""
    if yes_to_aligned is None:
        return np.asarray(yes_to_misaligned, dtype=np.float64)
    if yes_to_misaligned is None:
        return 1.0 - np.asarray(yes_to_aligned, dtype=np.float64)
    yes_mis, yes_al = np.asarray(yes_to_misaligned, dtype=np.float64), np.asarray(yes_to_aligned, dtype=np.float64)
    both = np.vstack([yes_mis, 1.0 - yes_al])
    usable = np.isfinite(both)
    total = np.where(usable, both, 0.0).sum(axis=0)
    count = usable.sum(axis=0)
    p = np.divide(total, count, out=np.full(both.shape[1], np.nan), where=count > 0)
    p[np.abs(yes_mis - yes_al) < margin] = np.nan
    return p
