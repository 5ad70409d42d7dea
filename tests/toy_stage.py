"""A stage of a user's own, as the README shows one: this file and a [stages.words] section are all
it takes (see tests/test_extension.py).  It adds each prompt's word count and counts, per domain,
the prompts longer than its setting."""
from dataclasses import dataclass

import pyarrow as pa

from misalign.stages.base import Stage, section_values
from misalign.stages.common import count_domains


class WordsStage(Stage):
    name = "words"
    columns = ("prompt_words",)                 # kept in the dataset
    domain_counts = ("long_prompts",)           # a column of stats.csv and dataset.html

    @dataclass
    class Settings:                             # the [stages.words] section, checked when the config loads
        longer_than: int = 12
        reviewer: str = ""                      # a model from [models] (this toy only names it)

        def validate(self):
            if self.longer_than < 1:
                raise ValueError(f"longer_than must be >= 1, got {self.longer_than}")

        def roles(self):                        # the models it uses: checked before any engine starts
            return {"reviewer": [self.reviewer] if self.reviewer else []}

    def __init__(self, config: Settings, pool=None):
        super().__init__(pool)
        self.config = config

    def settings(self):                         # what its checkpoint depends on
        return section_values("stages.words", self.config)

    def run(self, table: pa.Table) -> pa.Table:
        words = [len(p.split()) for p in table.column("prompt").to_pylist()]
        for row, n in zip(table.select([c for c in table.column_names if c.endswith("_domain")]).to_pylist(), words):
            count_domains(self.per_domain, "long_prompts", row, int(n > self.config.longer_than))
        return table.append_column("prompt_words", pa.array(words, pa.int64()))
