import json

from click.testing import CliRunner

from misalign.cli import main
from misalign.taxonomy import DIMENSIONS, Taxonomy


def test_names_are_exactly_the_papers(taxonomy_reference):
    reference = json.loads(taxonomy_reference.read_text())
    tax = Taxonomy.load()
    for dim in DIMENSIONS:
        assert [d.name for d in tax.of(dim)] == [d["name"] for d in reference["dimensions"][dim]["domains"]]


def test_sizes_codes_and_descriptions():
    tax = Taxonomy.load()
    assert [len(tax.of(d)) for d in DIMENSIONS] == [14, 56, 41]
    assert len({d.code for d in tax.domains}) == 111
    assert all(20 <= len(d.description) <= 160 and d.description.endswith(".") for d in tax.domains)
    assert tax.domain("value", "Honesty").code == "V22"


def test_taxonomy_command_prints_every_domain():
    result = CliRunner().invoke(main, ["taxonomy", "--json"])
    assert result.exit_code == 0
    printed = json.loads(result.output)
    assert sum(len(v) for v in printed.values()) == 111
    assert printed["cultural"][0]["name"] == "Architectural Services"
