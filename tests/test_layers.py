"""Dependencies point one way: cli -> run -> build / benchmark -> pipeline -> stages -> inference,
with no import cycle among misalign's modules at all (imports inside functions count: they are
dependencies too, only later)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "misalign"
SHARED_BY_STAGES = ("base", "common")           # misalign/stages/ modules that are not stages


def module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The misalign modules a file imports, anywhere in it (`from misalign.x import y` is module
    misalign.x.y where that is a module, else misalign.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("misalign"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("misalign")}
    return found & set(MODULES)


def text_of(name: str) -> str:
    return MODULES[name].read_text()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_one_way(name):
    found = imports(MODULES[name])
    if name.startswith("misalign.inference"):
        above = ("misalign.stages", "misalign.build", "misalign.benchmark", "misalign.pipeline", "misalign.cli",
                 "misalign.run", "misalign.preflight", "misalign.report")
        assert not [i for i in found if i.startswith(above)], f"{name} imports from above inference/"
    if name.startswith("misalign.stages.") and name.rsplit(".", 1)[1] not in SHARED_BY_STAGES:
        siblings = [i for i in found if i.startswith("misalign.stages.") and i.split(".")[2] not in SHARED_BY_STAGES]
        assert not siblings, f"stage {name} imports another stage: {siblings}"
    if name in ("misalign.benchmark", "misalign.stages.bench", "misalign.report", "misalign.items"):
        assert not [i for i in found if i.startswith("misalign.build")], f"Stage II's {name} imports Stage I's build"
    if name != "misalign.cli" and not name.startswith("misalign.cli."):
        assert not [i for i in found if i.startswith("misalign.cli")], f"{name} imports the command line"
    if name not in ("misalign.run", "misalign.perf") and not name.startswith("misalign.cli"):
        assert "misalign.run" not in found, f"{name} imports the run layer, which sits above it"


def test_no_import_cycle_among_misalign_modules():
    graph = {name: imports(path) - {name} for name, path in MODULES.items()}
    cycles, seen, on_path = [], set(), []

    def visit(name):
        if name in on_path:
            cycles.append(on_path[on_path.index(name):] + [name])
            return
        if name in seen:
            return
        seen.add(name)
        on_path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        on_path.pop()

    for name in sorted(graph):
        visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_lower_layers_are_given_what_they_need():
    # the memory plan is a function of the model facts it is given: nothing from inference/
    assert not [i for i in imports(MODULES["misalign.memory_plan"]) if i.startswith("misalign.inference")]
    # preflight is given the run's passes; it does not ask Stage I or Stage II for them
    assert not imports(MODULES["misalign.preflight"]) & {"misalign.build", "misalign.benchmark", "misalign.run"}
    # the report reads Stage II's records, not the stage that writes them
    assert "misalign.stages.bench" not in imports(MODULES["misalign.report"])
    # raw vLLM is timed through the engine's own interface; nobody reaches into an engine's LLM
    assert "vllm" not in text_of("misalign.perf")
    for name in MODULES:
        if name != "misalign.inference.vllm_engine":
            assert ".llm." not in text_of(name) and "engine.llm" not in text_of(name), name


def test_statistics_are_records_taken_apart_in_one_place():
    # misalign.stats is a leaf: every layer can hold its records
    assert not imports(MODULES["misalign.stats"])
    # the flat keys checkpoints keep ("what|dimension|domain", "kind/detail", "engine_starts|NAME")
    # are written and read there only
    for name in MODULES:
        if name != "misalign.stats":
            text = text_of(name)
            assert "engine_starts|" not in text and 'split("|"' not in text and '"rejected "' not in text, name
