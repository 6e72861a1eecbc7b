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


def test_the_library_layers_import_no_prefect():
    """prefdesk/ (all but the CLI, which composes the flow), plugins/ and validations/ run
    without Prefect: a notebook or another orchestrator can use them as they are."""
    import subprocess
    import sys

    modules = sorted(
        ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for layer in ("prefdesk", "plugins", "validations")
        for f in (ROOT / layer).rglob("*.py")
        if f != ROOT / "prefdesk" / "cli.py"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(n for n in sys.modules if n == 'prefect' or n.startswith('prefect.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"Prefect imported by the library layers: {out.stdout[:500]}"
    assert len(modules) > 30
