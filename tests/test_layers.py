"""Dependencies point one way: cli -> build / benchmark -> pipeline -> stages -> inference."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "misalign"
SHARED_BY_STAGES = ("base", "common")           # misalign/stages/ modules that are not stages


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("misalign"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("misalign")}
    return found


def module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module(p))
def test_imports_point_one_way(path):
    name, found = module(path), imports(path)
    if name.startswith("misalign.inference"):
        above = ("misalign.stages", "misalign.build", "misalign.benchmark", "misalign.pipeline", "misalign.cli")
        assert not [i for i in found if i.startswith(above)], f"{name} imports from above inference/"
    if name.startswith("misalign.stages.") and name.rsplit(".", 1)[1] not in SHARED_BY_STAGES:
        siblings = [i for i in found if i.startswith("misalign.stages.") and i.split(".")[2] not in SHARED_BY_STAGES]
        assert not siblings, f"stage {name} imports another stage: {siblings}"
    if name in ("misalign.benchmark", "misalign.stages.bench", "misalign.report"):
        assert not [i for i in found if i.startswith("misalign.build")], f"Stage II's {name} imports Stage I's build"
