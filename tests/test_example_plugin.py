"""A third-party optimizer package: installed with pip, found through the entry point, trained."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefdesk import plugin

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prefdesk-example-plugin"
DIST = "prefdesk-example-plugin"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True,
                   capture_output=True, text=True, timeout=300)


@pytest.fixture
def installed(tmp_path):
    # Installed from a copy (pip builds in the source tree) and not editable: an editable
    # install's import hook is a .pth file, which only a new interpreter would read.
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(src))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        _pip("uninstall", "-y", DIST)
        sys.modules.pop("prefdesk_example_plugin", None)
        importlib.invalidate_caches()


def test_installed_plugin_is_listed_and_trains(installed, tiny_policy, toy_pairs, run_ctx):
    assert "orpo_lite" in plugin.available()
    row = next(r for r in plugin.describe() if r["name"] == "orpo_lite")
    assert "error" not in row and row["params"]["lam"]["default"] == 0.1
    assert {"dpo", "sft"} <= set(plugin.available())  # built-ins come through the same door

    cls = plugin.load("orpo_lite")
    assert row["needs"] == ["pairs"]
    params = plugin.parse_params(cls, {"max_steps": 2, "batch_size": 4})
    res = cls().fit(run_ctx(tiny_policy(), toy_pairs), params)
    assert res.steps == 2 and len(res.extra["loss_curve"]) == 2
    assert Path(res.adapter_path, "adapter_model.safetensors").exists()
    assert "train/reward_margin" in res.metrics and "train/kl" not in res.metrics  # no reference
    assert res.extra["ref_cache_misses"] == 0


def test_uninstalled_plugin_is_gone():
    assert "orpo_lite" not in plugin.available()
