"""The MLflow registry side on a real SQLite store: aliases move only through passed gates."""

import pytest

from prefdesk.gates import GateReport, GateResult
from prefdesk.registry import (
    CHALLENGER, CHAMPION, PromotionRefused, alias_version, champion_metrics, promote_version, register_candidate,
)
from prefdesk.tracking import Tracker, client, end_run, start_run


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _run_with_adapter(tmp_path, win_rate):
    run_id = start_run("t")
    adapter = tmp_path / f"adapter-{run_id}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    t = Tracker(run_id)
    t.log_metrics({"drift/win_rate": win_rate})
    t.log_artifact(str(adapter), "adapter")
    end_run(run_id)
    return run_id


def _gates(ok: bool) -> GateReport:
    return GateReport([GateResult("win_rate", "drift/win_rate", ">=", 0.5, 0.6 if ok else 0.4, ok,
                                  "drift/win_rate = 0.6" if ok else "drift/win_rate = 0.4, outside >= 0.5")])


def test_failed_candidate_is_challenger_only_and_cannot_be_promoted(store):
    run = _run_with_adapter(store, 0.4)
    reg = register_candidate(run, "adapter", "m", _gates(False), promote=True)
    assert reg.version == "1" and not reg.promoted
    assert alias_version("m", CHALLENGER) == "1"
    assert alias_version("m", CHAMPION) is None
    mv = client().get_model_version("m", "1")
    assert mv.tags["gate_all"] == "0" and mv.tags["gate.win_rate"].startswith("FAIL")
    assert mv.source.endswith("/adapter")
    with pytest.raises(PromotionRefused, match="win_rate"):
        promote_version("m", "1")
    assert alias_version("m", CHAMPION) is None


def test_passing_candidate_becomes_champion_and_feeds_champion_gates(store):
    register_candidate(_run_with_adapter(store, 0.4), "adapter", "m", _gates(False), promote=True)
    reg = register_candidate(_run_with_adapter(store, 0.6), "adapter", "m", _gates(True), promote=True)
    assert reg.promoted and reg.version == "2"
    assert alias_version("m", CHAMPION) == "2" and alias_version("m", CHALLENGER) == "2"
    assert champion_metrics("m")["drift/win_rate"] == pytest.approx(0.6)
    # no-promote mode registers but leaves the champion where it was
    reg3 = register_candidate(_run_with_adapter(store, 0.7), "adapter", "m", _gates(True), promote=False)
    assert alias_version("m", CHAMPION) == "2" and alias_version("m", CHALLENGER) == reg3.version
    promote_version("m", reg3.version)
    assert alias_version("m", CHAMPION) == reg3.version
    with pytest.raises(PromotionRefused, match="no version"):
        promote_version("m", "99")
