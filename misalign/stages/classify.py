"""The classify stage: every prompt labelled with a safety, a value and a cultural domain (or
none), by the classifier the [classify] section names (misalign.classifiers)."""
from __future__ import annotations

import pyarrow as pa

from misalign.classifiers import (LinearProbe, LLMClassifier, ZeroShotClassifier, ZeroShotConfig, DimensionLabels,
                                  append_labels, classes_of, label_columns)
from misalign.config import ClassifyConfig
from misalign.errors import MisalignError
from misalign.inference.base import EMBEDDER, Pool
from misalign.identity import file_digest
from misalign.prompting import PromptTemplates
from misalign.stages.base import Stage, section_values
from misalign.stages.common import count_domains
from misalign.taxonomy import DIMENSIONS, Taxonomy


class ClassifyStage(Stage):
    """Row-wise pipeline stage: adds <dim>_domain / _prob / _probs columns (and, from an LLM,
    <dim>_answer_mass), from embeddings (zero-shot or a probe) or from an LLM's answer
    probabilities (`method = "llm"`).  Engines come from the pool and start on the first shard:
    a resumed run may need none.

    With `expanded=True` (the stage after expansion) it labels only the generated rows, on all
    three dimensions like the input prompts; the dimension a row was generated for keeps its
    domain and gets the classifier's probability for it."""
    rowwise = True

    def __init__(self, config: ClassifyConfig, pool: Pool, taxonomy: Taxonomy, expanded: bool = False,
                 prompt_templates: PromptTemplates | None = None):
        super().__init__(pool, prompt_templates)
        self.config, self.taxonomy, self.expanded = config, taxonomy, expanded
        self.name = "classify-expanded" if expanded else "classify"
        self.llm = config.model if config.method == "llm" else ""
        # several shards per call for an LLM; the embedder's floats differ in their last bits
        # with its batch's padding, so it keeps one shard per call and its checkpoints as they were
        self.one_to_one = bool(self.llm)
        self.probe = LinearProbe.load(config.probe) if config.probe else None
        self.engine = self.zero_shot = self.llm_classifier = None
        self.method = (f"LLM answer probabilities ({self.llm})" if self.llm else
                       f"embedding probe ({config.probe})" if config.probe else "embedding zero-shot")

    def labels(self, prompts: list[str]) -> dict[str, DimensionLabels]:
        if self.llm:
            self.engine = self.pool.get(self.llm)
            if self.llm_classifier is None or self.llm_classifier.engine is not self.engine:   # restarted
                self.llm_classifier = LLMClassifier(self.engine, self.taxonomy, self.config.delta,
                                                    self.config.min_mass, self.prompt_templates["classify"])
            labels = self.llm_classifier.classify(prompts)
        else:
            self.engine = self.pool.embedder()
            if self.probe is None and self.zero_shot is None:
                self.zero_shot = ZeroShotClassifier(self.engine, self.taxonomy, ZeroShotConfig(delta=self.config.delta))
            embeddings = self.engine.embed(prompts)
            labels = (self.probe.classify(embeddings, self.config.delta) if self.probe
                      else self.zero_shot.classify(embeddings))
        for dim, result in labels.items():
            self.counts[f"unknown_{dim}"] += int(result.unknown.sum())
        return labels

    def run(self, table: pa.Table) -> pa.Table:
        out = self._labelled(table)
        for row in out.select(["origin", *(f"{dim}_domain" for dim in DIMENSIONS)]).to_pylist():
            if not self.expanded:
                count_domains(self.per_domain, "classified", row)
            elif row["origin"] == "expanded":
                count_domains(self.per_domain, "expanded", row)
        return out

    def _labelled(self, table: pa.Table) -> pa.Table:
        if not self.expanded:
            return append_labels(table, self.labels(table.column("prompt").to_pylist()))
        if "target_dimension" not in table.column_names:
            raise MisalignError("this run directory's expand stage was written by an older misalign-fast "
                                "(no target_dimension column): use a new run directory")
        rows = table.to_pylist()
        generated = [i for i, r in enumerate(rows) if r["origin"] == "expanded"]
        if generated:
            labelled = label_columns(self.labels([rows[i]["prompt"] for i in generated]))
            for k, i in enumerate(generated):
                row, target = rows[i], rows[i]["target_dimension"]
                for name, values in labelled.items():
                    if not name.startswith(target + "_") or name.endswith(("_probs", "_answer_mass")):
                        row[name] = values[k]
                classes = classes_of(self.taxonomy, target)
                row[f"{target}_prob"] = labelled[f"{target}_probs"][k][classes.index(row[f"{target}_domain"])]
        return pa.Table.from_pylist(rows, schema=table.schema)

    def settings(self) -> dict[str, object]:
        return {**section_values("classify", self.config), "taxonomy": self.taxonomy.digest,
                **({"classify.probe file": file_digest(self.config.probe)} if self.config.probe else {})}

    @property
    def templates(self) -> tuple[str, ...]:
        return ("classify",) if self.llm else ()

    def models(self) -> list[str]:
        return [self.llm or EMBEDDER]
