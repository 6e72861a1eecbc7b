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


def _layer(module: str) -> str | None:
    """The layer a module belongs to: `prefdesk.tasks.train` -> tasks, `prefdesk.engine` -> prefdesk.

    The folders install under the prefdesk namespace (pyproject's package-dir), so the
    layer is the second part of the name when that names a layer folder.
    """
    parts = module.split(".")
    if parts[0] != "prefdesk":
        return parts[0] if parts[0] in LAYERS else None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS - {"prefdesk"} else "prefdesk"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {_layer(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(_layer(node.module))
            if node.module == "prefdesk":  # from prefdesk import tasks
                found |= {_layer(f"prefdesk.{a.name}") for a in node.names}
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
        ".".join(("prefdesk", *f.relative_to(ROOT).with_suffix("").parts)).replace("prefdesk.prefdesk", "prefdesk")
        .removesuffix(".__init__")
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


def test_no_generic_top_level_module_is_installed(tmp_path):
    """`tasks`, `flows`, `plugins`, `validations` install as prefdesk.tasks, ...: another
    package's `tasks` in the same site-packages must not collide with ours (the wheel is
    what a user's pip installs)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: an in-tree build would leave build/ and an egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, src / layer, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("prefdesk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"prefdesk"}, sorted(tops)
    for layer in ("flows/nightly.py", "tasks/train.py", "plugins/dpo.py", "validations/desk.py"):
        assert f"prefdesk/{layer}" in names
    eps = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "= plugins." not in eps and "prefdesk.plugins.dpo:" in eps
