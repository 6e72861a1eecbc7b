"""DESIGN.md's arrows point one way: flows -> tasks -> (validations, plugins) -> prefdesk."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each layer may import from the project (the CLI is the entry point that composes them all).
ALLOWED = {
    "prefdesk": {"prefdesk"},
    "validations": {"prefdesk", "validations"},
    "plugins": {"prefdesk", "plugins"},
    "tasks": {"prefdesk", "validations", "plugins", "tasks"},
    "flows": {"tasks", "flows"},
}
LAYERS = set(ALLOWED)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & LAYERS


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_down(layer):
    bad = {}
    for f in (ROOT / layer).rglob("*.py"):
        if f == ROOT / "prefdesk" / "cli.py":
            continue
        wrong = _imports(f) - ALLOWED[layer]
        if wrong:
            bad[str(f.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"imports against the layer order: {bad}"
