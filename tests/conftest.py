"""Shared fixtures: offline, a private PREFDESK_HOME, a tiny policy factory, a toy pair set."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefdesk_env(tmp_path_factory):
    """Every test runs offline with its state (MLflow store, caches) in a temporary home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("PREFDESK_HOME", str(tmp_path_factory.mktemp("prefdesk-home")))
    # Prefect's console handler keeps the stderr it was created with: set it up now, on the
    # session's stream, not inside a test whose stream (a CliRunner's, a capsys') is closed after it.
    from prefect.logging.configuration import setup_logging

    setup_logging()
    yield os.environ["PREFDESK_HOME"]
    mp.undo()


@pytest.fixture(scope="module")
def harness():
    """A real Prefect API (temporary SQLite server) for the flows of one test module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def state_home(tmp_path_factory):
    """A PREFDESK_HOME of its own (MLflow store, registry, runs) for one test module."""
    import os

    home = tmp_path_factory.mktemp("prefdesk-home")
    old = os.environ.get("PREFDESK_HOME")
    os.environ["PREFDESK_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("PREFDESK_HOME")
    else:
        os.environ["PREFDESK_HOME"] = old


@pytest.fixture
def tiny_policy():
    """`tiny_policy(**model_settings)` -> a fresh random tiny Llama policy (SmolLM2 tokenizer).

    fp32 unless asked otherwise: on CPU, bf16 at the tiny model's shapes is dominated by
    oneDNN setting up a kernel per new shape (tens of times slower than fp32 here).
    """
    from prefdesk.config import ModelSettings
    from prefdesk.models import build_policy

    def make(seed: int = 0, **settings):
        settings.setdefault("dtype", "fp32")
        return build_policy(ModelSettings(name="tiny", **settings), seed=seed)

    return make


@pytest.fixture(scope="session")
def toy_pairs():
    """16 separable pairs: the chosen answer is always calm and the rejected one shouts."""
    from prefdesk.pairs import Pair

    topics = ["tea", "rain", "maps", "bread", "clocks", "birds", "rivers", "chess",
              "glass", "paper", "bikes", "salt", "wool", "bees", "kites", "stone"]
    return [
        Pair(
            prompt=[{"role": "user", "content": f"Tell me one thing about {t}."}],
            chosen=f"Sure. {t.capitalize()} is interesting, and here is a calm fact about it.",
            rejected=f"NO!!! {t.upper()} {t.upper()} STOP ASKING!!!",
        )
        for t in topics
    ]


@pytest.fixture
def run_ctx(tmp_path):
    """`run_ctx(policy, pairs, out=..., **run_settings)` -> a RunContext as the flow builds one
    (no tracker run, no progress bars unless asked)."""
    from pathlib import Path

    from prefdesk.context import RunContext, RunSettings
    from prefdesk.tracking import Tracker

    def make(policy, pairs=None, out=None, *, tracker=None, callbacks=(), prompts=None, judge=None,
             check_pairs=None, **settings):
        settings.setdefault("progress", False)
        return RunContext(policy=policy, settings=RunSettings(output_dir=Path(out or tmp_path), **settings),
                          tracker=tracker or Tracker(), pairs=pairs, prompts=prompts, judge=judge,
                          check_pairs=check_pairs, callbacks=callbacks)

    return make
