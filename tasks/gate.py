from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefdesk.figures import log_leash_figure
from prefdesk.gates import evaluate_gates, merge_train_figures
from prefdesk.registry import champion_metrics
from prefdesk.tasks.common import config_of, table_rows, tracker_of

TRAIN_RECORD = "train.json"  # written by the train task: {artifacts, gated, steps, ...}


def first_logged(run_id: str, metric: str) -> float | None:
    """The first value of `metric` in the run's MLflow history (None without a run or a value)."""
    if not run_id:
        return None
    from prefdesk.tracking import client

    history = client().get_metric_history(run_id, metric)
    return min(history, key=lambda m: (m.step, m.timestamp)).value if history else None


def train_record(run_dir: str | Path, run_id: str = "") -> dict[str, Any] | None:
    """train.json of the run, with PPO's reward baseline added to its gated figures.

    `reference/ppo/reward` is the first rollout's reward: the untouched policy (the
    reference) sampled it, so a rise of `ppo/reward` over it is the reward PPO gained.
    """
    path = Path(run_dir) / TRAIN_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object {{artifacts, gated, steps}}")
    gated = dict(record.get("gated") or {})
    if "ppo/reward" in gated and "reference/ppo/reward" not in gated:
        first = first_logged(run_id, "ppo/reward")
        if first is not None:
            gated["reference/ppo/reward"] = first
    return {**record, "gated": gated}


def gate_metrics(drift_path: str | Path, run_dir: str | Path, run_id: str = "") -> dict[str, float]:
    """What the gates see: the drift figures plus the optimizer's gated train-time figures."""
    return merge_train_figures(json.loads(Path(drift_path).read_text()), train_record(run_dir, run_id))


# retries: it reads the champion from the tracking server and writes to it; the gates are pure
# functions of the figures, so a retry cannot pass a gate that failed
@task(name="gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def gate(drift_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Every gate against the drift budget and the optimizer's own figures; returns the gates.json path."""
    cfg = config_of(config)
    metrics = gate_metrics(drift_path, run_dir, run_id)
    report = evaluate_gates(cfg.gates, metrics, champion_metrics(cfg.registry.model_name))
    tracker = tracker_of(run_id)
    tracker.log_metrics(report.metrics())
    path = report.write(Path(run_dir) / "gates.json")
    tracker.log_artifact(str(path))
    _, figure = log_leash_figure(run_id, metrics, report.results, run_dir)  # reward, KL, length, ... with bounds
    create_table_artifact(
        key="gates",
        table=table_rows([{"gate": r.name, "passed": r.passed, "reason": r.reason} for r in report.results]),
        description=("all gates passed" if report.passed else "failed: " + ", ".join(r.name for r in report.failed))
        + (f" · [leash figure]({figure})" if figure else ""),
    )
    log = get_run_logger()
    for r in report.results:
        (log.info if r.passed else log.warning)("gate %s: %s", r.name, r.reason)
    for note in report.notes:
        log.warning(note)
    return str(path)
