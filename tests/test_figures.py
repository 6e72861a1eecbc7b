"""The leash figure and the history figure, drawn from a real MLflow SQLite store."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from prefdesk.gates import GateReport, GateResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


FINAL = {
    "drift/kl_per_token": 0.03, "drift/length_ratio": 1.1, "reference/drift/length_ratio": 1.0,
    "drift/over_refusal_rate": 0.1, "reference/drift/over_refusal_rate": 0.05,
    "drift/under_refusal_rate": 0.2, "reference/drift/under_refusal_rate": 0.4,
    "drift/factuality_mc_accuracy": 0.6, "reference/drift/factuality_mc_accuracy": 0.62,
    "drift/win_rate": 0.7, "reference/drift/win_rate": 0.5, "drift/win_rate_lower": 0.58, "drift/win_rate_upper": 0.8,
    "drift/pair_accuracy": 0.55, "reference/drift/pair_accuracy": 0.4,
    "drift/reward_mean": 0.3, "reference/drift/reward_mean": 0.0,
    # sycophancy is deliberately missing: the panel must say so, not crash
}
GATES = [
    GateResult("kl_budget", "drift/kl_per_token", "<=", 0.1, 0.03, True, ""),
    GateResult("over_refusal", "drift/over_refusal_rate", "<=", 0.10, 0.1, True, ""),
    GateResult("win_rate", "drift/win_rate_lower", ">=", 0.5, 0.58, True, ""),
    GateResult("factuality", "drift/factuality_mc_accuracy", ">=", 0.64, 0.6, False, ""),
    GateResult("sycophancy", "drift/sycophancy_rate", "<=", None, None, False, "not measured"),
]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _run(metrics: dict[str, float], steps: int = 0) -> str:
    from prefdesk.tracking import Tracker, end_run, start_run

    run_id = start_run("figs")
    t = Tracker(run_id)
    for s in range(1, steps + 1):
        t.log_metrics({"train/loss": 0.69 / s, "train/reward_margin": 0.1 * s, "train/kl": 0.01 * s}, step=s)
    t.log_metrics(metrics)
    end_run(run_id)
    return run_id


def test_leash_figure_draws_curves_finals_and_bounds(store):
    from prefdesk.figures import leash_figure, metric_history

    run_id = _run(FINAL, steps=5)
    assert [v for _, v in metric_history(run_id, ["train/kl"])["train/kl"]] == pytest.approx([0.01 * s for s in range(1, 6)])
    assert "ppo/kl" not in metric_history(run_id, ["ppo/kl"])
    out = leash_figure(run_id, FINAL, GATES, store / "figs" / "leash.png")
    w, h = _png_size(out)
    assert out == store / "figs" / "leash.png" and w >= 800 and h >= 600
    assert 20_000 < out.stat().st_size < 2_000_000


def test_the_figure_is_logged_to_the_run_with_a_link(store):
    from prefdesk.figures import log_leash_figure
    from prefdesk.tracking import client

    run_id = _run(FINAL, steps=2)
    path, uri = log_leash_figure(run_id, FINAL, GATES, store / "run")
    assert path.is_file() and uri is not None and uri.endswith("figures/leash.png")
    assert [a.path for a in client().list_artifacts(run_id, "figures")] == ["figures/leash.png"]
    assert log_leash_figure(None, {}, [], store / "untracked")[1] is None


def test_leash_figure_without_a_run_or_any_metric_still_draws(store):
    from prefdesk.figures import leash_figure

    out = leash_figure(None, {}, [], store / "empty.png")
    assert _png_size(out)[0] > 0
    # gates given as plain dicts (a gates.json read back), with an unknown run id
    out = leash_figure("0" * 32, {"drift/win_rate": 0.5}, [{"metric": "drift/win_rate", "op": ">=", "limit": 0.5,
                                                            "passed": True}], store / "dicts.png")
    assert _png_size(out)[0] > 0


def test_history_figure_across_registered_versions(store):
    from prefdesk.figures import history_figure, version_history
    from prefdesk.registry import register_artifact
    from prefdesk.tracking import Tracker

    for i, ok in enumerate((False, True, True)):
        metrics = {**FINAL, "drift/win_rate": 0.45 + 0.1 * i, "gate/all": float(ok)}
        if i == 2:
            metrics.pop("drift/pair_accuracy")  # a version that never measured it
        run_id = _run(metrics)
        report = GateReport([GateResult("win_rate", "drift/win_rate", ">=", 0.5, metrics["drift/win_rate"], ok, "")])
        Tracker(run_id).log_artifact(str(report.write(store / f"gates-{i}.json").rename(store / "gates.json")))
        register_artifact(run_id, "gates.json", "figs-model", report, promote=True)
    rows = version_history("figs-model")
    assert [r[0] for r in rows] == [1, 2, 3] and "champion" in rows[2][3] and "champion" not in rows[0][3]
    assert [g["passed"] for r in rows for g in r[2]] == [False, True, True]
    assert "drift/pair_accuracy" not in rows[2][1] and rows[1][1]["drift/win_rate"] == pytest.approx(0.55)
    out = history_figure("figs-model", store / "history.png")
    assert _png_size(out)[0] >= 800 and out.stat().st_size > 20_000
    assert _png_size(history_figure("no-such-model", store / "none.png"))[0] > 0
